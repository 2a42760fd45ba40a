"""Load on a real edge server: `python bench/load.py --clients N --seconds S [--mode split|offload]`.

Starts `splitedge serve` on a free 127.0.0.1 port and N client processes (each one `Infer`
stream, a frame at a time, as fast as the server answers), then prints one JSON object:
frames answered, throughput, p50/p99 end-to-end ms, errors by code, and the server's RSS
(at start, at end, and the mean of the first and last 10 s, with the growth between them).
Bounded: at most 64 clients and 600 s; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = "ssdlite320_mobilenet_v3_large"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def worker(target: str, frame_file: str, start_at: float, stop_at: float) -> None:
    """One client process: frames back to back on one stream from start_at to stop_at; prints its JSON."""
    import queue
    import threading

    import grpc

    from protos import splitedge_pb2 as pb
    from protos import splitedge_pb2_grpc as pb_grpc

    template = pb.Frame.FromString(Path(frame_file).read_bytes())
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 16 * 2**20)])
    grpc.channel_ready_future(channel).result(timeout=60)
    requests: queue.Queue = queue.Queue()
    call = pb_grpc.SplitEdgeStub(channel).Infer(iter(requests.get, None))
    results: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for r in call:
                results.put(r)
        except grpc.RpcError:  # the channel closed at the end of the run
            pass

    threading.Thread(target=read, daemon=True).start()
    e2e, codes, n = [], collections.Counter(), 0
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        frame = pb.Frame()
        frame.CopyFrom(template)
        frame.frame_id = n
        t0 = time.perf_counter()
        requests.put(frame)
        try:
            r = results.get(timeout=30)
        except queue.Empty:
            codes["TIMEOUT"] += 1
            break
        e2e.append((time.perf_counter() - t0) * 1e3)
        codes[grpc.StatusCode.OK.name if r.code == 0 else _code_name(r.code)] += 1
        n += 1
    requests.put(None)
    print(json.dumps({"e2e_ms": e2e, "codes": codes}), flush=True)
    channel.close()


def _code_name(value: int) -> str:
    import grpc

    return next((c.name for c in grpc.StatusCode if c.value[0] == value), str(value))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, clients: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "split.dispatch", "serve", "--model", MODEL, "--host", "127.0.0.1",
           "--port", str(port), "--max-streams", str(clients + 8), "--max-in-flight", str(clients + 8)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if re.search(r"listening on 127\.0\.0\.1:\d+", line):
            return proc
    proc.kill()
    raise SystemExit("load: the server did not start")


def _frame_file(mode: str) -> str:
    import torch

    from protos import splitedge_pb2 as pb
    from split.recipes import build

    model = build(MODEL)[0]
    image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0))
    payload = model.encode_message(image) if mode == "split" else model.encode_image(image, 90)
    fd, path = tempfile.mkstemp(suffix=".frame")
    os.write(fd, pb.Frame(payload=payload).SerializeToString())
    os.close(fd)
    return path


def run(clients: int, seconds: float, mode: str) -> dict:
    from tests.edge_helpers import rss_mb  # here: the client processes (--worker) import no torch

    port = _free_port()
    frame_file = _frame_file(mode)
    server = _start_server(port, clients)
    try:
        rss_start = rss_mb(server.pid)
        start_at = time.time() + 3 + 0.3 * clients  # every client connected before the clock starts
        stop_at = start_at + seconds
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", f"127.0.0.1:{port}", frame_file,
                                   str(start_at), str(stop_at)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
                 for _ in range(clients)]
        samples = []
        while time.time() < stop_at:
            if time.time() >= start_at:
                samples.append((time.time() - start_at, rss_mb(server.pid)))
            time.sleep(0.5)
        outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
        rss_end = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
        os.unlink(frame_file)
    e2e = sorted(x for o in outs for x in o["e2e_ms"])
    codes = collections.Counter()
    for o in outs:
        codes.update(o["codes"])
    window = min(10.0, seconds / 3)
    first = [r for t, r in samples if t <= window]
    last = [r for t, r in samples if t >= seconds - window]
    growth = (statistics.mean(last) / statistics.mean(first) - 1) * 100 if first and last else float("nan")
    return {"clients": clients, "seconds": seconds, "mode": mode, "frames": len(e2e),
            "throughput_fps": round(len(e2e) / seconds, 2),
            "p50_ms": round(e2e[len(e2e) // 2], 1) if e2e else None,
            "p99_ms": round(e2e[min(len(e2e) - 1, int(len(e2e) * 0.99))], 1) if e2e else None,
            "errors": {k: v for k, v in codes.items() if k != "OK"},
            "server_rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1),
                              f"first_{window:.0f}s": round(statistics.mean(first), 1) if first else None,
                              f"last_{window:.0f}s": round(statistics.mean(last), 1) if last else None,
                              "growth_pct": round(growth, 2)}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[2], float(argv[3]), float(argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--mode", choices=("split", "offload"), default="split")
    args = p.parse_args(argv)
    if not (1 <= args.clients <= 64 and 1 <= args.seconds <= 600):
        p.error("--clients must be in 1..64 and --seconds in 1..600")
    print(json.dumps(run(args.clients, args.seconds, args.mode)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
