"""The teacher cache of a distillation run: augmented samples through the frozen teacher, once.

Why: on this CPU, running the frozen teacher for every step costs more than the student's own
step (REFERENCES.md). Every augmented sample is a pure function of (seed, index) (see
`split.train.data.DistillAugment`), so the teacher runs once per sample: its outputs at the
loss stages, and the input of the first trainable layer (the output of the frozen prefix
`freeze_through`, or the augmented image itself), are stored — in memory, or as .npy files
under `cache_dir` that the next run with the same data and teacher reuses (three bottleneck
sizes share one cache). Epochs then read the cache in a seeded order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["TeacherCache"]


class TeacherCache:
    """Augmented samples through the frozen teacher: student inputs and teacher targets.

    Arrays are numpy (in memory, or .npy memory maps under a directory with a `meta.json`
    written last, so an interrupted build is never mistaken for a complete one).
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))

    def batch(self, idx: Tensor | list[int]) -> dict[str, Tensor]:
        ix = np.sort(np.asarray(idx, dtype=np.int64))  # sorted reads are kinder to memory maps
        order = np.argsort(np.argsort(np.asarray(idx, dtype=np.int64)))
        return {k: torch.from_numpy(np.ascontiguousarray(v[ix][order])) for k, v in self.arrays.items()}

    @staticmethod
    def build(n: int, view: Callable[[int], Tensor], teacher: Callable[[Tensor], dict[str, Tensor]],
              directory: Path | None, key: str, batch_size: int, desc: str, progress: bool) -> "TeacherCache":
        from tqdm import tqdm

        if directory is not None:
            folder = directory / key
            meta = folder / "meta.json"
            if meta.is_file():
                info = json.loads(meta.read_text())
                if info.get("n") == n:
                    return TeacherCache({k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in info["keys"]})
            folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        bar = tqdm(total=n, desc=desc, unit="sample", file=sys.stderr, disable=not progress, mininterval=5)
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            views = torch.stack([view(i) for i in idx])
            with torch.inference_mode():
                out = teacher(views)
            for k, v in out.items():
                arr = v.numpy()
                if k not in arrays:
                    shape = (n, *arr.shape[1:])
                    if directory is not None:
                        arrays[k] = np.lib.format.open_memmap(directory / key / f"{k}.npy", mode="w+",
                                                              dtype=arr.dtype, shape=shape)
                    else:
                        arrays[k] = np.empty(shape, dtype=arr.dtype)
                arrays[k][start : start + len(idx)] = arr
            bar.update(len(idx))
        bar.close()
        if directory is not None:
            for a in arrays.values():
                a.flush()
            (directory / key / "meta.json").write_text(json.dumps({"n": n, "keys": sorted(arrays)}))
            return TeacherCache({k: np.load(directory / key / f"{k}.npy", mmap_mode="r") for k in arrays})
        return TeacherCache(arrays)
