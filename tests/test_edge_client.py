"""EdgeClient against a tiny in-process gRPC server on loopback: link probes, and a dead stream noticed by a
device that waits for nothing (it runs its frames locally and only sends link probes)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from mobile_client.edge_client import PROBE_ID_BASE, EdgeClient, EdgeUnavailable
from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc


class ProbeServer(pb_grpc.SplitEdgeServicer):
    """Answers every message at once, or, once ``mute`` is set, never."""

    def __init__(self) -> None:
        self.mute = threading.Event()

    def Describe(self, request, context):
        return pb.DescribeResponse(version="test")

    def Infer(self, request_iterator, context):
        for frame in request_iterator:
            if not self.mute.is_set():
                yield pb.Result(frame_id=frame.frame_id, code=0)


@pytest.fixture()
def edge():
    servicer = ProbeServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SplitEdgeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = EdgeClient(f"127.0.0.1:{port}")
    client.connect()
    yield server, servicer, client
    client.close()
    server.stop(0)


def _late_within(client: EdgeClient, seconds: float, **kw):
    deadline = time.monotonic() + seconds
    while True:
        late = client.take_late(**kw)
        if late or time.monotonic() > deadline:
            return late
        time.sleep(0.02)


def test_a_probe_is_answered_and_collected_as_a_late_result(edge):
    _, _, client = edge
    probe_id, sent = client.send_probe(20_000)
    assert probe_id > PROBE_ID_BASE and sent > 0
    [answer] = _late_within(client, 5.0)
    assert answer.frame_id == probe_id and answer.result.code == 0 and 0 < answer.seconds < 5
    with pytest.raises(ValueError, match="at least one byte"):
        client.send_probe(0)


def test_a_broken_stream_is_noticed_without_waiting_for_a_frame(edge):
    server, _, client = edge
    client.send_probe(1_000)
    assert _late_within(client, 5.0)  # the stream is up
    server.stop(0)
    deadline = time.monotonic() + 10
    with pytest.raises(EdgeUnavailable):
        while time.monotonic() < deadline:
            client.take_late()
            time.sleep(0.05)
    assert client.take_late() == []  # dropped: nothing left to raise twice


def test_a_silent_server_is_noticed_after_the_timeout(edge):
    _, servicer, client = edge
    servicer.mute.set()
    client.send_probe(1_000)
    assert client.take_late(timeout_s=5.0) == []  # not silent for long yet
    time.sleep(0.3)
    with pytest.raises(EdgeUnavailable, match="nothing came back for 1 pending message"):
        client.take_late(timeout_s=0.2)


def test_a_result_that_comes_as_its_frame_is_given_up_on_is_not_lost(edge):
    # The window between the runtime's last look at the stream and its giving up on a frame: the result that
    # lands there must still count as that frame's, or the controller would wait for it for ever (it counts
    # given-up payloads until their results are back, and sends no probe behind one).
    from mobile_client.controller import Controller
    from mobile_client.costs import ModeCosts
    from mobile_client.runtime import DeviceRuntime

    _, _, client = edge
    ctl = Controller(ModeCosts(300, 20, 30, 15, 2, 10_000, 60_000))
    runtime = DeviceRuntime(None, ctl, client)
    sent = client.send(pb.Frame(frame_id=7))
    assert client.wait(7, sent, 30.0, until=0) is None  # not there yet: the local run goes on
    time.sleep(0.3)  # ... and the result lands now
    runtime.session._give_up(7, "split", 10_000, 0.25, runtime.io.now())
    assert ctl._stalls.abandoned == 0 and not runtime.session._abandoned and not client._pending
