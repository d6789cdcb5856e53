// The page: load a bundle's three ONNX graphs in onnxruntime-web, encode an image once, run the prompt
// decoder per click (shift+click: all points in ONE call) and the object decoder for panoptic.
// URL parameters: bundle (default /bundle/), precision (fp32), ep (webgpu|wasm, default: WebGPU when an
// adapter exists), threads (WASM threads, default: onnxruntime-web's choice). State for tests: window.rapsam.
import * as ort from '/ort/ort.min.mjs';
import {
  checkCanvas, masksFromLogits, masksToIds, overlayIds, panopticMerge, pointsToBoxes, preprocess, randomWeightsNotice,
  readContract, rgbaToRgb, runLengths, segmentColor, selectGraphs,
} from './host.js';

const params = new URLSearchParams(location.search);
const BUNDLE = params.get('bundle') ?? '/bundle/';
const $ = (id) => document.getElementById(id);
const view = $('view');
const ctx = view.getContext('2d');

const app = {
  status: 'loading', error: null, manifest: null, randomWeights: null, contract: null, graphs: null, providers: null,
  image: null, encoded: null, points: [], clicks: [], panoptics: [], encoderMs: [],
};
window.rapsam = app;

function setStatus(status, text) {
  app.status = status;
  $('status').textContent = text;
  $('status').className = status === 'error' ? 'error' : '';
}

async function providers() {
  const want = params.get('ep');
  if (want === 'wasm') return ['wasm'];
  let gpu = false;
  try {
    gpu = Boolean(navigator.gpu && await navigator.gpu.requestAdapter());
  } catch {
    gpu = false;
  }
  if (want === 'webgpu' && !gpu) throw new Error('ep=webgpu was asked for but this browser has no WebGPU adapter.');
  return gpu ? ['webgpu', 'wasm'] : ['wasm'];
}

async function fetchVerified(art) {
  const res = await fetch(BUNDLE + art.path);
  if (!res.ok) throw new Error(`${art.path}: HTTP ${res.status}`);
  const buf = await res.arrayBuffer();
  const digest = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', buf)),
    (b) => b.toString(16).padStart(2, '0')).join('');
  if (art.sha256 && digest !== art.sha256) {
    throw new Error(`${art.path} has sha256 ${digest.slice(0, 12)}…, the manifest says ${art.sha256.slice(0, 12)}…`);
  }
  return new Uint8Array(buf);
}

async function init() {
  const res = await fetch(BUNDLE + 'manifest.json');
  if (!res.ok) throw new Error(`no manifest.json at ${BUNDLE} (HTTP ${res.status})`);
  app.manifest = await res.json();
  app.randomWeights = randomWeightsNotice(app.manifest); // shown before anything can fail: what the masks mean
  if (app.randomWeights) {
    $('random-weights').textContent = app.randomWeights;
    $('random-weights').hidden = false;
  }
  app.contract = readContract(app.manifest);
  app.graphs = selectGraphs(app.manifest, params.get('precision') ?? 'fp32');
  ort.env.wasm.wasmPaths = '/ort/';
  if (params.get('threads')) ort.env.wasm.numThreads = Number(params.get('threads'));
  app.providers = await providers();
  app.sessions = {};
  for (const [graph, art] of Object.entries(app.graphs)) {
    setStatus('loading', `loading ${art.path}…`);
    app.sessions[graph] = await ort.InferenceSession.create(await fetchVerified(art),
      { executionProviders: app.providers, graphOptimizationLevel: 'all' });
  }
  const precisions = [...new Set(Object.values(app.graphs).map((a) => a.precision))].join('/');
  setStatus('ready', `${app.manifest.name} · ${precisions} · ${app.providers[0]} · open an image`);
  $('file').disabled = false;
}

// the graphs' IO names, in the contract's order, from the manifest
const inputs = (graph) => app.graphs[graph].inputs.map((t) => t.name);
const outputs = (graph) => app.graphs[graph].outputs.map((t) => t.name);

