// A bounded load test of the service on 127.0.0.1 (MODEL_PATH, GOLDEN_DIR): prints requests/s and latency.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { startServer } from './src/server.js';
import { resolveGoldenDir, resolveModelPath } from '../js-common/model-paths.js';
import { wholeFromEnv } from '../js-common/settings.js';

// checked first: CONNECTIONS=abc once made autocannon wait forever, REQUESTS=-5 ended in its stack trace
const connections = wholeFromEnv('CONNECTIONS', 8, 1, 1000);
const amount = wholeFromEnv('REQUESTS', 3000, 1, 10_000_000);

const golden = JSON.parse(readFileSync(join(resolveGoldenDir(), 'golden.json'), 'utf8'));
const body = readFileSync(join(resolveGoldenDir(), golden.images[0].file));
const service = await startServer({ modelPath: resolveModelPath() });
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
