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
const answers = job.cases.map((c) => {
  const contract = host.readContract(c.manifest);
  const lb = host.computeLetterbox(c.h, c.w, contract);
  switch (c.kind) {
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
    case 'contract':
      return { contract };
    default:
      throw new Error(`unknown case ${c.kind}`);
  }
});
process.stdout.write(JSON.stringify(answers));
