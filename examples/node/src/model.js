// Loads a vggdeploy .onnx: its metadata (labels, preprocessing, io) through the ONNX protobuf schema, because
// ONNX Runtime's JavaScript API does not expose metadata_props, and an inference session.
import { readFileSync } from 'node:fs';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { specFromMetadata } from './preprocess.js';

import { calibrationOf, checkGraphAgainstMetadata, familiarityAnswer } from '../../js-common/preprocess.js';

export { topK } from '../../js-common/preprocess.js';

const { onnx } = onnxProto;

/** Every metadata_props value of a vggdeploy model, JSON-decoded. */
export function readMetadata(bytes) {
  const model = onnx.ModelProto.decode(bytes);
  const props = Object.fromEntries((model.metadataProps ?? []).map((p) => [p.key, p.value]));
  if (!('vggdeploy.format' in props)) throw new Error('the model carries no vggdeploy metadata');
  return Object.fromEntries(Object.entries(props).map(([key, value]) => [key, JSON.parse(value)]));
}

export async function loadModel(path) {
  const bytes = readFileSync(path);
  const metadata = readMetadata(bytes);
  const { input } = metadata.io;
  if (input.dtype !== 'float32') throw new Error(`this service takes the float32 model, not ${input.name} (${input.dtype})`);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'] });
  const spec = specFromMetadata(metadata.preprocessing);
  checkGraphAgainstMetadata(session, metadata, spec);
  return {
    metadata,
    session,
    spec,
    labels: metadata.labels,
    ...calibrationOf(metadata),
  };
}

/** Logits for one preprocessed image, with the familiarity score and flag (nulls for a model without them). */
export async function infer(model, input) {
  const { io } = model.metadata;
  const tensor = new ort.Tensor('float32', input, [1, model.spec.channels, model.spec.height, model.spec.width]);
  const result = await model.session.run({ [io.input.name]: tensor });
  return { logits: Array.from(result[io.output.name].data), ...familiarityAnswer(model.metadata, result) };
}
