"""DESIGN.md §2: what the device and the edge import holds no training code.

pycocotools, tqdm and matplotlib belong to offline work (`split.train`) and to command-line
tools; importing `split`, `mobile_client` or `edge_server`, or any of their run-time modules,
must not load them. Each check runs in a fresh interpreter, so what this test process has
already imported does not count. `import torch` itself imports tqdm when it is installed
(torch.hub uses it for download bars): the probe drops it after torch and watches whether our
code brings it back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ("matplotlib", "pycocotools", "tqdm")

_PROBE = """
import importlib, pkgutil, sys
import torch  # torch.hub imports tqdm when it is installed: not our import
for name in [m for m in sys.modules if m.split(".")[0] == "tqdm"]:
    del sys.modules[name]
import split, mobile_client, edge_server
if {walk}:
    for pkg in (split, mobile_client, edge_server):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not (info.name.startswith("split.train") or info.name.endswith(".cli")):
                importlib.import_module(info.name)
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({offline!r}))))
"""


def _offline_modules_loaded(walk: bool) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE.format(walk=walk, offline=OFFLINE)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_importing_the_packages_loads_no_offline_module():
    assert _offline_modules_loaded(walk=False) == []


def test_no_run_time_module_loads_an_offline_module():
    """Every module of split (but split.train), mobile_client and edge_server, CLIs aside: also
    what the packages import only when asked (the run-time prefilter, profiling)."""
    assert _offline_modules_loaded(walk=True) == []


# What a lean device imports (`splitedge run --runtime onnx`, docs/lean-client.md): none of it may load torch,
# which `pip install splitedge[client]` does not install.
LEAN = ("split", "bottlenecks", "mobile_client", "split.dispatch", "split.bundle", "split.detections", "split.images",
        "split.messages", "split.numerics", "bottlenecks.wire", "mobile_client.cli", "mobile_client.onnx_device",
        "mobile_client.runtime", "protos")


def test_the_lean_device_imports_no_torch():
    probe = (f"import importlib, sys\nfor name in {LEAN!r}:\n    importlib.import_module(name)\n"
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'compressai'})))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
