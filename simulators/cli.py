"""``splitedge`` subcommands owned by the simulators package.

The top-level dispatcher (in ``split``) calls :func:`main` with the
subcommand name and its arguments, so this package is never imported by the
layers below it.  Each subcommand is one entry in ``COMMANDS``: ``emulate``
(the shaping TCP proxy), ``simulate`` (the socket-free experiment runner
of :mod:`simulators.experiment`, with its figures from :mod:`simulators.plots`) and ``fleet``
(many devices on one edge, :mod:`simulators.fleet`, command line in :mod:`simulators.fleet_cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn

import numpy as np

from split.cli_util import add_auto_switches, add_edge_load_switch, add_mode_choice, fail, parse_accuracy, parse_modes

# The policy names, repeated here so that `splitedge emulate` does not import the
# experiment runner (and, through the controller's package, torch) just to start.
POLICIES: tuple[str, ...] = ("local", "split", "offload", "auto", "oracle")

__all__ = ["main", "COMMANDS"]


def _emulate(argv: list[str]) -> int:
    from .emulator import run_emulator

    parser = argparse.ArgumentParser(
        prog="splitedge emulate",
        description="Shape TCP connections through a trace-driven link (user-space proxy).",
    )
    parser.add_argument("--trace", required=True, metavar="SPEC",
                        help="uplink trace: const:MBPS, steps:DUR@MBPS,..., mahimahi:PATH, pensieve:PATH, "
                             "csv:PATH#rate=COL,unit=bps|kbps|Mbps[,interval_s=S], or a bare PATH")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="address the client connects to")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the real server")
    parser.add_argument("--down-trace", metavar="SPEC", default=None,
                        help="downlink trace (default: no rate limit, delay and loss still apply)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way propagation delay (default 0)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="mean exponential jitter (default 0)")
    parser.add_argument("--loss", metavar="SPEC", default=None,
                        help="bernoulli:P or ge:P_GB,P_BG[,LOSS_GOOD,LOSS_BAD] (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter/loss streams")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage + error
        return int(exc.code or 0)

    try:
        run_emulator(args.trace, args.listen, args.upstream, delay_ms=args.delay_ms, loss=args.loss,
                     down_trace_spec=args.down_trace, jitter_ms=args.jitter_ms, seed=args.seed)
    except ValueError as exc:  # bad spec or address: raised before any socket is opened
        return fail(parser.prog, str(exc))
    except OSError as exc:  # e.g. the listen port is taken
        print(f"{parser.prog}: error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is the same single ``PROG: error: ...`` line as every other bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _simulate(argv: list[str]) -> int:
    """``splitedge simulate``: policies over traces and a constant-bandwidth sweep; CSVs and PNGs in --out.

    Every input is validated before the first simulated frame, so a typo
    costs one line on stderr and exit status 2, not a half-written folder.
    """
    parser = _OneLineParser(
        prog="splitedge simulate",
        description="Trace-driven simulation (no sockets) of the local/split/offload/auto/oracle policies: "
                    "writes summary.csv, sweep.csv, frames.csv, sweep.png and cdf.png to --out.",
    )
    parser.add_argument("--model", required=True, help="model name; must match both profiles' 'model' field")
    parser.add_argument("--device-profile", required=True, metavar="P.json", help="`splitedge profile` JSON of the device")
    parser.add_argument("--edge-profile", required=True, metavar="P.json", help="`splitedge profile` JSON of the edge")
    parser.add_argument("--trace", required=True, action="append", metavar="SPEC",
                        help="uplink trace, repeatable: const:MBPS, steps:DUR@MBPS,..., mahimahi:PATH, pensieve:PATH, "
                             "csv:PATH#rate=COL,unit=..., a file, or a directory (every trace file in it, recursively; "
                             "mahimahi *.down files are skipped)")
    parser.add_argument("--policies", default=None,
                        help=f"comma-separated, among {','.join(POLICIES)} (default: all; with --pipeline all but "
                             f"oracle)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the camera (default 10)")
    parser.add_argument("--frames", type=int, default=600, help="frames per (trace, policy) run (default 600)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way propagation delay (default 20)")
    parser.add_argument("--device-slowdown", type=float, default=1.0, metavar="K",
                        help="device K times slower than its profile (e.g. 8 for a Raspberry Pi 4 against a laptop "
                             "profile); applies on top of a slowdown already in the profile")
    parser.add_argument("--sweep-mbps", default="0.1,100,25", metavar="LO,HI,N",
                        help="constant-uplink sweep: N log-spaced rates from LO to HI Mbit/s (default 0.1,100,25)")
    parser.add_argument("--size", default=None, help="profile input size key, e.g. 480x640 (default: the profiles' own)")
    parser.add_argument("--down-trace", default=None, metavar="SPEC",
                        help="downlink trace for the results (default: no rate limit; the delay still applies)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="mean exponential jitter per direction (default 0)")
    parser.add_argument("--loss", default=None, metavar="SPEC", help="bernoulli:P or ge:P_GB,P_BG[,LG,LB] (default none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter/loss streams (default 0)")
    add_auto_switches(parser, "auto", "run each remote frame locally too while its result is awaited and take "
                                      "whichever finishes first (default: on; the fixed policies and the oracle "
                                      "never hedge)")
    add_edge_load_switch(parser, "auto")
    parser.add_argument("--realtime", action="store_true",
                        help="a live camera: the device takes the newest frame and skips stale ones (default: every "
                             "frame, as for files and videos); summary.csv then also has served, served_fps and "
                             "p50/p95 service times")
    parser.add_argument("--pipeline", action="store_true",
                        help="a pipelined device: the next frame's head (or JPEG encode, or local run) overlaps this "
                             "frame's network/edge stage, at most two frames held (docs/pipeline.md); every policy "
                             "but the oracle, which has no pipelined form")
    add_mode_choice(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.argv = list(argv)
    try:
        setup = _simulate_setup(args)
    except ValueError as exc:
        return fail(parser.prog, str(exc))
    return _simulate_run(args, *setup)


def _simulate_setup(args: argparse.Namespace):
    """Validate and load everything (profiles, traces, options); ValueError with a one-line message otherwise."""
    from mobile_client.controller import Controller
    from mobile_client.costs import costs_from_profiles, read_profile, scaled

    from .experiment import SimConfig
    from .links import parse_loss
    from .trace_files import load_trace

    default = [p for p in POLICIES if p != "oracle"] if args.pipeline else list(POLICIES)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies is not None else default
    unknown = [p for p in policies if p not in POLICIES]
    if not policies or unknown:
        raise ValueError(f"--policies: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(POLICIES)}")
    if args.pipeline and "oracle" in policies:
        raise ValueError("--pipeline: the oracle has no pipelined form; leave it out of --policies")
    policies = list(dict.fromkeys(policies))
    if not (args.fps > 0 and math.isfinite(args.fps)):
        raise ValueError(f"--fps must be positive, got {args.fps:g}")
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if not (args.delay_ms >= 0 and math.isfinite(args.delay_ms)):
        raise ValueError(f"--delay-ms must be >= 0, got {args.delay_ms:g}")
    if not (args.jitter_ms >= 0 and math.isfinite(args.jitter_ms)):
        raise ValueError(f"--jitter-ms must be >= 0, got {args.jitter_ms:g}")
    if not (args.device_slowdown > 0 and math.isfinite(args.device_slowdown)):
        raise ValueError(f"--device-slowdown must be positive, got {args.device_slowdown:g}")
    sweep_mbps = _parse_sweep(args.sweep_mbps)
    parse_loss(args.loss)  # raises ValueError on a bad spec

    profiles = {}
    for side, path in (("device", args.device_profile), ("edge", args.edge_profile)):
        profile = read_profile(path)
        model = profile.get("model")
        if model != args.model:
            raise ValueError(f"--{side}-profile {path} was measured for model {model!r}, not --model {args.model!r}")
        profiles[side] = profile
    try:
        costs = costs_from_profiles(profiles["device"], profiles["edge"], args.size)
    except KeyError as exc:
        raise ValueError(f"profile is missing {exc.args[0]!r} (re-make it with `splitedge profile`)") from None
    costs = scaled(costs, args.device_slowdown)

    traces = _expand_traces(args.trace, load_trace)
    down = load_trace(args.down_trace) if args.down_trace else None
    modes = parse_modes(args.modes)
    accuracy = parse_accuracy(args.accuracy)
    config = SimConfig(costs, fps=args.fps, frames=args.frames, delay_ms=args.delay_ms, down_trace=down,
                       jitter_ms=args.jitter_ms, loss=args.loss, seed=args.seed, realtime=args.realtime,
                       pipeline=args.pipeline,
                       controller_factory=lambda c: Controller(c, modes=modes, accuracy=accuracy,
                                                               min_accuracy=args.min_accuracy, hedge=args.hedge,
                                                               link_probes=args.link_probes,
                                                               edge_load=args.edge_load_feedback))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    return policies, sweep_mbps, traces, config, out


def _first_frame_over_local(records, costs) -> dict[str, float]:
    """Per trace, auto's first frame's end-to-end latency over the device's local time."""
    return {label: round(recs[0].e2e_ms / costs.t_full_device_ms, 4)
            for (label, policy), recs in records.items() if policy == "auto" and costs.t_full_device_ms > 0}


