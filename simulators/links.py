"""Link model: when does a payload of N bytes sent at time t arrive?

A :class:`Link` is one direction of a cellular bottleneck: a FIFO queue in
front of a trace-driven server (:class:`~simulators.traces.Trace`), followed
by a propagation delay, optional jitter and packet loss.  The same object
drives the socket-free simulator (one ``send`` per frame) and the user-space
emulator (one ``send`` per packet), which is what lets a simulated figure be
checked against a live run.

Model, and why each choice was made:

* **Packets.**  ``mtu`` is the size of a packet *on the wire* (1500, the size
  of a mahimahi delivery opportunity), of which 40 bytes are TCP/IP headers,
  so a payload of N bytes is ``ceil(N / (mtu - 40))`` packets and
  ``N + 40 * packets`` wire bytes.  (Cutting N into ``ceil(N/mtu)`` packets
  *plus* 40 bytes each would make every full packet 1540 bytes and cost two
  mahimahi opportunities.)
* **FIFO.**  The link remembers how much trace capacity it has used
  (``served_bytes``, in the trace's cumulative-bytes coordinate).  A send
  starts at ``max(C(t), served_bytes)``: it waits for earlier sends, capacity
  left unused while the link was idle is lost, and small payloads share a
  mahimahi opportunity just as mahimahi's byte-level queue lets them.
* **Loss.**  Each packet is dropped independently by the loss model; a
  dropped packet is sent again (costing link capacity again, at its own
  size) until it gets through.  Losses are recovered as with SACK/fast
  retransmit: all packets lost in one round are resent together, and each
  round costs one recovery time ``rto_ms`` (default ``2 * delay_ms + 10``:
  one round trip to notice the gap plus ~10 ms for the duplicate ACKs / timer
  slack).  The recovery wait is added to the arrival only, not to the FIFO
  (``busy_until``): the bottleneck is free for other traffic meanwhile.
  Since the payload rides TCP, loss shows up as extra bytes and extra delay,
  never as missing data.
* **Delay and jitter.**  ``arrival = departed + rounds * rto + delay + J``
  where ``J ~ Exponential(mean=jitter_ms)`` (non-negative, mostly small with
  an occasional spike, as radio scheduling delay looks).  Arrivals never go
  backwards (``arrival >= previous arrival``): TCP delivers in order.
* **Reproducibility.**  Jitter and loss come from seeded numpy Generators;
  :meth:`Link.reset` rewinds them, so a run can be replayed exactly, and
  :meth:`Link.peek` / :meth:`Link.transfer_time` answer "what if I sent now"
  and then restore the random streams, so the queue and the future draws
  are exactly as if they had not been asked.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Union

import numpy as np

from .trace_files import load_trace
from .traces import Trace

__all__ = [
    "Delivery",
    "Link",
    "LossModel",
    "BernoulliLoss",
    "GilbertElliottLoss",
    "parse_loss",
    "HEADER_BYTES",
]

HEADER_BYTES = 40  # IPv4 + TCP without options
_MAX_LOSS_ROUNDS = 10_000


# ---------------------------------------------------------------------------
# Loss models
# ---------------------------------------------------------------------------


class LossModel(ABC):
    """Per-packet drop process with its own seeded random stream."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Rewind the random stream and state, so runs can be replayed."""
        self._rng = np.random.default_rng(self.seed)

    def snapshot(self) -> object:
        """Opaque copy of the state, for :meth:`restore` (cheaper than a
        deepcopy, which matters for an oracle asked before every frame)."""
        return self._rng.bit_generator.state

    def restore(self, snapshot: object) -> None:
        self._rng.bit_generator.state = snapshot

    def lost(self) -> bool:
        """Advance one packet; True if that packet is dropped."""
        return bool(self.lost_many(1)[0])

    @abstractmethod
    def lost_many(self, n: int) -> np.ndarray:
        """Drop decisions for the next ``n`` packets (vectorised, because a
        large payload is hundreds of packets and a sweep sends thousands)."""

    @property
    @abstractmethod
    def mean_loss(self) -> float:
        """Long-run fraction of packets dropped."""


class BernoulliLoss(LossModel):
    """Independent drops with probability ``p``: the textbook random loss."""

    def __init__(self, p: float, seed: int = 0) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Bernoulli loss probability must be in [0, 1), got {p!r}")
        super().__init__(seed)
        self.p = float(p)

    def lost_many(self, n: int) -> np.ndarray:
        if self.p == 0.0:
            return np.zeros(n, dtype=bool)
        return self._rng.random(n) < self.p

    @property
    def mean_loss(self) -> float:
        return self.p

    def __repr__(self) -> str:
        return f"BernoulliLoss(p={self.p:g}, seed={self.seed})"


