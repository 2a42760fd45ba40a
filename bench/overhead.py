"""What the framework costs per frame over bare gRPC: `python bench/overhead.py [--frames N] [--seconds S]`.

One server process on a free 127.0.0.1 port holds, on one ``grpc.aio`` server built with the
options `splitedge serve` uses (``ServerOptions().grpc_options()``), two bidirectional streams:

* **framework**: the real ``SplitEdgeServicer.Infer`` of ``edge_server/`` serving a stand-in
  registered model whose compute does nothing (``NoopServed``: its ``run`` returns no detections
  at once). Each frame therefore takes the whole path a real frame takes: the bytes parsed as a
  ``Frame``, the registry look-up and token grant, :func:`edge_server.validation.check_payload`
  against the model's limits, the in-flight bound, the hop to the compute thread and back, the
  metrics, the ``Result`` built and serialized. The link-probe path (``Frame.probe``) is *not*
  used: it is answered on the event loop before validation and without the compute hop, so it
  would leave out the costs a real frame pays and understate the overhead.
* **bare**: a ``grpc.aio`` stream handler that takes the request bytes unparsed and writes back
  pre-serialized reply bytes the size of the framework's ``Result``; nothing else.

The client (this process, ``grpc.aio``, one channel, one long-lived stream of each kind) sends
the same serialized ``Frame`` (a uint8 split payload of 1, 10 or 100 KB that passes validation)
on both, one frame at a time, and awaits its reply. The two are interleaved frame by frame, the
order alternating, so noise on the machine hits both alike. Printed: the median round trip of
each at each size, and their difference, as one JSON object. The device's own client
(``mobile_client.edge_client``: a sync stream with a reader thread) is not in this measurement:
both sides here use the same client, so the difference is the server's framework alone.
Bounded: ``--frames`` per size and kind (at most 20,000) and ``--seconds`` in all (at most 300).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (1024, 10 * 1024, 100 * 1024)
CROP = 512  # the stand-in classifier's image side: split sizes up to 512 x 512 pass validation
BARE_METHOD = "/splitedge.bench.Bare/Echo"
INFER_METHOD = "/splitedge.v1.SplitEdge/Infer"


def _noop_registry():
    """A registry of one stand-in model: the limits of a 1-channel uint8 classifier split, no compute."""
    from edge_server.registry import ModelRegistry, ServedModel

    class NoopServed(ServedModel):
        def run(self, payload):
            t0 = time.perf_counter()
            out = {"labels": [], "scores": []}
            ms = (time.perf_counter() - t0) * 1e3
            self.record("tail", ms)
            return out, ms

    model = SimpleNamespace(name="noop", family="classifier", at="noop", codec=SimpleNamespace(name="uint8"),
                            wire_channels=1, bottleneck=None, adapter=SimpleNamespace(crop_size=CROP),
                            batch_key=lambda payload: tuple(payload.tensor.shape),
                            describe=lambda: {"family": "classifier", "split_point": "noop", "codec": "uint8",
                                              "bottleneck_channels": 0})
    return ModelRegistry([NoopServed(model=model, weights="none", architecture="noop")])


def _frame_bytes(nbytes: int) -> bytes:
    """A serialized Frame whose uint8 tensor holds exactly ``nbytes`` (1 x h x w, h * w = nbytes)."""
    from protos import splitedge_pb2 as pb

    h = next(d for d in range(min(CROP, int(nbytes ** 0.5)), 0, -1) if nbytes % d == 0 and nbytes // d <= CROP)
    w = nbytes // h
    payload = pb.Payload(model="noop", split_point="noop", original_size=pb.Size(height=CROP, width=CROP),
                         split_size=pb.Size(height=h, width=w),
                         tensor=pb.Tensor(codec="uint8", shape=[1, 1, h, w], scale=0.1, data=bytes(nbytes)))
    return pb.Frame(frame_id=1, payload=payload).SerializeToString()


def _serve(port_queue) -> None:
    """The server process: the framework's servicer and the bare echo on one grpc.aio server."""
    import grpc

    from protos import splitedge_pb2 as pb
    from edge_server.server import ServerOptions
    from edge_server.service import SplitEdgeServicer

    options = ServerOptions()
    # The framework's reply to a no-op frame, as the bare handler's: a Result with an id and both times set.
    reply = pb.Result(frame_id=1, code=0, server_ms=0.001, queue_ms=0.1).SerializeToString()

    async def echo(request_iterator, context):
        async for _ in request_iterator:
            yield reply

    async def main() -> None:
        servicer = SplitEdgeServicer(_noop_registry(), options.max_message_bytes)
        server = grpc.aio.server(options=options.grpc_options())
        bare = grpc.method_handlers_generic_handler("splitedge.bench.Bare", {
            "Echo": grpc.stream_stream_rpc_method_handler(echo, request_deserializer=None, response_serializer=None)})
        server.add_generic_rpc_handlers((servicer.handler(), bare))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_queue.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


async def _measure(port: int, frames: int, seconds: float) -> dict:
    import grpc

    from protos import splitedge_pb2 as pb

    limit = 16 * 1024 * 1024
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        calls = {kind: channel.stream_stream(method, request_serializer=None, response_deserializer=pb.Result.FromString)()
                 for kind, method in (("bare", BARE_METHOD), ("framework", INFER_METHOD))}
        payloads = {n: _frame_bytes(n) for n in SIZES}
        times = {(n, kind): [] for n in SIZES for kind in calls}

        async def once(kind: str, n: int) -> float:
            t0 = time.perf_counter()
            await calls[kind].write(payloads[n])
            result = await calls[kind].read()
            dt = (time.perf_counter() - t0) * 1e3
            if kind == "framework" and result.code != 0:
                raise SystemExit(f"overhead: the framework refused the bench frame: {result.error}")
            return dt

        warmup = min(50, frames)
        stop_at = time.perf_counter() + seconds
        for i in range(warmup + frames):
            if time.perf_counter() > stop_at:
                break
            for n in SIZES:
                for kind in (("bare", "framework") if i % 2 else ("framework", "bare")):
                    dt = await once(kind, n)
                    if i >= warmup:
                        times[(n, kind)].append(dt)
        for call in calls.values():
            await call.done_writing()
    rows = []
    for n in SIZES:
        bare, fw = statistics.median(times[(n, "bare")]), statistics.median(times[(n, "framework")])
        rows.append({"bytes": n, "bare_ms": round(bare, 4), "framework_ms": round(fw, 4),
                     "overhead_ms": round(fw - bare, 4)})
    return {"sizes": rows}


def run(frames: int, seconds: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=120)
        return asyncio.run(_measure(port, frames, seconds))
    finally:
        server.terminate()
        server.join(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1000, help="measured round trips per size and kind (after 50 warm-up)")
    p.add_argument("--seconds", type=float, default=120.0, help="stop measuring after this long, whatever --frames says")
    args = p.parse_args(argv)
    if not (10 <= args.frames <= 20_000 and 1 <= args.seconds <= 300):
        p.error("--frames must be in 10..20000 and --seconds in 1..300")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(json.dumps(run(args.frames, args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
