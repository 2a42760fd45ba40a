"""Package attributes imported on first use, so that importing a package costs only what is used.

Why: `split` and `bottlenecks` export torch classes (`SplitModel`, the codecs), and a lean device without torch (docs/lean-client.md) imports the
same packages for their numpy parts (`split.bundle`, `bottlenecks.wire`, the session driver).
An eager `from split.api import SplitModel` in `split/__init__.py` would import torch for all.
It lives in `bottlenecks`, the package every other may import (DESIGN.md §2's import rules).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `exports[name]` (a module path) when `name` is first read."""

    def __getattr__(name: str) -> Any:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(import_module(module), name)

    return __getattr__
