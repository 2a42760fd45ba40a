"""The lean device against the torch one: `python bench/lean_client.py [--venv DIR] [--repeat N]`.

Two figures the README states (docs/lean-client.md), printed as one JSON object and written to
`results/lean-client/lean.json`:

* **installed size**: a fresh venv with only `pip install splitedge[client]` (made in `--venv`,
  default `.venv-client`, anew each run) beside this repo's full
  `.venv` (`make install`: edge, training, dev and Ray), both as `du` counts the files.
* **per-frame device time**, one thread each (`splitedge profile --threads 1`'s setting): the
  split head (preprocess, head, codec: the payload) and the whole model (local mode) of the
  default recipe, torch (`mobile_client.device.TorchDevice`) against onnxruntime on the bundle
  `splitedge export` writes (`mobile_client.onnx_device.OnnxDevice`), interleaved frame by frame
  in one process so that noise on this shared machine hits both alike; medians over every
  sample frame, `--repeat` times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "lean-client" / "lean.json"


def _du_mb(path: Path) -> float:
    done = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return round(int(done.stdout.split()[0]) / 1024, 1)


def _lean_venv(venv: Path) -> dict:
    """Made afresh every run (about 20 s with pip's cache), so that it holds this checkout's package."""
    python = venv / "bin" / "python"
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "lean_venv.py"), str(venv)], check=True)
    seconds = round(time.perf_counter() - t, 1)
    freeze = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    has_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0
    return {"path": str(venv), "mb": _du_mb(venv), "install_seconds": seconds, "packages": len(freeze),
            "torch_importable": has_torch, "freeze": freeze}


def _times(repeat: int) -> dict:
    import torch

    from mobile_client.device import TorchDevice, to_tensor
    from mobile_client.onnx_device import OnnxDevice
    from split.export import export_onnx
    from split.images import read_rgb
    from split.numerics import flush_denormals
    from split.recipes import build, default_recipe

    flush_denormals()  # as the splitedge command does
    torch.set_num_threads(1)
    model, source = build(default_recipe().name)
    model.prefilter = None  # the bundle has none: both send every frame
    with tempfile.TemporaryDirectory() as bundle:
        export_onnx(model, bundle)
        lean = OnnxDevice(bundle, threads=1)
        torch_device = TorchDevice(model)
        frames = [read_rgb(p) for p in sorted((ROOT / "samples").glob("*/*.jpg"))]
        runs: dict[str, list[float]] = {k: [] for k in ("torch_head", "onnx_head", "torch_full", "onnx_full")}
        sizes: dict[str, list[int]] = {"torch": [], "onnx": []}

        def timed(key: str, fn, *args):
            t = time.perf_counter()
            out = fn(*args)
            runs[key].append((time.perf_counter() - t) * 1e3)
            return out

        for rgb in frames:  # warm-up
            torch_device.encode(to_tensor(rgb), "split", False), lean.split_payload(rgb)
        for r in range(repeat):
            for i, rgb in enumerate(frames):
                order = ("torch", "onnx") if (r + i) % 2 == 0 else ("onnx", "torch")
                for which in order:
                    if which == "torch":
                        image = to_tensor(rgb)
                        payload = timed("torch_head", lambda x: torch_device.encode(x, "split", False)[0], image)
                        timed("torch_full", model.full, image)
                    else:
                        payload = timed("onnx_head", lean.split_payload, rgb)
                        timed("onnx_full", lean.full, rgb)
                    sizes[which].append(payload.ByteSize())
    med = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    return {"model": model.name, "weights": source, "threads": 1, "frames": len(frames), "repeat": repeat,
            "median_ms": med, "onnx_over_torch": {"head": round(med["onnx_head"] / med["torch_head"], 3),
                                                  "full": round(med["onnx_full"] / med["torch_full"], 3)},
            "median_payload_bytes": {k: statistics.median(v) for k, v in sizes.items()},
            "onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=ROOT / ".venv-client")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    lean = _lean_venv(args.venv.resolve())
    full = {"path": str(Path(sys.prefix)), "mb": _du_mb(Path(sys.prefix))}
    report = {"venv": {"client": lean, "full": full, "client_over_full": round(lean["mb"] / full["mb"], 4)},
              "device": _times(args.repeat)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0 if not lean["torch_importable"] else 1


if __name__ == "__main__":
    sys.exit(main())