async function decodeImage(file) {
  // no colour management and no premultiplication: the pixels Pillow would read (EXIF orientation applied)
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const c2d = canvas.getContext('2d');
  c2d.drawImage(bitmap, 0, 0);
  const rgba = c2d.getImageData(0, 0, bitmap.width, bitmap.height).data;
  return { width: bitmap.width, height: bitmap.height, rgb: rgbaToRgb(rgba) };
}

async function setImage(file) {
  setStatus('encoding', `encoding ${file.name}…`);
  const img = await decodeImage(file);
  const { tensor, lb } = preprocess(img.rgb, img.height, img.width, app.contract);
  checkCanvas(app.graphs.encoder, lb);
  const [h, w] = lb.paddedHW; // the policy's fixed size, or this image's pad-to-32 canvas
  const t0 = performance.now();
  const out = await app.sessions.encoder.run({ [inputs('encoder')[0]]: new ort.Tensor('float32', tensor, [1, 3, h, w]) });
  const ms = performance.now() - t0;
  app.image = { ...img, name: file.name, input: tensor, lb };
  app.encoded = out;
  app.points = [];
  app.encoderMs.push(ms);
  $('encoder-ms').textContent = `${ms.toFixed(1)} ms`;
  view.width = img.width;
  view.height = img.height;
  draw(new Int32Array(img.width * img.height), []);
  $('panoptic').disabled = false;
  $('clear').disabled = false;
  setStatus('encoded', `${file.name} ${img.width}x${img.height} · click on it`);
}

