"""The `split()` API, model adapters, recipes and weights loading (see DESIGN.md §3).

Its names are imported on first use (`bottlenecks.lazy`): `import split` alone loads no torch, so a
lean device can use `split.bundle` and `split.detections`."""

from bottlenecks.lazy import lazy_exports

__all__ = ["Outputs", "PayloadMismatch", "SplitModel", "split"]
__getattr__ = lazy_exports(__name__, {"Outputs": "split.adapters", "PayloadMismatch": "split.api",
                                      "SplitModel": "split.api", "split": "split.api"})
