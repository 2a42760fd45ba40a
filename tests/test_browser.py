"""The browser page (edge_server/web.py, edge_server/webrtc.py, edge_server/web/src): its wire format and
preprocessing against Python's, its HTTP API's security, and the page end to end in headless Chromium.

The end-to-end test runs Debian's ``chromium`` through Playwright (no browser download), with a fake camera that
plays a sample photo with people, against a real ``splitedge serve --web-port`` with TLS and a bearer token, inside
``unshare -n`` with only ``lo`` up: nothing leaves loopback. It needs the page built (``make web``, which ``make
test`` runs first) and the person detector's weights (``make weights``); it skips, saying which is missing.
With SPLITEDGE_BROWSER_RESULTS set (`make browser-test`) it saves one screenshot per mode and the measured
figures under results/browser/ (docs/browser.md); `make test` leaves the committed ones alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "edge_server" / "web"
RESULTS = ROOT / "results" / "browser"
CHECKPOINT = ROOT / "checkpoints" / "ssdlite_person_f6_c6.pt"
PEOPLE = ROOT / "samples" / "people" / "000000000389.jpg"  # 640x480: the fake camera's size
CHROMIUM = Path(os.environ.get("SPLITEDGE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                  "--allow-loopback-in-peer-connection"]
TOKEN = "browser-test-token-0123456789"
MIN_FRAMES = 20  # per mode: results that came back and had boxes drawn


# -- the page's JavaScript against Python ------------------------------------------------------------------------
def _node(script: str, stdin: bytes = b"") -> bytes:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the page's modules cannot be run outside a browser")
    src = (WEB / "src").as_uri()
    done = subprocess.run(["node", "--input-type=module", "-e", script.replace("SRC", src)], input=stdin,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_the_pages_frame_is_the_grpc_frame_and_its_result_decoder_reads_pythons():
    from protos import splitedge_pb2 as pb

    data = bytes(range(256)) * 3
    out = _node("""
import { encodeFrame, decodeResult } from "SRC/wire.js";
import { readFileSync } from "node:fs";
const result = decodeResult(new Uint8Array(readFileSync(0)));
const frame = encodeFrame({ frameId: 2 ** 40 + 7, payload: {
  model: "m", splitPoint: "backbone.features.6", originalSize: [480, 640],
  splitSize: [38, 38], tensor: { codec: "uint8", shape: [1, 6, 8, 16], scale: 0.0123,
  zeroPoint: 17.5, data: Uint8Array.from({ length: 768 }, (_, i) => i % 256) } } });
process.stdout.write(JSON.stringify({ result, frame: Buffer.from(frame).toString("base64") }));
""", pb.Result(frame_id=2**40 + 3, code=3, error="frame 3: café", server_ms=12.5, queue_ms=0.25, detections=[
        pb.Detection(x1=1.5, y1=2, x2=30.25, y2=40, label=1, score=0.75), pb.Detection(label=7)]).SerializeToString())
    got = json.loads(out)
    import base64

    frame = pb.Frame.FromString(base64.b64decode(got["frame"]))
    p = frame.payload
    assert frame.frame_id == 2**40 + 7 and p.model == "m" and p.split_point == "backbone.features.6"
    assert (p.original_size.height, p.original_size.width, p.split_size.width) == (480, 640, 38)
    assert (p.tensor.codec, list(p.tensor.shape)) == ("uint8", [1, 6, 8, 16])
    assert pb.Frame(frame_id=frame.frame_id, payload=p).SerializeToString() == base64.b64decode(got["frame"])  # no other field
    assert (p.tensor.scale, p.tensor.zero_point, p.tensor.data) == (0.0123, 17.5, data)
    r = got["result"]
    assert (r["frameId"], r["code"], r["error"], r["serverMs"], r["queueMs"]) == (2**40 + 3, 3, "frame 3: café", 12.5, 0.25)
    assert r["detections"] == [{"x1": 1.5, "y1": 2, "x2": 30.25, "y2": 40, "label": 1, "score": 0.75},
                               {"x1": 0, "y1": 0, "x2": 0, "y2": 0, "label": 7, "score": 0}]


def test_the_pages_preprocessing_and_codec_equal_the_devices():
    """tf_legacy_bilinear + x*2/255-1 and the 8-bit codec in JavaScript against split/ and bottlenecks/."""
    import torch

    from bottlenecks import Uint8Codec
    from split.models.ssdlite_tf import TFTransform

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (480, 640, 4), dtype=np.uint8)
    z = (rng.standard_normal((1, 6, 38, 38)) * 3).astype(np.float32)
    out = _node("""
