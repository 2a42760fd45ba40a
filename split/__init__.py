"""The `split()` API, model adapters, recipes and weights loading (see DESIGN.md §3)."""

from split.api import PayloadMismatch, SplitModel, split

__all__ = ["PayloadMismatch", "SplitModel", "split"]
