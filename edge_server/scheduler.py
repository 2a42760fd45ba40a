"""The edge's scheduler: frames from every stream meet per model and leave as batches for a pool of workers.

Why: with one compute thread taking one frame at a time, sixteen devices on one edge waited
for each other and the per-call costs of the tail (Python dispatch of every layer, the
anchors, small convolutions that use the cores badly) were paid once per frame. A batch
pays them once per batch.

How a batch forms. Frames are grouped by model and by :meth:`split.SplitModel.batch_key`
(kind, tensor shape, padded size: frames that stack without padding anything the one-frame
path does not pad, so each output equals its one-frame output). Each group is a FIFO queue.
Whenever a worker is free, the group whose oldest frame has waited longest is dispatched if
it holds ``batch_size`` frames or its oldest frame has waited ``batch_wait_ms``; it takes up
to ``batch_size`` frames, and no more than its share over the idle workers (so that idle
workers are not left out while one computes a batch that all of them could split). So a server whose workers are all busy collects full batches with
no added wait, and a quiet one sends a lone frame after at most ``batch_wait_ms``.
``batch_size=1`` is no batching: each frame goes alone as soon as a worker is free.

Workers are threads (torch releases the GIL inside its kernels); ``workers=0`` sizes the
pool to the machine, one worker per ``torch.get_num_threads()`` cores, so that workers times
intra-op threads is the core count and no core is oversubscribed.

What it does not do: keep order. Batches of different groups, or two batches of one group
on two workers, may finish out of order; the servicer keeps each stream's order. What it
holds is bounded by the servicer's ``max_in_flight`` (every queued frame is in flight). A
frame whose waiter went away (its stream closed) is dropped before compute.

The defaults come from a measured curve: ``bench/throughput.py --curve`` (batch size vs
frames/s of the default recipe's tail on this machine), written to
``results/throughput/curve.json``; see ``DEFAULT_BATCH_SIZE``.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter, deque
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from protos import splitedge_pb2 as pb
from split.adapters import Outputs

if TYPE_CHECKING:
    from edge_server.metrics import Metrics
    from edge_server.registry import ServedModel

__all__ = ["BatchOptions", "BatchScheduler", "DEFAULT_BATCH_SIZE", "DEFAULT_BATCH_WAIT_MS", "default_workers"]

# Chosen from results/throughput/curve.json (`make throughput`'s `bench/throughput.py --curve --seconds 5`:
# the default recipe's tail, ssdlite300_mobilenet_v2_person, one torch thread per worker, on the quiet 2-core
# development machine): with 2 workers, frames/s 78 at batch 1, 97 at 2, 105 at 4, 110 at 8, 98 at 16 (one
# worker: 47, 53, 55, 58, 52): flat from 4, and 4 against 8 is within run-to-run noise (an earlier run gave
# 104 at 4, 57 at 8), so the smaller batch on the plateau. No wait by default: a frame that finds a worker free goes at once (a
# 5 ms wait added 5 ms to every frame of a lone device, ~20 % of the tail); batches form from the frames
# that queued while every worker was busy, which is when batching pays.
DEFAULT_BATCH_SIZE = 4
DEFAULT_BATCH_WAIT_MS = 0.0


def default_workers() -> int:
    """One worker per ``torch.get_num_threads()`` of the cores this process may use (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, torch.get_num_threads()))


@dataclass(frozen=True)
class BatchOptions:
    """``batch_size``: most frames per batch (1: no batching); ``batch_wait_ms``: longest a frame
    waits for others to join it while a worker is free; ``workers``: threads (0: `default_workers`)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    workers: int = 0

    def check(self) -> BatchOptions:
        """Self, or ValueError naming the flag that is out of range."""
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError("--batch-wait-ms must be in 0..10000")
        if self.workers < 0:
            raise ValueError("--workers must be 0 (sized to the machine) or more")
        return self


@dataclass
class _Item:
    payload: pb.Payload
    future: asyncio.Future
    enqueued: float  # loop.time()


@dataclass
class _Group:
    """The queue of one model's frames that can share a batch."""

    served: ServedModel
    items: deque[_Item]

    def head(self) -> _Item | None:
        """The oldest frame still awaited (frames whose waiter left are dropped here)."""
        while self.items and self.items[0].future.done():
            self.items.popleft()
        return self.items[0] if self.items else None

    def take(self, n: int) -> list[_Item]:
        batch: list[_Item] = []
        while self.items and len(batch) < n:
            item = self.items.popleft()
            if not item.future.done():
                batch.append(item)
        return batch


