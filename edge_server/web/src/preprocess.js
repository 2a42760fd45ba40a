// What the device does around the exported head, from the bundle's manifest: the model's resize and
// normalization before it (manifest `input`), the 8-bit codec after it (manifest `codec`).
//
// Why in float32 step by step (Math.fround): the PyTorch device computes these in float32, and an 8-bit
// code sits on a rounding boundary often enough that double arithmetic would move some codes by one.

const f32 = Math.fround;

/** Source taps of TF's legacy bilinear resize (align_corners=False, no half-pixel centres):
 * source = destination * in / out; the top-left neighbour at floor, clamped at the border. */
function taps(nIn, nOut) {
  const ratio = f32(nIn / nOut);
  const lo = new Int32Array(nOut), hi = new Int32Array(nOut), frac = new Float32Array(nOut);
  for (let d = 0; d < nOut; d++) {
    const src = f32(d * ratio);
    const l = Math.min(Math.floor(src), nIn - 1);
    lo[d] = l;
    hi[d] = Math.min(l + 1, nIn - 1);
    frac[d] = f32(src - l);
  }
  return { lo, hi, frac };
}

/** An RGBA frame (ImageData: width, height, data) as the head's input: [1, 3, size, size] float32, NCHW, RGB,
 * resized by `tf_legacy_bilinear` on the 0..255 values, then x * 2/255 - 1 (split/models/ssdlite_tf.py). */
export function preprocessTfLegacy(frame, outH, outW) {
  const { width, height, data } = frame;
  const plane = outH * outW;
  const out = new Float32Array(3 * plane);
  const resample = !(width === outW && height === outH);
  const ys = taps(height, outH), xs = taps(width, outW);
  const value = (y, x, c) => f32(f32(data[(y * width + x) * 4 + c] / 255) * 255);
  const norm = f32(2 / 255);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        let v;
        if (!resample) {
          v = value(y, x, c);
        } else {
          const y0 = ys.lo[y], y1 = ys.hi[y], wy = ys.frac[y];
          const x0 = xs.lo[x], x1 = xs.hi[x], wx = xs.frac[x];
          const a = value(y0, x0, c), b = value(y0, x1, c), cc = value(y1, x0, c), d = value(y1, x1, c);
          const top = f32(a + f32(f32(b - a) * wx));
          const bottom = f32(cc + f32(f32(d - cc) * wx));
          v = f32(top + f32(f32(bottom - top) * wy));
        }
        out[c * plane + y * outW + x] = f32(f32(v * norm) - 1);
      }
    }
  }
  return out;
}

function roundHalfEven(x) {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** The manifest's 8-bit codec (bottlenecks.Uint8Codec): per-tensor min/max affine to 0..levels.
 * Returns {scale, zeroPoint, data: Uint8Array}; scale and zero point travel as doubles, as in Python. */
export function quantizeUint8(z, levels = 255) {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < z.length; i++) { if (z[i] < lo) lo = z[i]; if (z[i] > hi) hi = z[i]; }
  if (!z.length) { lo = 0; hi = 0; }
  const scale = hi > lo ? (hi - lo) / levels : 1;
  const zeroPoint = -lo / scale;
  const s = f32(scale), zp = f32(zeroPoint);
  const data = new Uint8Array(z.length);
  for (let i = 0; i < z.length; i++) {
    const q = roundHalfEven(f32(f32(z[i] / s) + zp));
    data[i] = q < 0 ? 0 : q > levels ? levels : q;
  }
  return { scale, zeroPoint, data };
}
