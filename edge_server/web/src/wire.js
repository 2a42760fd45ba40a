// The splitedge wire format (protos/splitedge.proto), written by hand for the few messages the page
// needs: it encodes a Frame (with its Payload, Tensor and Sizes) and decodes a Result.
//
// Why by hand and not protobufjs: five messages of scalar fields need ~100 lines, and the page then
// sends exactly the bytes a gRPC client sends, so the server's validation (edge_server/validation.py)
// applies unchanged. tests/test_browser.py parses this encoder's output with the Python protobuf.

const VARINT = 0, FIXED64 = 1, BYTES = 2, FIXED32 = 5;

class Writer {
  constructor() { this.parts = []; this.length = 0; }

  push(bytes) { this.parts.push(bytes); this.length += bytes.length; }

  varint(value) { // a non-negative integer below 2**53
    const out = [];
    let v = value;
    while (v >= 0x80) { out.push((v % 0x80) | 0x80); v = Math.floor(v / 0x80); }
    out.push(v);
    this.push(Uint8Array.from(out));
  }

  tag(field, wire) { this.varint(field * 8 + wire); }

  uint(field, value) { if (value) { this.tag(field, VARINT); this.varint(value); } }

  double(field, value) {
    if (!value) return; // 0 (or absent, as a codec without a scale leaves it) is the default: not sent
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, value, true);
    this.tag(field, FIXED64);
    this.push(b);
  }

  bytes(field, bytes) {
    if (!bytes.length) return;
    this.tag(field, BYTES);
    this.varint(bytes.length);
    this.push(bytes);
  }

  string(field, text) { this.bytes(field, new TextEncoder().encode(text)); }

  message(field, writer) { this.tag(field, BYTES); this.varint(writer.length); this.parts.push(...writer.parts); this.length += writer.length; }

  packed(field, values) {
    const inner = new Writer();
    for (const v of values) inner.varint(v);
    this.message(field, inner);
  }

  finish() {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const p of this.parts) { out.set(p, at); at += p.length; }
    return out;
  }
}

function size([height, width]) {
  const w = new Writer();
  w.uint(1, height);
  w.uint(2, width);
  return w;
}

function tensor(t) {
  const w = new Writer();
  w.string(1, t.codec); // no dtype (field 2 is reserved): the codec implies it
  w.packed(3, t.shape);
  w.double(4, t.scale);
  w.double(5, t.zeroPoint);
  w.bytes(6, t.data);
  return w;
}

/** A serialized splitedge.v1.Frame: {frameId, payload: {model, splitPoint, tensor, originalSize, splitSize}};
 * sizes are [height, width], tensor {codec, shape, scale, zeroPoint, data}. The sizes after the model's resize
 * and padding are not sent (fields 5 and 6 are reserved): the edge computes them from originalSize. */
export function encodeFrame({ frameId, payload }) {
  const p = new Writer();
  p.string(1, payload.model);
  p.string(2, payload.splitPoint);
  p.message(3, tensor(payload.tensor));
  p.message(4, size(payload.originalSize));
  p.message(7, size(payload.splitSize));
  const f = new Writer();
  f.uint(1, frameId);
  f.message(2, p);
  return f.finish();
}

class Reader {
  constructor(bytes) { this.b = bytes; this.i = 0; this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength); }

  get done() { return this.i >= this.b.length; }

  varint() {
    let value = 0, scale = 1;
    for (let n = 0; n < 10; n++) {
      if (this.i >= this.b.length) throw new Error("truncated varint");
      const byte = this.b[this.i++];
      value += (byte & 0x7f) * scale;
      if (!(byte & 0x80)) return value;
      scale *= 0x80;
    }
    throw new Error("varint too long");
  }

  take(n) {
    if (this.i + n > this.b.length) throw new Error("truncated field");
    const out = this.b.subarray(this.i, this.i + n);
    this.i += n;
    return out;
  }

  // Each field as [number, wire type, value]: a number for varints and fixed32/64 (as float/double), bytes otherwise.
  * fields() {
    while (!this.done) {
      const key = this.varint();
      const field = Math.floor(key / 8), wire = key % 8;
      if (wire === VARINT) yield [field, wire, this.varint()];
      else if (wire === FIXED64) { const at = this.i; this.take(8); yield [field, wire, this.view.getFloat64(at, true)]; }
      else if (wire === FIXED32) { const at = this.i; this.take(4); yield [field, wire, this.view.getFloat32(at, true)]; }
      else if (wire === BYTES) yield [field, wire, this.take(this.varint())];
      else throw new Error(`wire type ${wire} is not used by splitedge.v1`);
    }
  }
}

function detection(bytes) {
  const d = { x1: 0, y1: 0, x2: 0, y2: 0, label: 0, score: 0 };
  const names = [null, "x1", "y1", "x2", "y2", "label", "score"];
  for (const [field, , value] of new Reader(bytes).fields()) if (names[field]) d[names[field]] = value;
  return d;
}

/** A splitedge.v1.Result from its bytes: {frameId, code, error, detections: [{x1, y1, x2, y2, label, score}],
 * serverMs, queueMs}. */
export function decodeResult(bytes) {
  const r = { frameId: 0, code: 0, error: "", detections: [], serverMs: 0, queueMs: 0 };
  for (const [field, , value] of new Reader(bytes).fields()) {
    if (field === 1) r.frameId = value;
    else if (field === 2) r.code = value > 0x7fffffff ? value - 2 ** 64 : value;
    else if (field === 3) r.error = new TextDecoder().decode(value);
    else if (field === 4) r.detections.push(detection(value));
    else if (field === 5) r.serverMs = value;
    else if (field === 6) r.queueMs = value;
  }
  return r;
}