def _parse_sweep(spec: str) -> list[float]:
    parts = spec.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"--sweep-mbps must be LO,HI,N (e.g. 0.1,100,25), got {spec!r}") from None
    if not (0 < lo < hi and math.isfinite(hi)) or n < 2:
        raise ValueError(f"--sweep-mbps needs 0 < LO < HI and N >= 2, got {spec!r}")
    return [float(x) for x in np.geomspace(lo, hi, n)]


def _expand_traces(specs: list[str], load_trace) -> list[tuple[str, object]]:
    """(label, Trace) for every spec; a directory becomes every trace file under it.

    In a directory, mahimahi ``*.down`` files are skipped (this is the
    uplink), ``*.up`` files are read as mahimahi, other files by their shape;
    hidden files are ignored and a file that is not a trace is skipped with a
    warning, so a README next to the traces does not stop a sweep. Labels are
    the trace names, made unique with the file's path when two collide.
    """
    from .trace_files import load_trace_file, trace_files_in
    from .traces import TraceError

    found: list[tuple[str, object, str]] = []  # (name, trace, where)
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            count = 0
            for f in trace_files_in(path):
                try:
                    trace = load_trace_file(f)
                except TraceError as exc:
                    print(f"splitedge simulate: warning: skipping {f}: {exc}", file=sys.stderr)
                    continue
                found.append((trace.name, trace, str(f)))
                count += 1
            if count == 0:
                raise ValueError(f"--trace {spec}: no trace files in this directory")
        else:
            trace = load_trace(spec)
            found.append((trace.name, trace, spec))
    names = [name for name, _, _ in found]
    return [(name if names.count(name) == 1 else where, trace) for name, trace, where in found]


