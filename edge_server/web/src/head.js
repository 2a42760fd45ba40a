// Split mode's device half in the page: the bundle's head.onnx in onnxruntime-web (WebAssembly, bundled from
// npm and served by the edge itself: no CDN), with the manifest's preprocessing before it and codec after it.
//
// Why one WebAssembly thread: threads need SharedArrayBuffer, so cross-origin isolation headers on every
// response; the head is the model's first blocks at 300x300 (a few tens of ms), and one thread keeps the page
// simple to host.

import * as ort from "onnxruntime-web/wasm";
import { api } from "./api.js";
import { preprocessTfLegacy, quantizeUint8 } from "./preprocess.js";

ort.env.wasm.wasmPaths = "/static/ort/";
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;

export class Head {
  static async load(config) {
    const manifest = await api(config.bundle.manifest);
    if (manifest.input.resize.rule !== "tf_legacy_bilinear" || manifest.codec.name !== "uint8") {
      throw new Error(`this page runs tf_legacy_bilinear heads with the uint8 codec; the bundle has ` +
                      `${manifest.input.resize.rule} and ${manifest.codec.name}`);
    }
    const bytes = await api(config.bundle.head, { binary: true });
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    return new Head(manifest, session);
  }

  constructor(manifest, session) {
    this.manifest = manifest;
    this.session = session;
    const [, , h, w] = manifest.input.shape;
    this.size = [h, w];
    this.input = manifest.files.head.inputs[0].name;
    this.output = manifest.files.head.outputs[0];
  }

  /** The Payload fields for one RGBA frame (ImageData), as a gRPC device would fill them
   * (split.SplitModel.encode_message; manifest `payload`). */
  async payload(frame) {
    const [h, w] = this.size;
    const x = new ort.Tensor("float32", preprocessTfLegacy(frame, h, w), this.manifest.input.shape);
    const out = await this.session.run({ [this.input]: x });
    const wire = out[this.output];
    const q = quantizeUint8(wire.data, this.manifest.codec.levels);
    const p = this.manifest.payload;
    return {
      model: p.model, splitPoint: p.split_point,
      tensor: { codec: "uint8", shape: wire.dims, scale: q.scale, zeroPoint: q.zeroPoint, data: q.data },
      originalSize: [frame.height, frame.width], splitSize: p.split_size,
    };
  }
}
