"""Real-time camera semantics (DESIGN.md §3): the device works on the newest frame and skips the stale ones.

A camera keeps capturing while the device serves a frame; serving every frame in order would
let the queue, and so the age of every result, grow without bound once the camera outruns every
mode. :class:`LatestFrame` reads the source on its own thread and keeps only the newest frame;
each :meth:`LatestFrame.take` returns it with the frames captured since the last take that the
device never got to (each still gets its JSONL line, ``skipped: true``). A file or a video has
no capture clock of its own, so it is replayed at ``fps`` to stand for a camera; a camera is
read as fast as it delivers. Files and videos keep every-frame semantics unless asked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

from mobile_client.sources import Frame

__all__ = ["LatestFrame", "Skipped"]


class Skipped(NamedTuple):
    """A frame the device never got to: its number and where it came from, without its pixels."""

    index: int
    source: str


class LatestFrame:
    """The newest captured frame of ``frames`` (with its capture time), and those skipped before it."""

    def __init__(self, frames: Iterator[Frame], fps: float | None = None) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"--fps must be positive, got {fps}")
        self._frames, self._fps = frames, fps
        self._cond = threading.Condition()
        self._newest: tuple[Frame, float] | None = None  # the newest frame not taken yet, and its capture time
        self._skipped: list[Skipped] = []  # older ones, without pixels: memory stays one frame's however slow
        self._done = False
        self.error: BaseException | None = None
        threading.Thread(target=self._capture, name="splitedge-capture", daemon=True).start()

    def _capture(self) -> None:
        start = time.perf_counter()
        try:
            for i, frame in enumerate(self._frames):
                if self._fps is not None:  # a file stands for a camera capturing at fps
                    time.sleep(max(0.0, start + i / self._fps - time.perf_counter()))
                with self._cond:
                    if self._newest is not None:
                        self._skipped.append(Skipped(self._newest[0].index, self._newest[0].source))
                    self._newest = (frame, time.perf_counter())
                    self._cond.notify()
        except BaseException as exc:  # handed to the reader: a source error ends the run with its message
            self.error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()

    def waiting(self) -> bool:
        """Whether a frame is there to take now (or the source has ended), so :meth:`take` would not wait."""
        with self._cond:
            return self._newest is not None or self._done

    def take(self) -> tuple[Frame, float, list[Skipped]] | None:
        """Wait for a frame; the newest, its capture time (perf_counter), and the older ones skipped. None: the
        source has ended (its error, if any, is raised)."""
        with self._cond:
            while self._newest is None and not self._done:
                self._cond.wait()
            if self._newest is None:
                if self.error is not None:
                    raise self.error
                return None
            (frame, captured), skipped = self._newest, self._skipped
            self._newest, self._skipped = None, []
        return frame, captured, skipped

    def __iter__(self) -> Iterator[tuple[Frame, float, list[Skipped]]]:
        """:meth:`take` until the source ends."""
        while (taken := self.take()) is not None:
            yield taken
