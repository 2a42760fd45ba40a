"""The gRPC servicer: validation at the edge of the servicer, compute off the event loop.

Model compute runs in a single worker thread: torch already uses every core for one frame,
and one worker keeps frames in order. The asyncio loop stays free for health checks and
`Describe` while a frame computes. A bad frame gets an error `Result` for that frame; the
stream and the server go on. A link probe (``Frame.probe``) is answered as soon as it is read,
with nothing computed, so the device times its uplink and not this server. Results keep stream
order, so a probe read behind a frame still computing would wait for it; the device probes only
with nothing of its own in flight (none while a result it gave up on is still to come).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import grpc

from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc
from split import PayloadMismatch
from split.adapters import Outputs
from split.detections import detection_rows

from edge_server.registry import ModelRegistry

__all__ = ["SplitEdgeServicer", "VERSION"]

VERSION = "1"
log = logging.getLogger("splitedge.server")


def _detections(out: Outputs, family: str) -> list[pb.Detection]:
    """The wire form of `split.detections.detection_rows`."""
    return [_detection(*row) for row in detection_rows(out, family)]


def _detection(box: list[float] | None, label: int, score: float) -> pb.Detection:
    if box is None:  # a classifier's label
        return pb.Detection(label=label, score=score)
    x1, y1, x2, y2 = box
    return pb.Detection(x1=x1, y1=y1, x2=x2, y2=y2, label=label, score=score)


class SplitEdgeServicer(pb_grpc.SplitEdgeServicer):
    def __init__(self, registry: ModelRegistry, max_message_bytes: int) -> None:
        self.registry = registry
        self.max_message_bytes = max_message_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splitedge-compute")

    async def Describe(self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext) -> pb.DescribeResponse:
        models = []
        for served in self.registry:
            d = served.model.describe()
            models.append(pb.ModelInfo(
                name=served.model.name, family=d["family"], architecture=served.architecture,
                split_point=d["split_point"], codec=d["codec"], bottleneck_channels=d["bottleneck_channels"],
                weights=served.weights, latency_ms=served.medians()))
        return pb.DescribeResponse(models=models, max_message_bytes=self.max_message_bytes, version=VERSION)

    async def Infer(self, request_iterator: AsyncIterator[pb.Frame],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Result]:
        loop = asyncio.get_running_loop()
        async for frame in request_iterator:
            arrived = time.perf_counter()
            if frame.probe and not frame.HasField("payload"):  # a link probe: answered at once, nothing computed
                yield pb.Result(frame_id=frame.frame_id, code=0, queue_ms=(time.perf_counter() - arrived) * 1e3)
                continue
            if frame.probe:
                yield pb.Result(frame_id=frame.frame_id, code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                error=f"frame {frame.frame_id}: a frame carries a payload or a probe, not both")
                continue
            served = self.registry.get(frame.payload.model)
            if served is None:
                yield pb.Result(frame_id=frame.frame_id, code=grpc.StatusCode.NOT_FOUND.value[0],
                                error=f"unknown model {frame.payload.model!r}; served: {', '.join(self.registry.names)}")
                continue
            try:
                out, ms = await loop.run_in_executor(self._executor, served.run, frame.payload)
            except PayloadMismatch as exc:
                yield pb.Result(frame_id=frame.frame_id, code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                error=f"frame {frame.frame_id}: {exc}")
                continue
            except Exception as exc:  # a frame must never take the stream or the server down
                log.exception("frame %d failed", frame.frame_id)
                yield pb.Result(frame_id=frame.frame_id, code=grpc.StatusCode.INTERNAL.value[0],
                                error=f"frame {frame.frame_id}: {type(exc).__name__}: {exc}")
                continue
            queue_ms = (time.perf_counter() - arrived) * 1e3 - ms
            yield pb.Result(frame_id=frame.frame_id, code=0, server_ms=ms, queue_ms=max(queue_ms, 0.0),
                            detections=_detections(out, served.model.family))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
