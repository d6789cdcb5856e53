// The host half of the graph contract (design.md §3) for the browser: a port of
// rapsam_edge/preprocess.py (letterbox: "longest" or keep-ratio resize, a fixed or pad-to-32 canvas;
// Pillow/OpenCV resize, mean-pixel pad, click -> box) and rapsam_edge/postprocess.py (the official two-step
// bilinear resize of the stride-4 logits to the original image, composed into one separable resampling;
// mask = logit > threshold, the panoptic merge with a float32 sigmoid). Every number comes from the bundle
// manifest (readContract); nothing here touches the DOM, so node runs this file in tests/test_app_web.py.

export class ManifestError extends Error {}

const GRAPHS = ['encoder', 'object_decoder', 'prompt_decoder'];

function need(value, what) {
  if (value === undefined || value === null) {
    throw new ManifestError(`manifest.json has no ${what}; re-export the bundle with rapsam-edge export.`);
  }
  return value;
}

/** The banner text when the bundle's weights are a seeded random init (manifest.model.random_init), else null. */
export function randomWeightsNotice(manifest) {
  const model = manifest.model ?? {};
  if (!model.random_init) return null;
  const seed = model.seed != null ? `, seed ${model.seed}` : '';
  return `RANDOM WEIGHTS: this bundle was exported without a checkpoint (seeded random init${seed}), so its masks `
    + 'and labels are meaningless; only speed and the page itself can be judged. Export a trained --checkpoint to '
    + 'segment.';
}

/** Everything the host needs from manifest.json: input policy, host constants, classes. */
export function readContract(manifest) {
  const p = need(manifest.input_policy, 'input_policy');
  const host = need(manifest.host, '"host" section (click box size, mask threshold, panoptic thresholds: '
    + 'the bundle was exported before they were recorded)');
  const classes = need(manifest.classes, 'classes');
  const unknown = Object.keys(p).filter((k) => !POLICY_KEYS.includes(k));
  if (unknown.length) { // a key this port does not know would change the input silently: refuse it
    throw new ManifestError(`input_policy has keys this page does not implement (${unknown.join(', ')}); `
      + `it knows ${POLICY_KEYS.join(', ')}. Update apps/web/host.js to the rapsam-edge that wrote the bundle.`);
  }
  const c = {
    size: need(p.size, 'input_policy.size').map(Number),
    mean: need(p.mean, 'input_policy.mean').map(Number),
    std: need(p.std, 'input_policy.std').map(Number),
    padValue: (p.pad_value ?? p.mean).map(Number),
    resize: p.resize ?? 'longest',
    scale: p.scale == null ? null : [p.scale].flat().map(Number), // (long edge, short edge) of "keep_ratio"
    canvas: p.canvas ?? 'fixed',
    channelOrder: p.channel_order ?? 'RGB',
    interpolation: p.interpolation ?? 'bilinear',
    promptFrame: p.prompt_frame ?? 'resized', // InputPolicy's default when the key is absent
    clickBoxSize: Number(need(host.click_box_size, 'host.click_box_size')),
    maskThreshold: Number(need(host.mask_threshold, 'host.mask_threshold')),
    scoreThr: Number(need(host.panoptic?.score_thr, 'host.panoptic.score_thr')),
    overlapThr: Number(need(host.panoptic?.overlap_thr, 'host.panoptic.overlap_thr')),
    names: need(classes.names, 'classes.names'),
    isthing: need(classes.isthing, 'classes.isthing').map(Boolean),
  };
  const allowed = { resize: ['longest', 'keep_ratio'], canvas: ['fixed', 'divisor'], channelOrder: ['RGB', 'BGR'],
    interpolation: Object.keys(RESIZERS), promptFrame: ['resized', 'padded'] };
  for (const [key, values] of Object.entries(allowed)) {
    if (!values.includes(c[key])) {
      throw new ManifestError(`input policy ${key} ${JSON.stringify(c[key])} is not supported here `
        + `(supported: ${values.join(', ')}).`);
    }
  }
  if (c.scale !== null && !(c.scale.length === 2 && c.scale.every((v) => Number.isInteger(v) && v > 0))) {
    throw new ManifestError(`input_policy.scale must be two positive integers, got ${JSON.stringify(p.scale)}.`);
  }
  if (c.resize === 'keep_ratio' && c.scale === null) {
    throw new ManifestError('input_policy.resize "keep_ratio" needs input_policy.scale (long edge, short edge).');
  }
  return c;
}

