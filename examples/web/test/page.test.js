// Drives the page in Debian's Chromium (playwright-core, no browser download): every golden image must give the
// golden top-1 label, logits within the golden tolerance and probabilities softmax(logits / T). npm test takes the newest export under artifacts/;
// MODEL_PATH and GOLDEN_DIR choose another; SCREENSHOT= saves a PNG of the page.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { goldenProblems } from '../../js-common/golden.js';
import { resolveGoldenDir, resolveModelPath } from '../../js-common/model-paths.js';
import { startStaticServer } from '../serve.js';

const goldenDir = resolveGoldenDir();
const golden = JSON.parse(readFileSync(join(goldenDir, 'golden.json'), 'utf8'));
let server;
let browser;
let page;
const consoleErrors = [];

before(async () => {
  server = await startStaticServer({ modelPath: resolveModelPath() });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 820, height: 620 } });
  page.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()));
  page.on('pageerror', (error) => consoleErrors.push(error.message));
  await page.goto(`${server.url}/`);
  await page.waitForFunction(() => window.modelReady || window.modelError, null, { timeout: 60_000 });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

test('the page loads the model, cross-origin isolated, and shows what it loaded', async () => {
  assert.equal(await page.evaluate(() => window.modelError ?? null), null);
  assert.equal(await page.evaluate(() => self.crossOriginIsolated), true);
  assert.match(await page.textContent('#status'), /Model .* onnxruntime-web wasm/);
});

test('golden images give the golden labels, logits and calibrated probabilities in the browser', async () => {
  for (const entry of golden.images) {
    await page.evaluate(() => { window.lastResult = null; });
    await page.setInputFiles('#file', join(goldenDir, entry.file));
    const result = await page.waitForFunction(() => window.lastResult, null, { timeout: 30_000 }).then((h) => h.jsonValue());
    assert.deepEqual(goldenProblems(result, entry, golden), [], entry.file);
    assert.equal(await page.locator('#bars .bar').count(), 5);
    assert.ok((await page.textContent('#label')).startsWith(result.top[0].label));
  }
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  assert.deepEqual(consoleErrors, []);
});

test('a file that is not an image shows an error instead of crashing the page', async () => {
  await page.setInputFiles('#file', { name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('not an image') });
  await page.waitForSelector('#status .error', { timeout: 10_000 });
  assert.match(await page.textContent('#status'), /Could not classify notes.png/);
});

test('a model whose graph contradicts its metadata is refused on load, in words', { skip: !process.env.MISLABELLED_MODEL && 'set MISLABELLED_MODEL' }, async () => {
  const mislabelled = await startStaticServer({ modelPath: process.env.MISLABELLED_MODEL });
  const other = await browser.newPage();
  try {
    await other.goto(`${mislabelled.url}/`);
    await other.waitForFunction(() => window.modelReady || window.modelError, null, { timeout: 60_000 });
    assert.match(await other.textContent('#status'), /Could not load the model: the metadata names 9 labels, but the graph outputs 10 classes/);
  } finally {
    await other.close();
    await mislabelled.close();
  }
});

test('every image kind gives the Python reference logits, or a refusal in words', { skip: !process.env.IMAGE_KINDS && 'set IMAGE_KINDS' }, async () => {
  const fixture = process.env.IMAGE_KINDS;
  const { tolerance, kinds } = JSON.parse(readFileSync(fixture, 'utf8'));
  const refused = { gray16: /16-bit grayscale PNGs are read inexactly by browsers/ };
  const report = {}; // KINDS_REPORT=file.json keeps each kind's largest |logit difference| (BENCHMARKS.md's table)
  for (const [kind, entry] of Object.entries(kinds)) {
    await page.evaluate(() => { window.lastResult = null; document.querySelector('#status').textContent = ''; });
    await page.setInputFiles('#file', join(dirname(fixture), entry.file));
    await page.waitForFunction(() => window.lastResult || document.querySelector('#status .error'), null, { timeout: 60_000 });
    const result = await page.evaluate(() => window.lastResult);
    if (refused[kind]) {
      assert.equal(result, null, `${kind}: answered instead of refusing`);
      assert.match(await page.textContent('#status'), refused[kind]);
      continue;
    }
    assert.ok(result, `${kind}: ${await page.textContent('#status')}`);
    const worst = Math.max(...result.logits.map((v, i) => Math.abs(v - entry.logits[i])));
    report[kind] = worst;
    assert.ok(worst <= tolerance.logits_atol, `${kind}: logits differ by ${worst} > ${tolerance.logits_atol}`);
    if ('familiarity' in entry) { // the model's familiarity score and flag, as the Python reference gives them
      const gap = Math.abs(result.familiarity - entry.familiarity);
      assert.ok(gap <= tolerance.familiarity_atol, `${kind}: familiarity differs by ${gap}`);
      assert.equal(result.unfamiliar, entry.unfamiliar, `${kind}: unfamiliar`);
    }
  }
  if (process.env.KINDS_REPORT) writeFileSync(process.env.KINDS_REPORT, JSON.stringify(report, null, 1));
});
