"""The cost model: what each mode costs on this device/edge pair, and the latency it predicts.

DESIGN.md §3's formula, the measured compute times and payload sizes it takes
(:class:`ModeCosts`, built from ``splitedge profile`` JSON), and the small
derived quantities the controller and the simulator both need. Kept apart from
the controller so that the simulator prices frames with exactly the numbers
the controller plans with (docs/controller.md, "Latency model").
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from .estimators import sizes_tell_rtt

__all__ = [
    "MODES",
    "REMOTE_MODES",
    "ModeCosts",
    "predict_latencies",
    "scaled",
    "hedge_local_ms",
    "payload_bytes",
    "winnable",
    "neutral_rtt",
    "first_mode",
    "ComputeRatios",
    "rtt_probe_mode",
    "read_profile",
    "costs_from_profiles",
]

MODES: tuple[str, ...] = ("local", "split", "offload")
REMOTE_MODES: tuple[str, ...] = ("split", "offload")


@dataclass(frozen=True)
class ModeCosts:
    """Measured compute times (ms) and payload sizes (bytes) of one model on one device/edge pair.

    These come from ``splitedge profile`` JSON, not guesses: the controller is
    only as good as these numbers. ``bytes_split`` and ``bytes_jpeg`` are
    typical (median) payloads per frame.
    """

    t_full_device_ms: float
    t_head_device_ms: float
    t_tail_edge_ms: float
    t_full_edge_ms: float
    t_jpeg_encode_ms: float
    bytes_split: int
    bytes_jpeg: int
    t_jpeg_decode_edge_ms: float = 0.0
    # Device time to finish the *original* model from the split point's features before the bottleneck
    # (a hedged split frame's local continuation, see docs/controller.md, "Hedging"); 0: not measured, then
    # the whole model is assumed (:func:`hedge_local_ms`).
    t_resume_device_ms: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"ModeCosts.{f.name} must be a finite non-negative number, got {v!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> ModeCosts:
        """Build from a profile's JSON object, naming any unknown or missing key (a typo must not pass)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModeCosts key(s) {unknown}; expected some of {sorted(names)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"missing ModeCosts key(s) {missing}")
        return cls(**data)

    def edge_ms(self, mode: str) -> float:
        """The edge's time for a remote mode's frame (what a result's ``server_s`` is compared with)."""
        return self.t_tail_edge_ms if mode == "split" else self.t_jpeg_decode_edge_ms + self.t_full_edge_ms


def predict_latencies(costs: ModeCosts, bandwidth_bps: float, rtt_s: float) -> dict[str, float]:
    """Predicted end-to-end latency (ms) of each mode, DESIGN.md §3 verbatim.

    ``local = T_full(device)``;
    ``split = T_head(device) + bytes_split*8/B + RTT + T_tail(edge)``;
    ``offload = T_jpeg + bytes_jpeg*8/B + RTT + T_jpeg_decode(edge) + T_full(edge)``
    (the decode term defaults to 0). A non-positive or NaN bandwidth makes
    the remote modes infinitely slow rather than raising, so a dead link is
    just a very bad link.
    """
    rtt_ms = rtt_s * 1000.0
    if not (bandwidth_bps > 0):  # also catches NaN
        send = lambda nbytes: math.inf  # noqa: E731
    else:
        send = lambda nbytes: nbytes * 8.0 / bandwidth_bps * 1000.0  # noqa: E731
    return {
        "local": costs.t_full_device_ms,
        "split": costs.t_head_device_ms + send(costs.bytes_split) + rtt_ms + costs.t_tail_edge_ms,
        "offload": costs.t_jpeg_encode_ms
        + send(costs.bytes_jpeg)
        + rtt_ms
        + costs.t_jpeg_decode_edge_ms
        + costs.t_full_edge_ms,
    }


def scaled(costs: ModeCosts, device_slowdown: float, *, edge_slowdown: float = 1.0) -> ModeCosts:
    """Costs of the same model on a device ``device_slowdown`` times slower (and optionally a slower edge).

    Profiles are measured on the machines at hand; this stands for a phone
    (or a loaded server) without re-profiling, scaling every time spent on
    that side — for the device, full model, head and JPEG encode.
    """
    if not (device_slowdown > 0 and edge_slowdown > 0):
        raise ValueError(f"slowdowns must be positive, got {device_slowdown}, {edge_slowdown}")
    return dataclasses.replace(
        costs,
        t_full_device_ms=costs.t_full_device_ms * device_slowdown,
        t_head_device_ms=costs.t_head_device_ms * device_slowdown,
        t_jpeg_encode_ms=costs.t_jpeg_encode_ms * device_slowdown,
        t_tail_edge_ms=costs.t_tail_edge_ms * edge_slowdown,
        t_full_edge_ms=costs.t_full_edge_ms * edge_slowdown,
        t_jpeg_decode_edge_ms=costs.t_jpeg_decode_edge_ms * edge_slowdown,
        t_resume_device_ms=costs.t_resume_device_ms * device_slowdown,
    )


def payload_bytes(costs: ModeCosts) -> dict[str, int]:
    """Bytes each remote mode sends per frame: what a probe standing for that mode carries."""
    return {"split": costs.bytes_split, "offload": costs.bytes_jpeg}


