"""`splitedge models` (and, later, profile/train/eval): the split package's own commands."""

from __future__ import annotations

import argparse
import sys

from split.recipes import RECIPES

__all__ = ["main"]


def _models(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="splitedge models", description="List model recipes; the first is the default.")
    parser.parse_args(argv)
    width = max(len(r.name) for r in RECIPES)
    for r in RECIPES:
        print(f"{r.name:<{width}}  {r.family:<10}  {r.description}")
    return 0


_HANDLERS = {"models": _models}


def main(command: str, argv: list[str]) -> int:
    handler = _HANDLERS.get(command)
    if handler is None:
        print(f"splitedge: error: {command!r} is not implemented by split.cli", file=sys.stderr)
        return 2
    return handler(argv)
