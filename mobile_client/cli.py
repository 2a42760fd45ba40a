"""`splitedge run`: stream frames through the device runtime and write one JSON line per frame."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from split.recipes import build, default_recipe, get_recipe
from split.weights import WeightsError

from mobile_client.controller import Controller, ModeCosts
from mobile_client.edge_client import EdgeClient
from mobile_client.runtime import DeviceRuntime, RuntimeOptions
from mobile_client.sinks import AnnotatedWriter, JsonlWriter, format_summary, summary_rows
from mobile_client.sources import SourceError, open_source

__all__ = ["main"]

FIXED_MODES = ("local", "split", "offload")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitedge run", description="Run the splitedge device client.")
    p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument("--model", default=default_recipe().name, help="recipe name (must match the server's)")
    p.add_argument("--mode", default="split", choices=FIXED_MODES)
    p.add_argument("--source", required=True, help="image folder, video file, or camera:N")
    p.add_argument("--out", required=True, metavar="results.jsonl")
    p.add_argument("--save-annotated", metavar="DIR")
    p.add_argument("--jpeg-quality", type=int, default=90, metavar="Q")
    p.add_argument("--checkpoint", metavar="FILE")
    p.add_argument("--weights", metavar="ENUM")
    p.add_argument("--limit", type=int, help="stop after N frames")
    p.add_argument("--min-score", type=float, default=0.0, help="drop detections below this score in the output")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a result before going local")
    p.add_argument("--device-slowdown", type=float, default=1.0, metavar="K",
                   help="stand for a K times slower device: wait K-1 times each measured compute")
    return p


def _fail(msg: str) -> int:
    print(f"splitedge run: error: {msg}", file=sys.stderr)
    return 2


def main(command: str, argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.jpeg_quality <= 100:
        return _fail(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    if args.device_slowdown < 1:
        return _fail(f"--device-slowdown must be >= 1, got {args.device_slowdown}")
    try:
        get_recipe(args.model)
        source = open_source(args.source, args.limit)
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    except SourceError as exc:
        return _fail(str(exc))
    try:
        model, weights = build(args.model, weights=args.weights, checkpoint=args.checkpoint)
    except WeightsError as exc:
        return _fail(str(exc))
    controller = Controller(ModeCosts(0, 0, 0, 0, 0, 0, 0), modes=(args.mode,))
    client = EdgeClient(args.server) if args.mode != "local" else None
    options = RuntimeOptions(jpeg_quality=args.jpeg_quality, timeout_s=args.timeout, min_score=args.min_score,
                             device_slowdown=args.device_slowdown)
    runtime = DeviceRuntime(model, controller, client, options)
    print(f"model {args.model}: weights {weights}; mode {args.mode}", file=sys.stderr)
    if client is not None:
        runtime.connect()
    writer = JsonlWriter(args.out)
    annotated = AnnotatedWriter(args.save_annotated) if args.save_annotated else None
    records = []
    shown = 0
    try:
        for frame in tqdm(source, total=len(source) or None, desc=f"{args.mode}", unit="frame", file=sys.stderr):
            record = runtime.process(frame)
            writer.write(record)
            records.append(record)
            if annotated is not None:
                annotated.write(frame.rgb, record)
            for w in runtime.warnings[shown:]:
                tqdm.write(f"warning: {w}", file=sys.stderr)
            shown = len(runtime.warnings)
    except SourceError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        writer.close()
        if client is not None:
            client.close()
    if records:
        print(format_summary(summary_rows(records)))
    return 0
