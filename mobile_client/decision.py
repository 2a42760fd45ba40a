"""What the controller tells the session to do with one frame (:class:`Decision`), and the reasons it gives."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Decision", "REASONS"]

# "deadline" and "hedge" are not a decision's reasons but a frame's: a remote frame served locally because its
# deadline passed, or because its hedged local run finished first. "probing": a local frame while the steady mode
# is remote but a link probe is still unanswered.
REASONS: frozenset[str] = frozenset({"best", "hysteresis", "probe", "no-server", "no-estimate", "accuracy",
                                     "stalled", "deadline", "hedge", "probing"})


@dataclass(frozen=True)
class Decision:
    """What to do with one frame, and why — enough to log and to plot a run afterwards."""

    mode: str
    predicted_ms: dict[str, float] = field(default_factory=dict)
    reason: str = "best"
    bandwidth_bps: float | None = None
    rtt_s: float | None = None
    # Remote modes: when (on the clock of ``choose``'s ``now_s``) to stop waiting for the result and serve the
    # frame locally, then report :meth:`Controller.missed`. ``None``: wait (local, or local not allowed).
    deadline_s: float | None = None
    # Remote modes: also run the frame locally on the idle device while its result is awaited, and take
    # whichever finishes first (docs/controller.md, "Hedging"); set wherever local may serve the frame.
    hedge: bool = False
    # Local frames: also send a link probe of this many filler bytes (the payload size of the remote mode it
    # stands for) and report its answer with :meth:`Controller.observe_probe`. 0: none.
    probe_bytes: int = 0