def _simulate_run(args: argparse.Namespace, policies: list[str], sweep_mbps: list[float],
                  traces: list[tuple[str, object]], config, out: Path) -> int:
    import csv
    import json

    from tqdm import tqdm

    from .experiment import FIXED_POLICIES, run_experiment, split_wins_ranges, sweep, write_summary_csv
    from .plots import plot_cdfs, plot_sweep

    sweep_policies = policies + [p for p in FIXED_POLICIES if p not in policies]
    total = len(traces) * len(policies) + len(sweep_mbps) * len(sweep_policies)
    started = time.perf_counter()
    with tqdm(total=total, desc="simulate", unit="run", file=sys.stderr) as bar:
        records, summaries = run_experiment(traces, policies, config, progress=bar.update)
        sweep_rows = sweep(sweep_mbps, sweep_policies, config, progress=bar.update)
        wins = split_wins_ranges(sweep_rows, config)
    elapsed = time.perf_counter() - started

    write_summary_csv(out / "summary.csv", summaries, args.realtime)
    write_summary_csv(out / "sweep.csv", sweep_rows, args.realtime, first_column="mbps")
    with open(out / "frames.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("trace", "policy", "frame", "mode", "reason", "arrival_s", "start_s", "done_s", "e2e_ms",
                    "queue_ms", "device_ms", "network_ms", "edge_ms", "payload_bytes", "probe_bytes"))
        for (label, policy), recs in records.items():
            w.writerows((label, policy, r.frame, r.mode, r.reason, f"{r.arrival_s:.4f}", f"{r.start_s:.4f}",
                         f"{r.done_s:.4f}", f"{r.e2e_ms:.3f}", f"{r.queue_ms:.3f}", f"{r.device_ms:.3f}",
                         f"{r.network_ms:.3f}", f"{r.edge_ms:.3f}", r.payload_bytes, r.probe_bytes) for r in recs)
    setting = (f"{args.model}, device x{args.device_slowdown:g}, {args.fps:g} fps, {args.frames} frames, "
               f"delay {args.delay_ms:g} ms")
    plot_sweep(sweep_rows, wins, out / "sweep.png", title=f"Latency vs uplink bandwidth ({setting})")
    labels = [label for label, _ in traces]
    e2e = {key: np.array([r.e2e_ms for r in recs if not r.skipped]) for key, recs in records.items()}
    cdf_files = plot_cdfs(e2e, labels, policies, out / "cdf.png", title=f"Latency CDF per trace ({setting})")
    (out / "run.json").write_text(json.dumps({
        "command": "splitedge simulate " + " ".join(shlex.quote(a) for a in args.argv),
        "costs_ms_bytes": dataclasses.asdict(config.costs),
        "split_wins_mbps": [[lo, hi] for lo, hi in wins],
        "auto_hedged": bool(args.hedge),
        "auto_link_probes": bool(args.link_probes),
        "realtime": bool(args.realtime),
        "elapsed_s": round(elapsed, 2),
        # auto's first frame's e2e over the local time: what connecting cost it (frames start at once)
        "first_frame_over_local": _first_frame_over_local(records, config.costs),
        **({"pipeline": True} if args.pipeline else {}),
    }, indent=1) + "\n")

    _print_table(summaries, policies)
    if wins:
        spans = ", ".join(f"{lo:.3g}-{hi:.3g}" for lo, hi in wins)
        print(f"split beats local and offload on a constant uplink at {spans} Mbit/s "
              f"(swept {sweep_mbps[0]:g}-{sweep_mbps[-1]:g})")
    else:
        print(f"split never beats both local and offload on a constant uplink in {sweep_mbps[0]:g}-{sweep_mbps[-1]:g} Mbit/s")
    files = ["summary.csv", "sweep.csv", "frames.csv", "sweep.png", *(f.name for f in cdf_files), "run.json"]
    print(f"wrote {', '.join(files)} to {out} in {elapsed:.1f} s")
    return 0


