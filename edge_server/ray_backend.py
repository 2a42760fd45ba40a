"""The Ray Serve backend: each model's tail runs as a Ray Serve deployment behind the same gRPC front door.

Why this shape. The splitedge servicer stays the door (validation, auth, limits, per-stream order,
health, metrics) and so does its scheduler: a device cannot tell which backend serves it, because
every byte it receives is made by the same code. Only where a batch computes changes: the
registry serves :class:`RayServedModel`, whose ``run_batch`` sends the batch to the model's
deployment handle instead of running it in this process, and the scheduler keeps as many batches
in flight as the replicas have compute threads (``replicas x threads``), so a batch forms when a
replica thread is free, as it forms when a worker is free in process (two per thread, tried in
issue 16's fourth session, measured no faster side by side and formed smaller batches at low
load: docs/ray.md). Ray Serve routes
each batch to one of ``--replicas`` replicas (processes of a Ray cluster, here or on other machines). Each
replica (:class:`TailReplica`) builds the model from its recipe name (plus ``--weights`` /
``--checkpoint``), one torch thread per compute thread, and runs what reaches it through
``@serve.batch`` (``batch_size_fn``: frames, so batches from several callers, e.g. several
front doors, merge up to ``--batch-size`` frames) into :meth:`ServedModel.run_batch`: the path
the in-process scheduler runs, so each frame's outputs are the in-process ones.

Why the batch is formed here and not by ``@serve.batch`` alone: Ray's batch queue forms a batch
as soon as a request is there and only then waits for a free slot (``max_concurrent_batches``),
so frames sent one call each queued as batches of one (1.3 frames per batch at 16 clients against
3.9 in process, docs/ray.md), and each call costs ~1.5 ms of CPU across the two processes.

What travels. To the replica: the ``Payload`` messages' bytes (a few KB a frame; no tensor is
pickled on the way in). Back: per frame its outputs (the post-processed boxes, labels, scores) or
its error, and the batch's compute ms (what `Describe` reports and ``server_ms`` carries).

Errors. A frame whose decode raises in the replica comes back as that frame's error, not as a
failed call: :class:`split.PayloadMismatch` stays ``INVALID_ARGUMENT`` with its message, anything
else becomes :class:`ReplicaError` and the servicer answers ``INTERNAL`` with a log reference
(the log line has the replica's message). A call that fails in Ray (a replica that died, a
cluster gone, ``call_timeout_s``) is ``INTERNAL`` for each frame of that batch; the stream and
the server go on.

Ray is imported only here, and only when a backend starts (``import edge_server`` never loads it);
`ray_missing` says why ``--backend ray`` cannot run. Documented Ray Serve switches, set before Ray
is imported: ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (gRPC between handle and replica, user code on
the replica's loop; unless the environment says otherwise), ``RAY_SERVE_ENABLE_DIRECT_INGRESS=0``
(the replicas need no ingress of their own: frames come through this server; likewise) and
``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1`` (the scheduler's threads call the handle, so its
router runs on a loop of its own: required).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from protos import splitedge_pb2 as pb
from split import PayloadMismatch
from split.adapters import Outputs

from edge_server.registry import ServedModel
from edge_server.scheduler import BatchOptions

__all__ = ["ModelSpec", "RayBackend", "RayBackendError", "RayOptions", "RayServedModel", "ReplicaError", "TailReplica",
           "ray_missing"]

_SERVE_DEFAULTS = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
_SERVE_REQUIRED = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
_QUIET = {"enable_access_log": False, "log_level": "WARNING"}
_DEPLOYMENT = "tail"  # in each model's application, which is named after the model


def ray_missing() -> str | None:
    """Why ``--backend ray`` cannot run here (one line), or None when Ray Serve imports."""
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        return f"--backend ray needs Ray Serve, which does not import here ({exc}): pip install 'splitedge[ray]'"
    return None


@dataclass(frozen=True)
class ModelSpec:
    """What a replica builds: a recipe, and the weights/checkpoint `splitedge serve` was given for it."""

    recipe: str
    weights: str | None = None
    checkpoint: str | None = None  # an absolute path: replicas may not share the server's working directory
    edge_form: bool = True  # `split.fusion.edge_form`, as the in-process server (`--plain-model` turns it off)


@dataclass(frozen=True)
class RayOptions:
    """``replicas`` per model; ``threads``: compute threads per replica (0: this machine's cores over the
    replicas); ``address``: a Ray cluster to join (None: ``RAY_ADDRESS``, else a local cluster of
    ``num_cpus`` CPUs, 0: this machine's cores, started here and stopped by :meth:`RayBackend.close`);
    ``call_timeout_s``: longest wait for one batch's answer."""

    replicas: int = 1
    threads: int = 0
    address: str | None = None
    num_cpus: int = 0
    call_timeout_s: float = 120.0

    def check(self) -> RayOptions:
        if not 1 <= self.replicas <= 64:
            raise ValueError("--replicas must be in 1..64")
        if self.threads < 0:
            raise ValueError("--workers must be 0 (sized to the machine) or more")
        return self


class RayBackendError(RuntimeError):
    """The backend could not start: the cluster or a deployment (the message is Ray's first line)."""


class ReplicaError(RuntimeError):
    """A frame failed inside a replica (not a payload mismatch): its message is the replica's."""


@dataclass
class _Reply:
    """One frame's answer from a replica: outputs, or an error ("mismatch" or "error") and its message."""

    outputs: Outputs | None
    error: str = ""
    message: str = ""


@dataclass
class _Batch:
    """The answer to one call: a reply per payload sent, and the compute ms of the batch they ran in."""

    replies: list[_Reply]
    ms: float


# -- the replica ----------------------------------------------------------------------------------
class TailReplica:
    """One replica of a model's deployment: ``handle.remote([payload bytes, ...])`` -> `_Batch`.

    ``@serve.batch`` merges the calls that are waiting into batches of up to ``batch_size``
    frames (waiting at most ``batch_wait_s`` for more), ``threads`` batches at once, each on a
    thread of its own with one torch thread (torch releases the GIL in its kernels)."""

    def __init__(self, spec: ModelSpec, threads: int, batch_size: int, batch_wait_s: float) -> None:
        import torch
        from ray import serve

        from split.recipes import build, get_recipe

        torch.set_num_threads(1)
        model, source = build(spec.recipe, weights=spec.weights, checkpoint=spec.checkpoint)
        self._served = ServedModel(model, source, get_recipe(spec.recipe).builder, edge_form=spec.edge_form)
        self._served.warm_up()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="splitedge-replica")
        self._batched = serve.batch(max_batch_size=batch_size, batch_wait_timeout_s=batch_wait_s,
                                    max_concurrent_batches=threads, batch_size_fn=_frames)(self._run)

    async def __call__(self, payloads: list[bytes]) -> _Batch:
        return await self._batched(payloads)

    async def _run(self, calls: list[list[bytes]]) -> list[_Batch]:
        """The calls' frames as one batch, on a compute thread; each call gets its own frames' replies."""
        flat = [raw for call in calls for raw in call]
        replies, ms = await asyncio.get_running_loop().run_in_executor(self._pool, self._compute, flat)
        out, start = [], 0
        for call in calls:
            out.append(_Batch(replies[start:start + len(call)], ms))
            start += len(call)
        return out

    def _compute(self, raw: list[bytes]) -> tuple[list[_Reply], float]:
        """Parse, then `ServedModel.run_batch` (the in-process scheduler's call) over what parsed."""
        parsed = [_parse(r) for r in raw]
        good = [p for p in parsed if isinstance(p, pb.Payload)]
        outs, ms = self._served.run_batch(good) if good else ([], 0.0)
        done = iter(outs)
        return [_reply(next(done) if isinstance(p, pb.Payload) else p) for p in parsed], ms


