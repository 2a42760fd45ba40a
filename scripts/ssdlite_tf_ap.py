"""Person AP of the SSDLite port beside TensorFlow's own, on the images of the TF reference.

Reads `tests/data/ssdlite_tf_reference.npz` (TF's detections, from `scripts/make_tf_reference.py`),
runs the port (the converted weights: `make weights`) on the same images, and writes
`results/ssdlite_tf/ap.json`: pycocotools person AP/AP50 (catIds=[1], boxes in original pixels)
of both, and the largest differences of the raw outputs.

Usage: .venv/bin/python scripts/ssdlite_tf_ap.py [--coco ../shared/data/images/coco128] [--out results/ssdlite_tf/ap.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from split.images import load_image
from split.models import SSDLiteTF
from split.models.convert_tf import cached_checkpoint, checkpoint_path
from split.train.coco import CocoAnnotations
from split.train.evaluation import coco_map, coco_results

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco", default=str(ROOT.parent / "shared/data/images/coco128"))
    ap.add_argument("--reference", default=str(ROOT / "tests/data/ssdlite_tf_reference.npz"))
    ap.add_argument("--out", default=str(ROOT / "results/ssdlite_tf/ap.json"))
    args = ap.parse_args()
    if cached_checkpoint() is None:
        print(f"ssdlite_tf_ap: error: converted weights not cached ({checkpoint_path()}): run `make weights`", file=sys.stderr)
        return 1
    ref, images = np.load(args.reference), Path(args.coco) / "train2017"
    coco = CocoAnnotations.read(Path(args.coco) / "annotations/instances_train2017.json")
    model = SSDLiteTF().eval()
    model.load_state_dict(torch.load(cached_checkpoint(), map_location="cpu", weights_only=True)["model"])
    ids = [coco.ids_by_name[n] for n in ref["names"]]
    port, tf, raw = [], [], {"class_logits": 0.0, "box_encodings": 0.0}
    with torch.inference_mode():
        for i, name in enumerate(ref["names"]):
            image = load_image(images / name)
            port.append(model([image])[0])
            h, w = image.shape[-2:]
            n = int(ref["det_count"][i])
            boxes = ref["det_boxes"][i, :n][:, [1, 0, 3, 2]] * np.array([w, h, w, h])
            tf.append({"boxes": torch.from_numpy(boxes).float(), "scores": torch.from_numpy(ref["det_scores"][i, :n]),
                       "labels": torch.ones(n, dtype=torch.int64)})
            if name in ref["raw_names"]:
                j = list(ref["raw_names"]).index(name)
                batch, _ = model.transform([image])
                head = model.head(list(model.backbone(batch.tensors).values()))
                ours = {"class_logits": head["cls_logits"][0], "box_encodings": head["bbox_regression"][0][:, [1, 0, 3, 2]]}
                for key, value in ours.items():
                    raw[key] = max(raw[key], float(np.abs(value.numpy() - ref[key][j]).max()))
    result = {"images": len(ids), "raw_images": len(ref["raw_names"]), "max_abs_diff": raw,
              "detections_per_image_equal_count": sum(len(p["scores"]) == len(t["scores"]) for p, t in zip(port, tf))}
    for label, outputs in (("tensorflow", tf), ("port", port)):
        m, m50 = coco_map(coco.index, coco_results(outputs, ids), ids, [1])
        result[label] = {"person_ap": round(m, 4), "person_ap50": round(m50, 4)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
