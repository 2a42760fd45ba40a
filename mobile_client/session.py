"""The session driver: the one order of calls into the controller, for any clock and any transport.

Connect (RTT pings and the connect probe, answered in the background), and per frame: reconnect when the
backoff says so, hand over what came back meanwhile (late results, link probe
answers), decide, carry the decision out (local, a link probe beside it, or a
remote frame that may end in its result, a deadline, a lost hedge or a lost
server), and report what happened. Written once here; the live device
(:class:`mobile_client.runtime.DeviceRuntime`: the real clock, gRPC and torch)
and the simulator (:class:`simulators.sim_io.SimIO`: a virtual clock and a
link model) each supply a :class:`SessionIO`, so a simulated figure and a live run
follow the same rules step for step.

Every frame gets exactly one :class:`Served` record, whatever the edge or the
link did (a failure of the device's own compute is not caught: it is a bug).

Pipelined (``pipeline=True``, an IO with :class:`PipelineIO`'s two calls):
:meth:`Session.feed` starts a frame while the one before is still on the
network or the edge, so the device part of frame n+1 (its head, JPEG encode or
local run) overlaps frame n's transfer and edge time. At most two frames are
held, one in each stage: the payload leaves once the frame before has settled,
and records come out in frame order (docs/pipeline.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from .controller import Controller
from .errors import EdgeUnavailable
from .decision import Decision

__all__ = ["Session", "SessionIO", "PipelineIO", "Served", "Arrival", "Encoded", "Outcome", "EdgeUnavailable",
           "PING_BYTES"]

PING_BYTES = 1  # an RTT ping is a link probe of one filler byte: the server answers it at once


@dataclass(frozen=True)
class Arrival:
    """Something the edge sent back that nobody was waiting for: a late result or a link probe's answer."""

    msg_id: int  # the frame id or the probe id it answers
    seconds: float  # from sending to arrival
    server_s: float  # what the edge held it (queue + compute)
    at_s: float  # arrival, on the session's clock
    code: int = 0  # a gRPC status code; 0: OK
    error: str = ""


@dataclass(frozen=True)
class Encoded:
    """A remote frame's payload, made on the device; ``payload`` None: the prefilter found nothing to send."""

    payload: Any
    nbytes: int
    device_s: float  # head (split) or JPEG encode (offload) on the device
    extra: Any = None  # what the IO keeps for the frame's hedged local run (live: the split point's features)


@dataclass(frozen=True)
class Outcome:
    """How a remote frame ended.

    ``kind``: ``"result"`` (in time), ``"deadline"`` (given up on: the session
    then runs the frame locally), ``"hedge"`` (the hedged local run finished
    first and serves it), ``"lost"`` (the server was lost before the result;
    with ``outputs`` the hedged local run served it anyway), ``"refused"``
    (the payload could not be sent, e.g. over the message limit).
    """

    kind: str
    at_s: float  # when it ended, on the session's clock
    seconds: float = 0.0  # result: send to result; deadline, hedge: send to giving up
    server_s: float = 0.0  # result: what the edge held it (queue + compute)
    network_s: float = 0.0  # the link's share, for the record
    compute_s: float = 0.0  # result: the edge's compute alone, for the record
    device_s: float = 0.0  # hedge, lost with outputs: the device's whole time (head + local run)
    outputs: Any = None  # result: the edge's detections; hedge: the local run's
    code: int = 0
    error: str | None = None


@dataclass
class Served:
    """One frame's record: what served it, why, and where the time went (seconds on the session's clock)."""

    decision: Decision
    mode: str
    reason: str
    start_s: float
    done_s: float = 0.0
    device_s: float = 0.0  # head / JPEG encode and any local run on the device
    network_s: float = 0.0
    server_s: float = 0.0  # the edge's compute
    payload_bytes: int = 0
    probe_bytes: int = 0  # a link probe sent beside this (local) frame
    fallback: bool = False  # the frame wanted the edge (or was given up on); local served it
    filtered: bool = False  # the prefilter found nothing of interest: nothing sent, no detections
    error: str | None = None
    outputs: Any = None  # detections, in the IO's own form
    frame_id: int | None = None
    wait_s: float = 0.0  # pipelined: from the end of its device part until the frame before had settled
    remote_s: float = 0.0  # a result's send-to-result time: its network/edge stage


