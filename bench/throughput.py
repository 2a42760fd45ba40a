"""Throughput with and without batching: `python bench/throughput.py --clients 1,4,16 --seconds S`.

Two real `splitedge serve` processes on free 127.0.0.1 ports serve the default recipe, one with
the scheduler's default batching and one with ``--batch-size 1`` (no batching); all else equal
(workers, limits, frames in flight per stream). For each client count N, and for each server in
turn (the two interleaved, so noise on the machine hits both alike), N client *processes* each
open one ``Infer`` stream (their own small ``grpc.aio`` client: the device's client keeps one
frame in flight, these keep ``--in-flight``) and send the split payload of a real image
(``samples/people``, encoded by the default recipe's head) as fast as results come back, for
``--seconds`` after a one-second warm-up. Printed, as one JSON object::

    {"runs": [{"clients": N, "batching": true|false, "fps": ..., "p50_ms": ..., "p99_ms": ...,
               "frames": ..., "errors": {...}, "mean_batch": ...}, ...], "server": {...}}

``fps`` is results received per second over all clients; ``p50_ms``/``p99_ms`` the end-to-end
time from a frame's send to its result; ``mean_batch`` the frames per batch the server ran
(its ``splitedge_batch_frames`` metric, over the run). A PNG of fps and p99 against clients is
written to ``--plot`` (default ``results/throughput/throughput.png``).

``--compare-plain`` runs each of the two servers also with ``--plain-model`` (the network as built:
no BatchNorm folded into its convolution, no channels-last; `split.fusion`), all four interleaved,
and adds ``ratios_plain_model`` and ``edge_form_over_plain`` (frames/s of the edge's form over the
plain model's, per client count, batching on and off); the plot shows the edge's form.

``--curve`` measures instead, in this process, what chose the scheduler's defaults: frames/s of
the default recipe's tail (`SplitModel.decode_batch`) against batch size, on one worker and on
the default number of workers at once, written to ``results/throughput/curve.json`` and
``curve.png``. Torch runs one thread per worker (``OMP_NUM_THREADS=1``), as the servers here do.

``--backend ray --replicas 1,2`` compares instead the in-process server with `splitedge serve
--backend ray --replicas N` (Ray Serve deployments behind the same gRPC door, docs/ray.md), each at
the scheduler's default batching, for each client count: the servers run one at a time (an idle
Ray cluster takes CPU from whatever shares the machine), the in-process one first and again
last, and each ratio is against the mean of its two runs. Printed as one JSON object (``make
ray-throughput`` writes it to ``results/throughput/ray.json``, its plot to ``ray.png``)::

    {"runs": [{"backend": "inprocess"|"ray", "replicas": N|null, "clients": N, "fps": ..., ...}, ...],
     "ratios": {"16": {"ray_1": {"fps": ..., "p99": ...}, "ray_2": {...}}}, "load_avg": {...}, ...}

Bounded: at most 64 clients, 120 s per run, 16 frames in flight per client; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
IMAGE = ROOT / "samples" / "people" / "000000000389.jpg"
OUT = ROOT / "results" / "throughput"
INFER = "/splitedge.v1.SplitEdge/Infer"
WARMUP_S = 1.0


# -- one client process -------------------------------------------------------------------------
def worker(target: str, frame_file: str, start_at: float, stop_at: float, in_flight: int) -> None:
    """One client: a stream holding ``in_flight`` frames, from start_at to stop_at; prints its JSON."""
    print(json.dumps(asyncio.run(_client(target, Path(frame_file).read_bytes(), start_at, stop_at, in_flight))),
          flush=True)


async def _client(target: str, payload_part: bytes, start_at: float, stop_at: float, in_flight: int) -> dict:
    import grpc

    from protos import splitedge_pb2 as pb

    limit = 16 * 2**20
    e2e: list[float] = []
    codes: collections.Counter = collections.Counter()
    sent: dict[int, float] = {}
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", limit),
                                                          ("grpc.max_receive_message_length", limit)]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)
        call = channel.stream_stream(INFER, request_serializer=None, response_deserializer=pb.Result.FromString)()
        slots = asyncio.Semaphore(in_flight)
        await asyncio.sleep(max(0.0, start_at - WARMUP_S - time.time()))

        async def send() -> None:
            n = 0
            while time.time() < stop_at:
                await slots.acquire()
                sent[n] = time.perf_counter()
                # A Frame is its fields' bytes: the id's, then the payload's, serialized once.
                await call.write(pb.Frame(frame_id=n).SerializeToString() + payload_part)
                n += 1
            await call.done_writing()

        async def receive() -> None:
            async for r in call:
                now_wall, t0 = time.time(), sent.pop(r.frame_id)
                slots.release()
                if start_at <= now_wall <= stop_at:
                    e2e.append((time.perf_counter() - t0) * 1e3)
                    codes["OK" if r.code == 0 else str(r.code)] += 1

        try:
            await asyncio.wait_for(asyncio.gather(send(), receive()), stop_at - time.time() + 60)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            codes[type(exc).__name__] += 1
    return {"e2e_ms": e2e, "codes": codes}


# -- the servers ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """`splitedge serve` in its own process, with metrics, on a free loopback port."""

    def __init__(self, batch_size: int | None, clients: int, in_flight: int, workers: int | None,
                 extra: tuple[str, ...] = ()) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "split.dispatch", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--metrics-port", "0", "--max-streams", str(clients + 8),
               "--max-in-flight", str(clients * in_flight + 8), "--max-stream-in-flight", str(in_flight)]
        if batch_size is not None:
            cmd += ["--batch-size", str(batch_size)]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        cmd += list(extra)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.strip())
            m = re.search(r"listening on 127\.0\.0\.1:\d+ \(.*metrics on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.metrics_url = f"http://127.0.0.1:{m.group(1)}/metrics"
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its pipe drained
                return
        self.stop()
        raise SystemExit("throughput: the server did not start:\n" + "\n".join(self.lines))

    @property
    def scheduling(self) -> str:
        return next((line for line in self.lines if line.startswith("scheduling:")), "")

    def batches(self) -> tuple[float, float]:
        """(frames, batches) run so far, from the server's `splitedge_batch_frames` histogram."""
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        total = {}
        for field in ("sum", "count"):
            total[field] = sum(float(v) for v in re.findall(rf"^splitedge_batch_frames_{field}{{[^}}]*}} (\S+)$",
                                                            text, re.M))
        return total["sum"], total["count"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _frame_file() -> str:
    """The serialized payload field of a Frame: the default recipe's split payload of a real image."""
    from protos import splitedge_pb2 as pb
    from split.images import load_image
    from split.recipes import build, default_recipe

    model = build(default_recipe().name)[0]
    payload = model.encode_message(load_image(IMAGE))
    fd, path = tempfile.mkstemp(suffix=".payload")
    os.write(fd, pb.Frame(payload=payload).SerializeToString())
    os.close(fd)
    return path


def _run(server: _Server, clients: int, seconds: float, in_flight: int, frame_file: str) -> dict:
    frames0, batches0 = server.batches()
    start_at = time.time() + 3 + 0.2 * clients + WARMUP_S  # every client connected before the warm-up starts
    stop_at = start_at + seconds
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", f"127.0.0.1:{server.port}", frame_file,
                               str(start_at), str(stop_at), str(in_flight)],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    outs = [json.loads(p.communicate(timeout=seconds + 180)[0].strip().splitlines()[-1]) for p in procs]
    frames1, batches1 = server.batches()
    e2e = sorted(x for o in outs for x in o["e2e_ms"])
    codes: collections.Counter = collections.Counter()
    for o in outs:
        codes.update(o["codes"])
    return {"fps": round(len(e2e) / seconds, 2),
            "p50_ms": round(e2e[len(e2e) // 2], 1) if e2e else None,
            "p99_ms": round(e2e[min(len(e2e) - 1, int(len(e2e) * 0.99))], 1) if e2e else None,
            "frames": len(e2e), "errors": {k: v for k, v in codes.items() if k != "OK"},
            "mean_batch": round((frames1 - frames0) / (batches1 - batches0), 2) if batches1 > batches0 else None}


def bench(clients: list[int], seconds: float, in_flight: int, plot: Path | None, workers: int | None = None,
          compare_plain: bool = False) -> dict:
    """Batching on and off; with `compare_plain`, each also against `serve --plain-model` (four servers)."""
    frame_file = _frame_file()
    forms = (False, True) if compare_plain else (False,)
    servers: dict[tuple[bool, bool], _Server] = {}
    try:
        for plain in forms:
            extra = ("--plain-model",) if plain else ()
            servers[(True, plain)] = _Server(None, max(clients), in_flight, workers, extra)
            servers[(False, plain)] = _Server(1, max(clients), in_flight, workers, extra)
        runs = []
        for n in clients:
            for plain in forms:
                for batching in (False, True):
                    row = {"clients": n, "batching": batching, **({"plain_model": plain} if compare_plain else {})}
                    runs.append({**row, **_run(servers[(batching, plain)], n, seconds, in_flight, frame_file)})
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    finally:
        for s in servers.values():
            s.stop()
        os.unlink(frame_file)
    edge_form = [r for r in runs if not r.get("plain_model")]
    result = {"runs": runs, "seconds": seconds, "in_flight_per_client": in_flight,
              "server": {"batched": servers[(True, False)].scheduling, "unbatched": servers[(False, False)].scheduling},
              "ratios": _ratios(edge_form)}
    if compare_plain:
        plain = [r for r in runs if r["plain_model"]]
        result["ratios_plain_model"] = _ratios(plain)
        result["edge_form_over_plain"] = {
            str(n): {("batching" if b else "no_batching"): round(e["fps"] / p["fps"], 2)
                     for b in (False, True)
                     for e, p in [(_row(edge_form, n, b), _row(plain, n, b))] if p["fps"]}
            for n in clients}
    if plot is not None:
        _plot({**result, "runs": edge_form}, plot)
    return result


def _row(runs: list[dict], clients: int, batching: bool) -> dict:
    return next(r for r in runs if r["clients"] == clients and r["batching"] == batching)


def bench_ray(clients: list[int], replicas: list[int], seconds: float, in_flight: int, plot: Path | None,
              workers: int | None = None) -> dict:
    """In-process against Ray Serve with each replica count, one server at a time (see the module's doc)."""
    configs = [("inprocess", None), *[("ray", n) for n in replicas], ("inprocess", None)]
    frame_file = _frame_file()
    load_start = os.getloadavg()
    runs, servers = [], {}
    try:
        for backend, n in configs:
            extra = ("--backend", "ray", "--replicas", str(n)) if backend == "ray" else ()
            server = _Server(None, max(clients), in_flight, workers, extra)
            try:
                servers[_label(backend, n)] = server.scheduling
                for c in clients:
                    runs.append({"backend": backend, "replicas": n, "clients": c,
                                 **_run(server, c, seconds, in_flight, frame_file)})
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            finally:
                server.stop()
    finally:
        os.unlink(frame_file)
    result = {"runs": runs, "seconds": seconds, "in_flight_per_client": in_flight, "server": servers,
              "ratios": _ray_ratios(runs), "load_avg": {"start": [round(x, 2) for x in load_start],
                                                        "end": [round(x, 2) for x in os.getloadavg()]},
              "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    if plot is not None:
        _plot_ray(result, plot)
    return result


def _label(backend: str, replicas: int | None) -> str:
    return backend if replicas is None else f"{backend}_{replicas}"


def _ray_ratios(runs: list[dict]) -> dict:
    """Per client count and replica count: ray fps / in-process fps and ray p99 / in-process p99, against
    the mean of the in-process server's two runs (before and after the Ray ones)."""
    out = {}
    for c in sorted({r["clients"] for r in runs}):
        local = [r for r in runs if r["clients"] == c and r["backend"] == "inprocess" and r["fps"] and r["p99_ms"]]
        if not local:
            continue
        fps, p99 = (sum(r[k] for r in local) / len(local) for k in ("fps", "p99_ms"))
        out[str(c)] = {_label("ray", r["replicas"]): {"fps": round(r["fps"] / fps, 2),
                                                      "p99": round(r["p99_ms"] / p99, 2) if r["p99_ms"] else None}
                       for r in runs if r["clients"] == c and r["backend"] == "ray"}
        out[str(c)]["inprocess_fps_mean"] = round(fps, 2)
    return out


def _plot_ray(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    labels = [f"{_label(r['backend'], r['replicas'])}\n{r['clients']} clients" for r in runs]
    fig, (ax_fps, ax_p99) = plt.subplots(1, 2, figsize=(10, 4))
    colors = ["tab:blue" if r["backend"] == "inprocess" else "tab:orange" for r in runs]
    ax_fps.bar(range(len(runs)), [r["fps"] or 0 for r in runs], color=colors)
    ax_p99.bar(range(len(runs)), [r["p99_ms"] or 0 for r in runs], color=colors)
    for ax, title in ((ax_fps, "frames/s"), (ax_p99, "p99 end-to-end ms")):
        ax.set_xticks(range(len(runs)), labels, fontsize=7)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("in-process (first and last run) against Ray Serve replicas, one server at a time, "
                 f"{result['cores']} cores", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _ratios(runs: list[dict]) -> dict:
    """Per client count: batched fps / unbatched fps and batched p99 / unbatched p99."""
    by = {(r["clients"], r["batching"]): r for r in runs}
    out = {}
    for n in sorted({r["clients"] for r in runs}):
        on, off = by[(n, True)], by[(n, False)]
        if off["fps"] and off["p99_ms"] and on["p99_ms"]:
            out[str(n)] = {"fps": round(on["fps"] / off["fps"], 2), "p99": round(on["p99_ms"] / off["p99_ms"], 2)}
    return out


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fps, ax_p99) = plt.subplots(1, 2, figsize=(10, 4))
    for batching, label in ((True, "batching"), (False, "no batching (--batch-size 1)")):
        rs = [r for r in result["runs"] if r["batching"] == batching]
        ax_fps.plot([r["clients"] for r in rs], [r["fps"] for r in rs], "o-", label=label)
        ax_p99.plot([r["clients"] for r in rs], [r["p99_ms"] for r in rs], "o-", label=label)
    for ax, title in ((ax_fps, "frames/s"), (ax_p99, "p99 end-to-end ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("client processes")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"splitedge edge server, batched: {result['server']['batched']}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# -- the curve that chose the defaults ---------------------------------------------------------
def curve(sizes: list[int], seconds: float, out: Path) -> dict:
    """Frames/s of the default recipe's tail against batch size, on one worker and on `default_workers()`."""
    import torch

    from edge_server.scheduler import default_workers
    from split.fusion import edge_form
    from split.images import load_image
    from split.recipes import build, default_recipe

    torch.set_num_threads(1)  # one thread per worker, as the servers here run (OMP_NUM_THREADS=1)
    model = build(default_recipe().name)[0]
    payload = model.encode_message(load_image(IMAGE))
    edge_form(model)  # what `splitedge serve` runs (after the device's side made the payload)
    workers = max(2, default_workers())

    def frames_per_s(batch: int, threads: int) -> float:
        stop = time.perf_counter() + seconds
        done = [0] * threads

        def loop(k: int) -> None:
            while time.perf_counter() < stop:
                model.decode_batch([payload] * batch)
                done[k] += batch

        pool = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return sum(done) / (time.perf_counter() - t0)

    model.decode_batch([payload] * max(sizes))  # first-call costs out of the way
    points = []
    for b in sizes:
        points.append({"batch": b, "fps_1_worker": round(frames_per_s(b, 1), 2),
                       f"fps_{workers}_workers": round(frames_per_s(b, workers), 2)})
        print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    result = {"model": default_recipe().name, "torch_threads": torch.get_num_threads(), "workers": workers,
              "seconds_per_point": seconds, "points": points}
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot_curve(result, out / "curve.png")
    return result


def _plot_curve(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    xs = [p["batch"] for p in result["points"]]
    for key in [k for k in result["points"][0] if k.startswith("fps_")]:
        ax.plot(xs, [p[key] for p in result["points"]], "o-", label=key[4:].replace("_", " "))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("frames/s")
    ax.set_title(f"{result['model']} tail, torch threads {result['torch_threads']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[2], float(argv[3]), float(argv[4]), int(argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=_ints, default=[1, 4, 16], help="client counts, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per client count and server")
    p.add_argument("--in-flight", type=int, default=4, help="frames each client keeps in flight")
    p.add_argument("--workers", type=int, help="both servers' --workers (default: the server's own default)")
    p.add_argument("--plot", type=Path, help="PNG to write (default results/throughput/throughput.png; "
                                             "with --backend ray, ray.png)")
    p.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess",
                   help="ray: the in-process server against `serve --backend ray --replicas N` instead")
    p.add_argument("--replicas", type=_ints, help="with --backend ray: replica counts, comma-separated (default 1,2)")
    p.add_argument("--curve", action="store_true", help="measure batch size vs tail frames/s instead")
    p.add_argument("--compare-plain", action="store_true",
                   help="also run both servers with --plain-model (no folded BatchNorm, no channels-last), interleaved")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4, 8, 16, 32], help="with --curve")
    args = p.parse_args(argv)
    if args.curve:
        print(json.dumps(curve(args.batch_sizes, min(args.seconds, 30.0), OUT)))
        return 0
    if not (args.clients and all(1 <= n <= 64 for n in args.clients) and 1 <= args.seconds <= 120
            and 1 <= args.in_flight <= 16):
        p.error("--clients must be in 1..64, --seconds in 1..120 and --in-flight in 1..16")
    if args.replicas is not None and args.backend != "ray":
        p.error("--replicas needs --backend ray")
    if args.backend == "ray":
        replicas = args.replicas or [1, 2]
        if not all(1 <= n <= 8 for n in replicas):
            p.error("--replicas must be in 1..8")
        print(json.dumps(bench_ray(args.clients, replicas, args.seconds, args.in_flight, args.plot or OUT / "ray.png",
                                   args.workers)))
        return 0
    print(json.dumps(bench(args.clients, args.seconds, args.in_flight, args.plot or OUT / "throughput.png",
                           args.workers, args.compare_plain)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
