"""The default's resize on the device: `python bench/resize.py [--repeat N] > results/resize/resize.json`.

The pedestrian SSDLite resizes every frame to 300x300 as TensorFlow's legacy bilinear resize does
(no half-pixel centres), in every mode: local, split (before the head) and offload (before JPEG).
`split.models.ssdlite_tf.tf_legacy_resize` gathers each source row once and interpolates across,
then down; the form it replaced gathered every neighbour separately (kept here as `per_neighbour`,
the reference). Both run on the same real frames, interleaved call by call, one torch thread, and
must agree bit for bit (the bench stops if not). Printed, as one JSON object: per frame size, the
median ms of each and their ratio, and OpenCV's own bilinear resize of the same frame for scale
(it uses half-pixel centres and fixed-point weights, so it is not a substitute).
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


def per_neighbour(image, size):
    """The former `tf_legacy_resize`: four neighbour gathers per output value."""
    import torch

    h, w = image.shape[-2:]

    def taps(n_in: int, n_out: int):
        src = torch.arange(n_out, dtype=torch.float32) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        return lo, (lo + 1).clamp(max=n_in - 1), (src - lo).to(image.dtype)

    y0, y1, wy = taps(h, size[0])
    x0, x1, wx = taps(w, size[1])
    top, bottom = image[:, y0], image[:, y1]
    top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * wx
    bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * wx
    return top + (bottom - top) * wy[:, None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=50, help="timed calls of each, per frame size (1..1000)")
    args = p.parse_args(argv)
    if not 1 <= args.repeat <= 1000:
        p.error("--repeat must be in 1..1000")
    import cv2
    import torch

    from split.images import read_rgb
    from split.models.ssdlite_tf import SIZE, tf_legacy_resize

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rgb = read_rgb(IMAGE)
    rows = []
    for h, w in ((480, 640), (720, 1280)):
        frame = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        image = torch.from_numpy(frame).permute(2, 0, 1).float()  # 0..255, as the transform resizes it
        if not torch.equal(tf_legacy_resize(image, (SIZE, SIZE)), per_neighbour(image, (SIZE, SIZE))):
            raise SystemExit(f"resize: the two forms differ on a {h}x{w} frame")
        calls = {"row_gather_ms": lambda: tf_legacy_resize(image, (SIZE, SIZE)),
                 "per_neighbour_ms": lambda: per_neighbour(image, (SIZE, SIZE)),
                 "opencv_bilinear_ms": lambda: cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)}
        times: dict[str, list[float]] = {k: [] for k in calls}
        for f in calls.values():
            f()  # warm-up
        for _ in range(args.repeat):
            for k, f in calls.items():
                t = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t) * 1e3)
        row = {"frame": f"{h}x{w}", **{k: round(statistics.median(v), 3) for k, v in times.items()}}
        row["per_neighbour_over_row_gather"] = round(row["per_neighbour_ms"] / row["row_gather_ms"], 2)
        rows.append(row)
    print(json.dumps({"size": SIZE, "repeat": args.repeat, "torch_threads": 1, "sizes": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
