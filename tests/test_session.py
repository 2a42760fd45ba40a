"""The one session driver, run by the live device's IO and by the simulator's, on the same scripted link.

The live side is :class:`~mobile_client.runtime.DeviceRuntime` (its LiveIO: deadlines, the hedged race
between stages, late results and link probes through the client's late queue) with a scripted edge client
and a device of fixed compute times, on a virtual clock so the run is exact; the simulator's side is
``simulate(..., "auto", ...)`` with the same link. Same decisions on every frame, or the two have drifted.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts
from mobile_client.edge_client import DeadlineExceeded, LateResult
from mobile_client.runtime import DeviceRuntime, RuntimeOptions
from mobile_client.errors import EdgeUnavailable
from mobile_client.sources import Frame
from protos import splitedge_pb2 as pb
from simulators.experiment import SimConfig, simulate
from simulators.traces import ConstantTrace

UP_S, DOWN_S = 0.020, 0.004  # fixed one-message times: any size takes this long
OUTAGE = (1.0, 2.0)  # "outage": the uplink delivers nothing sent in here until it ends
SLOW = (1.5, 0.200)  # "slow start": until 1.5 s a payload takes 200 ms up (local wins), then UP_S; pings do not
SMALL = 1_000  # ... so the RTT pings at connect see the fast path: bytes below this are never slow
LOCAL_MS, HEAD_MS, JPEG_MS, TAIL_MS, EDGE_FULL_MS = 60.0, 10.0, 2.0, 9.0, 12.0
SPLIT_PAYLOAD = pb.Payload(split_point="head", tensor=pb.Tensor(codec="uint8", data=bytes(2_000)))
JPEG_PAYLOAD = pb.Payload(tensor=pb.Tensor(codec="jpeg", data=bytes(9_000)))
COSTS = ModeCosts(LOCAL_MS, HEAD_MS, TAIL_MS, EDGE_FULL_MS, JPEG_MS, SPLIT_PAYLOAD.ByteSize(), JPEG_PAYLOAD.ByteSize())
FRAMES = 80


class ScriptedLink:
    """A message sent at ``t`` arrives ``fixed_s`` later (``slow[1]`` before ``slow[0]`` unless it is small), or
    ``fixed_s`` after the outage if sent during it."""

    def __init__(self, fixed_s: float, outage: tuple[float, float] | None = None,
                 slow: tuple[float, float] | None = None) -> None:
        self.fixed_s, self.outage, self.slow = fixed_s, outage, slow

    def arrival(self, at_s: float, nbytes: int) -> float:
        if self.outage is not None and self.outage[0] <= at_s < self.outage[1]:
            at_s = self.outage[1]
        if self.slow is not None and at_s < self.slow[0] and nbytes >= SMALL:
            return at_s + self.slow[1]
        return at_s + self.fixed_s

    def send(self, nbytes: int, at_s: float) -> SimpleNamespace:
        return SimpleNamespace(arrival_s=self.arrival(at_s, nbytes))

    peek = send


def links(scenario: str) -> tuple[ScriptedLink, ScriptedLink]:
    if scenario == "outage":
        return ScriptedLink(UP_S, outage=OUTAGE), ScriptedLink(DOWN_S)
    return ScriptedLink(UP_S, slow=SLOW), ScriptedLink(DOWN_S)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(0.0, s)

    def until(self, t: float) -> None:
        self.t = max(self.t, t)


class ScriptedClient:
    """The EdgeClient calls LiveIO makes, answered from the scripted links on the virtual clock."""

    connected = True

    def __init__(self, clock: Clock, scenario: str) -> None:
        self.clock = clock
        self.up, self.down = links(scenario)
        self.pending: dict[int, tuple[float, float, pb.Result]] = {}  # id -> (sent, arrival, result)
        self._probes = 0

    def connect(self, timeout_s: float) -> SimpleNamespace:
        return SimpleNamespace(models=[])

    def close(self) -> None:
        pass

    def ping(self, timeout_s: float) -> float:
        t = self.clock()
        back = self.down.arrival(self.up.arrival(t, 100), 300)
        if back - t > timeout_s:
            self.clock.sleep(timeout_s)
            raise EdgeUnavailable("ping timed out")
        self.clock.until(back)
        return back - t

    def send(self, frame: pb.Frame) -> float:
        t = self.clock()
        edge_s = 0.0 if frame.probe else (TAIL_MS if frame.payload.split_point else EDGE_FULL_MS) / 1e3
        nbytes = frame.ByteSize()
        arrival = self.down.arrival(self.up.arrival(t, nbytes) + edge_s, 300)
        self.pending[frame.frame_id] = (t, arrival, pb.Result(frame_id=frame.frame_id, server_ms=edge_s * 1e3))
        return t

    def send_probe(self, nbytes: int) -> tuple[int, float]:
        self._probes += 1
        probe_id = (1 << 63) + self._probes
        return probe_id, self.send(pb.Frame(frame_id=probe_id, probe=bytes(nbytes)))

    def wait(self, frame_id: int, sent_at: float, timeout_s: float = 30.0, until: float = math.inf):
        sent, arrival, result = self.pending[frame_id]
        if arrival > until:
            self.clock.until(until)
            return None
        self.clock.until(arrival)
        del self.pending[frame_id]
        return result, arrival - sent

    def infer(self, frame: pb.Frame, timeout_s: float = 30.0, deadline_s: float | None = None):
        sent = self.send(frame)
        got = self.wait(frame.frame_id, sent, timeout_s, sent + deadline_s if deadline_s is not None else math.inf)
        if got is None:
            raise DeadlineExceeded("deadline", self.clock() - sent)
        return got

    def take_late(self, timeout_s: float = math.inf) -> list[LateResult]:
        now = self.clock()
        arrived = sorted((arr, fid) for fid, (_, arr, _) in self.pending.items() if arr <= now)
        out = []
        for arr, fid in arrived:
            sent, _, result = self.pending.pop(fid)
            out.append(LateResult(fid, result, arr - sent, arr))
        return out


class FixedDevice:
    """TorchDevice's calls, taking fixed times on the virtual clock; hedged runs in four stages."""

    device_slowdown = 100.0  # a stage's real part is 1/100 of it: the rest is a wait the edge's result can end
    model = SimpleNamespace(family="detector", name="scripted")
    NOTHING = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    @staticmethod
    def image(rgb):
        return rgb  # the calls below take no pixels

    def run_local(self, image):
        self.clock.sleep(LOCAL_MS / 1e3)
        return self.NOTHING, LOCAL_MS / 1e3

    def encode(self, image, mode, hedge):
        s = (HEAD_MS if mode == "split" else JPEG_MS) / 1e3
        self.clock.sleep(s)
        return (SPLIT_PAYLOAD if mode == "split" else JPEG_PAYLOAD), s, None

    def local_steps(self, image, payload, features):
        for _ in range(4):
            self.clock.sleep(LOCAL_MS / 4 / 1e3 / self.device_slowdown)
            yield
        return self.NOTHING


