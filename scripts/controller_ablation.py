"""Controller settings that `splitedge simulate` has no flag for, on the same traces and costs.

    python scripts/controller_ablation.py --costs results/simulate-fps1/run.json --fps 2 \\
        --trace ../shared/data/traces --out results/controller/ssdlite-fps2-deadlines \\
        no-hedge-slack-0.5 no-hedge-slack-1.0 no-hedge-slack-1.5 no-hedge-no-deadline

Each named variant (see VARIANTS) builds `auto`'s controller with other settings through
the simulator's Python API (`SimConfig.controller_factory`) and runs all five policies on
every trace, as `splitedge simulate` does (every policy's frames start at 0, so the fixed
policies' rows are the same for every variant; they are re-run so that each summary.csv is
complete). The costs are the ones a `splitedge simulate` run recorded in its run.json (`costs_ms_bytes`:
profiles already scaled by the device slowdown), so the `default` variant reproduces that
run's summary.csv rows exactly.

Writes, under --out:

- VARIANT/summary.csv: summary.csv's columns, as `splitedge simulate` writes them
  (`python scripts/trace_table.py OUT/VARIANT` reads it);
- VARIANT/auto_reasons.csv: frames and mean latency per (trace, mode, reason) of `auto`;
- variants.csv: per variant, the mean and the worst auto/oracle and auto/best-fixed over
  the traces (and which trace is the worst), how many traces meet the targets (<= 1.10,
  <= 1.00), how often the mode that served auto's frame changed from one frame to the next
  (all traces together; a hedge that local won counts as local), and the frames given up
  on (a missed deadline, or a hedge that local won) with how many of those had their
  result back less than a local run later (where waiting would have been faster; a result
  still on its way when the run ends counts as not back);
- run.json: the command, the settings of each variant, the costs used.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shlex
import sys
import time
from collections import deque
from pathlib import Path

from auto_reasons import count_reasons, write_reasons
from trace_table import FIXED, read, short

from mobile_client import Controller, ModeCosts
from simulators.experiment import POLICIES, SimConfig, Summary, simulate, summarize, write_summary_csv
from simulators.trace_files import load_trace, load_trace_file, trace_files_in
from simulators.traces import TraceError

# name -> (Controller keyword arguments, whether the RTT measured at connect reaches the controller)
VARIANTS: dict[str, tuple[dict, bool]] = {
    "default": ({}, True),
    "hysteresis-0": ({"hysteresis": 0.0}, True),
    "hysteresis-0.3": ({"hysteresis": 0.3}, True),
    "no-pings": ({}, False),
    "probe-interval-2.5": ({"probe_interval_s": 2.5}, True),
    "probe-interval-10": ({"probe_interval_s": 10.0}, True),
    "no-hedge-slack-0.5": ({"hedge": False, "deadline_slack": 0.5}, True),
    "no-hedge-slack-1.0": ({"hedge": False, "deadline_slack": 1.0}, True),
    "no-hedge-slack-1.5": ({"hedge": False, "deadline_slack": 1.5}, True),
    "no-hedge-no-deadline": ({"hedge": False, "deadline_factor": None}, True),
}


class _Observed(Controller):
    """The controller under test, counting what it is told about frames given up on.

    Given-up payloads travel one uplink in order, so their late results come back in
    the order they were given up on: each late result is matched with the oldest wait.
    """

    def __init__(self, costs: ModeCosts, pings: bool, **settings) -> None:
        super().__init__(costs, **settings)
        self.pings = pings
        self.waits: deque[float] = deque()
        self.given_up = 0
        self.back_within_local = 0

    def observe_rtt(self, rtt_s: float, now_s: float) -> None:
        if self.pings:
            super().observe_rtt(rtt_s, now_s)

    def missed(self, mode: str, nbytes: int, waited_s: float, now_s: float) -> None:
        self.given_up += 1
        self.waits.append(waited_s)
        super().missed(mode, nbytes, waited_s, now_s)

    def observe_late(self, mode: str, nbytes: int, total_s: float, server_s: float, now_s: float) -> None:
        if self.waits and total_s - self.waits.popleft() < self.costs.t_full_device_ms / 1e3:
            self.back_within_local += 1
        super().observe_late(mode, nbytes, total_s, server_s, now_s)


def load_traces(specs: list[str]) -> list[tuple[str, object]]:
    """(name, trace) for each spec; a folder stands for its trace files, as in `splitedge simulate`."""
    traces = []
    for spec in specs:
        folder = Path(spec)
        if not folder.is_dir():
            traces.append(load_trace(spec))
            continue
        for f in trace_files_in(folder):
            try:
                traces.append(load_trace_file(f))
            except TraceError as exc:
                print(f"skipping {f}: {exc}", file=sys.stderr)
    return [(t.name, t) for t in traces]


def run_variant(name: str, traces, base: dict, costs: ModeCosts) -> tuple[list[Summary], list, list[int]]:
    """Every policy on every trace with the variant's controller: summaries, auto's reasons, and its
    mode switches, frames given up on, and those back within a local run (summed over the traces)."""
    settings, pings = VARIANTS[name]
    made: list[_Observed] = []

    def factory(c: ModeCosts) -> _Observed:
        made.append(_Observed(c, pings, **settings))
        return made[-1]

    config = SimConfig(costs, controller_factory=factory, **base)
    summaries, frames, counts = [], [], [0, 0, 0]
    for label, trace in traces:
        for policy in POLICIES:
            made.clear()
            records = simulate(trace, policy, config)
            summaries.append(summarize(label, policy, records))
            if policy == "auto":
                frames += [(label, r.mode, r.reason, r.e2e_ms) for r in records]
                counts[0] += sum(a.mode != b.mode for a, b in zip(records, records[1:]))
                counts[1] += made[0].given_up
                counts[2] += made[0].back_within_local
    return summaries, count_reasons(frames), counts


def worst(folder: Path) -> list:
    """Mean and worst auto/oracle and auto/best-fixed over the traces (with the worst's trace), targets met."""
    means = read(str(folder))
    vs_oracle = {t: m["auto"] / m["oracle"] for t, m in means.items()}
    vs_best = {t: m["auto"] / min(m[p] for p in FIXED) for t, m in means.items()}
    o, b = max(vs_oracle, key=vs_oracle.get), max(vs_best, key=vs_best.get)
    return [f"{sum(vs_oracle.values()) / len(means):.4f}", f"{vs_oracle[o]:.3f}", short(o),
            f"{sum(vs_best.values()) / len(means):.4f}", f"{vs_best[b]:.3f}", short(b),
            sum(r <= 1.10 for r in vs_oracle.values()), sum(r <= 1.0 for r in vs_best.values())]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--costs", required=True, metavar="RUN.json",
                        help="run.json of a `splitedge simulate` run (its costs_ms_bytes)")
    parser.add_argument("--trace", required=True, action="append", metavar="SPEC")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    args = parser.parse_args(argv)

    costs = ModeCosts.from_dict(json.loads(Path(args.costs).read_text())["costs_ms_bytes"])
    traces = load_traces(args.trace)
    base = {"fps": args.fps, "frames": args.frames, "delay_ms": args.delay_ms}
    out = Path(args.out)
    started = time.perf_counter()
    table = []
    for name in args.variants:
        summaries, reasons, counts = run_variant(name, traces, base, costs)
        (out / name).mkdir(parents=True, exist_ok=True)
        write_summary_csv(out / name / "summary.csv", summaries)
        write_reasons(out / name / "auto_reasons.csv", reasons)
        table.append([name, *worst(out / name), *counts])
        print("  ".join(map(str, table[-1])))
    with open(out / "variants.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "mean_auto_oracle", "worst_auto_oracle", "worst_auto_oracle_trace",
                    "mean_auto_best_fixed", "worst_auto_best_fixed", "worst_auto_best_fixed_trace",
                    "met_oracle_1.10", "met_best_fixed_1.00", "switches", "given_up", "back_within_local"])
        w.writerows(table)
    (out / "run.json").write_text(json.dumps({
        "command": "python scripts/controller_ablation.py " + " ".join(shlex.quote(a) for a in argv),
        "variants": {name: {"controller": VARIANTS[name][0], "rtt_pings": VARIANTS[name][1]}
                     for name in args.variants},
        "costs_ms_bytes": dataclasses.asdict(costs),
        "traces": len(traces),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }, indent=1) + "\n")
    print(f"wrote {out}/variants.csv and a summary.csv per variant")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
