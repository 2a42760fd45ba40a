"""Channel simulation for splitedge: bandwidth traces, link models, a user-space
link emulator (a shaping TCP proxy), the fast simulator (``experiment``: the
device's own session driver and controller on a virtual clock, ``sim_io.SimIO``), and
a fleet of such devices on one batching edge (``fleet``, ``edge_queue``).

Nothing in the live client or server imports this package; it drives them
from outside, so a simulated figure and a live run use the same link model and
the same rules.
"""

from . import trace_files, traces
from .emulator import LinkEmulator, make_links, run_emulator
from .links import BernoulliLoss, Delivery, GilbertElliottLoss, Link, LossModel, parse_loss
from .trace_files import CsvTrace, MahimahiTrace, PensieveTrace, load_trace
from .traces import ConstantTrace, PiecewiseTrace, Trace, TraceError

__all__ = [
    *traces.__all__,
    *trace_files.__all__,
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