def controller(hedge: bool) -> Controller:
    return Controller(COSTS, probe_interval_s=0.5, hedge=hedge)


def live_decisions(scenario: str, hedge: bool) -> list[tuple[str, str, int, int]]:
    """(mode, reason, payload bytes, link probe bytes) of every frame, as the live runtime records them."""
    clock = Clock()
    runtime = DeviceRuntime(None, controller(hedge), ScriptedClient(clock, scenario), RuntimeOptions(rtt_pings=3),
                            device=FixedDevice(clock), clock=clock, sleep=clock.sleep)
    assert runtime.connect()
    rgb = np.zeros((1, 1, 3), np.uint8)
    records = [runtime.process(Frame(i, "scripted", rgb)) for i in range(FRAMES)]
    return [(r["mode"], r["reason"], r["payload_bytes"], r["probe_bytes"]) for r in records]


def simulated_decisions(scenario: str, hedge: bool) -> list[tuple[str, str, int, int]]:
    class ScriptedConfig(SimConfig):
        def links(self, trace):
            return links(scenario)

    config = ScriptedConfig(COSTS, fps=1e6, frames=FRAMES, controller_factory=lambda c: controller(hedge))
    return [(r.mode, r.reason, r.payload_bytes, r.probe_bytes) for r in simulate(ConstantTrace(1.0), "auto", config)]


@pytest.mark.parametrize("hedge", [True, False], ids=["hedged", "deadlines"])
def test_live_and_simulated_sessions_decide_alike_through_an_outage(hedge):
    live, simulated = live_decisions("outage", hedge), simulated_decisions("outage", hedge)
    assert live == simulated
    # The script is not trivial: the outage makes frames miss (a lost hedge, or a deadline), the controller
    # falls back to local, and it comes back to the edge after the outage.
    reasons = [reason for _, reason, _, _ in live]
    missed = reasons.index("hedge" if hedge else "deadline")
    assert "stalled" in reasons[missed:]
    assert any(mode != "local" for mode, *_ in live[missed + 1:])
    assert {mode for mode, *_ in live[:missed]} - {"local"}


@pytest.mark.parametrize("hedge", [True, False], ids=["hedged", "deadlines"])
def test_live_and_simulated_sessions_decide_alike_with_link_probes(hedge):
    live, simulated = live_decisions("slow start", hedge), simulated_decisions("slow start", hedge)
    assert live == simulated
    # Local while the uplink is slow, with link probes beside local frames; their answers show the link got
    # fast, and the controller goes remote.
    probed = [i for i, (mode, _, _, probe) in enumerate(live) if probe]
    assert probed and all(live[i][0] == "local" for i in probed)
    assert live[0][0] == "local" and live[-1][0] != "local"