import { preprocessTfLegacy, quantizeUint8 } from "SRC/preprocess.js";
import { readFileSync } from "node:fs";
const bytes = readFileSync(0);
const data = new Uint8ClampedArray(bytes.buffer, bytes.byteOffset, 480 * 640 * 4);
const z = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 480 * 640 * 4, bytes.byteOffset + bytes.length));
const x = preprocessTfLegacy({ width: 640, height: 480, data }, 300, 300);
const q = quantizeUint8(z);
process.stdout.write(JSON.stringify({ scale: q.scale, zeroPoint: q.zeroPoint }) + "\\n");
process.stdout.write(Buffer.from(x.buffer));
process.stdout.write(Buffer.from(q.data.buffer));
""", rgba.tobytes() + z.tobytes())
    header, _, rest = out.partition(b"\n")
    codes = json.loads(header)
    x = np.frombuffer(rest[:3 * 300 * 300 * 4], np.float32).reshape(1, 3, 300, 300)
    q = np.frombuffer(rest[3 * 300 * 300 * 4:], np.uint8)
    image = torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255
    want, _ = TFTransform()([image])
    assert np.abs(x - want.tensors.numpy()).max() <= 2e-5
    enc = Uint8Codec().encode(torch.from_numpy(z))
    assert (codes["scale"], codes["zeroPoint"]) == pytest.approx((enc.scale, enc.zero_point), rel=1e-12)
    ours = np.frombuffer(enc.data, np.uint8).astype(int)
    assert np.abs(q.astype(int) - ours).max() <= 1 and (q != ours).mean() <= 1e-3


def test_newest_frame_keeps_one_frame_and_counts_the_dropped():
    from edge_server.webrtc import NewestFrame

    async def scenario():
        slot = NewestFrame()
        for i in range(5):
            slot.put(i)
        assert await slot.get() == 4
        slot.put(5)
        assert await slot.get() == 5
        waiter = asyncio.ensure_future(slot.get())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        slot.put(6)
        assert await waiter == 6
        return slot.received, slot.dropped

    assert asyncio.run(scenario()) == (7, 4)


# -- the HTTP API: TLS, tokens, the page not built ---------------------------------------------------------------
def test_the_page_needs_its_build_and_the_api_a_token(tmp_path):
    pytest.importorskip("aiohttp", reason="aiohttp is not installed (pip install 'splitedge[web]')")
    pytest.importorskip("aiortc", reason="aiortc is not installed (pip install 'splitedge[web]')")
    import urllib.error
    import urllib.request

    from edge_server import ServerOptions
    from edge_server.web import WebOptions, WebServer
    from tests.edge_helpers import InProcessServer, make_certs

    certs = make_certs(tmp_path / "pki", client=False)
    (tmp_path / "tokens").write_text(f"{TOKEN}\nother-model-token-0123456 some_other_model\n")
    options = ServerOptions(tls_cert=str(certs["server_cert"]), tls_key=str(certs["server_key"]),
                            token_file=str(tmp_path / "tokens"))
    context = ssl.create_default_context(cafile=str(certs["ca"]))

    def get(path: str, token: str | None = None, data: bytes | None = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"https://127.0.0.1:{page.port}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    with InProcessServer(options) as srv:
        page = WebServer(srv.server, srv.server.options, WebOptions(port=0, dist=tmp_path / "no-dist",
                                                                    bundle=tmp_path / "no-bundle"))
        srv.run(page.start())
        try:
            status, body = get("/")
            assert status == 503 and "make web" in body
            assert get("/api/config")[0] == 401
            assert get("/api/config", "not-a-token-at-all-0000")[0] == 401
            assert get("/api/config", "other-model-token-0123456")[0] == 403
            status, body = get("/api/config", TOKEN)
            config = json.loads(body)
            assert status == 200 and config["modes"]["offload"]["available"]
            assert not config["modes"]["split"]["available"] and "make web" in config["modes"]["split"]["reason"]
            offer = json.dumps({"sdp": "v=0", "type": "offer", "mode": "split"}).encode()
            assert get("/api/offer", TOKEN, offer)[0] == 409  # split mode is off: no bundle
            assert get("/api/offer", TOKEN, b"{not json")[0] == 400
            assert get("/api/offer", None, offer)[0] == 401
            assert get("/static/../../pyproject.toml")[0] == 404
            bad = json.dumps({"sdp": "not sdp", "type": "offer", "mode": "offload"}).encode()
            assert get("/api/offer", TOKEN, bad)[0] == 400
        finally:
            srv.run(page.stop())


def test_split_mode_is_off_with_a_reason_when_the_served_model_is_not_the_pages_head():
    """The default checkpoint's entropy coder has no JavaScript port: serving it, the page offers offload only."""
    if not (WEB / "model" / "manifest.json").is_file():
        pytest.skip("the page's head bundle is not built: run `make web`")
    from edge_server import ModelRegistry, ServedModel
    from edge_server.web import DEFAULT_BUNDLE, split_mode
    from split.recipes import build, default_recipe

    recipe = default_recipe()
    model, source = build(recipe.name)
    name, split = split_mode(DEFAULT_BUNDLE, ModelRegistry([ServedModel(model, source, recipe.builder)]))
    assert name == recipe.name and not split.available
    assert "codec" in split.reason and "uint8" in split.reason and "docs/browser.md" in split.reason