class GilbertElliottLoss(LossModel):
    """Two-state Markov loss: bursts, as on a fading radio link.

    Each packet is dropped with ``loss_good`` or ``loss_bad`` according to the
    current state, then the state flips Good->Bad with ``p_gb`` and Bad->Good
    with ``p_bg``.  Starts in Good.  Long-run loss is
    ``(p_bg * loss_good + p_gb * loss_bad) / (p_gb + p_bg)``.
    """

    def __init__(self, p_gb: float, p_bg: float, loss_good: float = 0.0, loss_bad: float = 1.0,
                 seed: int = 0) -> None:
        for name, v in (("p_gb", p_gb), ("p_bg", p_bg), ("loss_good", loss_good), ("loss_bad", loss_bad)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"Gilbert-Elliott {name} must be in [0, 1], got {v!r}")
        if loss_good >= 1.0 or (loss_bad >= 1.0 and p_bg <= 0.0 and p_gb > 0.0):
            raise ValueError("Gilbert-Elliott parameters would drop every packet forever")
        super().__init__(seed)
        self.p_gb, self.p_bg = float(p_gb), float(p_bg)
        self.loss_good, self.loss_bad = float(loss_good), float(loss_bad)
        self.bad = False

    def reset(self) -> None:
        super().reset()
        self.bad = False

    def snapshot(self) -> object:
        return (super().snapshot(), self.bad)

    def restore(self, snapshot: object) -> None:
        rng_state, self.bad = snapshot  # type: ignore[misc]
        super().restore(rng_state)

    def lost_many(self, n: int) -> np.ndarray:
        # Draw whole sojourns instead of stepping packet by packet: the time
        # spent in a state is geometric, and memoryless, so a sojourn cut by
        # the end of this batch can be redrawn in the next call.
        states = np.empty(n, dtype=bool)
        filled = 0
        while filled < n:
            leave = self.p_bg if self.bad else self.p_gb
            stay = self._rng.geometric(leave) if leave > 0 else n - filled + 1
            take = min(stay, n - filled)
            states[filled:filled + take] = self.bad
            filled += take
            if stay <= take:
                self.bad = not self.bad
        probs = np.where(states, self.loss_bad, self.loss_good)
        return self._rng.random(n) < probs

    @property
    def mean_loss(self) -> float:
        if self.p_gb + self.p_bg == 0:
            return self.loss_good
        return (self.p_bg * self.loss_good + self.p_gb * self.loss_bad) / (self.p_gb + self.p_bg)

    def __repr__(self) -> str:
        return (f"GilbertElliottLoss(p_gb={self.p_gb:g}, p_bg={self.p_bg:g}, "
                f"loss_good={self.loss_good:g}, loss_bad={self.loss_bad:g}, seed={self.seed})")


def parse_loss(spec: str | None, seed: int = 0) -> LossModel | None:
    """``bernoulli:P`` or ``ge:P_GB,P_BG[,LOSS_GOOD,LOSS_BAD]``; ``None``,
    ``""`` or ``none`` mean a lossless link.  Raises ``ValueError`` with a
    one-line message."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    kind, _, arg = spec.strip().partition(":")
    try:
        values = [float(x) for x in arg.split(",")] if arg else []
    except ValueError:
        raise ValueError(f"loss spec {spec!r}: parameters must be numbers") from None
    if kind == "bernoulli" and len(values) == 1:
        return BernoulliLoss(values[0], seed=seed)
    if kind == "ge" and len(values) in (2, 4):
        return GilbertElliottLoss(*values, seed=seed)
    raise ValueError(f"loss spec {spec!r}: expected bernoulli:P or ge:P_GB,P_BG[,LOSS_GOOD,LOSS_BAD]")


# ---------------------------------------------------------------------------
# Link
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened to one payload on the link (times in seconds)."""

    sent_s: float        # when the sender handed it to the link
    departed_s: float    # when its last byte (incl. retransmissions) left the bottleneck
    arrival_s: float     # when the receiver has all of it
    wire_bytes: int      # bytes on the wire, headers and retransmissions included
    packets: int         # packets the payload was cut into
    lost_packets: int    # transmissions dropped (each was resent)

    @property
    def latency_s(self) -> float:
        return self.arrival_s - self.sent_s


