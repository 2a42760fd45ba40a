"""From measured profiles (JSON written by `splitedge profile`) to the controller's costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobile_client.controller import ModeCosts

__all__ = ["costs_from_profiles", "read_profile"]


def read_profile(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"profile {p} does not exist (make one with `splitedge profile`)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"profile {p} is not JSON: {exc}") from None
    if "sizes" not in data or "default_size" not in data:
        raise ValueError(f"profile {p} is not a splitedge profile (no 'sizes'/'default_size')")
    return data


def _entry(profile: dict[str, Any], size: str | None, which: str) -> dict[str, Any]:
    key = size or profile["default_size"]
    try:
        return profile["sizes"][key]
    except KeyError:
        raise ValueError(f"{which} profile has no size {key!r}; it has {', '.join(profile['sizes'])}") from None


def costs_from_profiles(device: dict[str, Any], edge: dict[str, Any], size: str | None = None) -> ModeCosts:
    """Device times and bytes from the device's profile, edge times from the edge's.

    `offload_edge` already includes the JPEG decode, so the decode term stays 0.

    ``t_resume_device_ms`` (a hedged split frame's local continuation: the original model from
    the split point's features before the bottleneck) is not profiled on its own. It is
    ``full - head_without_bottleneck``, and the head without its bottleneck is approximated as
    ``full - tail`` on the *device's* profile, so the continuation costs the device's own tail
    time: an overestimate by the bottleneck decoder, which the local continuation skips (a few
    per cent of the tail; the per-layer times agree within 1 ms for the shipped profile).
    """
    d, e = _entry(device, size, "device"), _entry(edge, size, "edge")
    return ModeCosts(
        t_full_device_ms=d["ms"]["full"],
        t_head_device_ms=d["ms"]["head"],
        t_tail_edge_ms=e["ms"]["tail"],
        t_full_edge_ms=e["ms"]["offload_edge"],
        t_jpeg_encode_ms=d["ms"]["jpeg_encode"],
        bytes_split=d["bytes"]["split"],
        bytes_jpeg=d["bytes"]["jpeg"],
        t_resume_device_ms=min(d["ms"]["tail"], d["ms"]["full"]),
    )
