"""`splitedge models`, `splitedge profile` and `splitedge export`: the run-time package's own commands.

The offline commands (train, eval, prefilter, finetune) live in `split.train.cli`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from split.recipes import RECIPES

if TYPE_CHECKING:
    from split.api import SplitModel

__all__ = ["main"]


def _models(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="splitedge models", description="List model recipes; the first is the default.")
    parser.parse_args(argv)
    width = max(len(r.name) for r in RECIPES)
    for r in RECIPES:
        print(f"{r.name:<{width}}  {r.family:<10}  {r.description}")
        for alt in r.shipped_alternatives():
            print(f"{'':<{width}}  {'':<10}  --checkpoint {alt}" + ("  (the default)" if alt == r.split_checkpoint else ""))
    return 0


def _size(text: str) -> tuple[int, int] | None:
    """`HxW` (both at least 16 px), or None."""
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        return None
    return size if len(size) == 2 and min(size) >= 16 else None  # type: ignore[return-value]


def _build(args: argparse.Namespace, command: str) -> tuple["SplitModel", str] | None:
    """The recipe `args` name, with its weights and checkpoint; None after one line saying why not."""
    from split.recipes import build
    from split.weights import WeightsError

    try:
        return build(args.model, weights=args.weights, checkpoint=args.checkpoint)
    except (KeyError, WeightsError) as exc:
        print(f"splitedge {command}: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return None


def _profile(argv: list[str]) -> int:
    import json
    from pathlib import Path

    from tqdm import tqdm

    from split.profiling import profile_model, scale_profile
    from split.recipes import default_recipe

    p = argparse.ArgumentParser(prog="splitedge profile", description="Measure a model's latencies on this machine.")
    p.add_argument("--model", default=default_recipe().name)
    p.add_argument("--out", required=True, metavar="PROFILE.json")
    p.add_argument("--sizes", default="480x640", help="comma-separated HxW input sizes (first = default)")
    p.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / "samples" / "coco"),
                   help="folder of real frames (payload sizes depend on content)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--device-slowdown", type=float, default=1.0, metavar="K",
                   help="scale every time by K to stand for a slower device")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--checkpoint")
    p.add_argument("--weights")
    p.add_argument("--plain-model", action="store_true",
                   help="time the network as built instead of the form `splitedge run` runs (BatchNorm folded, "
                        "channels-last: split.fusion.device_form)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sizes = [_size(s) for s in args.sizes.split(",")]
    if None in sizes:
        print(f"splitedge profile: error: --sizes must look like 480x640[,720x1280], got {args.sizes!r}", file=sys.stderr)
        return 2
    if args.device_slowdown <= 0:
        print("splitedge profile: error: --device-slowdown must be positive", file=sys.stderr)
        return 2
    built = _build(args, "profile")
    if built is None:
        return 2
    model, source = built
    if not args.plain_model:
        from split.fusion import device_form

        device_form(model)
    form = "plain" if args.plain_model else "device"
    print(f"profile {args.model}: weights {source}, {form} form", file=sys.stderr)
    bar = tqdm(total=len(sizes) * 4, desc="profile", unit="image", file=sys.stderr)
    prof = profile_model(model, sizes, args.images, args.repeat, args.jpeg_quality, progress=lambda _: bar.update())
    bar.close()
    prof["form"] = form  # which form was timed; older profiles, without the field, timed the plain network
    if args.device_slowdown != 1.0:
        prof = scale_profile(prof, args.device_slowdown)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(prof, indent=1))
    d = prof["sizes"][prof["default_size"]]
    print(f"{args.model} @ {prof['default_size']}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in d["ms"].items())
          + f"; split {d['bytes']['split']} B, jpeg q{args.jpeg_quality} {d['bytes']['jpeg']} B -> {args.out}")
    return 0


def _export(argv: list[str]) -> int:
    import time
    from pathlib import Path

    from split.export import ONNX_OPSET, export_onnx
    from split.recipes import default_recipe

    p = argparse.ArgumentParser(prog="splitedge export", description=(
        "Export a recipe as an ONNX bundle: device/head.onnx (preprocessed frame -> wire tensor before the "
        "codec), device/full.onnx (local mode), edge/tail.onnx, and manifest.json (docs/export.md)."))
    p.add_argument("--model", default=default_recipe().name)
    p.add_argument("--checkpoint", help="a distilled split or network checkpoint (default: the recipe's own)")
    p.add_argument("--weights", help="torchvision weights enum name for the network")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--size", default="480x640", metavar="HxW",
                   help="frame size the graphs serve (any size for fixed-size resizes: SSD, classifiers)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET)
    p.add_argument("--verify", metavar="FOLDER", help="run the bundle with onnxruntime beside PyTorch on these frames "
                   "(jpg/png, recursively) and record the worst differences in the manifest's `parity`")
    args = p.parse_args(argv)
    size = _size(args.size)
    if size is None:
        print(f"splitedge export: error: --size must look like 480x640, got {args.size!r}", file=sys.stderr)
        return 2
    built = _build(args, "export")
    if built is None:
        return 2
    model, source = built
    print(f"export {args.model}: weights {source}", file=sys.stderr)
    if model.prefilter is not None:
        print("export: the checkpoint's prefilter is not exported (data-dependent); the ONNX head sends every frame",
              file=sys.stderr)
    start = time.perf_counter()
    try:
        manifest = export_onnx(model, args.out, size, opset=args.opset, source=source)
    except ValueError as exc:
        print(f"splitedge export: error: {exc}", file=sys.stderr)
        return 2
    for role, entry in manifest["files"].items():
        print(f"{role:<5} {Path(args.out) / entry['path']}  {entry['bytes'] / 1e6:.2f} MB  "
              f"{entry['export_seconds']:.1f} s  sha256 {entry['sha256'][:12]}")
    print(f"manifest {Path(args.out) / 'manifest.json'} (codec {manifest['codec']['name']}, opset {args.opset}); "
          f"{time.perf_counter() - start:.1f} s")
    model.prefilter = None  # what the bundle computes: verify against that
    return _verify(model, args.out, args.verify, manifest) if args.verify else 0


def _verify(model: SplitModel, out: str, folder: str, manifest: dict) -> int:
    import json
    from pathlib import Path

    from split.export import MANIFEST, verify_onnx
    from split.images import ImageError, load_image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    try:
        if not paths:
            raise ValueError(f"no jpg/png frames under {folder}")
        parity = verify_onnx(model, out, [load_image(p) for p in paths])
    except (ImageError, ValueError) as exc:
        print(f"splitedge export: error: --verify: {exc}", file=sys.stderr)
        return 2
    manifest["parity"] = {"images": str(folder), **parity}
    (Path(out) / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    print("parity " + json.dumps(parity))
    return 0


_HANDLERS = {"models": _models, "profile": _profile, "export": _export}


def main(command: str, argv: list[str]) -> int:
    """`splitedge COMMAND ARGV...` for the commands `split.dispatch.COMMANDS` maps here."""
    return _HANDLERS[command](argv)


