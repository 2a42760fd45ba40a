"""The simulator's side of the session driver: a virtual clock, trace-driven links, profiled compute.

:class:`SimIO` is the :class:`~mobile_client.session.SessionIO` of
``splitedge simulate``'s ``auto`` policy: the live device's session driver
runs on it unchanged, so the order of calls into the controller is the live
client's by construction. Time moves only when something takes time: device
compute (the profile's medians), a payload or a ping on the uplink and its
answer on the downlink (:class:`~simulators.links.Link`), a wait that ends
at a deadline or a timeout.

The model, and why (see also ``simulators/experiment.py``):

* A remote frame's payload is sent once the device part is done; the edge
  answers ``edge`` seconds after the payload arrives, on a separate
  downlink. A hedged frame's local continuation finishes at ``sent +``
  :func:`~mobile_client.costs.hedge_local_ms`; whichever is first serves the
  frame (live, the local run stops at the next stage boundary, at most one
  stage later, which is not modelled).
* A frame given up on (deadline or lost hedge) still occupies the uplink
  (TCP keeps sending it: the link's FIFO models that, since the transfer
  was committed), and its result arrives when it would have: the session
  learns of it at its next look after that time, as the live client's
  reader thread timestamps it.
* Link probes, the RTT pings at connect among them (one-byte probes),
  occupy the uplink like any payload and are answered at once
  (:data:`PROBE_REPLY_BYTES` down).
* Pipelined (:meth:`SimIO.submit`, :meth:`SimIO.collect`): the payload
  leaves at submit; collect starts when the device is free again (after the
  next frame's device part), so a hedged frame's local continuation starts
  then, a deadline already past gives up at once, and a result that came
  meanwhile is taken as it is, at that time.
"""

from __future__ import annotations

import bisect
from typing import Any, Protocol

from mobile_client.costs import ModeCosts, hedge_local_ms
from mobile_client.session import Arrival, Encoded, Outcome

__all__ = ["SimIO", "mode_table", "PROBE_REPLY_BYTES"]

PROBE_REPLY_BYTES = 30  # a link probe's answer: an empty Result with its framing


class _Link(Protocol):
    def send(self, nbytes: int, at_s: float) -> Any: ...  # a Delivery with .arrival_s
    def peek(self, nbytes: int, at_s: float) -> Any: ...


def mode_table(costs: ModeCosts) -> dict[str, tuple[float, int, float]]:
    """(device s, payload bytes, edge s) per mode."""
    return {
        "local": (costs.t_full_device_ms / 1e3, 0, 0.0),
        "split": (costs.t_head_device_ms / 1e3, int(costs.bytes_split), costs.edge_ms("split") / 1e3),
        "offload": (costs.t_jpeg_encode_ms / 1e3, int(costs.bytes_jpeg), costs.edge_ms("offload") / 1e3),
    }


