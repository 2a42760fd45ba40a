"""``splitedge fleet``: N devices on one edge, swept over N, with and without the edge-load feedback.

Writes ``fleet.csv`` (one row per N and feedback setting), ``fleet.png`` (median e2e against N) and
``knee.json`` (where the median doubles, for each setting, and the run's settings). Every input is
checked before the first simulated frame, so a typo costs one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

from split.cli_util import add_auto_switches, add_edge_load_switch, fail

from .cli import _OneLineParser, _expand_traces
from .edge_queue import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WAIT_MS

__all__ = ["fleet_main"]

PROG = "splitedge fleet"


def _parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog=PROG, description="N devices (each the real session driver and controller, on its own "
                                              "trace-driven uplink) sharing one batching edge; writes fleet.csv, "
                                              "fleet.png and knee.json to --out.")
    p.add_argument("--devices", default="1,10,100,1000", metavar="N,N,...",
                   help="fleet sizes to sweep (default 1,10,100,1000)")
    p.add_argument("--trace", required=True, action="append", metavar="SPEC",
                   help="uplink traces, repeatable: a directory (every trace in it) or a spec as for `splitedge "
                        "simulate`; device i gets trace i mod T, from a random point in it")
    p.add_argument("--device-profile", required=True, metavar="P.json", help="`splitedge profile` JSON of the device")
    p.add_argument("--edge-profile", required=True, metavar="P.json", help="`splitedge profile` JSON of the edge")
    p.add_argument("--model", default=None, help="check both profiles were measured for this model")
    p.add_argument("--size", default=None, help="profile input size key (default: the profiles' own)")
    p.add_argument("--device-slowdown", type=float, default=1.0, metavar="K", help="device K times slower (default 1)")
    p.add_argument("--fps", type=float, default=1.0, help="each device's camera rate (default 1)")
    p.add_argument("--frames", type=int, default=120, help="frames per device (default 120)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way propagation delay (default 20)")
    p.add_argument("--edge-curve", default=None, metavar="F.json",
                   help='batch size -> ms per batch: {"batch_ms": {"1": ms, "2": ms, ...}} (or per part: '
                        '{"batch_ms": {"tail": {...}, "full": {...}}}, or bench/throughput.py --curve\'s curve.json); '
                        "its shape scales the edge profile's one-frame times (default: results/throughput/curve.json "
                        "if present, else no batching gain)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"the edge's largest batch (default {DEFAULT_BATCH_SIZE}, as `splitedge serve`)")
    p.add_argument("--batch-wait-ms", type=float, default=DEFAULT_BATCH_WAIT_MS,
                   help=f"longest a frame waits for others to join its batch (default {DEFAULT_BATCH_WAIT_MS:g}, "
                        "as `splitedge serve`)")
    p.add_argument("--edge-workers", type=int, default=1, help="batches the edge computes at once (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the devices' trace offsets and camera phases")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    add_auto_switches(p, "each device", "run each remote frame locally too while its result is awaited "
                                        "(default: on)")
    add_edge_load_switch(p, "each device", default=None,
                         help_="fold the queueing the edge reports into the predicted remote cost (default: sweep "
                               "both, on and off; --edge-load-feedback or --no-edge-load-feedback: only that one)")
    return p


def _devices(spec: str) -> list[int]:
    try:
        ns = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--devices must be integers, comma-separated (e.g. 1,10,100), got {spec!r}") from None
    if not ns or min(ns) < 1 or max(ns) > 100_000:
        raise ValueError(f"--devices must be integers in 1..100000, got {spec!r}")
    return sorted(set(ns))


def _setup(args: argparse.Namespace):
    """Everything loaded and checked; ValueError with a one-line message otherwise."""
    from mobile_client.controller import Controller
    from mobile_client.costs import costs_from_profiles, read_profile, scaled

    from .edge_queue import EdgeConfig, default_edge_curve, load_edge_curve
    from .fleet import FleetConfig
    from .trace_files import load_trace

    ns = _devices(args.devices)
    for flag, value in (("--fps", args.fps), ("--device-slowdown", args.device_slowdown)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{flag} must be positive, got {value:g}")
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if not (args.delay_ms >= 0 and math.isfinite(args.delay_ms)):
        raise ValueError(f"--delay-ms must be >= 0, got {args.delay_ms:g}")
    if args.batch_size < 1 or args.edge_workers < 1:
        raise ValueError("--batch-size and --edge-workers must be at least 1")
    if not 0 <= args.batch_wait_ms <= 10_000:
        raise ValueError(f"--batch-wait-ms must be in 0..10000, got {args.batch_wait_ms:g}")
    device, edge = read_profile(args.device_profile), read_profile(args.edge_profile)
    models = {device.get("model"), edge.get("model")}
    if args.model is not None and models != {args.model}:
        raise ValueError(f"the profiles were measured for {', '.join(map(repr, sorted(map(str, models))))}, "
                         f"not --model {args.model!r}")
    if len(models) != 1:
        raise ValueError(f"--device-profile and --edge-profile are of different models ({sorted(map(str, models))})")
    try:
        costs = scaled(costs_from_profiles(device, edge, args.size), args.device_slowdown)
    except KeyError as exc:
        raise ValueError(f"profile is missing {exc.args[0]!r} (re-make it with `splitedge profile`)") from None
    curve = load_edge_curve(args.edge_curve) if args.edge_curve else default_edge_curve()
    traces = [trace for _, trace in _expand_traces(args.trace, load_trace)]
    feedbacks = (True, False) if args.edge_load_feedback is None else (bool(args.edge_load_feedback),)
    config = FleetConfig(costs, EdgeConfig(curve, args.batch_size, args.batch_wait_ms, args.edge_workers),
                         fps=args.fps, frames=args.frames, delay_ms=args.delay_ms, seed=args.seed,
                         controller_factory=lambda c, fb: Controller(c, hedge=args.hedge, link_probes=args.link_probes,
                                                                     edge_load=fb))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    return ns, feedbacks, traces, config, out, models.pop()


def fleet_main(argv: list[str]) -> int:
    """Run ``splitedge fleet ARGV...``; the process exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        ns, feedbacks, traces, config, out, model = _setup(args)
    except ValueError as exc:
        return fail(PROG, str(exc))

    from tqdm import tqdm

    from .fleet import devices_simulated, knee, sweep_fleet
    from .plots import plot_fleet

    print(f"edge batching: {config.edge.curve.source}; batch <= {config.edge.batch_size}, wait "
          f"{config.edge.batch_wait_ms:g} ms, {config.edge.workers} worker(s)", file=sys.stderr)
    total = sum(devices_simulated(n, len(traces)) for n in ns) * len(feedbacks) * config.frames
    started = time.perf_counter()
    with tqdm(total=total, desc="fleet", unit="frame", unit_scale=True, file=sys.stderr) as bar:
        rows = sweep_fleet(traces, ns, config, feedbacks, progress=bar.update)
    elapsed = time.perf_counter() - started

    with open(out / "fleet.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(rows[0].CSV_COLUMNS)
        w.writerows(r.csv_row() for r in rows)
    knees = [knee(rows, fb) for fb in feedbacks]
    setting = (f"{model}, device x{args.device_slowdown:g}, {args.fps:g} fps, {args.frames} frames, "
               f"{len(traces)} traces; edge batch <= {config.edge.batch_size}, {config.edge.batch_wait_ms:g} ms")
    plot_fleet(rows, knees, out / "fleet.png", title=f"Median e2e against devices on one edge\n{setting}")
    (out / "knee.json").write_text(json.dumps({
        "knee": {("on" if k["feedback"] else "off"): k for k in knees},
        "definition": "smallest N where the median e2e reaches twice the median at the smallest N swept, "
                      "interpolated on log N between sweep points",
        "command": "splitedge fleet " + " ".join(shlex.quote(a) for a in argv),
        "edge_curve": config.edge.curve.source,
        "edge_curve_relative": {part: {str(b): round(v, 4) for b, v in pts.items()}
                                for part, pts in config.edge.curve.relative.items()},
        "costs_ms_bytes": dataclasses.asdict(config.costs),
        "traces": len(traces),
        "elapsed_s": round(elapsed, 1),
    }, indent=1) + "\n")

    print(f"{'N':>6} {'feedback':>8} {'median':>8} {'p95':>8} {'mean':>8} {'local':>6} {'split':>6} {'offload':>7} "
          f"{'util':>5} {'queue':>9}  (ms; queue: median over the frames the edge computed)")
    for r in rows:
        print(f"{r.devices:>6} {'on' if r.feedback else 'off':>8} {r.median_e2e_ms:8.0f} {r.p95_e2e_ms:8.0f} "
              f"{r.mean_e2e_ms:8.0f} {r.share_local:6.2f} {r.share_split:6.2f} {r.share_offload:7.2f} "
              f"{r.edge_utilization:5.2f} {r.median_queue_ms:9.0f}")
    for k in knees:
        where = f"N ≈ {k['knee_devices']:g} ({k['note']})" if k["knee_devices"] is not None else k["note"]
        print(f"knee, feedback {'on' if k['feedback'] else 'off'}: {where}; median at N={k['base_devices']} "
              f"{k['base_median_e2e_ms']:.0f} ms")
    print(f"edge batching: {config.edge.curve.source}")
    print(f"wrote fleet.csv, fleet.png, knee.json to {out} in {elapsed:.1f} s")
    return 0
