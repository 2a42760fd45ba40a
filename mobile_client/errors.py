"""The device's transport errors, apart from any transport: the session driver and the gRPC client share them."""

from __future__ import annotations

__all__ = ["EdgeUnavailable", "ServedModelMismatch"]


class EdgeUnavailable(RuntimeError):
    """The server cannot be reached, or the stream broke or stopped answering."""


class ServedModelMismatch(ValueError):
    """The edge serves the model under another split (split point, codec or bottleneck): this device's split
    payloads would not decode there, or would decode into wrong features."""
