"""Shared fixtures: the real edge server started through the CLI, on a free loopback port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "coco"


def shared_data() -> Path:
    return Path(os.environ.get("SPLITEDGE_DATA", ROOT.parent / "shared" / "data"))


# One torch thread per process: server, client and emulator share 2 cores in these tests,
# and oversubscribed OpenMP threads spin-wait each other into 10x slowdowns.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def splitedge(*args: str) -> list[str]:
    return [sys.executable, "-m", "split.dispatch", *args]


class ServerProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(splitedge("serve", "--host", "127.0.0.1", "--port", "0", *args),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self.target = f"127.0.0.1:{self.port}"
                return
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def server():
    srv = ServerProcess("--model", "ssdlite320_mobilenet_v3_large", "--model", "ssdlite320_mobilenet_v3_large_raw",
                        "--max-message-mb", "1")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests: they share two cores, and oversubscribed threads
    spin-wait each other (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def no_cached_weights(monkeypatch, tmp_path_factory):
    """An empty torch hub cache: recipes with default weights (`Recipe.weights`) build their seeded
    random init, as on a machine where `make weights` never ran."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))


@pytest.fixture(autouse=True)
def _denormals_back_on():
    """`splitedge` commands and distillation flush denormals in the calling thread (split/numerics.py);
    a test that runs one in-process must not leave the setting to the next (hypothesis refuses
    to draw floats under it)."""
    yield
    import torch

    torch.set_flush_denormal(False)
