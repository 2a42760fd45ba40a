"""The wire protocol: `splitedge.proto` and its generated modules, nothing else.

Regenerate with `make protos`; `tests/test_protos.py` fails when the committed modules are stale.
"""

from protos import splitedge_pb2, splitedge_pb2_grpc

__all__ = ["splitedge_pb2", "splitedge_pb2_grpc"]
