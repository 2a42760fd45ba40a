"""The device's gRPC client: one long-lived `Infer` stream, results matched by frame id.

A reader thread moves results from the stream to a queue, so waiting for a result can time
out: a server that stops answering must not hang the device, it must send it to local mode.
"""

from __future__ import annotations

import queue
import threading
import time

import grpc

from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc

__all__ = ["EdgeClient", "EdgeUnavailable"]

_DONE = object()


class EdgeUnavailable(RuntimeError):
    """The server cannot be reached, or the stream broke or stopped answering."""


class EdgeClient:
    def __init__(self, target: str, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        self.target = target
        self.max_message_bytes = max_message_bytes
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.SplitEdgeStub | None = None
        self._requests: queue.Queue | None = None
        self._results: queue.Queue | None = None
        self._call = None
        self.description: pb.DescribeResponse | None = None

    def connect(self, timeout_s: float = 5.0) -> pb.DescribeResponse:
        """Open the channel and call `Describe`; the server's message limit then bounds our sends."""
        self.close()
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes)]
        self._channel = grpc.insecure_channel(self.target, options=options)
        self._stub = pb_grpc.SplitEdgeStub(self._channel)
        try:
            self.description = self._stub.Describe(pb.DescribeRequest(), timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            self.close()
            raise EdgeUnavailable(f"{self.target}: {exc.code().name}: {exc.details()}") from None
        if self.description.max_message_bytes:
            self.max_message_bytes = min(self.max_message_bytes, int(self.description.max_message_bytes))
        return self.description

    @property
    def connected(self) -> bool:
        return self._stub is not None

    def _open_stream(self) -> None:
        requests: queue.Queue = queue.Queue()
        results: queue.Queue = queue.Queue()
        call = self._stub.Infer(iter(requests.get, _DONE))

        def read() -> None:
            try:
                for result in call:
                    results.put(result)
                results.put(EdgeUnavailable(f"{self.target}: the server closed the stream"))
            except grpc.RpcError as exc:
                results.put(EdgeUnavailable(f"{self.target}: {exc.code().name}: {exc.details()}"))

        threading.Thread(target=read, name="splitedge-results", daemon=True).start()
        self._requests, self._results, self._call = requests, results, call

    def infer(self, frame: pb.Frame, timeout_s: float = 30.0) -> tuple[pb.Result, float]:
        """Send one frame and wait for its result; returns it and the send-to-result seconds."""
        if self._stub is None:
            raise EdgeUnavailable(f"{self.target}: not connected")
        size = frame.ByteSize()
        if size > self.max_message_bytes:
            raise ValueError(f"frame {frame.frame_id} is {size} bytes, over the server's limit of {self.max_message_bytes}")
        if self._call is None:
            self._open_stream()
        t0 = time.perf_counter()
        self._requests.put(frame)
        while True:
            try:
                item = self._results.get(timeout=timeout_s)
            except queue.Empty:
                self._drop_stream()
                raise EdgeUnavailable(f"{self.target}: no result for frame {frame.frame_id} in {timeout_s:.0f} s") from None
            if isinstance(item, EdgeUnavailable):
                self._drop_stream()
                raise item
            if item.frame_id == frame.frame_id:
                return item, time.perf_counter() - t0
            # A result for an earlier frame that had timed out: it is late, skip it.

    def _drop_stream(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._requests is not None:
            self._requests.put(_DONE)
        self._call = self._requests = self._results = None

    def close(self) -> None:
        self._drop_stream()
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None