/** InputPolicy's fields (rapsam_edge/preprocess.py): the keys an input_policy may carry. */
const POLICY_KEYS = ['size', 'mean', 'std', 'pad_value', 'resize', 'scale', 'canvas', 'channel_order', 'interpolation',
  'prompt_frame'];

/** Per graph: the artifact in `format` at `precision`, else fp32 (as ort_backend.resolve_precisions). */
export function selectGraphs(manifest, precision = 'fp32', format = 'onnx') {
  const arts = manifest.artifacts ?? [];
  const out = {};
  for (const graph of GRAPHS) {
    const find = (p) => arts.find((a) => a.graph === graph && a.format === format && a.precision === p);
    out[graph] = find(precision) ?? find('fp32');
    if (!out[graph]) {
      throw new ManifestError(`the bundle has no ${format} ${graph} graph (export it with --target ${format}).`);
    }
  }
  if (precision !== 'fp32' && GRAPHS.every((g) => out[g].precision === 'fp32')) {
    throw new ManifestError(`the bundle has no ${format} graph in ${precision}.`);
  }
  return out;
}

// ------------------------------------------------------------------------------------------ letterbox
/** Canvas sides are multiples of this (preprocess.SIZE_DIVISOR): the neck upsamples stride-32 maps x2/x4/x8. */
export const SIZE_DIVISOR = 32;

const roundHalfUp = (x) => Math.max(1, Math.floor(x + 0.5)); // mmcv's rescale_size rounding, at least 1

/** preprocess.compute_letterbox. resize "longest": factor min(H/h0, W/w0), capped at the canvas; "keep_ratio":
 *  mmcv's rule for scale (long, short), factor min(long/max(h0, w0), short/min(h0, w0)); sides
 *  floor(side*factor + 0.5). canvas "fixed": the policy's size (an image that does not fit is refused);
 *  "divisor": each side padded to the next multiple of 32, so the canvas varies per image. */
export function computeLetterbox(h0, w0, c) {
  if (!(Number.isInteger(h0) && Number.isInteger(w0) && h0 > 0 && w0 > 0)) {
    throw new RangeError(`image size must be positive integers, got ${w0}x${h0} (WxH).`);
  }
  let rh;
  let rw;
  if (c.resize === 'keep_ratio') {
    const longEdge = Math.max(...c.scale);
    const shortEdge = Math.min(...c.scale);
    const factor = Math.min(longEdge / Math.max(h0, w0), shortEdge / Math.min(h0, w0));
    rh = roundHalfUp(h0 * factor);
    rw = roundHalfUp(w0 * factor);
  } else {
    const [sh, sw] = c.size;
    const factor = Math.min(sh / h0, sw / w0);
    rh = Math.min(sh, roundHalfUp(h0 * factor));
    rw = Math.min(sw, roundHalfUp(w0 * factor));
  }
  let ph;
  let pw;
  if (c.canvas === 'divisor') {
    ph = Math.ceil(rh / SIZE_DIVISOR) * SIZE_DIVISOR;
    pw = Math.ceil(rw / SIZE_DIVISOR) * SIZE_DIVISOR;
  } else {
    [ph, pw] = c.size;
    if (rh > ph || rw > pw) {
      throw new RangeError(`a ${w0}x${h0} (WxH) image resized to ${rw}x${rh} does not fit the fixed ${pw}x${ph} canvas.`);
    }
  }
  return { origHW: [h0, w0], resizedHW: [rh, rw], paddedHW: [ph, pw], scaleXY: [rw / w0, rh / h0],
    promptHW: c.promptFrame === 'padded' ? [ph, pw] : [rh, rw], featureHW: [ph / 4, pw / 4], canvas: c.canvas };
}

