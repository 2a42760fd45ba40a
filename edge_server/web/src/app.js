// The splitedge page: the camera, two modes, detections drawn over the video.
//
// offload: the camera's video track goes to the edge over WebRTC; the edge runs the whole model on the newest
//          frame it has and answers on the data channel, matched by the frame's RTP timestamp.
// split:   the head runs here (head.js) on the newest frame, and its 8-bit features go to the edge as the same
//          protobuf Frame a gRPC device sends; at most MAX_IN_FLIGHT frames are unanswered at once, so the page
//          always works on a fresh frame and the head of one overlaps the edge's tail of the one before.
//
// window.splitedge exposes the counters (tests/test_browser.py reads them).

import { api, setToken, takeTokenFromUrl, Unauthorized } from "./api.js";
import { Head } from "./head.js";
import { connect } from "./rtc.js";
import { decodeResult, encodeFrame } from "./wire.js";

const MAX_IN_FLIGHT = 2;
const WINDOW = 30;       // results the medians are taken over
const SENT_KEPT = 256;   // frames remembered for matching their results

const $ = (id) => document.getElementById(id);
const video = $("video"), overlay = $("overlay");
const stats = { offload: newStats(), split: newStats() };
let config = null, camera = null, head = null, session = null;

function newStats() {
  return { answered: 0, withBoxes: 0, boxes: 0, errors: 0, lastError: "", e2e: [], bytes: [], head: [], times: [],
           iceMs: null, openMs: null, encodedTransform: null };
}

function keep(list, value, n = WINDOW) { list.push(value); if (list.length > n) list.shift(); }
const median = (xs) => { if (!xs.length) return null; const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]; };

function status(text) { $("status").textContent = text; }

// -- drawing -----------------------------------------------------------------------------------
function draw(mode, result) {
  const ctx = overlay.getContext("2d");
  overlay.width = video.videoWidth || 640;
  overlay.height = video.videoHeight || 480;
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  ctx.lineWidth = 3;
  ctx.font = "16px sans-serif";
  let drawn = 0;
  for (const d of result.detections) {
    if (d.score < config.score_threshold) continue;
    drawn += 1;
    ctx.strokeStyle = mode === "split" ? "#3f9" : "#39f";
    ctx.strokeRect(d.x1, d.y1, d.x2 - d.x1, d.y2 - d.y1);
    const label = `${config.classes[d.label] ?? d.label} ${d.score.toFixed(2)}`;
    ctx.fillStyle = ctx.strokeStyle;
    ctx.fillRect(d.x1, Math.max(d.y1 - 20, 0), ctx.measureText(label).width + 8, 20);
    ctx.fillStyle = "#000";
    ctx.fillText(label, d.x1 + 4, Math.max(d.y1 - 5, 15));
  }
  ctx.fillStyle = "rgba(0,0,0,0.6)";
  ctx.fillRect(0, 0, 230, 26);
  ctx.fillStyle = "#fff";
  const s = stats[mode];
  ctx.fillText(`${mode} · ${fmt(median(s.e2e))} ms · ${fmt(median(s.bytes))} B`, 6, 18);
  return drawn;
}

const fmt = (x) => (x === null ? "–" : Math.round(x).toLocaleString("en"));

function hud(mode) {
  const s = stats[mode];
  const now = performance.now();
  $("hud-mode").textContent = mode;
  $("hud-e2e").textContent = fmt(median(s.e2e));
  $("hud-bytes").textContent = fmt(median(s.bytes));
  $("hud-frames").textContent = `${s.answered} (${s.withBoxes} with boxes drawn)`;
  $("hud-fps").textContent = s.times.filter((t) => now - t < 2000).length / 2 + "";
  $("hud-head").textContent = mode === "split" ? fmt(median(s.head)) : "–";
}

// -- results -----------------------------------------------------------------------------------
function onResult(run, bytes) {
  const result = decodeResult(bytes);
  const s = stats[run.mode];
  const sent = run.sent.get(result.frameId);
  run.sent.delete(result.frameId);
  if (run.mode === "split") { run.inFlight = Math.max(0, run.inFlight - 1); run.wake(); }
  if (result.code !== 0) {
    s.errors += 1;
    s.lastError = result.error;
    status(result.error);
    return;
  }
  s.answered += 1;
  keep(s.times, performance.now(), 120);
  if (sent) keep(s.e2e, performance.now() - sent.at);
  if (run.active) {
    const drawn = draw(run.mode, result);
    s.boxes += drawn;
    if (drawn) s.withBoxes += 1;
  }
  hud(run.mode);
}

