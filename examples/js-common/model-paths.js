// Where the examples' tests find a model (Node only): MODEL_PATH and GOLDEN_DIR when set, else the newest export
// under the repository's artifacts/ and the golden/ folder beside it.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ARTIFACTS = resolve(dirname(fileURLToPath(import.meta.url)), '../../artifacts');

export function resolveModelPath() {
  if (process.env.MODEL_PATH) return process.env.MODEL_PATH;
  const exports = existsSync(ARTIFACTS)
    ? readdirSync(ARTIFACTS).map((run) => join(ARTIFACTS, run, 'onnx', 'model.onnx')).filter((path) => existsSync(path))
    : [];
  if (exports.length === 0) {
    throw new Error(`no model: set MODEL_PATH, or export one under ${ARTIFACTS} first (./scripts/demo.sh does)`);
  }
  return exports.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
}

export function resolveGoldenDir() {
  return process.env.GOLDEN_DIR ?? join(dirname(resolveModelPath()), 'golden');
}
