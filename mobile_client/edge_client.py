"""The device's gRPC client: one long-lived `Infer` stream, results matched by frame id.

A reader thread moves results from the stream to a queue, timestamped on arrival, so waiting
for a result can time out. Two kinds of waiting end differently:

* **A frame's deadline passed** (``infer(..., deadline_s=...)``): the controller gave up on
  *this* frame, which the device then serves locally. That says the link is slow or stalled
  right now, not that the server is gone, so the stream stays up: the frame is remembered,
  and its result, if it still comes, is kept for :meth:`EdgeClient.take_late` (the runtime
  tells the controller, whose stall then ends sooner) instead of being mistaken for the next
  frame's. A *hedged* frame (the device runs it locally meanwhile) is sent with
  :meth:`EdgeClient.send` and polled with :meth:`EdgeClient.wait` between local stages; if the
  local run wins, its result takes the same late path. So does the answer to a *link probe*
  (:meth:`EdgeClient.send_probe`), sent while the device runs a frame itself.
* **The server stopped answering**: nothing at all has come back for ``timeout_s`` since the
  oldest frame still waiting for its result was sent (or since the last result, if later).
  Then the stream is dropped and :class:`EdgeUnavailable` raised, and the runtime goes local
  and reconnects with the controller's backoff.

Replicas: a ``dns:///NAME:PORT`` target (a name with several addresses: a Kubernetes headless
service, ``docker compose --scale``) or several comma-separated ``IP:PORT`` addresses open a channel
with gRPC's ``round_robin`` policy (see :func:`channel_target`). Calls, not frames, are spread: the
one ``Infer`` stream stays on the replica it was opened on, so frames spread per stream (per device,
per reconnect). When that replica dies the stream breaks, the frame is served on the device, and
the reconnect's new channel picks a replica that is up.
"""

from __future__ import annotations

import ipaddress
import math
import queue
import threading
import time

import grpc

from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc

from mobile_client.errors import EdgeUnavailable

__all__ = ["EdgeClient", "EdgeUnavailable", "DeadlineExceeded", "LateResult", "PROBE_ID_BASE", "channel_target"]

_DONE = object()
# Link probes (EdgeClient.send_probe) are numbered from here: frame ids (a source's frame index) stay below.
PROBE_ID_BASE = 1 << 63


def channel_target(target: str) -> tuple[str, list[tuple[str, str]]]:
    """The gRPC channel target for ``--server`` and the channel options it needs.

    ``HOST:PORT``: as it is (one server). ``dns:///NAME:PORT`` (every address the name resolves to),
    ``ipv4:``/``ipv6:`` URIs, and comma-separated ``IP:PORT`` lists (made an ``ipv4:`` or ``ipv6:``
    URI; IPv6 as ``[::1]:PORT``) get the ``round_robin`` policy. A list naming hosts is a ValueError:
    put the name behind ``dns:///`` instead.
    """
    round_robin = [("grpc.lb_policy_name", "round_robin")]
    if target.startswith(("dns:", "ipv4:", "ipv6:")):
        return target, round_robin
    if "," not in target:
        return target, []
    addresses = [a.strip() for a in target.split(",") if a.strip()]
    versions = set()
    for address in addresses:
        host, sep, port = address.rpartition(":")
        try:
            versions.add(ipaddress.ip_address(host.strip("[]")).version)
            if not sep or not port.isdigit():
                raise ValueError
        except ValueError:
            raise ValueError(f"--server {target}: {address!r} is not IP:PORT; a list takes IP addresses "
                             f"(for a name with several addresses use dns:///NAME:PORT)") from None
    if len(versions) > 1:
        raise ValueError(f"--server {target}: mixes IPv4 and IPv6 addresses")
    # The first address is the channel's authority: what TLS checks the server's certificate against.
    return f"ipv{versions.pop()}:{','.join(addresses)}", round_robin + [("grpc.default_authority", addresses[0])]