# -- the page end to end in headless Chromium --------------------------------------------------------------------
def _missing() -> str | None:
    """Why the end-to-end test cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found: apt-get install -y chromium (Debian's; Playwright downloads no browser here)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    from edge_server.web import web_missing

    if (why := web_missing()) is not None:
        return why
    if not (WEB / "dist" / "index.html").is_file() or not (WEB / "model" / "manifest.json").is_file():
        return "the page or its head bundle is not built: run `make web`"
    from split.models.convert_tf import cached_checkpoint

    if cached_checkpoint() is None:
        return "the person detector's converted weights are not cached (`make weights`)"
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        return "cannot make a network namespace (`unshare -n`): the test keeps all its traffic on a private loopback"
    return None


@pytest.mark.slow
def test_the_page_detects_in_both_modes_in_headless_chromium(tmp_path):
    if (why := _missing()) is not None:
        pytest.skip(why)
    started = time.monotonic()
    inner = f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} --inside {tmp_path}"
    done = subprocess.run(["unshare", "-n", "sh", "-c", inner], capture_output=True, text=True, timeout=240, cwd=ROOT)
    report = tmp_path / "run.json"
    assert done.returncode == 0 and report.is_file(), done.stdout[-4000:] + done.stderr[-4000:]
    run = json.loads(report.read_text())
    run["test_seconds"] = round(time.monotonic() - started, 1)
    for mode in ("offload", "split"):
        s = run["modes"][mode]
        assert s["errors"] == 0, s["lastError"]
        assert s["answered"] >= MIN_FRAMES and s["withBoxes"] >= MIN_FRAMES, s
        assert s["overlay_pixels"] > 0, f"{mode}: nothing drawn on the overlay"
        assert s["e2e_median_ms"] is not None, f"{mode}: no result matched to its frame (e2e not measured)"
    if os.environ.get("SPLITEDGE_BROWSER_RESULTS"):  # `make browser-test`: the committed figures and screenshots
        RESULTS.mkdir(parents=True, exist_ok=True)
        for mode in ("offload", "split"):
            shutil.copy(tmp_path / f"{mode}.jpg", RESULTS / f"{mode}.jpg")
        (RESULTS / "run.json").write_text(json.dumps(run, indent=1) + "\n")


def _inside(out: Path) -> None:
    """In the network namespace: a real server (TLS, a token), Chromium on a fake camera, both modes."""
    import cv2
    from playwright.sync_api import sync_playwright

    from edge_server.certs import make_certs

    certs = make_certs(out / "pki", client=False)
    (out / "tokens").write_text(TOKEN + "\n")
    camera = out / "people.y4m"  # the fake camera plays this (I420) in a loop: a photo with people
    yuv = cv2.cvtColor(cv2.imread(str(PEOPLE)), cv2.COLOR_BGR2YUV_I420)
    camera.write_bytes(b"YUV4MPEG2 W640 H480 F25:1 Ip A1:1 C420jpeg\n" + (b"FRAME\n" + yuv.tobytes()) * 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "split.dispatch", "serve", "--checkpoint", str(CHECKPOINT),
                               "--port", "0", "--web-port", "0", "--tls-cert", str(certs["server_cert"]),
                               "--tls-key", str(certs["server_key"]), "--token-file", str(out / "tokens")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    try:
        url, log = _web_url(server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={camera}"])
            page = browser.new_context(ignore_https_errors=True, viewport={"width": 700, "height": 800}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}#token={TOKEN}")
            _until(page, "window.splitedge && window.splitedge.ready", 30, errors)
            camera_fps = page.evaluate(_CAMERA_FPS)
            modes = {}
            for mode in ("offload", "split"):
                t0 = time.monotonic()
                page.evaluate(f"window.splitedge.start({mode!r})")
                _until(page, f"window.splitedge.stats.{mode}.withBoxes >= {MIN_FRAMES}"
                             f" || window.splitedge.stats.{mode}.errors > 0", 60, errors)
                modes[mode] = _mode_figures(page, mode, time.monotonic() - t0)
                page.screenshot(path=str(out / f"{mode}.jpg"), type="jpeg", quality=80)
            page.evaluate("window.splitedge.stop()")
            version = browser.version
            browser.close()
    finally:
        server.terminate()
        rest, _ = server.communicate(timeout=30)
    peers = [json.loads(line[line.index("{"):]) for line in rest.splitlines() if '"web_peer_close"' in line]
    report = {"modes": modes, "camera": {"file": PEOPLE.name, **camera_fps}, "chromium": version, "server": log,
              "peers_closed": peers, "page_errors": errors}
    (out / "run.json").write_text(json.dumps(report, indent=1))


# The fake camera's frame rate and size, as the page's <video> shows them, over one second.
_CAMERA_FPS = """async () => { const v = document.getElementById('video'); let n = 0; const t0 = performance.now();
    await new Promise((done) => { const tick = () => { n += 1; if (performance.now() - t0 < 1000) v.requestVideoFrameCallback(tick);
    else done(); }; v.requestVideoFrameCallback(tick); });
    return { fps: Math.round(n * 1000 / (performance.now() - t0) * 10) / 10, width: v.videoWidth, height: v.videoHeight }; }"""


def _web_url(server: subprocess.Popen) -> tuple[str, list[str]]:
    lines, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if m := re.search(r"web page on (https://127\.0\.0\.1:\d+/) \(.*split mode available", line):
            return m.group(1), [x for x in lines if not x.startswith("20")]  # the printed lines, not the log
    raise RuntimeError("the server did not serve the page with split mode:\n" + "\n".join(lines))


def _until(page, condition: str, timeout_s: float, errors: list[str]) -> None:
    """Poll a condition in the page (Playwright's wait_for_function evaluates strings, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.evaluate(f"Boolean({condition})"):
            return
        time.sleep(0.1)
    status = page.evaluate("document.getElementById('status').textContent")
    raise AssertionError(f"not within {timeout_s} s: {condition}; page status {status!r}; errors {errors}")


def _mode_figures(page, mode: str, seconds: float) -> dict:
    s = page.evaluate(f"window.splitedge.stats.{mode}")
    pixels = page.evaluate("""(() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()""")
    times = s.pop("times")
    rate = (len(times) - 1) / ((times[-1] - times[0]) / 1e3) if len(times) > 1 else None
    med = lambda xs: round(float(np.median(xs)), 1) if xs else None  # noqa: E731
    ms = {k: s[k] and round(s[k], 1) for k in ("iceMs", "openMs")}
    return {**{k: s[k] for k in ("answered", "withBoxes", "boxes", "errors", "lastError", "encodedTransform")}, **ms,
            "seconds_to_min_frames": round(seconds, 2), "results_per_s": rate and round(rate, 1),
            "e2e_median_ms": med(s["e2e"]), "bytes_median": med(s["bytes"]), "head_median_ms": med(s["head"]),
            "overlay_pixels": pixels}


if __name__ == "__main__" and sys.argv[1:2] == ["--inside"]:
    _inside(Path(sys.argv[2]))