def _frames(calls: list[list[bytes]]) -> int:
    """`serve.batch`'s batch size: frames, not calls."""
    return sum(len(call) for call in calls)


def _parse(raw: bytes) -> pb.Payload | Exception:
    try:
        return pb.Payload.FromString(raw)
    except Exception as exc:  # protobuf's DecodeError; the server serialized it, so not the client's fault
        return ReplicaError(f"a {len(raw)}-byte payload that does not parse: {exc}")


def _reply(out: Outputs | Exception) -> _Reply:
    if isinstance(out, PayloadMismatch):
        return _Reply(None, "mismatch", str(out))
    if isinstance(out, Exception):
        return _Reply(None, "error", f"{type(out).__name__}: {out}")
    return _Reply(out)


# -- the front's side -----------------------------------------------------------------------------
@dataclass
class RayServedModel(ServedModel):
    """A served model whose batches compute on its Ray Serve deployment (``handle``); everything else
    (validation limits, `Describe`, the start-up warm-up) uses the model built in this process."""

    handle: Any = None
    call_timeout_s: float = 120.0

    def run_batch(self, payloads: list) -> tuple[list[Outputs | Exception], float]:
        """As `ServedModel.run_batch`: per payload its outputs or its exception, and the batch's compute
        ms in the replica. A call that fails raises (the scheduler gives each frame of the batch the error)."""
        batch: _Batch = self.handle.remote([p.SerializeToString() for p in payloads]).result(
            timeout_s=self.call_timeout_s)
        self.record("offload_edge" if payloads[0].tensor.codec == "jpeg" else "tail", batch.ms)
        return [_outcome(r) for r in batch.replies], batch.ms


def _outcome(reply: _Reply) -> Outputs | Exception:
    if reply.error == "mismatch":
        return PayloadMismatch(reply.message)
    if reply.error:
        return ReplicaError(reply.message)
    return reply.outputs


