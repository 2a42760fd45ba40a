"""`splitedge run`: stream frames through the device runtime and write one JSON line per frame."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from functools import partial
from typing import Any

from tqdm import tqdm

from split.cli_util import add_auto_switches, add_edge_load_switch, add_mode_choice, fail, parse_accuracy, parse_modes
from split.dispatch import EXTRA_OF
from split.labels import label_names

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts, costs_from_profiles, read_profile, scaled
from mobile_client.edge_client import EdgeClient
from mobile_client.errors import ServedModelMismatch
from mobile_client.runtime import DeviceRuntime, RuntimeOptions
from mobile_client.realtime import LatestFrame
from mobile_client.sinks import AnnotatedWriter, JsonlWriter, format_summary, realtime_summary, skipped_record, summary_rows
from mobile_client.sources import Frame, SourceError, open_source

__all__ = ["main"]

FIXED_MODES = ("local", "split", "offload")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitedge run", description="Run the splitedge device client.")
    p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT",
                   help="one server; or replicas, round-robin per stream: dns:///NAME:PORT or IP:PORT,IP:PORT,...")
    p.add_argument("--tls-ca", metavar="F", help="speak TLS; trust servers this CA (PEM) signed")
    p.add_argument("--tls-cert", metavar="F", help="with --tls-key: present this client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="F")
    p.add_argument("--token-env", metavar="VAR", help="send the bearer token held in environment variable VAR")
    p.add_argument("--model", help="recipe name (must match the server's); default: the default recipe, or the bundle's")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="onnx: run an exported bundle with onnxruntime, no torch needed (docs/lean-client.md)")
    p.add_argument("--bundle", metavar="DIR", help="--runtime onnx: the bundle `splitedge export --format onnx` wrote")
    p.add_argument("--mode", default="split", choices=(*FIXED_MODES, "auto"),
                   help="auto: the controller picks per frame from the profiles and the measured link")
    p.add_argument("--source", required=True, help="image folder, video file, or camera:N")
    p.add_argument("--out", required=True, metavar="results.jsonl")
    p.add_argument("--save-annotated", metavar="DIR")
    p.add_argument("--jpeg-quality", type=int, default=90, metavar="Q")
    p.add_argument("--checkpoint", metavar="FILE")
    p.add_argument("--weights", metavar="ENUM")
    p.add_argument("--plain-model", action="store_true",
                   help="torch runtime: run the network as built, no BatchNorm folded, no channels-last (about 2x "
                        "slower here, docs/device-form.md)")
    p.add_argument("--limit", type=int, help="stop after N frames")
    p.add_argument("--loop", type=int, default=1, metavar="N", help="go over an image folder or video N times")
    p.add_argument("--device-profile", metavar="P.json",
                   help="auto mode: this device's profile (`splitedge profile`); default: measured on the first frame")
    p.add_argument("--hysteresis", type=float, default=0.15, help="auto mode: relative gain needed to switch modes")
    p.add_argument("--probe-interval", type=float, default=5.0, help="auto mode: seconds between probes of an unused link")
    p.add_argument("--min-score", type=float, default=0.0, help="drop detections below this score in the output")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds of silence from the server before it is presumed gone (then local, and reconnect with backoff)")
    p.add_argument("--device-slowdown", type=float, default=1.0, metavar="K",
                   help="stand for a K times slower device: wait K-1 times each measured compute")
    add_mode_choice(p)
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="work on the newest frame and skip stale ones, one line each with skipped: true (default: on "
                        "for camera:N; off for files and videos, which are then replayed at --fps as a camera)")
    p.add_argument("--fps", type=float, default=10.0, help="--realtime with a file or video: its capture rate")
    p.add_argument("--pipeline", action="store_true",
                   help="overlap the next frame's head (or JPEG encode, or local run) with this frame's network and "
                        "edge time: at most two frames held, one on the device and one on the network/edge; still one "
                        "line per frame, in order (docs/pipeline.md)")
    add_auto_switches(p, "auto mode", "while a remote frame's result is awaited, run the frame on the device too "
                                      "and take whichever finishes first (default: on)")
    add_edge_load_switch(p, "auto mode")
    return p


_fail = partial(fail, "splitedge run")


def main(command: str, argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.jpeg_quality <= 100:
        return _fail(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    if args.device_slowdown < 1:
        return _fail(f"--device-slowdown must be >= 1, got {args.device_slowdown}")
    try:
        model, device, weights = _device(args)
        source = open_source(args.source, args.limit)
    except ModuleNotFoundError as exc:
        if exc.name not in EXTRA_OF:
            raise
        other = (", or run an exported bundle with --runtime onnx --bundle DIR" if args.runtime == "torch" else "")
        return _fail(f"the {args.runtime} runtime needs {exc.name}, which is not installed: pip install "
                     f"'splitedge[{EXTRA_OF[exc.name]}]'{other} (docs/lean-client.md)")
    except (KeyError, ValueError, SourceError) as exc:  # an unknown recipe, weights, a bundle, a source
        return _fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
    frames = _frames(source, args.loop)
    if args.mode == "auto":
        try:
            costs, frames = _auto_costs(model, device, args, frames)
        except ValueError as exc:
            return _fail(str(exc))
        try:
            modes, accuracy = parse_modes(args.modes), parse_accuracy(args.accuracy, args.jpeg_quality)
        except ValueError as exc:
            return _fail(str(exc))
        controller = Controller(costs, modes=modes, accuracy=accuracy, min_accuracy=args.min_accuracy,
                                hysteresis=args.hysteresis, probe_interval_s=args.probe_interval,
                                hedge=args.hedge, link_probes=args.link_probes,
                                edge_load=args.edge_load_feedback)
    else:
        controller = Controller(ModeCosts(0, 0, 0, 0, 0, 0, 0), modes=(args.mode,))
    try:
        client = _edge_client(args) if args.mode != "local" else None
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    options = RuntimeOptions(jpeg_quality=args.jpeg_quality, timeout_s=args.timeout, min_score=args.min_score,
                             device_slowdown=args.device_slowdown, pipeline=args.pipeline)
    runtime = DeviceRuntime(model, controller, client, options, device=device)
    runtime.io.check_split = "split" in controller.modes  # the edge must serve this device's split (docs/lean-client.md)
    print(f"model {model.name}: {weights}; mode {args.mode}", file=sys.stderr)
    try:
        if client is not None:
            runtime.connect()
    except ServedModelMismatch as exc:
        client.close()
        return _fail(str(exc))
    writer = JsonlWriter(args.out)
    # A bundle names its labels (its manifest): a lean device has no torchvision to look them up in.
    names = label_names(model.family, model.classes) if args.runtime == "torch" else (model.classes or {})
    annotated = AnnotatedWriter(args.save_annotated, names=names) if args.save_annotated else None
    records = []
    held: dict[int, Frame] = {}  # frames whose record has not come out yet (pipelined: at most two)

    def write(done: list[dict], skipped=(), before: int | None = None) -> None:
        """Records in frame order: those before frame ``before``, then the frames skipped just before it, then it."""
        lines = ([r for r in done if before is None or r["frame_id"] < before] + [skipped_record(s) for s in skipped]
                 + [r for r in done if before is not None and r["frame_id"] >= before])
        for record in lines:
            writer.write(record)
            records.append(record)
            frame = held.pop(record["frame_id"], None)
            if annotated is not None and frame is not None:
                annotated.write(frame.rgb, record)

    shown = 0
    try:
        total = len(source) * args.loop if args.limit is None else min(len(source) * args.loop, args.limit)
        realtime = args.realtime if args.realtime is not None else args.source.startswith("camera:")
        items = (LatestFrame(frames, None if args.source.startswith("camera:") else args.fps) if realtime
                 else ((frame, None, []) for frame in frames))
        for frame, captured, skipped in tqdm(items, total=None if realtime else total or None, desc=f"{args.mode}",
                                             unit="frame", file=sys.stderr):
            held[frame.index] = frame
            done = runtime.submit(frame, captured)  # (a newer frame was waiting: one line each for the skipped)
            if realtime and runtime.busy and not items.waiting():  # nothing to overlap: settle before waiting
                done += runtime.flush()
            write(done, skipped, frame.index)
            for w in runtime.warnings[shown:]:
                tqdm.write(f"warning: {w}", file=sys.stderr)
            shown = len(runtime.warnings)
        write(runtime.flush())
    except (SourceError, ServedModelMismatch) as exc:  # a reconnect may reach a replica that serves another split
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        writer.close()
        if client is not None:
            client.close()
    if records:
        print(format_summary(summary_rows(records)))
        if line := realtime_summary(records):
            print(line)
    return 0


def _device(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The model, its device (None: the runtime's TorchDevice) and where the weights came from, for --runtime."""
    if args.runtime == "onnx":
        if not args.bundle:
            raise ValueError("--runtime onnx needs --bundle DIR (`splitedge export --format onnx --out DIR` writes one)")
        if args.checkpoint or args.weights:
            raise ValueError("--checkpoint and --weights are the torch runtime's: a bundle holds its own weights")
        if args.plain_model:
            raise ValueError("--plain-model is the torch runtime's: onnxruntime makes its own fold of a bundle")
        from mobile_client.onnx_device import OnnxDevice

        device = OnnxDevice(args.bundle, jpeg_quality=args.jpeg_quality, device_slowdown=args.device_slowdown)
        if args.model and args.model != device.model.name:
            raise ValueError(f"--model {args.model}: the bundle {args.bundle} is of {device.model.name!r}")
        return device.model, device, f"bundle {args.bundle} (onnxruntime)"
    if args.bundle:
        raise ValueError("--bundle is read by --runtime onnx only")
    from split.recipes import build, default_recipe, get_recipe
    from split.weights import WeightsError

    name = args.model or default_recipe().name
    get_recipe(name)
    try:
        model, weights = build(name, weights=args.weights, checkpoint=args.checkpoint)
    except WeightsError as exc:
        raise ValueError(str(exc)) from None
    if not args.plain_model:
        from split.fusion import device_form

        device_form(model)
    return model, None, f"weights {weights}" + (", the network as built" if args.plain_model else "")


