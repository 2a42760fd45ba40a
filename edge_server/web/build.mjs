// `make web`: bundle the page with esbuild into dist/ (git-ignored), with onnxruntime-web's WebAssembly beside it,
// so that the edge serves everything the page loads (no CDN).
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const ort = join(here, "node_modules", "onnxruntime-web", "dist");

rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "ort"), { recursive: true });
await build({
  entryPoints: [join(here, "src", "app.js")],
  bundle: true,
  format: "esm",
  minify: true,
  sourcemap: true,
  target: "es2022",
  outfile: join(dist, "app.js"),
  logLevel: "warning",
});
for (const file of ["index.html", "app.css"]) copyFileSync(join(here, "src", file), join(dist, file));
// The single-threaded SIMD build is what the wasm backend loads with numThreads = 1 (src/head.js).
for (const file of ["ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs"]) copyFileSync(join(ort, file), join(dist, "ort", file));
console.log(`built ${dist}`);
