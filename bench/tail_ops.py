"""What batching can save in the default's tail: `python bench/tail_ops.py [--batches 1,4] [--rounds 3]`.

Why this exists: the 16-client batching target (1.5 x the unbatched frames/s, issue 16) is bounded
by the tail itself, since a server cannot gain more from batching than the computation it batches.
This measures, in one process on one torch thread, the default recipe's tail in the edge's form
(`split.fusion.edge_form`, what `splitedge serve` runs) on a real split payload
(``samples/people``), at each batch size:

- ``wall_ms_per_frame``: `SplitModel.decode_batch` of ``b`` copies, divided by ``b`` (no profiler;
  the batch sizes interleaved round by round, each round's median, then the median of the rounds);
- ``ops_ms_per_frame``: torch.profiler's self CPU time per frame, grouped by what the time is spent
  on (``GROUPS``; an op not named there counts under ``other``), from one more profiled pass.

Printed as one JSON object, also written to ``--out`` (default ``results/throughput/tail-ops.json``)::

    {"batches": [1, 4], "wall_ms_per_frame": {"1": ..., "4": ...},
     "gain": {"4": wall(1) / wall(4)}, "ops_ms_per_frame": {"1": {"conv_per_image": ..., ...}, ...},
     "op_gain": {"4": {"conv_per_image": ..., ...}}, ...}

``gain`` is the frames/s one worker gains from the batch; ``op_gain`` the same per group, which
says where the gain comes from and where none is to be had; ``convolution_calls_per_batch`` how
many convolutions of one `decode_batch` call took each path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMAGE = ROOT / "samples" / "people" / "000000000389.jpg"
OUT = ROOT / "results" / "throughput" / "tail-ops.json"

# profiler op name -> group. torch runs a 1x1 convolution on one thread with batch < 16 as its own
# GEMM per image (ATen's `_slow_conv2d_forward`: its `use_mkldnn` rule), so that group's time per
# frame cannot fall with the batch; oneDNN's (`mkldnn_convolution`: depthwise, strided, 3x3) runs
# the batch as one call.
GROUPS = {
    "aten::_slow_conv2d_forward": "conv_per_image",
    "aten::thnn_conv2d": "conv_per_image",
    "aten::mkldnn_convolution": "conv_onednn",
    "aten::clamp": "activation",
    "aten::clamp_": "activation",
    "aten::hardtanh": "activation",
    "aten::hardtanh_": "activation",
    "aten::native_batch_norm": "norm",
    "torchvision::nms": "nms",
}
CONVOLUTIONS = ("aten::_slow_conv2d_forward", "aten::mkldnn_convolution")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def measure(batches: list[int], rounds: int, calls: int) -> dict:
    """Wall time and profiled op time per frame of the served tail, per batch size."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from split.fusion import edge_form
    from split.images import load_image
    from split.recipes import build, default_recipe

    torch.set_num_threads(1)  # one thread per worker, as the servers run (bench/throughput.py)
    model = build(default_recipe().name)[0]
    payload = model.encode_message(load_image(IMAGE))
    edge_form(model)
    for b in batches:  # first-call costs (oneDNN primitives, allocator) out of the way
        model.decode_batch([payload] * b)

    def per_frame(b: int) -> float:
        times = []
        for _ in range(max(1, calls // b)):
            t0 = time.perf_counter()
            model.decode_batch([payload] * b)
            times.append((time.perf_counter() - t0) * 1e3 / b)
        return statistics.median(times)

    wall: dict[int, list[float]] = {b: [] for b in batches}
    for r in range(rounds):
        for b in batches if r % 2 == 0 else batches[::-1]:  # alternate the order: drift hits all alike
            wall[b].append(per_frame(b))
            print(json.dumps({"round": r, "batch": b, "wall_ms_per_frame": round(wall[b][-1], 3)}),
                  file=sys.stderr, flush=True)

    ops: dict[int, dict[str, float]] = {}
    conv_calls: dict[int, dict[str, float]] = {}
    for b in batches:
        n = max(1, calls // b)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                model.decode_batch([payload] * b)
        groups: dict[str, float] = {}
        for event in prof.key_averages():
            key = GROUPS.get(event.key, "other")
            groups[key] = groups.get(key, 0.0) + event.self_cpu_time_total / 1e3 / (n * b)
            if event.key in CONVOLUTIONS:  # how many convolutions take each path, per decode_batch call
                conv_calls.setdefault(b, {})[event.key] = event.count / n
        ops[b] = {k: round(v, 3) for k, v in sorted(groups.items())}

    first = batches[0]
    med = {b: statistics.median(v) for b, v in wall.items()}
    return {
        "model": default_recipe().name, "torch_threads": torch.get_num_threads(), "rounds": rounds,
        "calls_per_point": calls, "batches": batches,
        "wall_ms_per_frame": {str(b): round(m, 3) for b, m in med.items()},
        "wall_rounds": {str(b): [round(x, 3) for x in v] for b, v in wall.items()},
        "gain": {str(b): round(med[first] / med[b], 3) for b in batches[1:]},
        "ops_ms_per_frame": {str(b): g for b, g in ops.items()},
        "convolution_calls_per_batch": {str(b): c for b, c in conv_calls.items()},
        "op_gain": {str(b): {k: round(ops[first][k] / v, 3) for k, v in ops[b].items() if v > 0 and k in ops[first]}
                    for b in batches[1:]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=_ints, default=[1, 4], help="batch sizes, comma-separated; the first is the base")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of wall-time measurement")
    p.add_argument("--calls", type=int, default=40, help="frames per point and round")
    p.add_argument("--out", type=Path, default=OUT, help="JSON to write as well as print")
    args = p.parse_args(argv)
    if len(args.batches) < 2 or not all(1 <= b <= 64 for b in args.batches):
        p.error("--batches needs two or more sizes in 1..64")
    if not (1 <= args.rounds <= 20 and 1 <= args.calls <= 1000):
        p.error("--rounds must be in 1..20 and --calls in 1..1000")
    result = measure(args.batches, args.rounds, args.calls)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
