// Self-test of the service against the golden vectors exported beside the model, and its error paths.
// npm test (the newest export under artifacts/), or MODEL_PATH=.../model.onnx GOLDEN_DIR=.../golden npm test
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { after, before, test } from 'node:test';
import { PNG } from 'pngjs';
import { goldenProblems } from '../../js-common/golden.js';
import { topK } from '../../js-common/preprocess.js';
import { resolveGoldenDir, resolveModelPath } from '../../js-common/model-paths.js';
import { startServer } from '../src/server.js';

const modelPath = resolveModelPath();
const goldenDir = resolveGoldenDir();
const golden = JSON.parse(readFileSync(join(goldenDir, 'golden.json'), 'utf8'));
let service;

before(async () => {
  service = await startServer({ modelPath, workers: 2, maxBodyBytes: 2 * 1024 * 1024 });
});
after(async () => service.close());

const post = (body, path = '/predict', method = 'POST') => fetch(service.url + path, { method, body });

test('golden images give the golden labels, logits and calibrated probabilities', async () => {
  for (const entry of golden.images) {
    const response = await post(readFileSync(join(goldenDir, entry.file)));
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.deepEqual(goldenProblems(body, entry, golden), [], entry.file);
    assert.equal(body.top.length, 3);
    assert.ok(body.top[0].probability >= body.top[1].probability);
  }
});

test('topK refuses logits that do not match the labels (a graph whose class count the load check could not read)', () => {
  assert.throws(() => topK([0.1, 0.2, 0.3], ['a', 'b'], 2), /^Error: the metadata names 2 labels, but the model output 3 classes$/);
  const [best] = topK([0, Math.log(3)], ['a', 'b'], 1);
  assert.equal(best.label, 'b');
  assert.ok(Math.abs(best.probability - 0.75) < 1e-12);
});

/** A multipart/form-data body as `curl -F image=@file.png` sends it. */
function multipart(field, blob, asFile = true) {
  const form = new FormData();
  if (asFile) form.append(field, blob, 'upload.png');
  else form.append(field, 'text only');
  return form;
}

test('a multipart upload (curl -F image=@file.png) is classified like a raw body', async () => {
  const bytes = readFileSync(join(goldenDir, golden.images[0].file));
  const raw = await (await post(bytes)).json();
  const response = await post(multipart('image', new Blob([bytes], { type: 'image/png' })));
  assert.equal(response.status, 200);
  assert.deepEqual((await response.json()).logits, raw.logits);
});

test('healthz and model metadata', async () => {
  assert.deepEqual(await (await fetch(`${service.url}/healthz`)).json(), { status: 'ok', model: (await (await fetch(`${service.url}/model`)).json()).model.name });
  const metadata = await (await fetch(`${service.url}/model`)).json();
  assert.equal(metadata.labels.length, 10);
  assert.equal(metadata.io.input.name, 'images');
  assert.equal(metadata.preprocessing.resize.method, 'bilinear');
});

test('bad requests get 4xx JSON errors and the service stays up', async () => {
  const png = readFileSync(join(goldenDir, golden.images[0].file));
  const bomb = Buffer.from(png); // its IHDR claims 100000x100000: refused from the header, never decoded (2.4 GB once)
  bomb.writeUInt32BE(100_000, 16);
  bomb.writeUInt32BE(100_000, 20);
  const cases = [
    [() => post(bomb), 415, /^100000x100000 pixels is over the limit of 25000000$/],
    [() => post(Buffer.alloc(0)), 400, /empty body/],
    [() => post(Buffer.from('hello, not an image')), 415, /not a PNG or JPEG/],
    [() => post(png.subarray(0, 40)), 415, /^cannot decode the image: truncated or corrupt PNG$/],
    [() => post(png.subarray(0, png.length - 30)), 415, /^cannot decode the image: truncated or corrupt PNG$/],
    [() => post(multipart('notes', new Blob(['text only']), false)), 400, /holds no file/],
    [() => post(Buffer.alloc(3 * 1024 * 1024, 1)), 413, /larger than/],
    [() => fetch(`${service.url}/predict`), 405, /GET not allowed/],
    [() => post(png, '/nowhere'), 404, /no route/],
    [() => post(png, '//predict'), 404, /^no route \/\/predict$/], // once "no route /": a host named 'predict'

    [() => post(png, '/healthz', 'DELETE'), 405, /DELETE not allowed/],
    [() => post(png, '/predict?k=abc'), 400, /^k must be a whole number of at least 1, got 'abc'$/],
    [() => post(png, '/predict?k=0'), 400, /got '0'/],
    [() => post(png, '/predict?k=2.5'), 400, /got '2.5'/],
  ];
  for (const [request, status, message] of cases) {
    const response = await request();
    assert.equal(response.status, status);
    assert.equal(response.headers.get('content-type'), 'application/json');
    assert.match((await response.json()).error, message);
  }
  assert.equal((await fetch(`${service.url}/healthz`)).status, 200);
  const head = await fetch(`${service.url}/healthz`, { method: 'HEAD' }); // a load balancer's probe: once 405
  assert.equal(head.status, 200);
  assert.equal(await head.text(), '');
  assert.equal((await fetch(`${service.url}/predict`)).headers.get('allow'), 'POST');
  assert.equal((await fetch(`${service.url}/model`, { method: 'PUT' })).headers.get('allow'), 'GET, HEAD');
  assert.equal((await post(png)).status, 200);
  const everyLabel = await (await post(png, '/predict?k=99')).json(); // more than the model has: all of them
  assert.equal(everyLabel.top.length, 10);
});

test('the event loop stays free while workers decode and classify', async () => {
  const big = new PNG({ width: 2500, height: 2500 });
  big.data.fill(128);
  const bytes = PNG.sync.write(big);
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const responses = await Promise.all([post(bytes), post(bytes), fetch(`${service.url}/healthz`)]);
  delay.disable();
  assert.deepEqual(responses.map((r) => r.status), [200, 200, 200]);
  assert.ok(delay.max / 1e6 < 250, `event loop blocked for ${delay.max / 1e6} ms`);
});