function draw(ids, points, labels = []) {
  const { width, height, rgb } = app.image;
  ctx.putImageData(new ImageData(overlayIds(rgb, ids), width, height), 0, 0);
  ctx.fillStyle = 'rgb(255,32,32)';
  for (const [x, y] of points) {
    ctx.beginPath();
    ctx.arc(x, y, 3.5, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.font = `${Math.max(11, Math.round(width / 70))}px system-ui, sans-serif`;
  ctx.textAlign = 'center';
  for (const { x, y, text } of labels) {
    ctx.lineWidth = 3;
    ctx.strokeStyle = 'rgba(0,0,0,0.7)';
    ctx.strokeText(text, x, y);
    ctx.fillStyle = 'white';
    ctx.fillText(text, x, y);
  }
}

function imageXY(ev) {
  const r = view.getBoundingClientRect(); // the canvas has no border or padding: this is its content box
  const x = (ev.clientX - r.left) * (view.width / r.width);
  const y = (ev.clientY - r.top) * (view.height / r.height);
  // inside [0, W0) x [0, H0) as points_to_boxes requires
  return [Math.min(Math.max(x, 0), view.width - 1e-3), Math.min(Math.max(y, 0), view.height - 1e-3)];
}

async function onClick(ev) {
  if (!app.encoded || app.busy) return;
  app.busy = true;
  try {
    const t0 = performance.now();
    app.points = ev.shiftKey ? [...app.points, imageXY(ev)] : [imageXY(ev)];
    const K = app.points.length;
    const { lb } = app.image;
    const boxes = pointsToBoxes(app.points, lb, app.contract.clickBoxSize);
    const feeds = {};
    const fromEncoder = inputs('prompt_decoder').filter((n) => n in app.encoded);
    for (const n of fromEncoder) feeds[n] = app.encoded[n];
    const rest = inputs('prompt_decoder').filter((n) => !(n in app.encoded));
    if (rest.length !== 1) throw new Error(`prompt decoder inputs ${rest.join(', ')} are not encoder outputs`);
    feeds[rest[0]] = new ort.Tensor('float32', boxes, [1, K, 4]);
    const td = performance.now();
    const out = await app.sessions.prompt_decoder.run(feeds);
    const decoderMs = performance.now() - td;
    const [maskName, iouName] = outputs('prompt_decoder');
    const logits = out[maskName];
    const [, , h, w] = logits.dims;
    const masks = masksFromLogits(logits.data, K, h, w, lb, app.contract.maskThreshold);
    draw(masksToIds(masks, lb.origHW[0] * lb.origHW[1]), app.points);
    const clickMs = performance.now() - t0;
    app.clicks.push({ points: app.points.map((p) => [...p]), masks, logits: logits.data, iou: Array.from(out[iouName].data),
      decoderMs, clickMs });
    $('click-ms').textContent = `${clickMs.toFixed(1)} ms (K=${K})`;
    $('decoder-ms').textContent = `${decoderMs.toFixed(1)} ms`;
    $('legend').replaceChildren();
  } finally {
    app.busy = false;
  }
}

async function onPanoptic() {
  if (!app.encoded || app.busy) return;
  app.busy = true;
  try {
    const t0 = performance.now();
    const [featName] = inputs('object_decoder');
    const out = await app.sessions.object_decoder.run({ [featName]: app.encoded[featName] });
    const decoderMs = performance.now() - t0;
    const [clsName, maskName] = outputs('object_decoder');
    const [, Q, , ] = out[clsName].dims;
    const [, , h, w] = out[maskName].dims;
    const c = app.contract;
    const { lb } = app.image;
    const { ids, segments } = panopticMerge(out[clsName].data, out[maskName].data, Q, h, w, lb, c.isthing,
      c.scoreThr, c.overlapThr);
    const labels = segments.map((s) => ({ ...centroid(ids, s.id, lb.origHW[1]), text: c.names[s.category_id] }));
    draw(ids, [], labels);
    const totalMs = performance.now() - t0;
    app.panoptics.push({ ids, segments, decoderMs, totalMs });
    $('object-ms').textContent = `${decoderMs.toFixed(1)} ms (+ merge ${(totalMs - decoderMs).toFixed(0)} ms)`;
    $('legend').replaceChildren(...segments.map((s) => {
      const li = document.createElement('li');
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = `rgb(${segmentColor(s.id).join(',')})`;
      li.append(sw, `${c.names[s.category_id]} ${(100 * s.score).toFixed(0)}% · ${s.area} px`);
      return li;
    }));
    setStatus('encoded', `${segments.length} panoptic segments (score > ${c.scoreThr}, overlap ≥ ${c.overlapThr})`);
  } finally {
    app.busy = false;
  }
}

function centroid(ids, id, width) {
  let sx = 0;
  let sy = 0;
  let n = 0;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] === id) { sx += i % width; sy += Math.floor(i / width); n++; }
  }
  return { x: sx / n, y: sy / n };
}

/** What the end-to-end test reads back: the last click (masks as run lengths) or the last panoptic result. */
app.exportClick = (i = -1) => {
  const c = app.clicks.at(i);
  return { points: c.points, iou: c.iou, decoderMs: c.decoderMs, clickMs: c.clickMs, masks: c.masks.map(runLengths),
    logits: base64(c.logits), hw: app.image.lb.origHW };
};
app.exportPanoptic = () => {
  const p = app.panoptics.at(-1);
  return { segments: p.segments, ids: runLengths(p.ids.map((v) => (v > 0 ? 1 : 0))), decoderMs: p.decoderMs,
    totalMs: p.totalMs };
};
function base64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
app.exportInput = () => base64(app.image.input); // the encoder input, float32 bytes

const guard = (fn) => (ev) => fn(ev).catch((e) => { app.error = String(e); setStatus('error', String(e)); });
$('file').disabled = true;
$('file').addEventListener('change', guard(async () => { if ($('file').files[0]) await setImage($('file').files[0]); }));
view.addEventListener('click', guard(onClick));
$('panoptic').addEventListener('click', guard(onPanoptic));
$('clear').addEventListener('click', () => {
  if (!app.image) return;
  app.points = [];
  draw(new Int32Array(app.image.width * app.image.height), []);
  $('legend').replaceChildren();
});
init().catch((e) => { app.error = String(e); setStatus('error', String(e)); });
