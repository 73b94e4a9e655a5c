// A bounded load test of the service on 127.0.0.1 (MODEL_PATH, GOLDEN_DIR): prints requests/s and latency.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { readModel, startServer } from './src/server.js';
import { resolveGoldenDir, resolveModelPath } from '../js-common/model-paths.js';
import { wholeFromEnv } from '../js-common/settings.js';

// checked first: CONNECTIONS=abc once made autocannon wait forever, REQUESTS=-5 ended in its stack trace
const connections = wholeFromEnv('CONNECTIONS', 8, 1, 1000);
const amount = wholeFromEnv('REQUESTS', 3000, 1, 10_000_000);

let body;
let service;
try {  // a missing model or golden folder is one line, not a stack trace
  const modelPath = resolveModelPath();
  readModel(modelPath); // the model first: a wrong MODEL_PATH also leaves its golden/ folder unfound
  const golden = JSON.parse(readFileSync(join(resolveGoldenDir(), 'golden.json'), 'utf8'));
  body = readFileSync(join(resolveGoldenDir(), golden.images[0].file));
  service = await startServer({ modelPath });
} catch (error) {
  const missing = error.code === 'ENOENT' ? `${error.path}: no such file (GOLDEN_DIR, or golden/ beside the model)` : null;
  console.error(`error: ${missing ?? error.message}`);
  process.exit(1);
}
const result = await autocannon({
  url: `${service.url}/predict`, method: 'POST', body, headers: { 'content-type': 'image/png' },
  connections, amount, timeout: 10,
});
await service.close();
const summary = {
  requests: result.requests.total, non2xx: result.non2xx, errors: result.errors, timeouts: result.timeouts,
  requests_per_second: result.requests.average, latency_ms: { p50: result.latency.p50, p90: result.latency.p90, p99: result.latency.p99, max: result.latency.max },
  connections: result.connections, duration_s: result.duration,
};
console.log(JSON.stringify(summary, null, 2));
process.exit(summary.non2xx || summary.errors || summary.timeouts ? 1 : 0);