class SimIO:
    """A virtual clock over an uplink and a downlink; frames are priced from ``costs`` (the simulated device's)."""

    has_edge = True

    def __init__(self, up: _Link, down: _Link, costs: ModeCosts, result_bytes: int) -> None:
        self.up, self.down, self.costs, self.result_bytes = up, down, costs, result_bytes
        self.table = mode_table(costs)
        self.clock = 0.0
        self._start = 0.0  # the current frame's start
        self._probe_seq = 0
        # Answers on their way, sorted: (at, kind, mode, bytes, send-to-answer s, edge s, id); kind "late" (a
        # given-up frame's result) or "probe" (a link probe's answer).
        self._pending: list[tuple[float, str, str, int, float, float, int]] = []
        self._flight: dict[int, tuple[float, float]] = {}  # pipelined: frame id -> (sent, result arrives)

    def now(self) -> float:
        return self.clock

    def begin(self, at_s: float) -> None:
        """The device starts its next frame at ``at_s`` (not before it is free)."""
        self.clock = self._start = at_s if at_s > self.clock else self.clock

    def connected(self) -> bool:
        return True

    def connect(self, timeout_s: float) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass

    def send_probe(self, nbytes: int) -> int:
        answered = self.down.send(PROBE_REPLY_BYTES, self.up.send(nbytes, self.clock).arrival_s).arrival_s
        self._probe_seq += 1
        probe_id = -self._probe_seq  # out of the way of frame ids
        bisect.insort(self._pending, (answered, "probe", "local", nbytes, answered - self.clock, 0.0, probe_id))
        return probe_id

    def arrivals(self) -> list[Arrival]:
        out = []
        while self._pending and self._pending[0][0] <= self.clock:
            at, _kind, _mode, _nbytes, total_s, edge_s, msg_id = self._pending.pop(0)
            out.append(Arrival(msg_id, total_s, edge_s, at))
        return out

    def run_local(self, frame: Any) -> tuple[Any, float]:
        dev_s = self.table["local"][0]
        self.clock = self.clock + dev_s
        return None, dev_s

    def encode(self, frame: Any, mode: str, hedge: bool) -> Encoded:
        dev_s, nbytes, _ = self.table[mode]
        self.clock = self._start + dev_s
        return Encoded(True, nbytes, dev_s)

    def remote(self, frame_id: int, frame: Any, mode: str, encoded: Encoded, deadline_s: float | None,
               hedge: bool) -> Outcome:
        dev_s, nbytes, edge_s = self.table[mode]
        start, sent = self._start, self.clock
        done = self.down.send(self.result_bytes, self.up.send(nbytes, sent).arrival_s + edge_s).arrival_s
        late = (done, "late", mode, nbytes, done - sent, edge_s, frame_id)
        if hedge:
            local_done = sent + hedge_local_ms(self.costs, mode) / 1e3
            if local_done < done:  # the local continuation won the race; the payload and its result still travel
                bisect.insort(self._pending, late)
                self.clock = local_done
                return Outcome("hedge", local_done, seconds=local_done - sent, network_s=local_done - sent,
                               device_s=local_done - start)
        elif deadline_s is not None and done > deadline_s:
            # Given up at the deadline (at once if the head outlasted it, as the live client's zero wait).
            gave_up = max(deadline_s, sent)
            bisect.insort(self._pending, late)
            self.clock = gave_up
            return Outcome("deadline", gave_up, seconds=gave_up - sent, network_s=gave_up - sent)
        self.clock = done
        return Outcome("result", done, seconds=done - start - dev_s, server_s=edge_s,
                       network_s=done - sent - edge_s, compute_s=edge_s)

    def submit(self, frame_id: int, mode: str, encoded: Encoded) -> Outcome | None:
        """A pipelined frame's payload leaves now; its result's arrival is fixed by the links as it goes."""
        _dev_s, nbytes, edge_s = self.table[mode]
        sent = self.clock
        self._flight[frame_id] = (sent, self.down.send(self.result_bytes, self.up.send(nbytes, sent).arrival_s
                                                       + edge_s).arrival_s)
        return None

    def collect(self, frame_id: int, frame: Any, mode: str, encoded: Encoded, deadline_s: float | None,
                hedge: bool) -> Outcome:
        """How a pipelined frame ends, from now (the device free again): as :meth:`remote`, shifted to now."""
        dev_s, nbytes, edge_s = self.table[mode]
        (sent, done), free = self._flight.pop(frame_id), self.clock
        late = (done, "late", mode, nbytes, done - sent, edge_s, frame_id)
        if hedge:
            local_done = free + hedge_local_ms(self.costs, mode) / 1e3
            if local_done < done:
                bisect.insort(self._pending, late)
                self.clock = local_done
                return Outcome("hedge", local_done, seconds=local_done - sent, network_s=local_done - sent,
                               device_s=dev_s + (local_done - free))
        elif deadline_s is not None and done > deadline_s:
            gave_up = max(deadline_s, free)
            bisect.insort(self._pending, late)
            self.clock = gave_up
            return Outcome("deadline", gave_up, seconds=gave_up - sent, network_s=gave_up - sent)
        self.clock = max(free, done)
        return Outcome("result", self.clock, seconds=done - sent, server_s=edge_s, network_s=done - sent - edge_s,
                       compute_s=edge_s)
