"""What the `splitedge` subcommands' command lines share: the error line, and the auto policy's switches.

`splitedge run` (the live client) and `splitedge simulate` expose the same two switches of
the auto policy's controller; defining them here keeps their spelling, default and meaning
the same in both (each command words its own help for hedging and names the policy in its
own way).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["LINK_PROBES_HELP", "add_auto_switches", "fail"]

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
