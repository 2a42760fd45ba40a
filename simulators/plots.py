"""Figures of ``splitedge simulate`` (the bandwidth sweep and per-trace latency CDFs) and ``splitedge fleet``.

matplotlib is imported inside the functions, on the Agg backend, so that
importing :mod:`simulators` costs nothing and plotting works on a headless
machine (a CI runner, the edge box over ssh).

Choices, and why:

* **Sweep**: mean e2e against constant uplink bandwidth, both axes log
  (bandwidth spans three decades, latency from a fraction of a second to
  minutes once frames queue), one line per policy. The range where split
  beats both local and offload is shaded and its bounds written on the
  figure: that range is the figure's message.
* **CDFs**: one small panel per trace, in a grid, shared legend, log x
  axis (a few outage frames would otherwise squash the body of the
  distribution into the left edge). Past :data:`CDF_PANELS_PER_FIGURE`
  traces the grid continues in ``cdf_2.png``, ``cdf_3.png``, ... so every
  panel stays readable.
* **Fleet**: median e2e against the number of devices on one edge, log x (1 to 1000 devices), one
  line with the edge-load feedback and one without, the "twice the N = 1 median" level dashed and
  each knee marked: where the shared edge stops paying is the figure's message.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .experiment import Summary

__all__ = ["plot_sweep", "plot_cdfs", "plot_fleet", "CDF_PANELS_PER_FIGURE"]

CDF_PANELS_PER_FIGURE = 30
# Fixed colours per policy, so the same policy looks the same in every figure.
_COLORS = {"local": "#1f77b4", "split": "#2ca02c", "offload": "#ff7f0e", "auto": "#d62728", "oracle": "#7f7f7f"}
_STYLES = {"auto": "-", "oracle": "--"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(rows: Sequence[Summary], wins: Sequence[tuple[float, float]], path: str | Path,
               title: str = "") -> Path:
    """Mean e2e vs constant uplink rate, one line per policy, split's winning range shaded."""
    plt = _pyplot()
    by_policy: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_policy.setdefault(row.policy, []).append((float(row.trace), row.mean_e2e_ms))
    from matplotlib.ticker import FuncFormatter

    swept = sorted({float(row.trace) for row in rows})
    fig, ax = plt.subplots(figsize=(8.5, 5.2), constrained_layout=True)
    for policy, pts in by_policy.items():
        pts.sort()
        x, y = zip(*pts)
        ax.plot(x, np.asarray(y) / 1e3, _STYLES.get(policy, "-"), marker="o", markersize=3,
                color=_COLORS.get(policy), label=policy, linewidth=1.6 if policy in _STYLES else 1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("uplink bandwidth (Mbit/s, constant)")
    ax.set_ylabel("mean end-to-end latency (s), queueing included")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(True, which="both", alpha=0.3)
    for i, (lo, hi) in enumerate(wins):
        ax.axvspan(lo, hi, color=_COLORS["split"], alpha=0.15, label="split beats local and offload" if i == 0 else None)
        # An edge at the end of the sweep is where the sweep stopped, not where split stops winning.
        lo_txt = f"≤{lo:.3g}" if swept and lo <= swept[0] else f"{lo:.3g}"
        hi_txt = f"≥{hi:.3g}" if swept and hi >= swept[-1] else f"{hi:.3g}"
        ax.annotate(f"split wins\n{lo_txt}–{hi_txt} Mbit/s", xy=(math.sqrt(lo * hi), 0.97),
                    xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=9,
                    color="#1a5e1a")
    if not wins:
        ax.annotate("split never beats both local and offload here", xy=(0.5, 0.97), xycoords="axes fraction",
                    ha="center", va="top", fontsize=9)
    ax.legend(loc="lower left", fontsize=9)
    ax.set_title(title or "Latency against uplink bandwidth", fontsize=9)
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_cdfs(e2e_ms: Mapping[tuple[str, str], np.ndarray], traces: Sequence[str], policies: Sequence[str],
              path: str | Path, title: str = "") -> list[Path]:
    """Latency CDF per trace (one panel each), one line per policy; returns the files written.

    The first file is ``path``; further pages (more than
    :data:`CDF_PANELS_PER_FIGURE` traces) get ``_2``, ``_3``, ... before the suffix.
    """
    plt = _pyplot()
    path = Path(path)
    pages = [traces[i:i + CDF_PANELS_PER_FIGURE] for i in range(0, len(traces), CDF_PANELS_PER_FIGURE)] or [[]]
    written = []
    for page_no, page in enumerate(pages, start=1):
        n = max(len(page), 1)
        cols = min(n, 5)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows + 0.6), squeeze=False,
                                 constrained_layout=True)
        for ax, trace in zip(axes.flat, page):
            for policy in policies:
                values = e2e_ms.get((trace, policy))
                if values is None or len(values) == 0:
                    continue
                x = np.sort(np.asarray(values, dtype=float)) / 1e3
                y = np.arange(1, x.size + 1) / x.size
                ax.step(x, y, where="post", linestyle=_STYLES.get(policy, "-"), color=_COLORS.get(policy),
                        label=policy, linewidth=1.3)
            ax.set_xscale("log")
            ax.set_ylim(0, 1.02)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(trace if len(trace) <= 34 else trace[:31] + "...", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(page):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("fraction of frames", fontsize=8)
        for ax in axes[-1, :]:
            ax.set_xlabel("end-to-end latency (s)", fontsize=8)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
        suptitle = title or "Latency CDF per trace"
        if len(pages) > 1:
            suptitle += f" ({page_no}/{len(pages)})"
        fig.suptitle(suptitle, fontsize=10)
        out = path if page_no == 1 else path.with_name(f"{path.stem}_{page_no}{path.suffix}")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


def plot_fleet(rows: Sequence, knees: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Median e2e against N (log x), one line per feedback setting, the 2x level and the knees marked.

    ``rows`` are :class:`simulators.fleet.FleetRow`, ``knees`` what :func:`simulators.fleet.knee` returns.
    """
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8.5, 5.2), constrained_layout=True)
    colors = {True: "#d62728", False: "#7f7f7f"}
    for fb in (True, False):
        pts = sorted((r.devices, r.median_e2e_ms) for r in rows if r.feedback == fb)
        if not pts:
            continue
        x, y = zip(*pts)
        ax.plot(x, y, "-" if fb else "--", marker="o", color=colors[fb],
                label="edge-load feedback on" if fb else "feedback off (controller as before)")
    for k in knees:
        fb = k["feedback"]
        ax.axhline(k["target_median_e2e_ms"], color=colors[fb], linestyle=":", linewidth=0.9, alpha=0.7)
        if k.get("knee_devices") is not None:
            ax.axvline(k["knee_devices"], color=colors[fb], linestyle=":", linewidth=1.2)
            ax.annotate(f" knee {'on' if fb else 'off'}: N ≈ {k['knee_devices']:g}",
                        xy=(k["knee_devices"], 0.04 + 0.07 * fb), xycoords=("data", "axes fraction"), fontsize=9,
                        color=colors[fb], ha="left")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("devices sharing one edge (N)")
    ax.set_ylabel("median end-to-end latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(title or "Median latency against fleet size (dotted: twice the N = 1 median)", fontsize=9)
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
