"""What the `splitedge` subcommands' command lines share: the error line, and the auto policy's switches.

`splitedge run` (the live client) and `splitedge simulate` expose the same two switches of
the auto policy's controller; defining them here keeps their spelling, default and meaning
the same in both (each command words its own help for hedging and names the policy in its
own way).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["LINK_PROBES_HELP", "EDGE_LOAD_HELP", "add_auto_switches", "add_edge_load_switch", "fail", "parse_modes",
           "parse_accuracy", "add_mode_choice"]

LINK_PROBES_HELP = ("measure an unused link with filler-byte probes sent beside local frames, which "
                    "the server answers at once (default: on; off: with hedged remote frames)")


def fail(prog: str, msg: str) -> int:
    """Print ``PROG: error: MSG`` on stderr, argparse's own format, and return exit status 2."""
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def add_auto_switches(parser: argparse.ArgumentParser, scope: str, hedge_help: str) -> None:
    """Add ``--hedge`` and ``--link-probes`` (both on by default; ``--no-...`` turns one off).

    ``scope`` starts each help text (e.g. ``"auto mode"``), followed by ``": "`` and
    ``hedge_help`` for ``--hedge`` or :data:`LINK_PROBES_HELP` for ``--link-probes``.
    """
    parser.add_argument("--hedge", action=argparse.BooleanOptionalAction, default=True,
                        help=f"{scope}: {hedge_help}")
    parser.add_argument("--link-probes", action=argparse.BooleanOptionalAction, default=True,
                        help=f"{scope}: {LINK_PROBES_HELP}")


EDGE_LOAD_HELP = ("add the queueing the edge's results report (queue_ms) to the remote modes' predicted cost, so a "
                  "device shifts to local as a shared edge saturates (mobile_client/edge_load.py); with one device "
                  "and no queue it changes nothing")


def add_edge_load_switch(parser: argparse.ArgumentParser, scope: str, default: bool | None = True,
                         help_: str = EDGE_LOAD_HELP) -> None:
    """Add ``--edge-load-feedback`` / ``--no-edge-load-feedback`` (``default`` None: the command decides)."""
    parser.add_argument("--edge-load-feedback", action=argparse.BooleanOptionalAction, default=default,
                        help=f"{scope}: {help_}" + (" (default: on)" if default else ""))


def add_mode_choice(parser: argparse.ArgumentParser) -> None:
    """The accuracy constraint of the controller (``auto``): which modes it may use, and how accurate each is."""
    parser.add_argument("--modes", default="local,split,offload",
                        help="auto: the modes it may use (default: all three)")
    parser.add_argument("--accuracy", default=None, metavar="MODE=VALUE,...",
                        help="auto: each mode's measured accuracy, e.g. the mAP `splitedge eval` wrote for the "
                             "original (local, offload at its JPEG quality) and the split")
    parser.add_argument("--min-accuracy", type=float, default=0.0,
                        help="auto: use only modes whose --accuracy is at least this (default 0: any); if none "
                             "is, the most accurate one")


def parse_modes(spec: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in spec.split(",") if m.strip())
    bad = [m for m in modes if m not in ("local", "split", "offload")]
    if not modes or bad or len(set(modes)) != len(modes):
        raise ValueError(f"--modes must be distinct values among local,split,offload, got {spec!r}")
    return modes


def parse_accuracy(spec: str | None, jpeg_quality: int = 90) -> dict[str, float]:
    """``MODE=VALUE,...``, or the JSON ``splitedge eval`` wrote: local is the original's accuracy (mAP for a
    detector, top-1 for a classifier), split the split's, offload JPEG's at ``jpeg_quality``."""
    if not spec:
        return {}
    if spec.endswith(".json"):
        return _accuracy_from_eval(spec, jpeg_quality)
    out = {}
    for part in spec.split(","):
        mode, _, value = part.partition("=")
        try:
            out[mode.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--accuracy must be MODE=VALUE,... (e.g. local=0.051,split=0.056), got {spec!r}") from None
    bad = sorted(set(out) - {"local", "split", "offload"})
    if bad:
        raise ValueError(f"--accuracy: unknown mode(s) {', '.join(bad)}")
    return out


def _accuracy_from_eval(path: str, jpeg_quality: int) -> dict[str, float]:
    import json

    try:
        data = json.loads(open(path).read())
        metric = "map" if "map" in data["original"] else "top1"
        out = {"local": float(data["original"][metric]), "split": float(data["split"][metric])}
        offload = data.get("offload", {}).get(f"q{jpeg_quality}")
        if offload is None:  # an unmeasured mode must not count as perfect
            raise KeyError(f"no offload accuracy at JPEG quality {jpeg_quality}: evaluate it, or give MODE=VALUE")
        out["offload"] = float(offload[metric])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--accuracy {path}: not usable as a `splitedge eval` JSON ({exc})") from None
    return out