/** The encoder input's (H, W) must be the letterbox's canvas where the graph fixes them (a named, dynamic
 *  dimension takes any): one sentence instead of onnxruntime's shape error. */
export function checkCanvas(encoderArtifact, lb) {
  const shape = encoderArtifact?.inputs?.[0]?.shape ?? [];
  const [ph, pw] = lb.paddedHW;
  const fixed = shape.slice(2).map((d) => (typeof d === 'number' ? d : null));
  if ((fixed[0] !== null && fixed[0] !== ph) || (fixed[1] !== null && fixed[1] !== pw)) {
    throw new ManifestError(`the encoder graph takes a ${shape.slice(2).join('x')} canvas, but this image's `
      + `letterbox needs ${ph}x${pw} (input_policy canvas ${JSON.stringify(lb.canvas)}); re-export the bundle with `
      + 'dynamic shapes or use a fixed-canvas input policy.');
  }
}

// ---------------------------------------------------------------------------------------------- resize
// Pillow's Resample.c (8 bits per channel): coefficients in double, normalised, quantised to 22-bit
// fixed point; horizontal pass then vertical pass, each rounded and clipped to 0..255.
const PRECISION_BITS = 22;
const PILLOW_FILTERS = {
  bilinear: { support: 1.0, fn: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  bicubic: {
    support: 2.0,
    fn: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
};

function pillowCoeffs(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      w[x] = filter.fn((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v) {
  v >>= PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function pillowResize(src, h, w, nh, nw, filter) {
  const vert = pillowCoeffs(h, nh, filter);
  let cur = src;
  let cw = w;
  let yFirst = 0;
  if (nw !== w) { // horizontal pass over the rows the vertical pass reads
    const hor = pillowCoeffs(w, nw, filter);
    yFirst = vert.bounds[0];
    const rows = vert.bounds[nh * 2 - 2] + vert.bounds[nh * 2 - 1] - yFirst;
    const out = new Uint8Array(rows * nw * 3);
    for (let y = 0; y < rows; y++) {
      const row = (y + yFirst) * w * 3;
      for (let xx = 0; xx < nw; xx++) {
        const xmin = hor.bounds[xx * 2];
        const xmax = hor.bounds[xx * 2 + 1];
        const k0 = xx * hor.ksize;
        let s0 = 1 << (PRECISION_BITS - 1);
        let s1 = s0;
        let s2 = s0;
        for (let x = 0; x < xmax; x++) {
          const k = hor.kk[k0 + x];
          const p = row + (x + xmin) * 3;
          s0 += src[p] * k;
          s1 += src[p + 1] * k;
          s2 += src[p + 2] * k;
        }
        const o = (y * nw + xx) * 3;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
      }
    }
    cur = out;
    cw = nw;
  }
  if (nh === h) return cur;
  const out = new Uint8Array(nh * cw * 3);
  for (let yy = 0; yy < nh; yy++) {
    const ymin = vert.bounds[yy * 2] - yFirst;
    const ymax = vert.bounds[yy * 2 + 1];
    const k0 = yy * vert.ksize;
    for (let xx = 0; xx < cw; xx++) {
      let s0 = 1 << (PRECISION_BITS - 1);
      let s1 = s0;
      let s2 = s0;
      for (let y = 0; y < ymax; y++) {
        const k = vert.kk[k0 + y];
        const p = ((y + ymin) * cw + xx) * 3;
        s0 += cur[p] * k;
        s1 += cur[p + 1] * k;
        s2 += cur[p + 2] * k;
      }
      const o = (yy * cw + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

// Pillow NEAREST: an affine scale whose source position accumulates (xo += scale), truncated.
function nearestTable(inSize, outSize) {
  const a = inSize / outSize;
  const tab = new Int32Array(outSize);
  let v = a * 0.5;
  for (let i = 0; i < outSize; i++) {
    tab[i] = Math.min(inSize - 1, v < 0 ? 0 : Math.trunc(v));
    v += a;
  }
  return tab;
}

function pillowNearest(src, h, w, nh, nw) {
  const ys = nearestTable(h, nh);
  const xs = nearestTable(w, nw);
  const out = new Uint8Array(nh * nw * 3);
  for (let y = 0; y < nh; y++) {
    for (let x = 0; x < nw; x++) {
      const p = (ys[y] * w + xs[x]) * 3;
      const o = (y * nw + x) * 3;
      out[o] = src[p];
      out[o + 1] = src[p + 1];
      out[o + 2] = src[p + 2];
    }
  }
  return out;
}

/** preprocess.bilinear_weights as two taps per output sample (align_corners=False, edge-clamped). */
export function bilinearTaps(outSize, inSize, scale = inSize / outSize) {
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const w0 = new Float32Array(outSize);
  const w1 = new Float32Array(outSize);
  for (let i = 0; i < outSize; i++) {
    const src = Math.max((i + 0.5) * scale - 0.5, 0.0);
    const a = Math.min(Math.floor(src), inSize - 1);
    const b = Math.min(a + 1, inSize - 1);
    const lam = Math.min(Math.max(src - a, 0.0), 1.0);
    i0[i] = a;
    i1[i] = b;
    if (a === b) { // np.add.at adds both weights into one cell
      w0[i] = 1.0 - lam + lam;
      w1[i] = 0.0;
    } else {
      w0[i] = 1.0 - lam;
      w1[i] = lam;
    }
  }
  return { i0, i1, w0, w1 };
}

function rint(v) { // np.rint: round half to even
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// "cv2_bilinear": OpenCV INTER_LINEAR as preprocess.py re-implements it (separable, float, rint)
function cv2Bilinear(src, h, w, nh, nw) {
  const ty = bilinearTaps(nh, h);
  const tx = bilinearTaps(nw, w);
  const out = new Uint8Array(nh * nw * 3);
  for (let y = 0; y < nh; y++) {
    for (let x = 0; x < nw; x++) {
      for (let ch = 0; ch < 3; ch++) {
        const at = (yy, xx) => src[(yy * w + xx) * 3 + ch];
        const top = tx.w0[x] * at(ty.i0[y], tx.i0[x]) + tx.w1[x] * at(ty.i0[y], tx.i1[x]);
        const bot = tx.w0[x] * at(ty.i1[y], tx.i0[x]) + tx.w1[x] * at(ty.i1[y], tx.i1[x]);
        out[(y * nw + x) * 3 + ch] = Math.min(255, Math.max(0, rint(ty.w0[y] * top + ty.w1[y] * bot)));
      }
    }
  }
  return out;
}

const RESIZERS = {
  bilinear: (s, h, w, nh, nw) => pillowResize(s, h, w, nh, nw, PILLOW_FILTERS.bilinear),
  bicubic: (s, h, w, nh, nw) => pillowResize(s, h, w, nh, nw, PILLOW_FILTERS.bicubic),
  nearest: pillowNearest,
  cv2_bilinear: cv2Bilinear,
};

/** (h, w) RGB bytes -> (nh, nw) RGB bytes with the policy's interpolation (unchanged when equal). */
export function resizeRGB(rgb, h, w, nh, nw, interpolation) {
  if (h === nh && w === nw) return rgb;
  return RESIZERS[interpolation](rgb, h, w, nh, nw);
}

/** RGBA bytes (canvas ImageData) -> RGB bytes; alpha dropped like preprocess.load_image. */
export function rgbaToRgb(rgba) {
  const n = rgba.length / 4;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    out[i * 3] = rgba[i * 4];
    out[i * 3 + 1] = rgba[i * 4 + 1];
    out[i * 3 + 2] = rgba[i * 4 + 2];
  }
  return out;
}

/** preprocess.preprocess: RGB bytes (h0, w0) -> the encoder input (1,3,H,W) float32 0..255 + letterbox;
 *  (H, W) = lb.paddedHW. */
export function preprocess(rgb, h0, w0, c) {
  const lb = computeLetterbox(h0, w0, c);
  const [rh, rw] = lb.resizedHW;
  const [ph, pw] = lb.paddedHW; // the policy's size, or this image's pad-to-32 canvas
  const resized = resizeRGB(rgb, h0, w0, rh, rw, c.interpolation);
  const plane = ph * pw;
  const tensor = new Float32Array(3 * plane);
  for (let ch = 0; ch < 3; ch++) {
    tensor.fill(c.padValue[ch], ch * plane, (ch + 1) * plane);
    const srcCh = c.channelOrder === 'BGR' ? 2 - ch : ch;
    for (let y = 0; y < rh; y++) {
      for (let x = 0; x < rw; x++) tensor[ch * plane + y * pw + x] = resized[(y * rw + x) * 3 + srcCh];
    }
  }
  return { tensor, lb };
}

/** preprocess.points_to_boxes: K clicks (x, y) in original pixels -> (K*4) normalised cx, cy, w, h. */
export function pointsToBoxes(points, lb, clickBoxSize) {
  const [h0, w0] = lb.origHW;
  const [ph, pw] = lb.promptHW;
  const half = clickBoxSize / 2;
  const out = new Float32Array(points.length * 4);
  points.forEach(([x, y], i) => {
    if (!(x >= 0 && x < w0 && y >= 0 && y < h0)) {
      throw new RangeError(`point ${i} (x=${x}, y=${y}) lies outside the ${w0}x${h0} (WxH) image.`);
    }
    const rx = x * lb.scaleXY[0];
    const ry = y * lb.scaleXY[1];
    const x0 = (rx - half) / pw;
    const y0 = (ry - half) / ph;
    const x1 = (rx + half) / pw;
    const y1 = (ry + half) / ph;
    out.set([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], i * 4);
  });
  return out;
}

// ---------------------------------------------------------------------------------------- postprocess
/** One axis of postprocess._resize_plan: the official two-step resize (bilinear from `inSize` stride-4 samples
 *  to the `padded` canvas, keep the first `resized` samples, bilinear to `outSize` original pixels) composed
 *  into one matrix R2 (outSize, resized) @ R1[:resized] (resized, inSize), stored as T taps per output sample.
 *  Products of float32 weights are exact in double and each entry sums at most two of them, so the float32
 *  weights equal NumPy's float64 matmul cast to float32 bit for bit. */
export function composedTaps(outSize, resized, padded, inSize) {
  const r2 = bilinearTaps(outSize, resized);
  const r1 = bilinearTaps(padded, inSize);
  const rows = [];
  let T = 1;
  for (let i = 0; i < outSize; i++) {
    const acc = new Map();
    for (const [j, a] of [[r2.i0[i], r2.w0[i]], [r2.i1[i], r2.w1[i]]]) {
      for (const [k, b] of [[r1.i0[j], r1.w0[j]], [r1.i1[j], r1.w1[j]]]) acc.set(k, (acc.get(k) ?? 0) + a * b);
    }
    const taps = [...acc].filter(([, v]) => v !== 0).sort((p, q) => p[0] - q[0]);
    rows.push(taps);
    T = Math.max(T, taps.length);
  }
  const idx = new Int32Array(outSize * T);
  const wt = new Float32Array(outSize * T); // unused slots: weight 0 on the first tap's index
  rows.forEach((taps, i) => {
    for (let t = 0; t < T; t++) {
      const [k, v] = taps[t] ?? [taps[0]?.[0] ?? 0, 0];
      idx[i * T + t] = k;
      wt[i * T + t] = v;
    }
  });
  return { T, idx, wt };
}

/** Resize plan of postprocess._resize_plan for (h, w) stride-4 logits of the padded canvas. */
export function resizePlan(lb, h, w) {
  if (h !== lb.featureHW[0] || w !== lb.featureHW[1]) {
    throw new RangeError(`mask logits are ${h}x${w} but the padded input gives ${lb.featureHW.join('x')}.`);
  }
  return { ty: composedTaps(lb.origHW[0], lb.resizedHW[0], lb.paddedHW[0], h),
    tx: composedTaps(lb.origHW[1], lb.resizedHW[1], lb.paddedHW[1], w) };
}

/** postprocess.resize_logits_to_image for map `k` of (N, h, w) logits -> (H0*W0) float32: the composed taps
 *  along x on every feature row, then along y. */
export function resizeLogits(logits, k, h, w, lb, plan = resizePlan(lb, h, w)) {
  const [h0, w0] = lb.origHW;
  const { ty, tx } = plan;
  const base = k * h * w;
  const rows = new Float32Array(h * w0); // horizontal pass on every feature row
  for (let fy = 0; fy < h; fy++) {
    const r = base + fy * w;
    for (let x = 0; x < w0; x++) {
      let v = 0;
      for (let t = x * tx.T, end = t + tx.T; t < end; t++) v += tx.wt[t] * logits[r + tx.idx[t]];
      rows[fy * w0 + x] = v;
    }
  }
  const out = new Float32Array(h0 * w0);
  const acc = new Float64Array(w0); // one output row, summed in double and rounded once
  for (let y = 0; y < h0; y++) {
    acc.fill(0);
    for (let t = y * ty.T, end = t + ty.T; t < end; t++) {
      const wy = ty.wt[t];
      if (wy === 0) continue;
      const a = ty.idx[t] * w0;
      for (let x = 0; x < w0; x++) acc[x] += wy * rows[a + x];
    }
    out.set(acc, y * w0);
  }
  return out;
}

/** postprocess.interactive_postprocess: (K, h, w) logits -> K masks (H0*W0 bytes, 1 = logit > thr). */
export function masksFromLogits(logits, K, h, w, lb, threshold) {
  const plan = resizePlan(lb, h, w);
  const masks = [];
  for (let k = 0; k < K; k++) {
    const r = resizeLogits(logits, k, h, w, lb, plan);
    const m = new Uint8Array(r.length);
    for (let i = 0; i < r.length; i++) m[i] = r[i] > threshold ? 1 : 0;
    masks.push(m);
  }
  return masks;
}

/** postprocess._sigmoid: float32 1 / (1 + exp(-x)) as torch computes it, NOT clipped: below about -88.72
 *  exp(-x) overflows float32 to Infinity and the sigmoid is exactly 0. Where every kept query's sigmoid is
 *  0 the panoptic argmax returns the FIRST kept query (the official merge; issue 12). */
export function sigmoid32(x) {
  const e = Math.fround(Math.exp(-Math.fround(x))); // > FLT_MAX rounds to Infinity, like float32 exp
  return Math.fround(1.0 / Math.fround(1.0 + e));
}

/** postprocess.panoptic_merge (mmdet MaskFormerFusionHead.panoptic_postprocess) on (Q, C+1) class logits and
 *  (Q, h, w) mask logits -> {ids: Int32Array(H0*W0) (0 = void), segments: [{id, category_id, isthing, score,
 *  area, query}]}. */
export function panopticMerge(cls, masks, Q, h, w, lb, isthing, scoreThr, overlapThr) {
  const C = isthing.length;
  const [h0, w0] = lb.origHW;
  const n = h0 * w0;
  const scores = new Float32Array(Q);
  const labels = new Int32Array(Q);
  const keep = [];
  for (let q = 0; q < Q; q++) { // softmax in double; the score is stored as float32 like NumPy
    const row = cls.subarray(q * (C + 1), (q + 1) * (C + 1));
    let mx = -Infinity;
    for (const v of row) mx = Math.max(mx, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - mx);
    let best = -1;
    let arg = 0;
    for (let c = 0; c <= C; c++) {
      const p = Math.exp(row[c] - mx) / sum;
      if (p > best) { best = p; arg = c; }
    }
    scores[q] = best;
    labels[q] = arg;
    if (arg !== C && scores[q] > scoreThr) keep.push(q);
  }
  const ids = new Int32Array(n);
  if (!keep.length) return { ids, segments: [] };
  const plan = resizePlan(lb, h, w);
  const fg = keep.map(() => new Uint8Array(n));
  const best = new Float32Array(n).fill(-Infinity);
  const winner = new Int32Array(n);
  keep.forEach((q, k) => {
    const r = resizeLogits(masks, q, h, w, lb, plan);
    for (let i = 0; i < n; i++) {
      const s = sigmoid32(r[i]);
      fg[k][i] = s >= 0.5 ? 1 : 0;
      const p = Math.fround(scores[q] * s);
      if (p > best[i]) { best[i] = p; winner[i] = k; } // strict: an earlier query wins ties
    }
  });
  const segments = [];
  const stuff = new Map();
  keep.forEach((q, k) => {
    let area = 0;
    let origArea = 0;
    let inside = 0;
    for (let i = 0; i < n; i++) {
      origArea += fg[k][i];
      if (winner[i] === k) { area++; inside += fg[k][i]; }
    }
    if (area === 0 || origArea === 0 || area / origArea < overlapThr || inside === 0) return;
    const label = labels[q];
    let info = isthing[label] ? undefined : stuff.get(label);
    if (!info) {
      info = { id: segments.length + 1, category_id: label, isthing: isthing[label], score: scores[q], area: 0, query: q };
      segments.push(info);
      if (!isthing[label]) stuff.set(label, info);
    }
    for (let i = 0; i < n; i++) if (winner[i] === k && fg[k][i]) ids[i] = info.id;
    info.area += inside;
    info.score = Math.max(info.score, scores[q]);
  });
  return { ids, segments };
}

// ------------------------------------------------------------------------------------------- drawing
/** postprocess.segment_color: golden-ratio hue walk, HSV(s=0.65, v=0.95) -> RGB bytes. */
export function segmentColor(index) {
  const h = (index * 0.618033988749895) % 1.0;
  const s = 0.65;
  const v = 0.95;
  const i = Math.trunc(h * 6.0);
  const f = h * 6.0 - i;
  const p = v * (1.0 - s);
  const q = v * (1.0 - s * f);
  const t = v * (1.0 - s * (1.0 - f));
  const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return rgb.map((c) => rint(Math.fround(c * 255)));
}

/** postprocess.overlay: blend segment ids (0 = untouched) onto RGB bytes -> RGBA bytes for a canvas. */
export function overlayIds(rgb, ids, alpha = 0.5) {
  const n = ids.length;
  let maxId = 0;
  for (let i = 0; i < n; i++) if (ids[i] > maxId) maxId = ids[i];
  const palette = new Float64Array((maxId + 1) * 3);
  for (let id = 1; id <= maxId; id++) palette.set(segmentColor(id).map((c) => alpha * c), id * 3);
  const out = new Uint8ClampedArray(n * 4); // assignment rounds half to even, like np.rint
  const keep = 1 - alpha;
  for (let i = 0, s = 0, o = 0; i < n; i++, s += 3, o += 4) {
    const id = ids[i];
    if (id > 0) {
      const p = id * 3;
      out[o] = keep * rgb[s] + palette[p];
      out[o + 1] = keep * rgb[s + 1] + palette[p + 1];
      out[o + 2] = keep * rgb[s + 2] + palette[p + 2];
    } else {
      out[o] = rgb[s];
      out[o + 1] = rgb[s + 1];
      out[o + 2] = rgb[s + 2];
    }
    out[o + 3] = 255;
  }
  return out;
}

/** Masks (later on top) -> segment ids 1..K, as postprocess.overlay colours interactive results. */
export function masksToIds(masks, n) {
  const ids = new Int32Array(n);
  masks.forEach((m, k) => { for (let i = 0; i < n; i++) if (m[i]) ids[i] = k + 1; });
  return ids;
}

/** Run lengths of a 0/1 array in row-major order, starting with a run of zeros (for the tests). */
export function runLengths(mask) {
  const runs = [];
  let cur = 0;
  let len = 0;
  for (let i = 0; i < mask.length; i++) {
    const v = mask[i] ? 1 : 0;
    if (v === cur) len++;
    else { runs.push(len); cur = v; len = 1; }
  }
  runs.push(len);
  return runs;
}