class SessionIO(Protocol):
    """What the session needs from a device and a transport; raise :class:`EdgeUnavailable` for a lost edge."""

    has_edge: bool  # False: local only, never connect

    def now(self) -> float: ...
    def connected(self) -> bool: ...
    def connect(self, timeout_s: float) -> dict[str, float]: ...  # the edge's latencies of this model ({}: unknown)
    def close(self) -> None: ...
    def send_probe(self, nbytes: int) -> int: ...  # its id; ValueError if it cannot be sent
    def arrivals(self) -> list[Arrival]: ...  # what came back by now, oldest first
    def run_local(self, frame: Any) -> tuple[Any, float]: ...  # outputs, device seconds
    def encode(self, frame: Any, mode: str, hedge: bool) -> Encoded: ...
    def remote(self, frame_id: int, frame: Any, mode: str, encoded: Encoded, deadline_s: float | None,
               hedge: bool) -> Outcome: ...


class PipelineIO(SessionIO, Protocol):
    """:meth:`SessionIO.remote` in two halves, so that the device can work on the next frame in between."""

    def submit(self, frame_id: int, mode: str, encoded: Encoded) -> Outcome | None: ...  # None: sent, in flight
    def collect(self, frame_id: int, frame: Any, mode: str, encoded: Encoded, deadline_s: float | None,
                hedge: bool) -> Outcome: ...  # from now: a result already there, else wait, race or give up


@dataclass
class _InFlight:
    """A pipelined frame whose payload is on the network/edge stage."""

    frame_id: int
    frame: Any
    decision: Decision
    served: Served
    encoded: Encoded
    lost: str | None = None  # the edge was lost while it was away: no result will come, the device serves it


