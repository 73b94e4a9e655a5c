// A worker thread: decodes, preprocesses and classifies, so the HTTP event loop never waits on CPU work.
import { parentPort, workerData } from 'node:worker_threads';
import { infer, loadModel, topK } from './model.js';
import { ImageError, preprocess } from './preprocess.js';

const model = await loadModel(workerData.modelPath);
parentPort.postMessage({ ready: true });

parentPort.on('message', async ({ id, bytes, k, maxPixels }) => {
  try {
    const { logits, familiarity, unfamiliar } = await infer(model, await preprocess(Buffer.from(bytes), model.spec, maxPixels));
    const { temperature, calibrated } = model;
    const top = topK(logits, model.labels, k, temperature);
    parentPort.postMessage({ id, result: { top, logits, calibrated, temperature, familiarity, unfamiliar } });
  } catch (error) {
    parentPort.postMessage({ id, error: error.message, badImage: error instanceof ImageError });
  }
});
