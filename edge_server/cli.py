"""`splitedge serve`: build the named recipes and serve them over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
from functools import partial

from split.cli_util import fail
from split.recipes import build, default_recipe, get_recipe
from split.weights import WeightsError

from edge_server.registry import ModelRegistry, ServedModel
from edge_server.server import DEFAULT_MAX_MESSAGE_BYTES, serve

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitedge serve", description="Run the splitedge edge server.")
    p.add_argument("--model", action="append", metavar="NAME",
                   help=f"recipe to serve (repeatable; default {default_recipe().name}); see `splitedge models`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (printed on start)")
    p.add_argument("--checkpoint", metavar="FILE", help="splitedge checkpoint; applied to the model it names")
    p.add_argument("--weights", metavar="ENUM", help="torchvision weights enum (e.g. DEFAULT, COCO_V1), from the local cache")
    p.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20)
    p.add_argument("--no-warmup", action="store_true", help="skip the start-up frame that seeds latency medians")
    return p


_fail = partial(fail, "splitedge serve")


def main(command: str, argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = args.model or [default_recipe().name]
    served = []
    try:
        recipes = [get_recipe(n) for n in names]
        ckpt_recipe = None
        if args.checkpoint:
            from split.weights import load_checkpoint

            ckpt_recipe = load_checkpoint(args.checkpoint).get("recipe", names[0])
            if ckpt_recipe not in names:
                return _fail(f"checkpoint {args.checkpoint} is for {ckpt_recipe!r}, which is not served ({', '.join(names)})")
        for r in recipes:
            ckpt = args.checkpoint if r.name == ckpt_recipe else None
            model, source = build(r.name, weights=args.weights, checkpoint=ckpt)
            served.append(ServedModel(model, source, r.builder))
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    except WeightsError as exc:
        return _fail(str(exc))
    for s in served:
        if not args.no_warmup:
            s.warm_up()
        note = "  (RANDOM weights: detections are meaningless)" if s.weights.startswith("random") else ""
        med = ", ".join(f"{k} {v:.1f} ms" for k, v in s.medians().items())
        print(f"serving {s.model.name}: weights {s.weights}; split at {s.model.at}; {med}{note}", flush=True)
    max_bytes = int(args.max_message_mb * 2**20)

    def ready(port: int) -> None:
        print(f"listening on {args.host}:{port}", flush=True)

    try:
        asyncio.run(serve(ModelRegistry(served), args.host, args.port, max_bytes, ready))
    except OSError as exc:
        return _fail(str(exc))
    return 0
