"""The device's transport errors, apart from any transport: the session driver and the gRPC client share them."""

from __future__ import annotations

__all__ = ["EdgeUnavailable"]


class EdgeUnavailable(RuntimeError):
    """The server cannot be reached, or the stream broke or stopped answering."""
