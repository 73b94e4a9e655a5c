// HTTP service around a vggdeploy .onnx: POST /predict (PNG or JPEG body), GET /healthz, GET /model.
// Labels and preprocessing come from the model file's metadata. Bad requests get a 4xx JSON error.
import { createServer } from 'node:http';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { modelFileProblem, requestUrl, wholeFromEnv } from '../../js-common/settings.js';
import { readMetadata } from './model.js';
import { WorkerPool } from './pool.js';
import { readFileSync } from 'node:fs';

const DEFAULTS = { maxBodyBytes: 10 * 1024 * 1024, maxPixels: 25_000_000, workers: Math.max(1, Math.min(4, availableParallelism() - 1)) };

function send(response, status, body, headers = {}) {
  const text = JSON.stringify(body);
  response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  response.end(text); // Node sends no body in answer to HEAD
}

function readBody(request, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    request.on('data', (chunk) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk); // past the limit the rest is drained unread, so the client gets the 413
    });
    request.on('end', () => {
      if (size > limit) reject(Object.assign(new Error(`body larger than ${limit} bytes`), { status: 413 }));
      else resolve(Buffer.concat(chunks));
    });
    request.on('error', reject);
  });
}

/** The image in a request: the raw body, or the first file of a multipart/form-data upload (`curl -F image=@x.png`). */
async function imageBytes(request, body) {
  const type = request.headers['content-type'] ?? '';
  if (!type.startsWith('multipart/form-data')) return body;
  let form;
  try {
    form = await new Response(body, { headers: { 'content-type': type } }).formData();
  } catch {
    throw Object.assign(new Error('malformed multipart/form-data body'), { status: 400 });
  }
  const file = [...form.values()].find((value) => typeof value === 'object');
  if (!file) throw Object.assign(new Error('the multipart upload holds no file: send -F image=@picture.png'), { status: 400 });
  return Buffer.from(await file.arrayBuffer());
}

/** `?k=`: how many labels to answer (3 when absent); anything but a whole number >= 1 is a 400, not a guess. */
function topCount(text) {
  if (text === null) return 3;
  if (!/^[0-9]+$/.test(text) || Number(text) < 1) {
    throw Object.assign(new Error(`k must be a whole number of at least 1, got '${text}'`), { status: 400 });
  }
  return Number(text);
}

/** The model's metadata, or an Error naming the file and the problem in one line. */
export function readModel(modelPath) {
  let bytes;
  try {
    bytes = readFileSync(modelPath);
  } catch (error) {
    throw new Error(`${modelPath}: ${modelFileProblem(modelPath, error)}`);
  }
  try {
    return readMetadata(bytes);
  } catch (error) {
    throw new Error(`${modelPath}: not a vggdeploy model (${error.message})`);
  }
}

export async function startServer({ modelPath, port = 0, host = '127.0.0.1', ...options }) {
  const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
  const settings = { ...DEFAULTS, ...given };
  if (!Number.isInteger(settings.workers) || settings.workers < 1) {
    throw new Error(`workers must be a whole number of at least 1, got ${settings.workers}`);
  }
  const metadata = readModel(modelPath);
  const pool = new WorkerPool(modelPath, settings.workers);
  try {
    await pool.ready; // each worker loads the model, and refuses a graph that contradicts its metadata
  } catch (error) {
    await pool.close();
    throw new Error(`${modelPath}: ${error.message}`);
  }

  const routes = {
    'GET /healthz': async () => [200, { status: 'ok', model: metadata.model.name }],
    'GET /model': async () => [200, metadata],
    'POST /predict': async (request, url) => {
      const body = await imageBytes(request, await readBody(request, settings.maxBodyBytes));
      const k = Math.min(topCount(url.searchParams.get('k')), metadata.labels.length);
      if (body.length === 0) return [400, { error: 'empty body: send a PNG or JPEG image' }];
      try {
        const { top, logits, calibrated, temperature, familiarity, unfamiliar } = await pool.run(body, k, settings.maxPixels);
        return [200, { model: metadata.model.name, top, logits, calibrated, temperature, familiarity, unfamiliar }];
      } catch (error) {
        if (error.badImage) return [415, { error: error.message }];
        throw error;
      }
    },
  };
  const allowed = {}; // path -> its methods, HEAD wherever GET is (HTTP's rule for a general-purpose server)
  for (const route of Object.keys(routes)) {
    const [method, path] = route.split(' ');
    allowed[path] = [...(allowed[path] ?? []), method, ...(method === 'GET' ? ['HEAD'] : [])];
  }

  const server = createServer(async (request, response) => {
    const url = requestUrl(request);
    const method = request.method === 'HEAD' ? 'GET' : request.method;
    const handler = routes[`${method} ${url.pathname}`];
    try {
      if (!handler) {
        if (!allowed[url.pathname]) return send(response, 404, { error: `no route ${url.pathname}` });
        const error = `${request.method} not allowed on ${url.pathname}`;
        return send(response, 405, { error }, { allow: allowed[url.pathname].join(', ') });
      }
      const [status, body] = await handler(request, url);
      return send(response, status, body);
    } catch (error) {
      if (response.headersSent) return response.destroy();
      return send(response, error.status ?? 500, { error: error.message });
    }
  });
  await new Promise((resolve) => server.listen(port, host, resolve));
  return {
    server,
    url: `http://${host}:${server.address().port}`,
    close: async () => {
      await new Promise((resolve) => server.close(resolve));
      await pool.close();
    },
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const modelPath = process.argv[2] ?? process.env.MODEL_PATH;
  if (!modelPath) {
    console.error('usage: node src/server.js MODEL.onnx   (or MODEL_PATH=...)');
    process.exit(2);
  }
  const port = wholeFromEnv('PORT', 8080, 0, 65535);
  const workers = process.env.WORKERS === undefined ? undefined : wholeFromEnv('WORKERS', 1, 1, 64);
  try {
    const { url } = await startServer({ modelPath, port, host: process.env.HOST ?? '127.0.0.1', workers });
    console.log(`vggdeploy service on ${url} (POST /predict, GET /healthz, GET /model)`);
  } catch (error) {
    console.error(`error: ${error.message}`);
    process.exit(1);
  }
}
