"""The committed generated modules match the .proto (run `make protos` when this fails)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_modules_are_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    from protos.generate import generate

    generate(tmp_path)
    for name in ("splitedge_pb2.py", "splitedge_pb2.pyi", "splitedge_pb2_grpc.py"):
        fresh = (tmp_path / "protos" / name).read_text()
        committed = (ROOT / "protos" / name).read_text()
        assert fresh == committed, f"protos/{name} is stale: run `make protos`"