def _read_pem(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class DeadlineExceeded(TimeoutError):
    """A frame's result did not arrive by its deadline; the stream is kept (the server is not presumed dead)."""

    def __init__(self, message: str, waited_s: float) -> None:
        super().__init__(message)
        self.waited_s = waited_s  # from sending the frame to giving up


class LateResult:
    """The result of a frame whose deadline had passed: ``seconds`` after it was sent, at ``arrived`` (perf_counter)."""

    __slots__ = ("frame_id", "result", "seconds", "arrived")

    def __init__(self, frame_id: int, result: pb.Result, seconds: float, arrived: float) -> None:
        self.frame_id, self.result, self.seconds, self.arrived = frame_id, result, seconds, arrived


class EdgeClient:
    """``tls_ca``: speak TLS and trust servers this CA (PEM file) signed; with ``tls_cert``/``tls_key`` also
    present a client certificate (mutual TLS). ``token``: sent as ``authorization: Bearer TOKEN``."""

    def __init__(self, target: str, max_message_bytes: int = 16 * 1024 * 1024, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, token: str | None = None) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("a client certificate needs both tls_cert and tls_key")
        if tls_cert and not tls_ca:
            raise ValueError("a client certificate (mutual TLS) needs tls_ca, the CA that signed the server's")
        self.target = target
        self._channel_target, self._lb_options = channel_target(target)  # a bad list fails here
        self.max_message_bytes = max_message_bytes
        self._tls = tuple(_read_pem(f) for f in (tls_ca, tls_cert, tls_key))  # read now: a missing file fails here
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.SplitEdgeStub | None = None
        self._requests: queue.Queue | None = None
        self._results: queue.Queue | None = None
        self._call = None
        self._pending: dict[int, float] = {}  # frame id -> perf_counter when sent, until its result arrives
        self._late: list[LateResult] = []
        self._last_heard = -math.inf  # perf_counter of the last result received
        self._probe_seq = 0
        self._warm: grpc.Channel | None = None  # a channel still connecting when connect() last gave up
        self.description: pb.DescribeResponse | None = None

    def connect(self, timeout_s: float = 5.0) -> pb.DescribeResponse:
        """Open the channel and call `Describe`; the server's message limit then bounds our sends.

        A channel whose `Describe` ran out of time is kept, not closed, and the
        next call goes on with it: its TCP and TLS handshakes carry on in the
        background, so a caller that may wait only a little each time (the
        session waits at most one local run) still gets through on a slow link.
        """
        self.close()
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
                   # A kept channel (below) whose first attempts failed (the server not up yet) retries with
                   # gRPC's own backoff, which grows to 120 s by default and would outlast every short wait the
                   # session gives it (compose's device stayed local for its whole run): capped at 1 s.
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1_000), *self._lb_options]
        self._channel, self._warm = self._warm or self._open_channel(options), None
        self._stub = pb_grpc.SplitEdgeStub(self._channel)
        try:
            self.description = self._stub.Describe(pb.DescribeRequest(), timeout=timeout_s, wait_for_ready=True,
                                                   metadata=self._metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # still connecting: keep it for the next try
                self._warm, self._channel, self._stub = self._channel, None, None
            self.close()
            raise EdgeUnavailable(f"{self.target}: {exc.code().name}: {exc.details()}") from None
        if self.description.max_message_bytes:
            self.max_message_bytes = min(self.max_message_bytes, int(self.description.max_message_bytes))
        return self.description

    def _open_channel(self, options: list) -> grpc.Channel:
        ca, cert, key = self._tls
        if ca is None:
            return grpc.insecure_channel(self._channel_target, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        return grpc.secure_channel(self._channel_target, creds, options=options)

    @property
    def connected(self) -> bool:
        return self._stub is not None

    def _open_stream(self) -> None:
        requests: queue.Queue = queue.Queue()
        results: queue.Queue = queue.Queue()
        call = self._stub.Infer(iter(requests.get, _DONE), metadata=self._metadata)

        def read() -> None:
            try:
                for result in call:
                    results.put((result, time.perf_counter()))
                results.put((EdgeUnavailable(f"{self.target}: the server closed the stream"), time.perf_counter()))
            except grpc.RpcError as exc:
                results.put((EdgeUnavailable(f"{self.target}: {exc.code().name}: {exc.details()}"), time.perf_counter()))

        threading.Thread(target=read, name="splitedge-results", daemon=True).start()
        self._requests, self._results, self._call = requests, results, call

    def send(self, frame: pb.Frame) -> float:
        """Put one frame on the stream without waiting; returns when it was sent (perf_counter).

        Its result is then collected with :meth:`wait` (or, once given up on, :meth:`take_late`).
        """
        if self._stub is None:
            raise EdgeUnavailable(f"{self.target}: not connected")
        size = frame.ByteSize()
        if size > self.max_message_bytes:
            raise ValueError(f"frame {frame.frame_id} is {size} bytes, over the server's limit of {self.max_message_bytes}")
        if self._call is None:
            self._open_stream()
        t0 = time.perf_counter()
        self._pending[frame.frame_id] = t0
        self._requests.put(frame)
        return t0

    def send_probe(self, nbytes: int) -> tuple[int, float]:
        """Put a link probe of ``nbytes`` filler bytes on the stream; returns its id and when it was sent.

        The server answers it at once without computing, so its send-to-answer time is the link's
        alone. Its answer is collected by :meth:`wait` or :meth:`take_late` like a frame's result. Probe
        ids count up from :data:`PROBE_ID_BASE`, out of the way of frame ids.
        """
        if nbytes < 1:
            raise ValueError(f"a link probe needs at least one byte, got {nbytes}")
        self._probe_seq += 1
        probe_id = PROBE_ID_BASE + self._probe_seq
        return probe_id, self.send(pb.Frame(frame_id=probe_id, probe=bytes(nbytes)))

    def wait(self, frame_id: int, sent_at: float, timeout_s: float = 30.0,
             until: float = math.inf) -> tuple[pb.Result, float] | None:
        """The result of a frame :meth:`send` sent at ``sent_at``, and the seconds since; ``None`` if not
        there by ``until`` (a perf_counter time; ``0`` only looks). The frame stays pending either way, so a
        result that comes after the caller stopped waiting for it goes to :meth:`take_late`.

        Raises :class:`EdgeUnavailable` (stream dropped) when the server has been silent ``timeout_s``
        (see the module docstring).
        """
        if self._results is None:
            raise EdgeUnavailable(f"{self.target}: no stream")
        while True:
            silent_since = max(self._last_heard, min(self._pending.values(), default=sent_at))
            dead_at = silent_since + timeout_s
            try:
                item, at = self._results.get(timeout=max(0.0, min(until, dead_at) - time.perf_counter()))
            except queue.Empty:
                if dead_at <= until:
                    self._drop_stream()
                    raise EdgeUnavailable(f"{self.target}: no result for frame {frame_id} "
                                          f"and nothing else in {timeout_s:g} s") from None
                return None
            if isinstance(item, EdgeUnavailable):
                self._drop_stream()
                raise item
            self._last_heard = at
            sent = self._pending.pop(item.frame_id, None)
            if item.frame_id == frame_id:
                return item, at - sent_at
            if sent is not None:  # a frame given up on earlier: its result came late
                self._late.append(LateResult(item.frame_id, item, at - sent, at))

    def infer(self, frame: pb.Frame, timeout_s: float = 30.0,
              deadline_s: float | None = None) -> tuple[pb.Result, float]:
        """Send one frame and wait for its result; returns it and the send-to-result seconds.

        ``deadline_s``: give up on this frame that many seconds after sending
        it, raising :class:`DeadlineExceeded` with the stream left up.
        ``timeout_s``: how long the server may stay silent before it is
        presumed gone (:class:`EdgeUnavailable`, stream dropped); see the
        module docstring.
        """
        t0 = self.send(frame)
        give_up = t0 + deadline_s if deadline_s is not None else math.inf
        got = self.wait(frame.frame_id, t0, timeout_s, give_up)
        if got is None:
            raise DeadlineExceeded(f"{self.target}: no result for frame {frame.frame_id} "
                                   f"within its deadline of {deadline_s:.3f} s", time.perf_counter() - t0)
        return got

    def take_late(self, timeout_s: float = math.inf) -> list[LateResult]:
        """Results of frames given up on (deadline passed) and answers to link probes that have arrived since the
        last call, oldest first. Also collects what arrived while no frame was being waited for.

        A device running frames locally waits for nothing, so this is where a dead stream is noticed then: if
        the stream broke, or nothing has come back for ``timeout_s`` while something is pending (the rule of
        :meth:`wait`), the stream is dropped and :class:`EdgeUnavailable` raised, once the results that came
        before have been handed over.
        """
        broken = None
        if self._results is not None:
            while True:
                try:
                    item, at = self._results.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, EdgeUnavailable):
                    broken = item
                    break
                self._last_heard = at
                sent = self._pending.pop(item.frame_id, None)
                if sent is not None:
                    self._late.append(LateResult(item.frame_id, item, at - sent, at))
            if broken is None and self._pending \
                    and time.perf_counter() - max(self._last_heard, min(self._pending.values())) > timeout_s:
                broken = EdgeUnavailable(f"{self.target}: nothing came back for {len(self._pending)} pending "
                                         f"message(s) in {timeout_s:g} s")
        if broken is not None and not self._late:
            self._drop_stream()
            raise broken
        if broken is not None:  # the results before it first; the next call raises
            self._results.put((broken, time.perf_counter()))
        late, self._late = self._late, []
        return late

    def _drop_stream(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._requests is not None:
            self._requests.put(_DONE)
        self._call = self._requests = self._results = None
        self._pending.clear()
        self._late.clear()
        self._last_heard = -math.inf

    def close(self) -> None:
        self._drop_stream()
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None