function remember(run, frameId, at, bytes) {
  run.sent.set(frameId, { at, bytes });
  if (run.sent.size > SENT_KEPT) run.sent.delete(run.sent.keys().next().value);
  keep(stats[run.mode].bytes, bytes);
}

// -- modes -------------------------------------------------------------------------------------
function newRun(mode) {
  const run = { mode, active: true, sent: new Map(), inFlight: 0, frameId: 0, waiter: null };
  run.wake = () => { if (run.waiter) { const w = run.waiter; run.waiter = null; w(); } };
  run.sleep = () => new Promise((resolve) => { run.waiter = resolve; });
  return run;
}

async function start(mode) {
  await stop();
  const run = newRun(mode);
  session = run;
  setButtons(mode);
  status(`connecting (${mode})…`);
  try {
    if (mode === "split" && head === null) {
      status("loading the head (onnxruntime-web)…");
      head = await Head.load(config);
    }
    const [track] = camera.getVideoTracks();
    const rtc = await connect(mode, {
      track, stream: camera, onResult: (b) => onResult(run, b),
      onEncoded: (frame) => remember(run, frame.getMetadata?.().rtpTimestamp ?? frame.timestamp, performance.now(),
                                     frame.data.byteLength),
    });
    Object.assign(run, rtc);
    Object.assign(stats[mode], { iceMs: rtc.timings.iceMs, openMs: rtc.timings.openMs, encodedTransform: rtc.encodedTransform });
    rtc.pc.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(rtc.pc.connectionState) && run.active) status(`connection ${rtc.pc.connectionState}`);
    });
    status(`${mode}: connected (data channel open after ${Math.round(rtc.timings.openMs)} ms)`);
    if (mode === "split") splitLoop(run);
  } catch (err) {
    run.active = false;
    setButtons(null);
    status(err instanceof Unauthorized ? "the token was refused" : String(err.message ?? err));
  }
}

async function stop() {
  const run = session;
  session = null;
  if (!run) return;
  run.active = false;
  run.wake();
  run.channel?.close();
  run.pc?.close();
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  setButtons(null);
}

function nextVideoFrame() {
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) return new Promise((r) => video.requestVideoFrameCallback(() => r()));
  return new Promise((r) => setTimeout(r, 33));
}

async function splitLoop(run) {
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  while (run.active) {
    if (run.inFlight >= MAX_IN_FLIGHT) { await run.sleep(); continue; }
    await nextVideoFrame();
    if (!run.active) break;
    const at = performance.now();
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    ctx.drawImage(video, 0, 0);
    const payload = await head.payload(ctx.getImageData(0, 0, canvas.width, canvas.height));
    keep(stats.split.head, performance.now() - at);
    if (!run.active || run.channel.readyState !== "open") break;
    run.frameId += 1;
    const bytes = encodeFrame({ frameId: run.frameId, payload });
    remember(run, run.frameId, at, bytes.length);
    run.inFlight += 1;
    run.channel.send(bytes);
  }
}

function setButtons(active) {
  for (const mode of ["offload", "split"]) {
    $(mode).classList.toggle("active", mode === active);
    $(mode).disabled = !config || (mode === "split" && !config.modes.split.available);
  }
  $("stop").disabled = active === null;
}

// -- start-up ----------------------------------------------------------------------------------
async function init() {
  takeTokenFromUrl();
  try {
    config = await api("/api/config");
  } catch (err) {
    if (!(err instanceof Unauthorized)) { status(String(err.message ?? err)); return; }
    $("token-form").hidden = false;
    status("this edge server needs a bearer token");
    return;
  }
  $("model").textContent = `${config.model} · split mode: ${config.modes.split.available ? "available" : config.modes.split.reason}`;
  try {
    camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    status(`no camera: ${err.message ?? err}`);
    return;
  }
  video.srcObject = camera;
  await video.play().catch(() => {});
  setButtons(null);
  status("ready");
  window.splitedge.ready = true;
}

$("offload").addEventListener("click", () => start("offload"));
$("split").addEventListener("click", () => start("split"));
$("stop").addEventListener("click", () => stop());
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("token").value);
  $("token-form").hidden = true;
  init();
});

window.splitedge = { stats, start, stop, ready: false };
init();
