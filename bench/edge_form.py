"""The edge's form against the plain model, per recipe: `python bench/edge_form.py [--recipes A,B] [--repeat N]`.

`split.fusion.edge_form` folds BatchNorm into the convolutions and lays the weights out
channels-last; `bench/throughput.py --compare-plain` measures what that buys a whole server on
the default recipe. This measures it per recipe, in one process: the tail of a split frame and
the full model of an offload frame (`SplitModel.decode_message`, what the edge computes), of a
real image (`samples/people`), on a plain model and on a second one, built alike, in the edge's
form, one torch thread, the two interleaved call by call so the machine's noise hits both alike. Printed, as one
JSON object::

    {"recipes": [{"recipe": ..., "weights": ..., "folded": N,
                  "tail": {"plain_ms": ..., "edge_ms": ..., "speedup": ...}, "offload": {...}}, ...],
     "repeat": N, "torch_threads": 1}

Weights are what `build` gives (`weights` says which): the recipe's where they are installed (the
default's, Faster R-CNN's, MobileNetV2's after `make weights`), else random initialisation. The
convolutions cost the same either way; a detector's box decoding and NMS do not (they depend on
how many boxes score), so compare a detector's rows only across runs with the same weights.
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
DEFAULT = "ssdlite300_mobilenet_v2_person,mobilenet_v2,mobilenet_v3_large,resnet50,fasterrcnn_mobilenet_v2_320_fpn"


def _interleaved(plain, edge, payload, repeat: int) -> dict:
    times: dict[str, list[float]] = {"plain": [], "edge": []}
    pair = [("plain", plain), ("edge", edge)]
    for _, model in pair:  # first-call costs out of the way
        model.decode_message(payload)
    for i in range(repeat):
        for key, model in pair if i % 2 == 0 else pair[::-1]:  # each goes first half the time
            t0 = time.perf_counter()
            model.decode_message(payload)
            times[key].append((time.perf_counter() - t0) * 1e3)
    p, e = statistics.median(times["plain"]), statistics.median(times["edge"])
    return {"plain_ms": round(p, 2), "edge_ms": round(e, 2), "speedup": round(p / e, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default=DEFAULT, help="comma-separated recipe names (splitedge models)")
    p.add_argument("--repeat", type=int, default=20, help="timed calls of each form per frame kind (1..1000)")
    args = p.parse_args(argv)
    if not 1 <= args.repeat <= 1000:
        p.error("--repeat must be in 1..1000")
    from split.recipes import build, get_recipe
    from split.weights import WeightsError

    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    if not names:
        p.error("--recipes: no recipe named (splitedge models lists them)")
    for name in names:  # every name before any build
        try:
            get_recipe(name)
        except KeyError as exc:
            p.error(f"--recipes: {exc.args[0]}")
    import torch

    from split.fusion import edge_form
    from split.images import load_image

    image = load_image(IMAGE)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in names:
            try:
                (plain, source), (edge, _) = build(name), build(name)  # the same weights (seeded)
            except (ValueError, WeightsError) as exc:
                p.error(f"--recipes: {name}: {exc}")
            folded = edge_form(edge)
            split_frame, offload_frame = plain.encode_message(image), plain.encode_image(image, 90)
            if split_frame is None:
                p.error(f"--recipes: {name}: its prefilter drops {IMAGE.name}, so there is no split frame to time")
            with torch.inference_mode():
                rows.append({"recipe": plain.name, "weights": source, "folded": folded,
                             "tail": _interleaved(plain, edge, split_frame, args.repeat),
                             "offload": _interleaved(plain, edge, offload_frame, args.repeat)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print(json.dumps({"recipes": rows, "repeat": args.repeat, "torch_threads": torch.get_num_threads()},
                         indent=1))
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