def winnable(costs: ModeCosts, remote: list[str], rtt_s: float) -> list[str]:
    """The remote modes that could beat local on an infinitely fast link (compute and ``rtt_s`` alone)."""
    bound = predict_latencies(costs, math.inf, rtt_s)
    return [m for m in remote if bound[m] < costs.t_full_device_ms]


def neutral_rtt(predicted: dict[str, float], costs: ModeCosts, seen_bytes: int, fastest_s: float) -> dict[str, float]:
    """Predictions with an unidentified RTT at the middle of its feasible range ``[0, fastest_s]`` instead of at 0.

    With no RTT, the whole network time of the last transfer (``seen_bytes``)
    counts as serialization: exact for that size, but a larger payload is
    overstated by ``(n/s - 1) * RTT`` and a smaller one understated, so the
    choice would lean towards the smaller payload. The midpoint favours
    neither size until a two-size measurement tells (docs/controller.md).
    """
    guess_s = 0.5 * fastest_s
    if seen_bytes <= 0:
        return predicted
    out = dict(predicted)
    floor = predict_latencies(costs, math.inf, 0.0)
    for m, n in payload_bytes(costs).items():
        out[m] = max(floor[m], out[m] - (n / seen_bytes - 1.0) * guess_s * 1000.0)
    return out


def rtt_probe_mode(costs: ModeCosts, remote: list[str], raw_ms: Mapping[str, float], to_beat_ms: float,
                   seen_bytes: int, fastest_s: float) -> str | None:
    """The remote mode whose payload would tell RTT apart from serialization, if one is worth a frame.

    One whose size differs enough from the last transfer's (``seen_bytes``)
    and that could beat ``to_beat_ms`` for *some* RTT consistent with what was
    seen: ``raw_ms`` are the predictions with RTT = 0, and an RTT of up to the
    fastest network time seen takes ``(n/s - 1) * fastest_s`` off a payload
    ``n`` larger than ``s``. So a probe that cannot win whatever the RTT is
    never sent. The most promising if several.
    """
    nbytes = payload_bytes(costs)
    optimistic = {m: raw_ms[m] - max(0.0, nbytes[m] / max(seen_bytes, 1) - 1.0) * fastest_s * 1000.0 for m in remote}
    candidates = [m for m in remote
                  if optimistic[m] < to_beat_ms and sizes_tell_rtt(max(nbytes[m], 1), max(seen_bytes, 1))]
    return min(candidates, key=lambda m: optimistic[m]) if candidates else None


def first_mode(costs: ModeCosts, remote: list[str], hedged: bool, rtt_s: float) -> str:
    """The remote mode to measure an unknown link with (docs/controller.md, "Initial choice").

    Hedged, a frame costs at most its device part plus its local continuation
    whatever the link, so the mode with the lowest such worst case; unhedged,
    the one with the fewest bytes (the cheapest way to learn the bandwidth).
    """
    bound = predict_latencies(costs, math.inf, rtt_s)
    nbytes = payload_bytes(costs)
    device_ms = {"split": costs.t_head_device_ms, "offload": costs.t_jpeg_encode_ms}

    def key(m: str) -> tuple[float, ...]:
        if hedged:
            return (device_ms[m] + hedge_local_ms(costs, m), nbytes[m], bound[m])
        return (nbytes[m], bound[m])

    return min(remote, key=key)


class ComputeRatios:
    """Measured/profiled compute times of the recent frames, to correct the profile online.

    The median ratio, device time from local frames and edge time from the
    ``server_s`` each result reports, so a loaded server or a throttled phone
    is noticed (the server-load input of Neurosurgeon) without guessing.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"compute_window must be >= 1, got {window}")
        self._device: deque[float] = deque(maxlen=window)
        self._edge: deque[float] = deque(maxlen=window)

    def device(self, seconds: float, profiled_ms: float) -> None:
        if profiled_ms > 0 and math.isfinite(seconds) and seconds > 0:
            self._device.append(seconds * 1000.0 / profiled_ms)

    def edge(self, server_s: float, profiled_ms: float) -> None:
        if profiled_ms > 0 and math.isfinite(server_s) and server_s > 0:
            self._edge.append(server_s * 1000.0 / profiled_ms)

    def apply(self, costs: ModeCosts) -> ModeCosts:
        dev = median(self._device) if self._device else 1.0
        edge = median(self._edge) if self._edge else 1.0
        if dev == 1.0 and edge == 1.0:
            return costs
        return scaled(costs, dev, edge_slowdown=edge)


def hedge_local_ms(costs: ModeCosts, mode: str) -> float:
    """Device time of a hedged remote frame's local continuation, started once its payload is sent.

    ``split``: the original model from the split point's features before the
    bottleneck (``t_resume_device_ms``; the whole model if that was not
    measured); ``offload``: the whole model (the JPEG is no use locally).
    """
    if mode == "split" and costs.t_resume_device_ms > 0:
        return costs.t_resume_device_ms
    if mode not in REMOTE_MODES:
        raise ValueError(f"only remote modes are hedged, got {mode!r}")
    return costs.t_full_device_ms


def read_profile(path: str | Path) -> dict[str, Any]:
    """A ``splitedge profile`` JSON file, with a one-line error naming the file when it is not one."""
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
