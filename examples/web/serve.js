// Serves the page, the shared preprocessing, onnxruntime-web's own wasm files and one model, on 127.0.0.1.
// COOP/COEP headers make the page cross-origin isolated so the wasm backend can use threads.
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { basename, dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { modelFileProblem, requestUrl, wholeFromEnv } from '../js-common/settings.js';

const here = dirname(fileURLToPath(import.meta.url));
const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream', '.json': 'application/json', '.png': 'image/png', '.css': 'text/css',
};

/** A regular file's size in bytes, or null where there is none to serve (missing, a folder, unreadable). */
function sizeOf(path) {
  try {
    const stat = statSync(path);
    return stat.isFile() ? stat.size : null;
  } catch {
    return null;
  }
}

function answer(response, status, text) {
  response.writeHead(status, { 'content-type': 'text/plain' });
  return response.end(text);
}

export async function startStaticServer({ modelPath, port = 0, host = '127.0.0.1' }) {
  const mounts = {
    '/ort/': join(here, 'node_modules', 'onnxruntime-web', 'dist'),
    '/vendor/': join(here, 'node_modules', 'protobufjs', 'dist'),
    '/common/': join(here, '..', 'js-common'),
    '/': join(here, 'public'),
  };
  const model = resolve(modelPath);
  const server = createServer((request, response) => {
    const url = requestUrl(request);
    let file;
    if (url.pathname === '/model.onnx') {
      file = model;
    } else if (url.pathname === '/model-info.json') {
      const bytes = sizeOf(model);
      if (bytes === null) return answer(response, 404, 'the model file is gone');
      response.writeHead(200, { 'content-type': TYPES['.json'] });
      return response.end(JSON.stringify({ file: basename(model), bytes }));
    } else {
      const prefix = Object.keys(mounts).find((p) => url.pathname.startsWith(p));
      const root = mounts[prefix];
      let relative;
      try {
        relative = decodeURIComponent(url.pathname.slice(prefix.length)) || 'index.html';
      } catch {
        return answer(response, 400, 'malformed percent-encoding in the path'); // it once threw and ended the server
      }
      file = resolve(root, relative);
      if (!file.startsWith(root + sep)) file = null; // no escaping the mounted folders
    }
    const size = file === null ? null : sizeOf(file);
    if (size === null) return answer(response, 404, 'not found');
    response.writeHead(200, {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'content-length': size,
      'cross-origin-opener-policy': 'same-origin',
      'cross-origin-embedder-policy': 'require-corp',
      'cache-control': 'no-cache',
    });
    // a file removed between the stat and the read: end this response, not the server
    return createReadStream(file).on('error', () => response.destroy()).pipe(response);
  });
  await new Promise((done) => server.listen(port, host, done));
  return { url: `http://${host}:${server.address().port}`, close: () => new Promise((done) => server.close(done)) };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const modelPath = process.argv[2] ?? process.env.MODEL_PATH;
  if (!modelPath) {
    console.error('usage: node serve.js MODEL.onnx   (or MODEL_PATH=...)');
    process.exit(2);
  }
  try {
    const file = statSync(modelPath); // the page reads the model's metadata itself; here: it must be a file
    if (!file.isFile()) throw new Error('not a file');
    if (file.size === 0) throw new Error('the model file is empty');
  } catch (error) {
    console.error(`error: ${modelPath}: ${modelFileProblem(modelPath, error)}`);
    process.exit(1);
  }
  const port = wholeFromEnv('PORT', 8000, 0, 65535);
  const { url } = await startStaticServer({ modelPath, port, host: process.env.HOST ?? '127.0.0.1' });
  console.log(`open ${url}/ (model: ${modelPath})`);
}
