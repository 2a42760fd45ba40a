"""Emulator vs link model: the time to move a known payload through `splitedge emulate`'s proxy
against the Link model's prediction, as JSON under results/.

    .venv/bin/python scripts/emulator_agreement.py [--repeat 3] [--traces ../shared/data/traces] \
        [--out results/emulator/agreement.json]

Runs the cases tests/test_emulator.py asserts (within 10 %): 250 kB over `const:2` and over the
rate step `steps:0.3@4,0.3@1` (20 ms one-way delay), 250 kB over the mahimahi Verizon LTE uplink
and four concurrent 60 kB uploads over `const:2` (10 ms). Each run starts a real emulator and a
sink on 127.0.0.1 (no other address; `simulators.emulator.time_uploads`), `--repeat` times per
case, one after the other. Per run: measured ms (the slowest connection's upload-to-ack time),
predicted ms, relative error; per case, the median run by error. Wall-clock timing on a shared
machine: the runs' spread is part of the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
from pathlib import Path

from simulators.emulator import time_uploads

ROOT = Path(__file__).resolve().parents[1]

# name, trace spec ({traces}: the --traces folder), bytes per connection, one-way delay ms, connections
CASES = [
    ("const:2", "const:2", 250_000, 20.0, 1),
    ("rate step", "steps:0.3@4,0.3@1", 250_000, 20.0, 1),
    ("mahimahi Verizon LTE uplink", "mahimahi:{traces}/mahimahi/Verizon-LTE-short.up", 250_000, 10.0, 1),
    ("four concurrent connections", "const:2", 60_000, 10.0, 4),
]


def measure(spec: str, nbytes: int, delay_ms: float, connections: int, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        timing = asyncio.run(time_uploads(spec, nbytes, delay_ms, connections))
        runs.append({"measured_ms": round(max(timing.measured_s) * 1e3, 1),
                     "predicted_ms": round(timing.predicted_s * 1e3, 1),
                     "error": round(timing.error, 4)})
    median = statistics.median_low(r["error"] for r in runs)
    return {"median_run": next(r for r in runs if r["error"] == median), "runs": runs}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--traces", default="../shared/data/traces",
                        help="the shared traces folder (for the mahimahi case), relative to the repo root")
    parser.add_argument("--out", default="results/emulator/agreement.json")
    args = parser.parse_args(argv)
    traces = ROOT / args.traces
    if not (traces / "mahimahi" / "Verizon-LTE-short.up").is_file():
        print(f"{traces}/mahimahi/Verizon-LTE-short.up not found (--traces)", file=sys.stderr)
        return 2
    cases = []
    for name, spec, nbytes, delay_ms, connections in CASES:
        result = measure(spec.format(traces=traces), nbytes, delay_ms, connections, args.repeat)
        cases.append({"case": name, "trace": spec.format(traces=args.traces), "bytes": nbytes,
                      "connections": connections, "delay_ms": delay_ms, **result})
        best = result["median_run"]
        spread = ", ".join(f"{r['error']:+.1%}" for r in result["runs"])
        print(f"{name}: measured {best['measured_ms']} ms, predicted {best['predicted_ms']} ms "
              f"({best['error']:+.1%}; runs {spread})")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python scripts/emulator_agreement.py", *map(shlex.quote, argv)]),
        "address": "127.0.0.1",
        "cases": cases,
    }, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
