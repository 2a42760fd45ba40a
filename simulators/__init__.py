"""Channel simulation for splitedge: bandwidth traces, link models, and a
user-space link emulator (a shaping TCP proxy).

Nothing in the live client or server imports this package; it drives them
from outside, so a simulated figure and a live run use the same link model.
"""

from .emulator import LinkEmulator, make_links, run_emulator
from .links import BernoulliLoss, Delivery, GilbertElliottLoss, Link, LossModel, parse_loss
from .traces import (
    ConstantTrace,
    CsvTrace,
    MahimahiTrace,
    PensieveTrace,
    PiecewiseTrace,
    Trace,
    TraceError,
    load_trace,
)

__all__ = [
    "Trace",
    "TraceError",
    "MahimahiTrace",
    "PensieveTrace",
    "CsvTrace",
    "ConstantTrace",
    "PiecewiseTrace",
    "load_trace",
    "Link",
    "Delivery",
    "LossModel",
    "BernoulliLoss",
    "GilbertElliottLoss",
    "parse_loss",
    "LinkEmulator",
    "make_links",
    "run_emulator",
]
