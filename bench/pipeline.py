"""A pipelined device, measured: `python bench/pipeline.py` (`make pipeline`).

One real `splitedge serve` process on a free 127.0.0.1 port, behind the user-space link emulator
(`splitedge emulate`, its own process) at a steady uplink rate and one-way delay, and the real client
(`splitedge run --mode split`, its own process) over ``--frames`` frames of an image folder (every
frame, in order), with pipelining off and on, interleaved ``--repeat`` times in one run. Everything runs
with one torch thread per process (``OMP_NUM_THREADS=1``); ``--device-slowdown K`` stretches the
client's compute K times (the stand-in for a slower device, as in the README's figures), so the device
stage is mostly a wait and the three processes do not fight over this machine's two cores more than
the device and the edge would.

Per run, from the client's JSONL records, after ``--warmup`` frames (the first inferences are slow):

* ``fps``: frames served per second, ``(n - warmup) / (done[n-1] - done[warmup-1])``;
* the stages, medians and means: ``device_ms`` (the head: ``head_ms``) and ``remote_ms`` (network +
  edge: send to result; ``remote_ms`` in a pipelined record, ``e2e_ms - head_ms`` otherwise), and
  ``wait_ms`` (pipelined: a payload waiting for the frame before to settle);
* ``bound_fps = 1 / max(stage)`` from the stage medians, and ``ratio = fps / bound_fps`` (the target:
  >= 0.90 pipelined); ``ratio_mean`` against the stage means;
* ``loop_ms``: the device's time outside the head between frames (record, next image, choice), and
  ``per_frame_bound_fps``: one over the mean of each frame's own slowest stage (pipelined: the next
  frame's loop + head, or this frame's network/edge), so ``per_frame_ratio`` is what the pipeline itself
  loses, apart from the stages' variance.

The simulator's figure for the same setting: ``splitedge simulate``'s runner with the split policy on a
constant link of the same rate and delay, priced with this run's measured medians (head, payload bytes,
the edge's time), pipelining off and on. JSON on stdout and in ``--out`` (pipeline.json), with a PNG.
``--compare OFF_DIR ON_DIR`` instead compares two ``splitedge simulate`` folders run without and with
``--pipeline`` (writes ``ON_DIR/compare.json``).
Bounded: at most 600 frames per run, loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
OUT = ROOT / "results" / "pipeline"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """A `splitedge` subcommand in its own process, once it has printed the line that says it is up."""

    def __init__(self, args: list[str], ready: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "split.dispatch", *args], cwd=ROOT, env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines, deadline = [], time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if re.search(ready, line):
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its pipe drained
                return
        self.stop()
        raise SystemExit(f"pipeline bench: {args[0]} did not start:\n" + "\n".join(lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _client(target: str, args: argparse.Namespace, pipeline: bool, out: Path) -> list[dict]:
    images = len([p for p in Path(args.source).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")])
    cmd = [sys.executable, "-m", "split.dispatch", "run", "--server", target, "--model", args.model, "--mode", "split",
           "--source", args.source, "--loop", str(-(-args.frames // images)), "--limit", str(args.frames),
           "--device-slowdown", str(args.device_slowdown), "--out", str(out), *(["--pipeline"] if pipeline else [])]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline bench: the client failed:\n{proc.stderr}")
    return [json.loads(line) for line in out.read_text().splitlines()]


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "mean": round(statistics.fmean(values), 2)}


def _measure(records: list[dict], warmup: int, pipeline: bool) -> dict:
    n = len(records)
    if [r["frame_id"] for r in records] != list(range(n)) or any(r["error"] or r["mode"] != "split" for r in records):
        raise SystemExit("pipeline bench: the client's records are not one split result per frame, in order")
    done = [r["t_s"] + r["e2e_ms"] / 1e3 for r in records]
    steady = records[warmup:]
    device = [r["head_ms"] for r in steady]
    remote = [r["remote_ms"] if pipeline else r["e2e_ms"] - r["head_ms"] for r in steady]
    stages = {"device_ms": _stats(device), "remote_ms": _stats(remote)}
    bound = 1e3 / max(stages["device_ms"]["median"], stages["remote_ms"]["median"])
    bound_mean = 1e3 / max(stages["device_ms"]["mean"], stages["remote_ms"]["mean"])
    fps = (n - warmup) / (done[-1] - done[warmup - 1])
    whole = n / (done[-1] - records[0]["t_s"])
    out = {"pipeline": pipeline, "frames": n, "fps": round(fps, 3), "fps_whole_run": round(whole, 3),
           **stages, "bound_fps": round(bound, 3), "ratio": round(fps / bound, 3),
           "ratio_mean": round(fps / bound_mean, 3),
           "payload_bytes": statistics.median(r["payload_bytes"] for r in steady),
           "edge_ms": _stats([r["server_ms"] for r in steady]),
           "edge_held_ms": _stats([x - r["network_ms"] for r, x in zip(steady, remote)]),
           "e2e_ms": _stats([r["e2e_ms"] for r in steady])}
    # Per frame: the device's time outside the head between frames (the loop: writing the record, reading and
    # decoding the next image, the controller's choice), and the period the stages allowed that frame.
    sent = [r["t_s"] + (r["head_ms"] + r.get("wait_ms", 0.0)) / 1e3 for r in records]
    gap = [(records[k + 1]["t_s"] - (sent[k] if pipeline else done[k])) * 1e3 for k in range(warmup, n - 1)]
    if pipeline:  # the next payload leaves when both its device part and this frame's network/edge are done
        period = [max(gap[j] + records[k + 1]["head_ms"], records[k]["remote_ms"])
                  for j, k in enumerate(range(warmup, n - 1))]
    else:
        period = [gap[j] + records[k + 1]["e2e_ms"] for j, k in enumerate(range(warmup, n - 1))]
    out["loop_ms"] = _stats(gap)
    out["per_frame_bound_fps"] = round(1e3 / statistics.fmean(period), 3)  # 1 / mean(max(stage) of each frame)
    out["per_frame_ratio"] = round(fps / out["per_frame_bound_fps"], 3)
    if pipeline:
        out["wait_ms"] = _stats([r["wait_ms"] for r in steady])
    return out


def _simulated(runs: list[dict], args: argparse.Namespace) -> dict:
    """The simulator's split policy on the same steady link, priced with the measured (pipelined) medians."""
    from mobile_client.costs import ModeCosts
    from simulators.experiment import SimConfig, simulate, summarize
    from simulators.traces import ConstantTrace

    on = [r for r in runs if r["pipeline"]]
    head = statistics.median(r["device_ms"]["median"] for r in on)
    edge = statistics.median(r["edge_held_ms"]["median"] for r in on)
    nbytes = int(statistics.median(r["payload_bytes"] for r in on))
    costs = ModeCosts(head, head, edge, edge, head, nbytes, nbytes)
    out = {"costs": {"head_ms": round(head, 2), "edge_ms": round(edge, 2), "payload_bytes": nbytes}}
    for pipeline in (False, True):
        config = SimConfig(costs, fps=1e6, frames=args.frames, delay_ms=args.delay_ms, pipeline=pipeline)
        records = simulate(ConstantTrace(args.mbps), "split", config)[args.warmup - 1:]
        remote = statistics.median(r.network_ms + r.edge_ms for r in records[1:])  # send to result
        fps = (len(records) - 1) / (records[-1].done_s - records[0].done_s)
        bound = 1e3 / max(head, remote)
        out["on" if pipeline else "off"] = {"fps": round(fps, 3), "remote_ms": round(remote, 2),
                                            "bound_fps": round(bound, 3), "ratio": round(fps / bound, 3)}
    return out


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, s = result["measured"], result["simulated"]
    labels = ["measured\noff", "measured\non", "simulated\noff", "simulated\non"]
    fps = [m["off"]["fps"], m["on"]["fps"], s["off"]["fps"], s["on"]["fps"]]
    bound = [m["off"]["bound_fps"], m["on"]["bound_fps"], s["off"]["bound_fps"], s["on"]["bound_fps"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.bar(range(4), fps, color=["#999999", "#1f77b4", "#cccccc", "#6baed6"], label="frames/s")
    ax.scatter(range(4), bound, marker="_", s=900, color="black", label="1 / max(stage)", zorder=3)
    for i, f in enumerate(fps):
        ax.annotate(f"{f:.2f}", (i, f), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(4), labels)
    ax.set_ylabel("frames/s")
    ax.set_title(f"Pipelined device: split, {result['setting']['mbps']:g} Mbit/s, "
                 f"delay {result['setting']['delay_ms']:g} ms, device x{result['setting']['device_slowdown']:g}",
                 fontsize=9)
    ax.set_ylim(0, 1.3 * max(fps + bound))
    ax.legend(fontsize=8, loc="upper left", markerscale=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(off_dir: Path, on_dir: Path) -> dict:
    """Two `splitedge simulate` folders, without and with --pipeline: per policy, the on/off ratio of each trace's
    mean e2e (median, min, max over the traces), and auto against the best fixed policy in each."""
    import csv

    def load(folder: Path) -> dict[tuple[str, str], float]:
        with open(folder / "summary.csv", newline="") as fh:
            return {(r["trace"], r["policy"]): float(r["mean_e2e_ms"]) for r in csv.DictReader(fh)}

    off, on = load(off_dir), load(on_dir)
    traces = sorted({t for t, _ in on})
    out: dict = {"off": str(off_dir), "on": str(on_dir), "traces": len(traces), "on_over_off_mean_e2e": {}}
    for policy in sorted({p for _, p in on}):
        r = [on[(t, policy)] / off[(t, policy)] for t in traces]
        out["on_over_off_mean_e2e"][policy] = {"median": round(statistics.median(r), 3), "min": round(min(r), 3),
                                               "max": round(max(r), 3)}
    for name, table in (("off", off), ("on", on)):
        ratio = [table[(t, "auto")] / min(table[(t, p)] for p in ("local", "split", "offload")) for t in traces]
        out[f"auto_over_best_fixed_{name}"] = {"median": round(statistics.median(ratio), 3),
                                               "max": round(max(ratio), 3),
                                               "within_1.000": sum(x <= 1.0005 for x in ratio)}
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--compare"]:  # --compare OFF_DIR ON_DIR: the simulator's figure over traces
        result = compare(Path(argv[1]), Path(argv[2]))
        (Path(argv[2]) / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return 0
    p = argparse.ArgumentParser(prog="bench/pipeline.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    p.add_argument("--source", default=str(ROOT / "samples" / "coco"))
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=2, help="off/on pairs, interleaved")
    p.add_argument("--mbps", type=float, default=1.0, help="the emulated uplink's steady rate")
    p.add_argument("--delay-ms", type=float, default=10.0, help="the emulated link's one-way delay")
    p.add_argument("--device-slowdown", type=float, default=4.0, metavar="K")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not (args.warmup >= 1 and args.frames - args.warmup >= 10 and args.frames <= 600 and args.repeat >= 1):
        p.error("need 1 <= --warmup, at least 10 frames after it, --frames <= 600, --repeat >= 1")
    started, load_before = time.perf_counter(), round(os.getloadavg()[0], 2)
    server = _Process(["serve", "--host", "127.0.0.1", "--port", str(_free_port()), "--model", args.model],
                      r"listening on 127\.0\.0\.1:\d+")
    upstream = re.search(r"--port (\d+)", " ".join(server.proc.args)).group(1)
    emulator = _Process(["emulate", "--trace", f"const:{args.mbps:g}", "--listen", f"127.0.0.1:{_free_port()}",
                         "--upstream", f"127.0.0.1:{upstream}", "--delay-ms", f"{args.delay_ms:g}"],
                        r"emulating on 127\.0\.0\.1:\d+")
    target = re.search(r"--listen (\S+)", " ".join(emulator.proc.args)).group(1)
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeat):
                for pipeline in (False, True):
                    records = _client(target, args, pipeline, Path(tmp) / f"{i}-{pipeline}.jsonl")
                    runs.append(_measure(records, args.warmup, pipeline))
                    print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        emulator.stop()
        server.stop()

    def median_run(pipeline: bool) -> dict:  # the run with the median fps
        rs = sorted((r for r in runs if r["pipeline"] == pipeline), key=lambda r: r["fps"])
        return rs[(len(rs) - 1) // 2]

    result = {
        "command": " ".join(["python bench/pipeline.py", *argv]),
        "setting": {"model": args.model, "mode": "split", "frames": args.frames, "warmup": args.warmup,
                    "mbps": args.mbps, "delay_ms": args.delay_ms, "device_slowdown": args.device_slowdown,
                    "omp_threads": 1, "host_cpus": os.cpu_count(),
                    # others' processes share this machine: the 1-minute load average before and after the runs
                    "loadavg_1min": [load_before, round(os.getloadavg()[0], 2)]},
        "runs": runs,
        "measured": {"off": median_run(False), "on": median_run(True)},
        "simulated": _simulated(runs, args),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    on, off = result["measured"]["on"], result["measured"]["off"]
    result["summary"] = {"fps_off": off["fps"], "fps_on": on["fps"], "speedup": round(on["fps"] / off["fps"], 3),
                         "bound_fps_on": on["bound_fps"], "ratio_on": on["ratio"], "target_ratio": 0.9,
                         "met": on["ratio"] >= 0.9,
                         "sim_fps_off": result["simulated"]["off"]["fps"],
                         "sim_fps_on": result["simulated"]["on"]["fps"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result, args.out / "pipeline.png")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
