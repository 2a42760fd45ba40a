"""Process-wide numerics for the `splitedge` command: denormal floats flushed to zero.

Why: denormal floats slow CPU convolutions many-fold. The entropy-coded default's head ran 35 ms
on most frames and ~900 ms on some with them (`make demo`, this machine); distillation has
flushed them since it was written. Why only in the command (`split.dispatch.main`), not in
`build()`: it is a setting of the calling thread and the threads it starts, which would leak
into a library user's program (hypothesis, for one, refuses to draw floats under it). A Python
API user who wants the speed calls `flush_denormals()` once.
"""

from __future__ import annotations

__all__ = ["flush_denormals"]


def flush_denormals() -> None:
    """Flush denormal floats to zero in this thread and the threads it starts (values below 1e-38)."""
    import numpy as np

    try:
        import torch
    except ModuleNotFoundError:  # a lean device (onnxruntime): nothing of ours computes in torch there
        return
    for t in (np.float32, np.float64):  # computed (and cached) first: numpy warns when it meets flushed denormals
        np.finfo(t).smallest_subnormal
    torch.set_flush_denormal(True)
