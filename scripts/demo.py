"""`make demo`: a real edge server and the real device client on loopback, in all three modes.

Starts `splitedge serve` on a free port, runs `splitedge run` over the bundled sample images
in local, split and offload modes, prints one comparison table, and stops the server.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobile_client.sinks import format_summary, summary_rows  # noqa: E402
from split.recipes import build, default_recipe  # noqa: E402

SAMPLES = (ROOT / "samples" / "coco", ROOT / "samples" / "people")  # the bundled images, with attribution
OUT = ROOT / "demo-output"


def splitedge(*args: str) -> list[str]:
    return [sys.executable, "-m", "split.dispatch", *args]


def start_server(model: str) -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen(splitedge("serve", "--model", model, "--host", "127.0.0.1", "--port", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        m = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1), lines
    proc.kill()
    raise SystemExit("demo: the server did not start:\n" + "\n".join(lines))


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def detection_summary(by_mode: dict[str, list[dict]], min_score: float = 0.5) -> str:
    """Confident detections per mode, and how many of local's each remote mode also finds
    (same label, IoU >= 0.5): what the bottleneck or the JPEG costs in what the user sees."""
    def confident(r: dict) -> list[dict]:
        return [d for d in r["detections"] if d["score"] >= min_score and d.get("box") is not None]

    local = {r["source"]: confident(r) for r in by_mode["local"]}
    parts = [f"local {sum(map(len, local.values()))}"]
    for mode in ("split", "offload"):
        found = total = 0
        for r in by_mode[mode]:
            dets = confident(r)
            ref = local.get(r["source"], [])
            total += len(ref)
            found += sum(any(d["label"] == g["label"] and _iou(d["box"], g["box"]) >= 0.5 for d in dets) for g in ref)
        share = f", {found}/{total} of local's found" if total else ""
        parts.append(f"{mode} {sum(len(confident(r)) for r in by_mode[mode])}{share}")
    return f"detections with score >= {min_score}: " + "; ".join(parts)


def main() -> int:
    model = default_recipe().name
    OUT.mkdir(exist_ok=True)
    frames = OUT / "frames"  # one folder for the client: both sample sets
    shutil.rmtree(frames, ignore_errors=True)
    frames.mkdir()
    for folder in SAMPLES:
        for f in sorted(folder.glob("*.jpg")):
            shutil.copy2(f, frames / f.name)
    print(f"demo: starting the edge server with {model} ...", flush=True)
    server, target, lines = start_server(model)
    records: list[dict] = []
    try:
        for line in lines:
            print(f"  server: {line}")
        for mode in ("local", "split", "offload"):
            out = OUT / f"{mode}.jsonl"
            shutil.rmtree(OUT / f"annotated-{mode}", ignore_errors=True)  # no frames left from an earlier run
            print(f"demo: client in {mode} mode over {', '.join(str(f.relative_to(ROOT)) for f in SAMPLES)} ...",
                  flush=True)
            proc = subprocess.run(splitedge("run", "--server", target, "--model", model, "--mode", mode,
                                            "--source", str(frames), "--out", str(out), "--jpeg-quality", "90",
                                            "--save-annotated", str(OUT / f"annotated-{mode}")),
                                  cwd=ROOT, stdout=subprocess.DEVNULL)
            if proc.returncode != 0:
                print(f"demo: the client failed in {mode} mode (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            records += [json.loads(line) for line in out.read_text().splitlines()]
    finally:
        server.terminate()  # SIGTERM: the server drains (up to its --drain-s) and exits 0
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            print("demo: the server did not stop within 60 s of SIGTERM; killing it", file=sys.stderr)
            server.kill()
            server.wait()
    print()
    print(format_summary(summary_rows(records)))
    by_mode = {m: [r for r in records if r["mode"] == m] for m in ("local", "split", "offload")}
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    print()
    split_b, offload_b = med(by_mode["split"], "payload_bytes"), med(by_mode["offload"], "payload_bytes")
    codec = build(default_recipe().name)[0].codec.name  # the shipped split's: a checkpoint may bring its own
    print(f"split payload (learned bottleneck, {codec}) vs offload (JPEG q90): {split_b:.0f} B vs "
          f"{offload_b:.0f} B ({offload_b / split_b:.1f}x fewer bytes)")
    print(f"device compute: head {med(by_mode['split'], 'head_ms'):.1f} ms vs full model "
          f"{med(by_mode['local'], 'head_ms'):.1f} ms")
    print(detection_summary(by_mode))
    weights = next((l for l in lines if l.startswith("serving")), "")
    if "random" in weights:
        print("weights: RANDOM initialization (no trained checkpoint is installed): the pipeline is real, "
              "the detections are meaningless.")
    else:
        print(f"weights: {weights.split('weights ', 1)[-1].split(';')[0]}")
    print(f"results: {OUT.relative_to(ROOT)}/<mode>.jsonl, annotated frames in {OUT.relative_to(ROOT)}/annotated-<mode>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
