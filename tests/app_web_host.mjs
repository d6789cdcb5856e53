// Runs apps/web/host.js on cases sent by tests/test_app_web.py (JSON on stdin, arrays as base64) and prints
// its answers, so the browser's host code is compared with rapsam_edge/preprocess.py and postprocess.py.
import { readFileSync } from 'node:fs';
import * as host from '../apps/web/host.js';

const bytes = (b64) => new Uint8Array(Buffer.from(b64, 'base64')); // a fresh, aligned copy
const f32 = (b64) => new Float32Array(bytes(b64).buffer);
const b64 = (ta) => Buffer.from(ta.buffer, ta.byteOffset, ta.byteLength).toString('base64');
const concat = (arrays) => {
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) { out.set(a, at); at += a.length; }
  return out;
};

const job = JSON.parse(readFileSync(0, 'utf8'));
const answer = (c) => {
  if (c.kind === 'sigmoid') return { sigmoid: b64(Float32Array.from(f32(c.x), host.sigmoid32)) };
  const contract = host.readContract(c.manifest);
  if (c.kind === 'contract') return { contract };
  const lb = host.computeLetterbox(c.h, c.w, contract);
  switch (c.kind) {
    case 'letterbox':
      return { lb };
    case 'resize': { // postprocess.resize_logits_to_image, every map
      const [k, h, w] = c.shape;
      const logits = f32(c.logits);
      const plan = host.resizePlan(lb, h, w);
      const maps = Array.from({ length: k }, (_, i) => host.resizeLogits(logits, i, h, w, lb, plan));
      return { resized: b64(concat(maps.map((m) => new Uint8Array(m.buffer)))), taps: [plan.ty.T, plan.tx.T] };
    }
    case 'canvas': // the encoder graph's fixed (H, W) against this image's canvas
      host.checkCanvas(c.artifact, lb);
      return { ok: true };
    case 'preprocess': {
      const { tensor } = host.preprocess(bytes(c.rgb), c.h, c.w, contract);
      return { tensor: b64(tensor), lb };
    }
    case 'boxes':
      return { boxes: b64(host.pointsToBoxes(c.points, lb, contract.clickBoxSize)) };
    case 'masks': {
      const [k, h, w] = c.shape;
      return { masks: b64(concat(host.masksFromLogits(f32(c.logits), k, h, w, lb, contract.maskThreshold))) };
    }
    case 'panoptic': {
      const [q, h, w] = c.shape;
      const { ids, segments } = host.panopticMerge(f32(c.cls), f32(c.masks), q, h, w, lb, contract.isthing,
        contract.scoreThr, contract.overlapThr);
      return { ids: b64(ids), segments };
    }
    default:
      throw new Error(`unknown case ${c.kind}`);
  }
};
const answers = job.cases.map((c) => {
  if (!c.expectError) return answer(c);
  try { // a refusal the test expects: its class and sentence
    return { answer: answer(c) };
  } catch (e) {
    return { error: e.message, errorClass: e.constructor.name };
  }
});
process.stdout.write(JSON.stringify(answers));
