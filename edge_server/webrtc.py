"""WebRTC for the browser page (aiortc): one peer connection per page session, every frame through the gRPC door.

Why the same door: a frame that arrives on a data channel is the protobuf ``Frame`` a gRPC device sends, and a
frame of the video track becomes the offload ``Frame`` a gRPC device would send (the model's resize, JPEG), so
both go through :class:`edge_server.service.SplitEdgeServicer`'s own path: parse, tokens' grants, validation
(:func:`edge_server.validation.check_payload`), the server-wide ``max_in_flight``, the batching scheduler and the
metrics. Nothing here runs a model or checks a payload itself.

What a peer can make the server hold is bounded:

* **video**: one reader takes every decoded frame off the track at once and keeps only the newest
  (:class:`NewestFrame`); one worker runs the model on it and then on the newest one after it, so a model slower
  than the camera drops frames instead of queueing them (aiortc's own track queue never fills);
* **data channel**: at most ``max_stream_in_flight`` frames unanswered; beyond that a frame gets
  ``RESOURCE_EXHAUSTED`` at once (the page keeps two in flight);
* a peer whose connection is not up within ``connect_timeout_s``, or fails or closes, is closed; the endpoint
  holds at most ``max_peers`` peers.

ICE: no STUN or TURN server (aiortc's default asks a public STUN server), and host candidates only on the
addresses given (:func:`restrict_host_candidates`): aioice gathers on every non-loopback address and never on
127.0.0.1, so a server bound to loopback would otherwise offer none that the page can reach.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import torch

from protos import splitedge_pb2 as pb
from edge_server.auth import Grant
from edge_server.metrics import log_event
from edge_server.service import SplitEdgeServicer, _Pending
from edge_server.validation import frame_id_of

__all__ = ["NewestFrame", "PeerRefused", "WebRtcEndpoint", "restrict_host_candidates"]

Code = grpc.StatusCode
log = logging.getLogger("splitedge.web")


class PeerRefused(Exception):
    """An offer the endpoint does not take: the HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def restrict_host_candidates(addresses: Sequence[str] | None) -> None:
    """Gather ICE host candidates only on ``addresses`` (None: aioice's own choice, every non-loopback address).

    aioice has no option for it, so its module-level address lookup is replaced: one server per process, and the
    choice is the server's (``--web-ice-host``, by default the ``--host`` it listens on)."""
    import aioice.ice

    original = getattr(aioice.ice, "_splitedge_original", aioice.ice.get_host_addresses)
    aioice.ice._splitedge_original = original
    if addresses is None:
        aioice.ice.get_host_addresses = original
        return
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class NewestFrame:
    """A one-frame slot between a video track and the model: ``put`` replaces what is there (counting it as
    dropped), ``get`` waits for a frame and takes it. Memory stays one frame whatever the camera's rate."""

    def __init__(self) -> None:
        self._frame: Any = None
        self._ready = asyncio.Event()
        self.received = 0
        self.dropped = 0

    def put(self, frame: Any) -> None:
        self.received += 1
        if self._frame is not None:
            self.dropped += 1
        self._frame = frame
        self._ready.set()

    async def get(self) -> Any:
        await self._ready.wait()
        self._ready.clear()
        frame, self._frame = self._frame, None
        return frame


class _Door:
    """The servicer's path for one frame, as the gRPC ``Infer`` stream takes it (its parse, admission, compute
    and answer); the one place that reaches into the servicer, so that both transports stay one path."""

    def __init__(self, servicer: SplitEdgeServicer) -> None:
        self.servicer = servicer

    def submit(self, raw: bytes, grant: Grant, client: dict) -> _Pending:
        return self.servicer.submit(raw, grant, client)

    async def answer(self, pending: _Pending) -> pb.Result:
        try:
            await asyncio.wait([pending.result])
        except asyncio.CancelledError:  # the peer went away: its frame is dropped, as a closed stream's are
            pending.result.cancel()
            raise
        return self.servicer.deliver(pending)

    def refuse(self, raw: bytes, code: grpc.StatusCode, message: str, client: dict) -> pb.Result:
        return self.servicer.error_result(frame_id_of(raw), "", code, message, client)