class RayBackend:
    """The deployments of the served models: :meth:`start` (blocking: replicas built and warmed up),
    :meth:`served` (the registry's models), :attr:`workers` (batches in flight), :meth:`close`.

    One Serve application per model, named after it, with ``replicas`` replicas of `TailReplica`."""

    def __init__(self, specs: list[ModelSpec], options: RayOptions = RayOptions(),
                 batching: BatchOptions = BatchOptions()) -> None:
        self.specs = list(specs)
        self.options = options.check()
        self.batching = batching.check()
        self.threads = options.threads or max(1, _cores() // options.replicas)
        self._handles: dict[str, Any] = {}
        self._connected = False  # ray.init was called here
        self._started = False  # and started a local cluster

    @property
    def workers(self) -> int:
        """Batches the server's scheduler keeps in flight: one per replica thread."""
        return self.options.replicas * self.threads

    def describe(self) -> str:
        b = self.batching
        batching = f"batches of up to {b.batch_size} frames, {b.batch_wait_ms:g} ms wait" if b.batch_size > 1 \
            else "no batching"
        return (f"Ray Serve, {self.options.replicas} replica(s) x {self.threads} thread(s) per model "
                f"(@serve.batch); {batching}; {self.workers} batches in flight")

    def start(self) -> RayBackend:
        """Join or start the cluster and deploy every model; on failure, undo that and raise RayBackendError."""
        for key, value in _SERVE_DEFAULTS.items():  # read when ray.serve is imported, and by the cluster started
            os.environ.setdefault(key, value)
        os.environ.update(_SERVE_REQUIRED)
        import ray
        from ray import serve

        try:
            if not ray.is_initialized():
                self._init_cluster(ray)
            serve.start(http_options={"location": "NoServer"}, logging_config=_QUIET)
            _route_ray_logs()  # after ray.init and serve.start, which set up their own
            for spec in self.specs:
                app = self._deployment(serve, ray).bind(spec, self.threads, self.batching.batch_size,
                                                        self.batching.batch_wait_ms / 1e3)
                self._handles[spec.recipe] = serve.run(app, name=spec.recipe, route_prefix=None)
        except Exception as exc:  # Ray raises its own kinds (a cluster that does not start, a failed deploy)
            self.close()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RayBackendError(f"{type(exc).__name__}: {first}") from exc
        return self

    def served(self, models: list[ServedModel]) -> list[RayServedModel]:
        """Each model, computing on its deployment (its latency window carried over)."""
        missing = [m.model.name for m in models if m.model.name not in self._handles]
        if missing:
            raise RayBackendError(f"no deployment for {', '.join(missing)} (RayBackend.start() first)")
        return [RayServedModel(**{f.name: getattr(m, f.name) for f in dataclasses.fields(ServedModel)},
                               handle=self._handles[m.model.name], call_timeout_s=self.options.call_timeout_s)
                for m in models]

    def server_options(self, options):
        """A server's options (`edge_server.ServerOptions`) with its scheduler keeping `workers` batches in flight."""
        return dataclasses.replace(options, batching=dataclasses.replace(options.batching, workers=self.workers))

    def close(self) -> None:
        """Take this server's applications off a cluster that goes on; stop a cluster started here.

        A local cluster is stopped whole (``ray.shutdown()`` ends the processes it started, Serve's
        included): the frames were answered before (the server drains first), and Serve's own graceful
        shutdown would wait forever for a cluster already gone (Ctrl-C reaches its processes too)."""
        import ray

        if not ray.is_initialized():
            return
        if not self._started and self._handles:
            _bounded(self._delete_apps, timeout_s=30)
        if self._connected:
            ray.shutdown()
        self._handles.clear()

    def __enter__(self) -> RayBackend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- steps -----------------------------------------------------------------------------------
    def _init_cluster(self, ray) -> None:
        address = self.options.address or os.environ.get("RAY_ADDRESS")
        common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=self.options.num_cpus or _cores(), **common)
        self._connected, self._started = True, not address

    def _deployment(self, serve, ray):
        """`TailReplica` as a deployment whose replicas' CPUs fit the cluster (so all of them start)."""
        cpus = ray.cluster_resources().get("CPU", 1.0)
        per_replica = min(float(self.threads), cpus / self.options.replicas)
        return serve.deployment(TailReplica).options(
            name=_DEPLOYMENT, num_replicas=self.options.replicas, ray_actor_options={"num_cpus": per_replica},
            # room for a batch waiting while each thread computes one (the scheduler keeps `workers` in flight)
            max_ongoing_requests=2 * self.threads, max_constructor_retry_count=1, logging_config=_QUIET)

    def _delete_apps(self) -> None:
        from ray import serve

        for name in self._handles:
            serve.delete(name)


def _route_ray_logs() -> None:
    """Ray's loggers in this process go through the root's handlers, which never block
    (`edge_server.metrics.setup_logging`), warnings and up."""
    for name in ("ray", "ray.serve"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)


def _bounded(step, timeout_s: float) -> None:
    """Run ``step`` on a daemon thread and give up after ``timeout_s`` (Ray's calls wait on a cluster that may be gone)."""
    thread = threading.Thread(target=step, name="splitedge-ray-close", daemon=True)
    thread.start()
    thread.join(timeout_s)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
