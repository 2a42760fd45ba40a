// One WebRTC session with the edge: HTTP signalling (POST /api/offer), a data channel for frames and
// results, and in offload mode the camera's video track.
//
// Why no trickle ICE: aiortc answers only once it has gathered all its candidates, so the page waits for its
// own gathering too and sends one complete offer; on loopback both take a few milliseconds.
// Why no STUN server (iceServers: []): the page and the edge reach each other directly (loopback in the test,
// the LAN or the edge's public address otherwise); nothing is asked of a third party.

import { api } from "./api.js";

const GATHER_TIMEOUT_MS = 5000;
const OPEN_TIMEOUT_MS = 15000;

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS); // send what was gathered
  });
}

function opened(channel, pc) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no data channel after ${OPEN_TIMEOUT_MS / 1000} s (ICE ${pc.iceConnectionState})`)), OPEN_TIMEOUT_MS);
    channel.addEventListener("open", () => { clearTimeout(timer); resolve(); }, { once: true });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") { clearTimeout(timer); reject(new Error("the WebRTC connection failed")); }
    });
  });
}

/** Connect in `mode` ("offload": `track` is sent; "split": data only). `onEncoded(frame)` sees each encoded video
 * frame before it is sent (offload, where the browser has encoded transforms), `onResult(bytes)` each message.
 * Returns {pc, channel, timings: {iceMs, openMs}, encodedTransform}. */
export async function connect(mode, { track = null, stream = null, onEncoded = null, onResult }) {
  const started = performance.now();
  const transform = mode === "offload" && typeof RTCRtpSender !== "undefined" && "createEncodedStreams" in RTCRtpSender.prototype;
  const pc = new RTCPeerConnection({ iceServers: [], ...(transform ? { encodedInsertableStreams: true } : {}) });
  const channel = pc.createDataChannel("splitedge", { ordered: true });
  channel.binaryType = "arraybuffer";
  channel.addEventListener("message", (event) => onResult(new Uint8Array(event.data)));
  let sender = null;
  if (mode === "offload") {
    sender = pc.addTrack(track, stream);
    if (transform) {
      const { readable, writable } = sender.createEncodedStreams();
      readable.pipeThrough(new TransformStream({
        transform(frame, controller) { onEncoded(frame); controller.enqueue(frame); },
      })).pipeTo(writable).catch(() => {}); // ends when the session closes
    }
  }
  const timings = { iceMs: null, openMs: null };
  let answered = 0;
  pc.addEventListener("iceconnectionstatechange", () => {
    if (timings.iceMs === null && ["connected", "completed"].includes(pc.iceConnectionState)) timings.iceMs = performance.now() - answered;
  });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const answer = await api("/api/offer", { method: "POST", body: { sdp: pc.localDescription.sdp, type: "offer", mode } });
  answered = performance.now();
  await pc.setRemoteDescription(answer);
  await opened(channel, pc);
  timings.openMs = performance.now() - started;
  if (sender) await keepResolution(sender);
  return { pc, channel, timings, encodedTransform: transform };
}

/** Boxes come back in the pixels of the frame the edge decoded: ask the encoder to drop frame rate, not
 * resolution, when it must adapt, so that they stay the camera's pixels. */
async function keepResolution(sender) {
  try {
    const params = sender.getParameters();
    params.degradationPreference = "maintain-resolution";
    await sender.setParameters(params);
  } catch { /* a browser without the setting adapts as it likes */ }
}