def _print_table(summaries, policies: list[str]) -> None:
    """Mean e2e (s) per trace and policy, with auto's ratio to the oracle and to the best fixed policy."""
    by_trace: dict[str, dict[str, float]] = {}
    for s in summaries:
        by_trace.setdefault(s.trace, {})[s.policy] = s.mean_e2e_ms
    width = max([len(t) for t in by_trace] + [5])
    head = f"{'trace':<{width}}  " + "  ".join(f"{p:>8}" for p in policies)
    fixed = [p for p in ("local", "split", "offload") if p in policies]
    extra = []
    if "auto" in policies and "oracle" in policies:
        extra.append("auto/oracle")
    if "auto" in policies and fixed:
        extra.append("auto/best-fixed")
    print("mean e2e (s)\n" + head + "".join(f"  {e:>15}" for e in extra))
    for trace, row in by_trace.items():
        line = f"{trace:<{width}}  " + "  ".join(f"{row[p] / 1e3:8.2f}" for p in policies)
        if "auto/oracle" in extra:
            line += f"  {row['auto'] / row['oracle']:15.3f}"
        if "auto/best-fixed" in extra:
            line += f"  {row['auto'] / min(row[p] for p in fixed):15.3f}"
        print(line)


def _fleet(argv: list[str]) -> int:
    from .fleet_cli import fleet_main  # its own module: the sweep, its figure and the knee

    return fleet_main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "emulate": _emulate,
    "simulate": _simulate,
    "fleet": _fleet,
}


def main(command: str, argv: list[str]) -> int:
    """Run ``splitedge COMMAND ARGV...``; returns the process exit status."""
    handler = COMMANDS.get(command)
    if handler is None:
        print(f"splitedge: error: unknown command {command!r} (choose from {', '.join(sorted(COMMANDS))})",
              file=sys.stderr)
        return 2
    return handler(argv)


if __name__ == "__main__":  # python -m simulators.cli emulate ...
    if len(sys.argv) < 2:
        print(f"usage: python -m simulators.cli {{{','.join(sorted(COMMANDS))}}} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
