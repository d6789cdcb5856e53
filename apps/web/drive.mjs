// Drive the page in headless Chromium (playwright-core, the system browser) like a person would: open an
// image with the file input, click points on the canvas (optionally with shift), press "panoptic", take a
// screenshot; print what the page measured and computed as one JSON line. Used by tests/test_app_web.py and
// apps/web/record.py.
//   node drive.mjs '{"url": "http://127.0.0.1:8000/?threads=1", "image": "photo.png",
//                    "clicks": [{"x": 120, "y": 80, "shift": false}], "panoptic": true, "screenshot": "shot.png"}'
import { chromium } from 'playwright-core';

const job = JSON.parse(process.argv[2]);
const timeout = job.timeoutMs ?? 60000;
const browser = await chromium.launch({
  executablePath: job.executable ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const result = { console: [] };
try {
  const page = await browser.newPage({ viewport: { width: job.width ?? 1000, height: job.height ?? 900 } });
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') result.console.push(m.text()); });
  page.on('pageerror', (e) => result.console.push(`pageerror: ${e.message}`));
  await page.goto(job.url);
  await page.waitForFunction(() => window.rapsam && ['ready', 'error'].includes(window.rapsam.status), null, { timeout });
  const failed = async () => page.evaluate(() => window.rapsam.error);
  if (await failed()) throw new Error(`page: ${await failed()}`);
  result.providers = await page.evaluate(() => window.rapsam.providers);
  for (let i = 0; i < (job.encodes ?? 1); i++) { // opening the image again re-runs the encoder (warm timing)
    if (i > 0) await page.setInputFiles('#file', []); // the same file again fires no change event
    await page.evaluate(() => { window.rapsam.status = 'opening'; });
    await page.setInputFiles('#file', job.image);
    await page.waitForFunction(() => ['encoded', 'error'].includes(window.rapsam.status), null, { timeout });
    if (await failed()) throw new Error(`page: ${await failed()}`);
  }
  result.encoderMs = await page.evaluate(() => window.rapsam.encoderMs);
  if (job.readInput) result.input = await page.evaluate(() => window.rapsam.exportInput());
  const [h0, w0] = await page.evaluate(() => window.rapsam.image.lb.origHW);
  result.canvasHW = await page.evaluate(() => window.rapsam.image.lb.paddedHW); // the encoder input's H, W
  result.clicks = [];
  for (const c of job.clicks ?? []) {
    const box = await page.locator('#view').boundingBox();
    const n = await page.evaluate(() => window.rapsam.clicks.length);
    // the centre of image pixel (x, y) on screen
    if (c.shift) await page.keyboard.down('Shift');
    await page.mouse.click(box.x + (c.x + 0.5) * box.width / w0, box.y + (c.y + 0.5) * box.height / h0);
    if (c.shift) await page.keyboard.up('Shift');
    await page.waitForFunction((k) => window.rapsam.clicks.length > k || window.rapsam.error, n, { timeout });
    if (await failed()) throw new Error(`page: ${await failed()}`);
    const click = await page.evaluate(() => window.rapsam.exportClick());
    if (!job.keepMasks) { delete click.masks; delete click.logits; }
    result.clicks.push(click);
  }
  if (job.screenshot) await page.screenshot({ path: job.screenshot, fullPage: true });
  if (job.panoptic) {
    const n = await page.evaluate(() => window.rapsam.panoptics.length);
    await page.click('#panoptic');
    await page.waitForFunction((k) => window.rapsam.panoptics.length > k || window.rapsam.error, n, { timeout });
    if (await failed()) throw new Error(`page: ${await failed()}`);
    result.panoptic = await page.evaluate(() => window.rapsam.exportPanoptic());
    if (job.panopticScreenshot) await page.screenshot({ path: job.panopticScreenshot, fullPage: true });
  }
  result.userAgent = await page.evaluate(() => navigator.userAgent);
  result.threads = await page.evaluate(() => ({ crossOriginIsolated, hardwareConcurrency: navigator.hardwareConcurrency }));
} catch (e) {
  result.error = String(e.message ?? e);
} finally {
  await browser.close();
}
// no process.exit(): it would cut a long stdout write to a pipe short
process.stdout.write(JSON.stringify(result) + '\n');
process.exitCode = result.error ? 1 : 0;
