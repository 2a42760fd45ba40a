"""The controller's view of a pipelined device (issue 16): frame n+1's device part runs while frame n is away.

A remote frame has two stages: the device's (split head or JPEG encode) and the
network/edge's (uplink, the edge's queue and compute, downlink). A pipelined
session (:class:`mobile_client.session.Session` with ``pipeline=True``) holds at
most two frames, one in each stage; a payload leaves once the frame before it
has settled, so on a steady link a frame is served every ``max(stage)``
instead of every ``sum(stage)``. Why, and what it measured: docs/pipeline.md.

What changes for the controller (:class:`StageClock`, told by the session when
a payload leaves and when its frame settles):

* **Latency.** With a frame on the network/edge for ``busy`` more ms, a frame
  starting now finishes after ``max(device part, busy) + network/edge part``
  (:func:`behind`); local, ``max(local run, busy)``, since its line comes after
  the frame before's. Deadlines are set from this.
* **Occupancy.** A pipelined session starts a frame while another is away only
  when the frame was already waiting (docs/pipeline.md, "When it overlaps"):
  the input is then throughput-bound, and what each frame costs the stream is
  the stage it holds longest, ``max(device part, network/edge part)``
  (:func:`occupancy`); local holds the device for its whole run. The choice
  and hysteresis compare these instead of latencies.

Nothing is in flight in a session that does not pipeline, and then both views
are the controller's usual predictions, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

from .costs import ModeCosts

__all__ = ["StageClock", "device_ms", "behind", "occupancy"]


def device_ms(costs: ModeCosts, mode: str) -> float:
    """The device's part of a frame of ``mode``: the whole model, the split head, or the JPEG encode."""
    return {"local": costs.t_full_device_ms, "split": costs.t_head_device_ms, "offload": costs.t_jpeg_encode_ms}[mode]


def behind(predicted: Mapping[str, float], costs: ModeCosts, busy_ms: float) -> dict[str, float]:
    """Each mode's latency (ms) when the network/edge stage is still busy for ``busy_ms`` with the frame before."""
    out = {}
    for m, ms in predicted.items():
        dev = device_ms(costs, m)
        out[m] = max(dev, busy_ms) + (ms - dev)
    return out


def occupancy(predicted: Mapping[str, float], costs: ModeCosts) -> dict[str, float]:
    """Each mode's per-frame stage occupancy (ms): the longer of its device part and its network/edge part."""
    out = {}
    for m, ms in predicted.items():
        dev = device_ms(costs, m)
        out[m] = max(dev, ms - dev)
    return out


class StageClock:
    """The frame on the network/edge stage, if any: its mode and when its payload left (session clock, s)."""

    def __init__(self) -> None:
        self._flight: tuple[str, float] | None = None

    @property
    def busy(self) -> bool:
        return self._flight is not None

    def sent(self, mode: str, at_s: float) -> None:
        self._flight = (mode, at_s)

    def settled(self) -> None:
        self._flight = None

    def busy_ms(self, predicted: Mapping[str, float], costs: ModeCosts, now_s: float) -> float:
        """What is left of the frame in flight's network/edge stage, as predicted now (0 if it is overdue)."""
        if self._flight is None or self._flight[0] not in predicted:
            return 0.0
        mode, sent_s = self._flight
        stage_ms = predicted[mode] - device_ms(costs, mode)
        return max(0.0, sent_s * 1000.0 + stage_ms - now_s * 1000.0)

    def views(self, predicted: dict[str, float], delivering: dict[str, float], costs: ModeCosts,
              now_s: float) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """(latencies, delivering latencies, occupancies) of a frame starting now; the inputs as they are when
        nothing is in flight."""
        if self._flight is None:
            return predicted, delivering, predicted
        busy = self.busy_ms(predicted, costs, now_s)
        return behind(predicted, costs, busy), behind(delivering, costs, busy), occupancy(predicted, costs)