def _edge_client(args) -> EdgeClient:
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ValueError(f"--token-env {args.token_env}: that environment variable is not set")
    return EdgeClient(args.server, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key, token=token)


def _frames(source, loop: int):
    """Frames of `loop` passes over the source, numbered on."""
    index = 0
    for _ in range(max(loop, 1)):
        for frame in source:
            yield Frame(index, frame.source, frame.rgb)
            index += 1


def _auto_costs(model: Any, device: Any, args: argparse.Namespace, frames: Iterator[Frame]) -> tuple[ModeCosts, Iterator[Frame]]:
    """The controller's costs: the device profile (given, or measured on the first frame),
    scaled by the emulated device slowdown; edge times start as this device's own and are
    replaced by the server's measured ones from `Describe` once connected."""
    if args.device_profile:
        profile = read_profile(args.device_profile)
        if profile.get("model") != model.name:
            raise ValueError(f"profile {args.device_profile} is for model {profile.get('model')!r}, not {model.name!r}")
        timed, running = profile.get("form", "plain"), "plain" if args.plain_model else "device"
        if device is None and timed != running:  # the torch runtime: the two forms are about 2x apart
            print(f"auto: warning: {args.device_profile} timed the {timed} form, this device runs the {running} form "
                  "(docs/device-form.md); its device times will be off until local frames' measured times rescale them",
                  file=sys.stderr)
    else:
        first = next(frames, None)
        if first is None:
            raise ValueError("the source has no frames")
        print("auto: measuring this device's profile on the first frame ...", file=sys.stderr)
        if device is not None:
            profile = device.profile(first.rgb, repeat=3)
        else:
            from mobile_client.device import to_tensor
            from split.profiling import profile_model

            profile = profile_model(model, [], images=[to_tensor(first.rgb)], repeat=3,
                                    jpeg_quality=args.jpeg_quality, layers=False)
        frames = _chain(first, frames)
    costs = costs_from_profiles(profile, profile)
    factor = args.device_slowdown / profile.get("device_slowdown", 1.0)
    return (scaled(costs, factor) if factor != 1.0 else costs), frames


def _chain(first, rest):
    yield first
    yield from rest
