"""What the server tells its operators: Prometheus metrics and one structured log line per event.

Metrics live in a registry of their own per server (several servers in one test process do not
mix), served over HTTP by ``--metrics-port`` (``prometheus_client.start_http_server``):

* ``splitedge_frames_total{model,code}``: frames answered, by gRPC status code name (``OK``...);
* ``splitedge_errors_total{model,code}``: the non-OK ones, plus whole calls refused
  (``UNAUTHENTICATED``, the stream cap) with ``model=""``;
* ``splitedge_queue_seconds{model}``, ``splitedge_compute_seconds{model}``: latency histograms;
* ``splitedge_frames_in_flight``: frames queued or computing; ``splitedge_streams_open``;
* ``splitedge_queue_depth``: frames waiting in the scheduler for a worker;
  ``splitedge_batch_frames{model}``: frames per batch run (a histogram: are batches forming?).

Log lines are JSON objects (``event``, ``client``, ``model``, ``code``, ...), one per stream opened
or closed and one per error, so they can be filtered without parsing prose.
"""

from __future__ import annotations

import atexit
import json
import time
import logging
import queue
import sys
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics", "log_event", "setup_logging"]

log = logging.getLogger("splitedge.server")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    log.log(level, json.dumps({"event": event, **fields}, default=str, sort_keys=False))


class _DroppingQueueHandler(logging.Handler):
    """Hands records to a writer thread through a bounded queue, and drops (and counts) what does not fit.

    The event loop never waits on a log write: a stderr nobody reads (a full pipe) would otherwise
    stop the whole server at its next log line."""

    def __init__(self, size: int = 10_000) -> None:
        super().__init__()
        self.queue: queue.Queue = queue.Queue(size)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(self.format(record))
        except queue.Full:
            self.dropped += 1


def setup_logging(level: int = logging.INFO, stream=None) -> None:
    """Root logging to ``stream`` (stderr) through a bounded queue and a daemon writer thread."""
    handler = _DroppingQueueHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    out = stream or sys.stderr

    def write() -> None:
        while True:
            line = handler.queue.get()
            try:
                out.write(line + "\n")
                out.flush()
            except (OSError, ValueError):
                return

    threading.Thread(target=write, name="splitedge-log", daemon=True).start()
    atexit.register(_flush, handler.queue, 2.0)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _flush(q: queue.Queue, timeout_s: float) -> None:
    """At exit: give the writer thread up to ``timeout_s`` to write what is queued."""
    end = time.monotonic() + timeout_s
    while not q.empty() and time.monotonic() < end:
        time.sleep(0.01)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("splitedge_frames", "frames answered", ["model", "code"], registry=r)
        self.errors = Counter("splitedge_errors", "frames and calls that failed", ["model", "code"], registry=r)
        self.queue = Histogram("splitedge_queue_seconds", "time a frame waited before compute", ["model"],
                               buckets=_BUCKETS, registry=r)
        self.compute = Histogram("splitedge_compute_seconds", "decode + model compute per frame", ["model"],
                                 buckets=_BUCKETS, registry=r)
        self.in_flight = Gauge("splitedge_frames_in_flight", "frames queued or computing", registry=r)
        self.streams = Gauge("splitedge_streams_open", "Infer streams open", registry=r)
        self.queued = Gauge("splitedge_queue_depth", "frames waiting in the scheduler for a worker", registry=r)
        self.batch_frames = Histogram("splitedge_batch_frames", "frames per batch run", ["model"],
                                      buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)

    def frame(self, model: str, code: str, queue_s: float | None = None, compute_s: float | None = None) -> None:
        self.frames.labels(model, code).inc()
        if code != "OK":
            self.errors.labels(model, code).inc()
        if queue_s is not None:
            self.queue.labels(model).observe(queue_s)
        if compute_s is not None:
            self.compute.labels(model).observe(compute_s)

    def batch(self, model: str, frames: int) -> None:
        self.batch_frames.labels(model).observe(frames)

    def refused(self, code: str) -> None:
        self.errors.labels("", code).inc()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: any free port); returns the port."""
        httpd, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(httpd.server_port)
