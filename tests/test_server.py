"""The real server (a CLI subprocess) on loopback: protocol, validation, health, limits."""

from __future__ import annotations

import queue

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc
from split.recipes import build


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 8 * 2**20)])
    yield pb_grpc.SplitEdgeStub(channel), channel
    channel.close()


@pytest.fixture(scope="module")
def payloads():
    model = build("ssdlite320_mobilenet_v3_large")[0]
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(0))
    return model.encode_message(image), model.encode_image(image, 75)


def _healthy(channel) -> bool:
    health = health_pb2_grpc.HealthStub(channel)
    return health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING


def test_describe_and_health(stub):
    s, channel = stub
    d = s.Describe(pb.DescribeRequest(), timeout=10)
    names = [m.name for m in d.models]
    assert names == ["ssdlite320_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large_raw"]
    m = d.models[0]
    assert m.split_point == "backbone.features.0.6" and m.codec == "uint8" and m.bottleneck_channels == 3
    assert m.weights.startswith("random init") and m.latency_ms["tail"] > 0 and m.latency_ms["offload_edge"] > 0
    assert d.max_message_bytes == 2**20
    assert _healthy(channel)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="splitedge.v1.SplitEdge"), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING


def test_bad_and_good_frames_in_one_stream(stub, payloads):
    s, channel = stub
    split_payload, jpeg_payload = payloads
    unknown = pb.Payload()
    unknown.CopyFrom(split_payload)
    unknown.model = "no_such_model"
    wrong_shape = pb.Payload()
    wrong_shape.CopyFrom(split_payload)
    wrong_shape.tensor.shape[1] = 5
    wrong_point = pb.Payload()
    wrong_point.CopyFrom(split_payload)
    wrong_point.model = "ssdlite320_mobilenet_v3_large_raw"  # served, but cut with a bottleneck
    corrupt_jpeg = pb.Payload()
    corrupt_jpeg.CopyFrom(jpeg_payload)
    corrupt_jpeg.tensor.data = b"garbage"
    frames = [split_payload, unknown, jpeg_payload, wrong_shape, corrupt_jpeg, wrong_point, split_payload]
    results = list(s.Infer(iter(pb.Frame(frame_id=i, payload=p) for i, p in enumerate(frames)), timeout=60))
    assert [r.frame_id for r in results] == list(range(len(frames)))
    codes = [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK]
    assert [r.code for r in results] == [c.value[0] for c in codes]
    assert "served: ssdlite320_mobilenet_v3_large, ssdlite320_mobilenet_v3_large_raw" in results[1].error
    assert "tensor shape [1, 5, 40, 40]" in results[3].error
    assert "not a decodable image" in results[4].error
    assert "expects 'float32'" in results[5].error or "expects [1, 40" in results[5].error
    assert len(results[0].detections) > 0 and results[0].server_ms > 0
    assert results[0].detections == results[6].detections
    assert _healthy(channel)


def test_oversized_message_is_resource_exhausted(stub, server):
    s, channel = stub
    big = pb.Payload(model="ssdlite320_mobilenet_v3_large", tensor=pb.Tensor(data=b"\0" * (2 * 2**20)))
    with pytest.raises(grpc.RpcError) as info:
        list(s.Infer(iter([pb.Frame(frame_id=1, payload=big)]), timeout=30))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(2**20) in info.value.details()  # the message names the limit
    assert server.alive() and _healthy(channel)


def test_stream_survives_a_client_that_goes_away(stub, payloads, server):
    s, channel = stub
    requests: queue.Queue = queue.Queue()
    call = s.Infer(iter(requests.get, None), timeout=30)
    requests.put(pb.Frame(frame_id=7, payload=payloads[0]))
    assert next(call).frame_id == 7
    call.cancel()
    assert server.alive() and _healthy(channel)


def test_link_probes_are_answered_at_once_without_compute(stub, payloads):
    s, channel = stub
    split_payload, _ = payloads
    frames = [pb.Frame(frame_id=1, probe=bytes(50_000)),
              pb.Frame(frame_id=2, payload=split_payload),
              pb.Frame(frame_id=3, probe=bytes(10), payload=split_payload),  # one or the other, not both
              pb.Frame(frame_id=4, probe=bytes(1))]
    results = list(s.Infer(iter(frames), timeout=60))
    assert [r.frame_id for r in results] == [1, 2, 3, 4]
    for probe in (results[0], results[3]):
        assert probe.code == 0 and not probe.detections and probe.server_ms == 0 and probe.queue_ms >= 0
    assert results[1].code == 0 and results[1].detections
    assert results[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "a payload or a probe, not both" in results[2].error
    assert _healthy(channel)
