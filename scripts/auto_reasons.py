"""What `auto` did, per trace: frames and mean end-to-end latency per (mode, reason), from frames.csv.

    python scripts/auto_reasons.py results/controller/fasterrcnn-fps1-no-link-probes [...]

Writes FOLDER/auto_reasons.csv (trace, mode, reason, frames, mean_e2e_ms) next to the
folder's summary.csv, so that a count quoted in docs/controller.md ("102 of 600 frames
were hedged probes that local won") lives in a small file under results/ while the large
frames.csv stays out of git. `reason` is the controller's (`Decision.reason`), or `hedge`
/ `deadline` where the simulator served the frame locally after all.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

COLUMNS = ("trace", "mode", "reason", "frames", "mean_e2e_ms")


def count_reasons(frames: Iterable[tuple[str, str, str, float]]) -> list[tuple[str, str, str, int, str]]:
    """(trace, mode, reason, e2e ms) per frame -> one row per (trace, mode, reason), in first-seen order."""
    totals: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for trace, mode, reason, e2e_ms in frames:
        total = totals[(trace, mode, reason)]
        total[0] += 1
        total[1] += e2e_ms
    return [(*key, int(n), f"{s / n:.3f}") for key, (n, s) in totals.items()]


def write_reasons(path: Path, rows: list[tuple[str, str, str, int, str]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(rows)


def main(folders: list[str]) -> int:
    if not folders:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for folder in map(Path, folders):
        with open(folder / "frames.csv", newline="") as fh:
            frames = [(r["trace"], r["mode"], r["reason"], float(r["e2e_ms"]))
                      for r in csv.DictReader(fh) if r["policy"] == "auto"]
        write_reasons(folder / "auto_reasons.csv", count_reasons(frames))
        print(f"wrote {folder / 'auto_reasons.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