class Link:
    """One direction of a trace-driven bottleneck (see the module docstring).

    ``trace=None`` is an unshaped link (infinite rate) that still has delay,
    jitter and loss; a string is passed to :func:`load_trace`, and a loss
    string to :func:`parse_loss` (seeded from ``seed``).
    """

    def __init__(self, trace: Union[Trace, str, None], delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 loss: Union[LossModel, str, None] = None, mtu: int = 1500, seed: int = 0,
                 rto_ms: float | None = None) -> None:
        if mtu <= HEADER_BYTES:
            raise ValueError(f"mtu must exceed the {HEADER_BYTES}-byte header, got {mtu}")
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        self.trace: Trace | None = load_trace(trace) if isinstance(trace, str) else trace
        self.delay_s = delay_ms / 1000.0
        self.jitter_s = jitter_ms / 1000.0
        self.loss: LossModel | None = parse_loss(loss, seed=seed + 1) if isinstance(loss, str) else loss
        self.mtu = int(mtu)
        self.mss = self.mtu - HEADER_BYTES
        self.seed = seed
        self.rto_s = (2.0 * delay_ms + 10.0) / 1000.0 if rto_ms is None else rto_ms / 1000.0
        self.reset()

    def reset(self) -> None:
        """Empty the queue and rewind the random streams (replayable runs)."""
        self.served_bytes = 0.0      # trace capacity consumed so far (cumulative coordinate)
        self.busy_until = 0.0        # when the last byte sent so far leaves the bottleneck
        self.last_arrival = -math.inf
        self._rng = np.random.default_rng(self.seed)
        if self.loss is not None:
            self.loss.reset()

    def send(self, nbytes: int, t_s: float) -> Delivery:
        """Enqueue a payload of ``nbytes`` at time ``t_s`` and return when it
        arrives; updates the FIFO and consumes randomness."""
        delivery, self.served_bytes, self.busy_until = self._transmit(nbytes, t_s, self._rng, self.loss)
        self.last_arrival = delivery.arrival_s
        return delivery

    def peek(self, nbytes: int, t_s: float) -> Delivery:
        """What :meth:`send` would return now, leaving the link untouched:
        an oracle that knows the future channel exactly."""
        rng_state = self._rng.bit_generator.state if self.jitter_s > 0 else None
        loss_state = self.loss.snapshot() if self.loss is not None else None
        try:
            return self._transmit(nbytes, t_s, self._rng, self.loss)[0]
        finally:
            if rng_state is not None:
                self._rng.bit_generator.state = rng_state
            if self.loss is not None:
                self.loss.restore(loss_state)

    def transfer_time(self, nbytes: int, t_s: float) -> float:
        """Seconds from ``t_s`` until ``nbytes`` sent then would arrive,
        without changing the link (see :meth:`peek`)."""
        return self.peek(nbytes, t_s).latency_s

    def _transmit(self, nbytes: int, t_s: float, rng: np.random.Generator,
                  loss: LossModel | None) -> tuple[Delivery, float, float]:
        if nbytes < 0:
            raise ValueError(f"cannot send {nbytes} bytes")
        t_s = float(t_s)
        packets = -(-int(nbytes) // self.mss)
        wire = int(nbytes) + HEADER_BYTES * packets
        lost, rounds, extra = self._losses(packets, nbytes, loss)
        wire += extra
        if self.trace is None or packets == 0:
            departed = max(t_s, self.busy_until) if self.trace is not None else t_s
            served = self.served_bytes
        else:
            start = max(float(self.trace.cumulative_bytes(t_s)), self.served_bytes)
            served = start + wire
            departed = max(float(self.trace.time_at_cumulative(served)), t_s)
        busy_until = max(departed, self.busy_until)
        arrival = departed + rounds * self.rto_s + self.delay_s
        if self.jitter_s > 0:
            arrival += float(rng.exponential(self.jitter_s))
        arrival = max(arrival, self.last_arrival)
        delivery = Delivery(t_s, departed, arrival, wire, packets, lost)
        return delivery, served, busy_until

    def _losses(self, packets: int, nbytes: int, loss: LossModel | None) -> tuple[int, int, int]:
        """Return (dropped transmissions, recovery rounds, extra wire bytes)."""
        if loss is None or packets == 0:
            return 0, 0, 0
        last = int(nbytes) - self.mss * (packets - 1) + HEADER_BYTES
        sizes = np.full(packets, self.mtu, dtype=np.int64)
        sizes[-1] = last
        lost_total = rounds = extra = 0
        pending = sizes
        while pending.size:
            mask = loss.lost_many(pending.size)
            pending = pending[mask]
            if not pending.size:
                break
            rounds += 1
            lost_total += int(pending.size)
            extra += int(pending.sum())
            if rounds > _MAX_LOSS_ROUNDS:
                raise RuntimeError(f"{loss!r} dropped a packet {_MAX_LOSS_ROUNDS} times in a row")
        return lost_total, rounds, extra

    def __repr__(self) -> str:
        name = self.trace.name if self.trace is not None else "unshaped"
        return (f"Link({name}, delay_ms={self.delay_s * 1e3:g}, jitter_ms={self.jitter_s * 1e3:g}, "
                f"loss={self.loss!r}, mtu={self.mtu})")
