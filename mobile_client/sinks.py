"""Result sinks: one JSON line per frame, annotated frames, and the per-mode summary."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

__all__ = ["AnnotatedWriter", "JsonlWriter", "summary_rows", "format_summary"]


class JsonlWriter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = self.path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class AnnotatedWriter:
    """Draws boxes above `min_score` on the frame and saves it as JPEG, one file per frame."""

    def __init__(self, folder: str | Path, min_score: float = 0.3, names: dict[int, str] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.min_score = min_score
        self.names = names or {}  # label -> class name drawn on the box; the bare label when missing

    def write(self, rgb: np.ndarray, record: dict[str, Any]) -> Path:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        for det in record.get("detections", []):
            if det.get("box") is None or det["score"] < self.min_score:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
            cv2.rectangle(bgr, (x1, y1), (x2, y2), (0, 200, 0), 2)
            name = self.names.get(det["label"], det["label"])
            cv2.putText(bgr, f"{name} {det['score']:.2f}", (x1, max(y1 - 4, 10)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 200, 0), 1, cv2.LINE_AA)
        label = f"{record['mode']} e2e {record['e2e_ms']:.0f} ms {record['payload_bytes']} B"
        cv2.putText(bgr, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 255), 1, cv2.LINE_AA)
        out = self.folder / f"{record['frame_id']:06d}_{Path(record['source'].split('#')[0]).stem}.jpg"
        cv2.imwrite(str(out), bgr)
        return out


def skipped_record(frame: Any) -> dict[str, Any]:
    """The line of a frame a real-time camera skipped (a newer one was waiting when the device got free)."""
    return {"frame_id": frame.index, "source": frame.source, "skipped": True}


def realtime_summary(records: list[dict[str, Any]]) -> str:
    """Served frames of a real-time run: how many, at what rate, their e2e and age (capture to result) p50/p95."""
    served = [r for r in records if not r.get("skipped")]
    if not served or "age_ms" not in served[0]:
        return ""
    span_s = max(r["t_s"] + r["e2e_ms"] / 1e3 for r in served) - min(r["t_s"] for r in served)

    def pct(key: str, q: float) -> float:
        values = sorted(r[key] for r in served)
        return values[min(len(values) - 1, int(q * len(values)))]

    fps = len(served) / span_s if span_s > 0 else float("inf")
    return (f"real time: {len(served)} of {len(records)} frames served ({fps:.2f} fps); e2e p50 {pct('e2e_ms', 0.5):.1f} "
            f"p95 {pct('e2e_ms', 0.95):.1f} ms; age p50 {pct('age_ms', 0.5):.1f} p95 {pct('age_ms', 0.95):.1f} ms")


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mode: frames, median e2e ms, median payload bytes, median head ms, errors (skipped frames left out)."""
    by_mode: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if not r.get("skipped"):
            by_mode[r["mode"]].append(r)
    rows = []
    for mode in sorted(by_mode):
        rs = by_mode[mode]
        rows.append({
            "mode": mode,
            "frames": len(rs),
            "median_e2e_ms": statistics.median(r["e2e_ms"] for r in rs),
            "median_payload_bytes": statistics.median(r["payload_bytes"] for r in rs),
            "median_head_ms": statistics.median(r["head_ms"] for r in rs),
            "errors": sum(1 for r in rs if r.get("error")),
        })
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    header = f"{'mode':<8} {'frames':>6} {'median e2e ms':>14} {'median payload B':>17} {'median head ms':>15} {'errors':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['mode']:<8} {r['frames']:>6} {r['median_e2e_ms']:>14.1f} "
                     f"{r['median_payload_bytes']:>17.0f} {r['median_head_ms']:>15.1f} {r['errors']:>6}")
    return "\n".join(lines)
