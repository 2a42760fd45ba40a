"""The `split()` API, model adapters, recipes and weights loading (see DESIGN.md §3)."""

from split.adapters import Outputs
from split.api import PayloadMismatch, SplitModel, split

__all__ = ["Outputs", "PayloadMismatch", "SplitModel", "split"]
