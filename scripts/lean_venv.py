"""Make a venv with only `pip install splitedge[client]` in it: `python scripts/lean_venv.py DIR`.

What a Raspberry Pi or a phone installs (docs/lean-client.md); the lean-client test and
`bench/lean_client.py` both make theirs here. The package is built from a copy of its sources
in a temporary folder, not from the checkout: setuptools builds in `build/` of the tree it is
given, and a stale `build/lib` there would put deleted modules into the wheel.
Exit status 0 and one line `DIR SECONDS`; on failure pip's last line on stderr and status 1.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "split", "bottlenecks", "protos", "edge_server", "mobile_client", "simulators")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/lean_venv.py DIR", file=sys.stderr)
        return 2
    venv = Path(argv[0]).resolve()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in SOURCES:
            src, dst = ROOT / name, Path(tmp) / name
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "node_modules", "dist"))
            else:
                shutil.copy2(src, dst)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                               f"{tmp}[client]"], capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["pip failed without a message"]
        print(f"lean_venv: pip install splitedge[client] into {venv} failed: {lines[-1]}", file=sys.stderr)
        sys.stderr.write(done.stderr)
        return 1
    print(f"{venv} {time.perf_counter() - start:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
