"""``splitedge`` subcommands owned by the simulators package.

The top-level dispatcher (in ``split``) calls :func:`main` with the
subcommand name and its arguments, so this package is never imported by the
layers below it.  Each subcommand is one entry in ``COMMANDS``; add new ones
(e.g. ``simulate``) there.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

__all__ = ["main", "COMMANDS"]


def _emulate(argv: list[str]) -> int:
    from .emulator import run_emulator

    parser = argparse.ArgumentParser(
        prog="splitedge emulate",
        description="Shape TCP connections through a trace-driven link (user-space proxy).",
    )
    parser.add_argument("--trace", required=True, metavar="SPEC",
                        help="uplink trace: const:MBPS, steps:DUR@MBPS,..., mahimahi:PATH, pensieve:PATH, "
                             "csv:PATH#rate=COL,unit=bps|kbps|Mbps[,interval_s=S], or a bare PATH")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="address the client connects to")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the real server")
    parser.add_argument("--down-trace", metavar="SPEC", default=None,
                        help="downlink trace (default: no rate limit, delay and loss still apply)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way propagation delay (default 0)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="mean exponential jitter (default 0)")
    parser.add_argument("--loss", metavar="SPEC", default=None,
                        help="bernoulli:P or ge:P_GB,P_BG[,LOSS_GOOD,LOSS_BAD] (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter/loss streams")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage + error
        return int(exc.code or 0)

    try:
        run_emulator(args.trace, args.listen, args.upstream, delay_ms=args.delay_ms, loss=args.loss,
                     down_trace_spec=args.down_trace, jitter_ms=args.jitter_ms, seed=args.seed)
    except ValueError as exc:  # bad spec or address: raised before any socket is opened
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the listen port is taken
        print(f"{parser.prog}: error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "emulate": _emulate,
}


def main(command: str, argv: list[str]) -> int:
    """Run ``splitedge COMMAND ARGV...``; returns the process exit status."""
    handler = COMMANDS.get(command)
    if handler is None:
        print(f"splitedge: error: unknown command {command!r} (choose from {', '.join(sorted(COMMANDS))})",
              file=sys.stderr)
        return 2
    return handler(argv)


if __name__ == "__main__":  # python -m simulators.cli emulate ...
    if len(sys.argv) < 2:
        print(f"usage: python -m simulators.cli {{{','.join(sorted(COMMANDS))}}} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
