// The prompt decoder in onnxruntime-web's WASM backend, under Node: K=1 and K=16 medians of each ONNX file given,
// interleaved run by run (so two files compare fairly on a shared machine), 1 WASM thread as the web app's default.
//
//   node apps/web/profile.mjs before/prompt_decoder.onnx after/prompt_decoder.onnx [--runs 15]
//
// Inputs are random with the file's own shapes (a fixed 640 canvas: dims must be static); prints JSON.
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-web";

const args = process.argv.slice(2);
const runsAt = args.indexOf("--runs");
const runs = runsAt >= 0 ? Number(args.splice(runsAt, 2)[1]) : 15;
if (!args.length) {
  console.error("usage: node apps/web/profile.mjs PROMPT_DECODER.onnx [...] [--runs N]");
  process.exit(2);
}
ort.env.wasm.numThreads = 1;

function random(shape) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.random() * 2 - 1;
  return new ort.Tensor("float32", data, shape);
}

function boxes(k) {
  const data = new Float32Array(k * 4);
  for (let i = 0; i < k; i++) data.set([0.1 + 0.8 * Math.random(), 0.1 + 0.8 * Math.random(), 0.02, 0.02], 4 * i);
  return new ort.Tensor("float32", data, [1, k, 4]);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const sessions = [];
for (const path of args) {
  const session = await ort.InferenceSession.create(readFileSync(path), { executionProviders: ["wasm"] });
  const feeds = {};
  for (const name of session.inputNames) {
    if (name === "boxes") continue;
    const meta = session.inputMetadata.find((m) => m.name === name);
    if (!meta.shape.every((d) => typeof d === "number")) {
      console.error(`${path}: input ${name} has symbolic dims ${JSON.stringify(meta.shape)}; export a fixed canvas.`);
      process.exit(2);
    }
    feeds[name] = random(meta.shape);
  }
  sessions.push({ path, session, feeds, times: { 1: [], 16: [] } });
}
for (const s of sessions) for (const k of [1, 16]) await s.session.run({ ...s.feeds, boxes: boxes(k) });
for (let r = 0; r < runs; r++) {
  for (const s of sessions) {
    for (const k of [1, 16]) {
      const feeds = { ...s.feeds, boxes: boxes(k) };
      const t = performance.now();
      await s.session.run(feeds);
      s.times[k].push(performance.now() - t);
    }
  }
}
const out = { onnxruntime_web: ort.env.versions?.web ?? "unknown", wasm_threads: 1, runs, node: process.version };
for (const s of sessions) out[s.path] = { "K=1": +median(s.times[1]).toFixed(1), "K=16": +median(s.times[16]).toFixed(1) };
console.log(JSON.stringify(out, null, 1));