class _Peer:
    """One page session: its peer connection, the data channel's frames, the video track's newest frame."""

    def __init__(self, endpoint: WebRtcEndpoint, mode: str, grant: Grant, client: dict) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.endpoint, self.mode, self.grant, self.client = endpoint, mode, grant, client
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel: Any = None
        self.newest = NewestFrame()
        self.in_flight = 0
        self.answered = 0
        self.tasks: set[asyncio.Task] = set()
        self.closed = False
        self.opened = time.monotonic()
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # -- events ------------------------------------------------------------------------------
    def _on_channel(self, channel: Any) -> None:
        if self.channel is not None:  # one channel a peer: a second one is closed
            channel.close()
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._spawn(self.close("data channel closed")))

    def _on_track(self, track: Any) -> None:
        video = track.kind == "video" and not any(t.get_name() == "offload" for t in self.tasks)
        self._spawn(self._read(track, keep=video))
        if video:
            receiver = next((r for r in self.pc.getReceivers() if r.track is track), None)
            self._spawn(self._offload(receiver), name="offload")

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            log_event("web_peer_connected", **self.client, mode=self.mode,
                      ms=round((time.monotonic() - self.opened) * 1e3, 1))
        elif state in ("failed", "closed"):
            self._spawn(self.close(f"connection {state}"))

    def _on_message(self, message: bytes | str) -> None:
        door = self.endpoint.door
        if isinstance(message, str):
            self._send(door.refuse(b"", Code.INVALID_ARGUMENT, "a text message: frames are binary "
                                   "splitedge.v1.Frame messages", self.client))
            return
        if len(message) > self.endpoint.servicer.max_message_bytes:
            self._send(door.refuse(message[:64], Code.RESOURCE_EXHAUSTED, f"a {len(message)}-byte frame; this server "
                                   f"takes at most {self.endpoint.servicer.max_message_bytes} (--max-message-mb)",
                                   self.client))
            return
        if self.in_flight >= self.endpoint.max_in_flight:
            self._send(door.refuse(message, Code.RESOURCE_EXHAUSTED, f"{self.in_flight} frames of this peer are "
                                   "unanswered (max_stream_in_flight); wait for a result", self.client))
            return
        self.in_flight += 1
        self._spawn(self._reply(door.submit(message, self.grant, self.client)))

    # -- work --------------------------------------------------------------------------------
    async def _reply(self, pending: _Pending) -> None:
        try:
            self._send(await self.endpoint.door.answer(pending))
        finally:
            self.in_flight -= 1

    async def _read(self, track: Any, keep: bool) -> None:
        """Take every frame off the track as it comes (aiortc queues them without bound otherwise)."""
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                if keep:
                    self.newest.put(frame)
        except MediaStreamError:
            pass

    async def _offload(self, receiver: Any) -> None:
        """The model on the newest video frame, then on the newest one after it, until the peer closes."""
        door, served = self.endpoint.door, self.endpoint.served
        while True:
            frame = await self.newest.get()
            raw = await asyncio.to_thread(_offload_frame, served, frame, _rtp_origin(receiver))
            self._send(await door.answer(door.submit(raw, self.grant, self.client)))

    def _send(self, result: pb.Result) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.answered += result.code == 0
            self.channel.send(result.SerializeToString())

    def _spawn(self, coro, name: str | None = None) -> None:
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.closed:
            log.error("web peer task failed", exc_info=task.exception())
            self._spawn(self.close("internal error"))

    async def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        await self.pc.close()
        self.endpoint.peers.discard(self)
        log_event("web_peer_close", **self.client, mode=self.mode, reason=why, answered=self.answered,
                  video_frames=self.newest.received, video_dropped=self.newest.dropped)


def _rtp_origin(receiver: Any) -> int:
    """The RTP timestamp of the first frame aiortc received on ``receiver`` (0 if unknown).

    aiortc numbers a decoded frame's ``pts`` from its first frame (``TimestampMapper``); the page knows the RTP
    timestamp it sent (its encoded transform's metadata), so the origin is added back. aiortc keeps it private:
    tests/test_browser.py checks that offload results are matched (e2e measured), which fails if this breaks."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    return int(getattr(mapper, "_origin", None) or 0)


def _offload_frame(served: Any, frame: Any, rtp_origin: int) -> bytes:
    """A decoded video frame as the offload Frame a gRPC device sends (`SplitModel.encode_image`: the model's
    resize, then JPEG), its ``frame_id`` the frame's RTP timestamp, by which the page matches the result."""
    rgb = frame.to_ndarray(format="rgb24")
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(torch.float32).div_(255.0)
    payload = served.model.encode_image(image)
    rtp = (int(frame.pts or 0) + rtp_origin) % 2**32
    return pb.Frame(frame_id=rtp, payload=payload).SerializeToString()


class WebRtcEndpoint:
    """The peers of one server: ``await answer(sdp, mode, grant, client)`` takes an offer and returns the answer."""

    def __init__(self, servicer: SplitEdgeServicer, model: str, max_peers: int = 8,
                 connect_timeout_s: float = 30.0) -> None:
        self.door = _Door(servicer)
        self.servicer = servicer
        self.served = servicer.registry.get(model)
        if self.served is None:
            raise ValueError(f"the page's model {model!r} is not served ({', '.join(servicer.registry.names)})")
        self.max_peers = max_peers
        self.max_in_flight = servicer.limits.max_stream_in_flight
        self.connect_timeout_s = connect_timeout_s
        self.peers: set[_Peer] = set()

    async def answer(self, sdp: str, mode: str, grant: Grant, client: dict) -> tuple[str, str]:
        """The answer (sdp, type) to a page's offer; PeerRefused when the server cannot take it."""
        from aiortc import RTCSessionDescription

        if self.servicer.draining:
            raise PeerRefused(503, "the server is draining; connect to another or retry")
        if "m=application" not in sdp:
            raise PeerRefused(400, "the offer has no data channel (no m=application section): results come back on it")
        if len(self.peers) >= self.max_peers:
            raise PeerRefused(503, f"the server is at its limit of {self.max_peers} browser sessions (--web-max-peers)")
        peer = _Peer(self, mode, grant, client)
        self.peers.add(peer)
        try:
            await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await peer.pc.setLocalDescription(await peer.pc.createAnswer())
        except (ValueError, TypeError, AttributeError) as exc:  # aiortc's errors for an SDP it cannot read
            await peer.close("bad offer")
            raise PeerRefused(400, f"not a usable WebRTC offer: {exc}") from None
        peer._spawn(self._expire(peer))
        log_event("web_peer_open", **client, mode=mode, peers=len(self.peers))
        return peer.pc.localDescription.sdp, peer.pc.localDescription.type

    async def _expire(self, peer: _Peer) -> None:
        await asyncio.sleep(self.connect_timeout_s)
        if peer.pc.connectionState != "connected":
            await peer.close(f"not connected within {self.connect_timeout_s:g} s")

    async def close(self) -> None:
        await asyncio.gather(*(p.close("server stopping") for p in list(self.peers)))
