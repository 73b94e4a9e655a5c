// Every image kind vggdeploy's Python reference accepts, from the fixture set the pytest suite writes (or any folder
// with the same expected.json): IMAGE_KINDS=.../expected.json MODEL_PATH=.../model.onnx node --test test/kinds.test.js
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { startServer } from '../src/server.js';
import { resolveModelPath } from '../../js-common/model-paths.js';

const fixture = process.env.IMAGE_KINDS;

test('every image kind gives the Python reference logits, or a refusal in words', { skip: !fixture && 'set IMAGE_KINDS' }, async () => {
  const { tolerance, kinds } = JSON.parse(readFileSync(fixture, 'utf8'));
  const refused = { cmyk_jpeg: /CMYK JPEGs are not supported here/ };
  const report = {}; // KINDS_REPORT=file.json keeps each kind's largest |logit difference| (BENCHMARKS.md's table)
  const service = await startServer({ modelPath: resolveModelPath(), workers: 1, maxBodyBytes: 64 * 1024 * 1024 });
  try {
    for (const [kind, entry] of Object.entries(kinds)) {
      const body = readFileSync(join(dirname(fixture), entry.file));
      const response = await fetch(`${service.url}/predict`, { method: 'POST', body });
      const answer = await response.json();
      if (refused[kind]) {
        assert.equal(response.status, 415, kind);
        assert.match(answer.error, refused[kind]);
        continue;
      }
      assert.equal(response.status, 200, `${kind}: ${answer.error}`);
      const worst = Math.max(...answer.logits.map((v, i) => Math.abs(v - entry.logits[i])));
      report[kind] = worst;
      assert.ok(worst <= tolerance.logits_atol, `${kind}: logits differ by ${worst} > ${tolerance.logits_atol}`);
      if ('familiarity' in entry) { // the model's familiarity score and flag, as the Python reference gives them
        const gap = Math.abs(answer.familiarity - entry.familiarity);
        assert.ok(gap <= tolerance.familiarity_atol, `${kind}: familiarity differs by ${gap}`);
        assert.equal(answer.unfamiliar, entry.unfamiliar, `${kind}: unfamiliar`);
      }
    }
    if (process.env.KINDS_REPORT) writeFileSync(process.env.KINDS_REPORT, JSON.stringify(report, null, 1));
  } finally {
    await service.close();
  }
});
