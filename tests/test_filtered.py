"""A frame the prefilter drops sends nothing and still gets its (empty) result, in order."""

from __future__ import annotations

import numpy as np
import torch

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts
from mobile_client.edge_client import EdgeClient
from mobile_client.runtime import DeviceRuntime
from mobile_client.sources import Frame
from split.prefilter import Prefilter
from split.recipes import build


def _frames(n: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [Frame(i, f"synthetic#{i}", rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)) for i in range(n)]


def test_split_model_encodes_nothing_for_a_dropped_frame():
    sm, _ = build("ssdlite320_mobilenet_v3_large")
    sm.prefilter = Prefilter(sm.split_channels, threshold=1.0).eval()  # P < 1 always: drop every frame
    image = torch.rand(3, 96, 128)
    assert sm.encode([image]) == [b""]
    out = sm([image])[0]
    assert out["boxes"].shape == (0, 4) and out["scores"].numel() == 0
    sm.prefilter.threshold.fill_(0.0)  # P >= 0 always: keep every frame
    assert len(sm.encode([image])[0]) > 0


def test_runtime_marks_filtered_frames_and_keeps_order(server):
    sm, _ = build("ssdlite320_mobilenet_v3_large")
    sm.prefilter = Prefilter(sm.split_channels, threshold=1.0).eval()
    client = EdgeClient(server.target)
    runtime = DeviceRuntime(sm, Controller(ModeCosts(0, 0, 0, 0, 0, 0, 0), modes=("split",)), client)
    assert runtime.connect()
    records = []
    for frame in _frames(4):
        sm.prefilter.threshold.fill_(1.0 if frame.index % 2 == 0 else 0.0)  # drop even frames
        records.append(runtime.process(frame))
    client.close()
    assert [r["frame_id"] for r in records] == [0, 1, 2, 3]
    for r in records:
        dropped = r["frame_id"] % 2 == 0
        assert r["filtered"] is dropped and r["mode"] == "split" and r["error"] is None
        if dropped:
            assert r["payload_bytes"] == 0 and r["detections"] == [] and r["server_ms"] == 0
        else:
            assert r["payload_bytes"] > 0 and r["server_ms"] > 0 and r["detections"]
