"""Markdown table of `auto` against the oracle and the best fixed policy, per trace, from
`splitedge simulate` output folders (their summary.csv), as the README shows it.

    python scripts/trace_table.py "results/simulate-fps1=1 fps" "results/simulate-fps10=10 fps"

Ratios of mean end-to-end latency; misses of the targets (auto/oracle <= 1.10,
auto/best fixed <= 1.00) in bold. The first folder names each trace's best fixed policy.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

FIXED = ("local", "split", "offload")


def read(folder: str) -> dict[str, dict[str, float]]:
    means: dict[str, dict[str, float]] = defaultdict(dict)
    with open(Path(folder) / "summary.csv", newline="") as f:
        for row in csv.DictReader(f):
            means[row["trace"]][row["policy"]] = float(row["mean_e2e_ms"])
    return means


def short(trace: str) -> str:
    return re.sub(r"^trace_(\d+)_http---", r"\1_", trace)


def main(folders: list[str]) -> int:
    if not folders:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = [(f.partition("=")[2] or Path(f).name, read(f.partition("=")[0])) for f in folders]  # DIR[=LABEL]
    head = ["trace", f"best fixed ({runs[0][0]})"]
    for name, _ in runs:
        head += [f"auto / oracle, {name}", f"auto / best fixed, {name}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    met = {name: [0, 0] for name, _ in runs}
    for trace in sorted(runs[0][1]):
        cells = [short(trace), min(FIXED, key=lambda p: runs[0][1][trace][p])]
        for name, means in runs:
            m = means[trace]
            vs_oracle, vs_best = m["auto"] / m["oracle"], m["auto"] / min(m[p] for p in FIXED)
            met[name][0] += vs_oracle <= 1.10
            met[name][1] += vs_best <= 1.0
            cells += [f"**{vs_oracle:.3f}**" if vs_oracle > 1.10 else f"{vs_oracle:.3f}",
                      f"**{vs_best:.3f}**" if vs_best > 1.0 else f"{vs_best:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(runs[0][1])
    lines.append("")
    lines.append(f"met (of {n}): " + "; ".join(f"{name} a/o {o}, a/bf {b}" for name, (o, b) in met.items())
                 + " (a bold 1.000 misses by under 0.05 %)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
