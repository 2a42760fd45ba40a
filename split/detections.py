"""Model outputs as plain detections: the one conversion every reader of `Outputs` uses.

`Outputs` (`split.adapters`) holds tensors: `boxes` [N, 4] (x1, y1, x2, y2 in original pixels;
detectors only), `labels` [N] and `scores` [N]. The edge turns them into wire detections, the
device into result lines, evaluation into COCO results: all read them through `detection_rows`.
A classifier's "detections" are its top-k labels, without boxes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union


__all__ = ["Row", "detection_rows", "to_detections"]

Row = tuple[Union[list[float], None], int, float]  # (box or None, label, score)


def _values(v: Any) -> list[Any]:
    """A tensor's or an array's values (both have `tolist`), or a sequence's."""
    return v.tolist() if hasattr(v, "tolist") else list(v)


def detection_rows(outputs: Mapping[str, Any], family: str) -> list[Row]:
    """(box [x1, y1, x2, y2] or None for a classifier, label, score) per detection, as Python
    numbers. `outputs` holds tensors, or plain sequences (e.g. detections read off the wire)."""
    labels, scores = _values(outputs["labels"]), _values(outputs["scores"])
    boxes = _values(outputs["boxes"]) if family == "detector" else [None] * len(labels)
    return [(list(b) if b is not None else None, int(l), float(s)) for b, l, s in zip(boxes, labels, scores)]


def to_detections(outputs: Mapping[str, Any], family: str,
                  min_score: float = 0.0) -> list[dict[str, Any]]:
    """JSON-able detections with score >= `min_score`: {"box": [x1, y1, x2, y2] rounded to 2
    decimals (None for a classifier), "label": int, "score": rounded to 5 decimals}."""
    return [{"box": [round(v, 2) for v in b] if b is not None else None, "label": l, "score": round(s, 5)}
            for b, l, s in detection_rows(outputs, family) if s >= min_score]