class Session:
    """Drives one controller over one :class:`SessionIO`: :meth:`connect`, then :meth:`step` per frame (pipelined:
    :meth:`feed` per frame and :meth:`flush` at the end)."""

    def __init__(self, controller: Controller, io: SessionIO, *, rtt_pings: int = 3,
                 connect_timeout_s: float = 5.0, pipeline: bool = False) -> None:
        if pipeline and not (hasattr(io, "submit") and hasattr(io, "collect")):
            raise TypeError(f"{type(io).__name__} cannot pipeline: it has no submit() and collect()")
        self.controller, self.io, self.pipeline = controller, io, pipeline
        self._in_flight: _InFlight | None = None
        self.rtt_pings, self.connect_timeout_s = rtt_pings, connect_timeout_s
        self.warnings: list[str] = []
        self._abandoned: dict[int, tuple[str, int]] = {}  # frame id -> (mode, payload bytes) of frames given up on
        self._probes: dict[int, int] = {}  # link probe id -> its bytes, until answered
        self._pings: set[int] = set()  # ids of the RTT pings sent at connect, until answered

    # ---------------------------------------------------------------- connect
    def connect(self) -> bool:
        """Connect, then send the RTT pings and the connect probe without waiting for them; False if the edge is
        unavailable.

        Nothing here waits for the link: the answers are handed to the
        controller when they come, like any link probe's, while local serves
        the frames (docs/controller.md, "Connect"). Only opening the connection
        itself is waited for, at most one local run's time, so a dead link
        holds no frame for longer than running it here would.
        """
        if not self.io.has_edge:
            return False
        try:
            latencies = self.io.connect(self._connect_wait_s())
        except EdgeUnavailable as exc:
            self._edge_lost(exc)
            return False
        self.controller.server_ok(self.io.now())
        if "tail" in latencies and "offload_edge" in latencies:  # plan with the edge's own measured times
            self.controller.costs = replace(self.controller.costs, t_tail_edge_ms=latencies["tail"],
                                            t_full_edge_ms=latencies["offload_edge"])
        self._abandoned.clear()
        self._probes.clear()
        self._pings.clear()
        try:
            for _ in range(max(0, self.rtt_pings)):  # tiny link probes: their round trip is the RTT
                self._pings.add(self.io.send_probe(PING_BYTES))
            nbytes = self.controller.connect_probe(self.io.now())
            if nbytes:
                self._probes[self.io.send_probe(nbytes)] = nbytes
        except EdgeUnavailable as exc:
            self._edge_lost(exc)
            return False
        except ValueError as exc:  # over the server's message limit: no probe, the frames will tell
            self.controller.probe_lost(self.io.now())
            self.warnings.append(f"link probe at connect not sent: {exc}")
        return True

    def _connect_wait_s(self) -> float:
        """How long opening the connection may hold the first frame: one local run (the connect timeout if the
        controller knows no local time)."""
        local_s = self.controller.effective_costs().t_full_device_ms / 1e3
        return min(self.connect_timeout_s, local_s) if local_s > 0 else self.connect_timeout_s

    # ------------------------------------------------------------------ frame
    def step(self, frame_id: int, frame: Any) -> Served:
        """Serve one frame, starting now; the record says how."""
        start = self.io.now()
        if self.io.has_edge and not self.io.connected() and self.controller.should_reconnect(start):
            self.connect()
        self._collect()
        decision = self.controller.choose(start)
        served = Served(decision, decision.mode, decision.reason, start, frame_id=frame_id)
        if decision.reason == "no-server" or (decision.mode != "local" and not self.io.connected()):
            served.fallback = True  # the frame wanted the edge; local serves it meanwhile
            self._local(frame, served)
        elif decision.mode == "local":
            if decision.probe_bytes > 0:
                self._send_probe(decision.probe_bytes, served)
            self._local(frame, served)
        else:
            self._remote(frame_id, frame, decision, served)
        served.done_s = self.io.now()
        return served

    def _local(self, frame: Any, served: Served) -> None:
        outputs, seconds = self.io.run_local(frame)
        self.controller.observe_local(seconds, served.start_s)
        served.mode, served.outputs = "local", outputs
        served.device_s = served.device_s + seconds

    def _remote(self, frame_id: int, frame: Any, decision: Decision, served: Served) -> None:
        mode = decision.mode
        encoded = self.io.encode(frame, mode, decision.hedge)
        served.device_s = encoded.device_s
        if encoded.payload is None:  # the prefilter found nothing of interest: send nothing
            served.filtered = True
            return
        served.payload_bytes = encoded.nbytes
        out = self.io.remote(frame_id, frame, mode, encoded, decision.deadline_s, decision.hedge)
        self._ended(frame_id, frame, mode, served, out)

    def _ended(self, frame_id: int, frame: Any, mode: str, served: Served, out: Outcome) -> None:
        """Report how a remote frame ended, and serve it on the device where the edge did not."""
        nbytes = served.payload_bytes
        if out.kind == "result":
            self._collect()  # late results that arrived while waiting came first
            self.controller.observe(mode, nbytes, out.seconds, out.server_s, out.at_s, out.compute_s)
            served.network_s, served.server_s, served.outputs = out.network_s, out.compute_s, out.outputs
            served.remote_s = out.seconds
            if out.code != 0:
                served.error = out.error
        elif out.kind == "hedge":  # the local run won: like a missed deadline, the result is reported late
            served.mode, served.reason, served.fallback = "local", "hedge", True
            served.device_s, served.network_s, served.outputs = out.device_s, out.network_s, out.outputs
            self._give_up(frame_id, mode, nbytes, out.seconds, out.at_s)
        elif out.kind == "deadline":  # not a server failure: the stream stays up, the result (if it comes) is late
            self._give_up(frame_id, mode, nbytes, out.seconds, out.at_s)
            served.reason, served.fallback, served.network_s = "deadline", True, out.network_s
            self._local(frame, served)
        else:  # lost or refused: the edge failed this frame; the device serves it
            if out.kind == "lost":
                self.io.close()
                self.controller.server_failed(out.at_s)
            served.fallback, served.error = True, out.error
            if out.outputs is None:
                self._local(frame, served)
            else:  # the hedged local run went on and served it
                served.mode, served.device_s, served.outputs = "local", out.device_s, out.outputs

    # -------------------------------------------------------------- pipelined
    @property
    def busy(self) -> bool:
        """A pipelined frame is on the network/edge stage (:meth:`flush` settles it)."""
        return self._in_flight is not None

    def feed(self, frame_id: int, frame: Any) -> list[Served]:
        """Start one frame now; the records finished meanwhile, in frame order (this frame's too if it is done).

        Not pipelined: :meth:`step`. Pipelined: the same steps as :meth:`step`, but the frame's device part
        runs while the frame before is on the network/edge; then the frame before settles; then this frame's
        payload leaves and stays in flight until the next :meth:`feed` or :meth:`flush`. Call :meth:`flush`
        before waiting for a frame that has not come yet (nothing would overlap the wait) and at the end.
        """
        if not self.pipeline:
            return [self.step(frame_id, frame)]
        start = self.io.now()
        if self.io.has_edge and not self.io.connected() and self.controller.should_reconnect(start):
            self.connect()
        self._collect()
        decision = self.controller.choose(start)
        served = Served(decision, decision.mode, decision.reason, start, frame_id=frame_id)
        fallback = decision.reason == "no-server" or (decision.mode != "local" and not self.io.connected())
        if fallback or decision.mode == "local":
            served.fallback = fallback
            self._local(frame, served)
            done = self._settle()
            if not fallback and decision.probe_bytes > 0:  # once the frame before has left the link
                self._send_probe(decision.probe_bytes, served)
            return done + [self._done(served)]
        encoded = self.io.encode(frame, decision.mode, decision.hedge)
        served.device_s = encoded.device_s
        ready = self.io.now()
        done = self._settle()
        served.wait_s = self.io.now() - ready
        if encoded.payload is None:  # the prefilter found nothing of interest: send nothing
            served.filtered = True
        elif not self.io.connected():  # the frame before lost the edge: the device serves this one
            served.fallback = True
            self._local(frame, served)
        elif self._send(frame_id, frame, decision, served, encoded):
            return done
        return done + [self._done(served)]

    def flush(self) -> list[Served]:
        """Settle the frame in flight, if any: its record (or nothing)."""
        return self._settle()

    def _send(self, frame_id: int, frame: Any, decision: Decision, served: Served, encoded: Encoded) -> bool:
        """Put a pipelined frame's payload on the link; True: in flight, else it has ended (refused, lost)."""
        served.payload_bytes = encoded.nbytes
        out = self.io.submit(frame_id, decision.mode, encoded)
        if out is not None:
            self._ended(frame_id, frame, decision.mode, served, out)
            return False
        self.controller.pipeline_sent(decision.mode, self.io.now())
        self._in_flight = _InFlight(frame_id, frame, decision, served, encoded)
        return True

    def _settle(self) -> list[Served]:
        """Wait for the frame in flight to end (result, deadline, hedge or loss) and report it; its record."""
        f, self._in_flight = self._in_flight, None
        if f is None:
            return []
        self.controller.pipeline_settled(self.io.now())
        if f.lost is not None:  # the stream it was on is gone (already reported): the device serves it
            f.served.fallback, f.served.error = True, f.lost
            self._local(f.frame, f.served)
        else:
            d = f.decision
            out = self.io.collect(f.frame_id, f.frame, d.mode, f.encoded, d.deadline_s, d.hedge)
            self._ended(f.frame_id, f.frame, d.mode, f.served, out)
        return [self._done(f.served)]

    def _done(self, served: Served) -> Served:
        served.done_s = self.io.now()
        return served

    def _give_up(self, frame_id: int, mode: str, nbytes: int, waited_s: float, at_s: float) -> None:
        """Stop waiting for a remote frame's result (served locally instead); its result, if it comes, is late.

        Registered before collecting what arrived meanwhile, so that the frame's own result, if it has just
        come, is not dropped as a stranger's. What arrived while waiting is older news than this miss.
        """
        self._abandoned[frame_id] = (mode, nbytes)
        self.controller.missed(mode, nbytes, waited_s, at_s)
        self._collect()

    # --------------------------------------------------------- what came back
    def _collect(self) -> None:
        """Hand the controller what came back since the last look: late results and link probes' answers."""
        if not self.io.has_edge or not self.io.connected():
            return
        try:
            arrivals = self.io.arrivals()
        except EdgeUnavailable as exc:  # found while running locally: the stream broke or went silent
            self._edge_lost(exc)
            return
        for a in arrivals:
            if a.msg_id in self._pings:
                self._pings.discard(a.msg_id)
                if a.code == 0:
                    self.controller.observe_rtt(max(0.0, a.seconds - a.server_s), a.at_s)
                continue
            nbytes = self._probes.pop(a.msg_id, None)
            if nbytes is not None:
                self._probe_answered(a, nbytes)
                continue
            abandoned = self._abandoned.pop(a.msg_id, None)
            if abandoned is not None:
                self.controller.observe_late(abandoned[0], abandoned[1], a.seconds, a.server_s, a.at_s)

    def _probe_answered(self, a: Arrival, nbytes: int) -> None:
        if a.code != 0:  # a server without link probes: probe with frames instead
            self.controller.probe_lost(a.at_s)
            self.controller.link_probes = False
            self.warnings.append(f"the edge refused a link probe ({a.error}); probing with frames instead")
            return
        self.controller.observe_probe(nbytes, a.seconds, a.server_s, a.at_s)

    def _send_probe(self, nbytes: int, served: Served) -> None:
        """A link probe beside a local frame: filler bytes the server answers at once."""
        if not self.io.connected():
            self.controller.probe_lost(self.io.now())
            return
        try:
            self._probes[self.io.send_probe(nbytes)] = nbytes
        except (EdgeUnavailable, ValueError) as exc:  # not sent: the frame goes on locally all the same
            self.controller.probe_lost(self.io.now())
            self.warnings.append(f"link probe not sent: {exc}")
            return
        served.probe_bytes = nbytes

    def _edge_lost(self, exc: EdgeUnavailable) -> None:
        """The server cannot be reached or stopped answering: local from now on, reconnect after the backoff."""
        self.io.close()
        if self._in_flight is not None:  # its result went with the stream
            self._in_flight.lost = f"edge unavailable ({exc})"
        backoff = self.controller.server_failed(self.io.now())
        self.warnings.append(f"edge unavailable ({exc}); local mode, retry in {backoff:.1f} s")