class BatchScheduler:
    """Queues per model and batch key, a pool of worker threads; ``await run(served, payload)``.

    Everything but the compute runs on the event loop, so the state needs no lock."""

    def __init__(self, options: BatchOptions = BatchOptions(), metrics: Metrics | None = None) -> None:
        options.check()
        self.batch_size = options.batch_size
        self.wait_s = options.batch_wait_ms / 1e3
        self.workers = options.workers or default_workers()
        self.metrics = metrics
        self.batches: Counter[int] = Counter()  # frames per batch -> batches run (tests and benches read it)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="splitedge-compute")
        self._groups: dict[tuple[str, Hashable], _Group] = {}
        self._busy = 0
        self._queued = 0
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, served: ServedModel, payload: pb.Payload) -> tuple[Outputs, float]:
        """The outputs for one validated payload and the ms its batch took; raises what its decode raised
        (:class:`split.PayloadMismatch` for a payload that does not fit)."""
        loop = asyncio.get_running_loop()
        key = (served.model.name, served.model.batch_key(payload))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(served, deque())
        future = loop.create_future()
        group.items.append(_Item(payload, future, loop.time()))
        self._pump()
        return await future

    @property
    def queued(self) -> int:
        """Frames waiting for a worker (including any whose stream has gone and that are not yet dropped)."""
        return self._queued

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- steps -------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Start every batch that is due while a worker is free; then wake up when the next one is due."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._busy < self.workers:
            group = self._due(now)
            if group is None:
                break
            # Spread what is queued over the idle workers: one worker with a batch of 4 while another
            # idles served one client 0.69 x as fast as no batching (results/throughput, before this).
            free = self.workers - self._busy
            self._start(group, group.take(min(self.batch_size, -(-len(group.items) // free))))
        self._arm(loop, now)
        self._queued = sum(len(g.items) for g in self._groups.values())
        if self.metrics is not None:
            self.metrics.queued.set(self._queued)

    def _due(self, now: float) -> _Group | None:
        """The group to dispatch now: full, or its oldest frame has waited long enough; the oldest first."""
        best, best_t = None, float("inf")
        for key in list(self._groups):
            group = self._groups[key]
            head = group.head()
            if head is None:
                del self._groups[key]
                continue
            ready = len(group.items) >= self.batch_size or now - head.enqueued >= self.wait_s
            if ready and head.enqueued < best_t:
                best, best_t = group, head.enqueued
        return best

    def _start(self, group: _Group, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        self._busy += 1
        self.batches[len(batch)] += 1
        if self.metrics is not None:
            self.metrics.batch(group.served.model.name, len(batch))
        done = loop.run_in_executor(self._pool, group.served.run_batch, [i.payload for i in batch])
        done.add_done_callback(partial(self._finished, batch))

    def _finished(self, batch: list[_Item], done: asyncio.Future) -> None:
        self._busy -= 1
        if done.cancelled():  # the pool was shut down under it (the server is stopping)
            outs, ms = [RuntimeError("the compute pool was shut down")] * len(batch), 0.0
        elif done.exception() is not None:  # run_batch catches per frame; this is a failure around it
            outs, ms = [done.exception()] * len(batch), 0.0
        else:
            outs, ms = done.result()
        for item, out in zip(batch, outs):
            if item.future.done():  # its stream went away meanwhile
                continue
            if isinstance(out, BaseException):
                item.future.set_exception(out)
            else:
                item.future.set_result((out, ms))
        self._pump()

    def _arm(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """A timer for the earliest frame that will be due, while a worker is free to take it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy >= self.workers:
            return  # the next batch finishing pumps again
        heads = [g.items[0].enqueued for g in self._groups.values() if g.items]
        if heads:
            self._timer = loop.call_at(max(now, min(heads) + self.wait_s), self._pump)
