// A fixed pool of inference workers with a simple least-busy dispatch; a crashed worker is replaced.
import { Worker } from 'node:worker_threads';

export class WorkerPool {
  constructor(modelPath, size) {
    this.modelPath = modelPath;
    this.pending = new Map();
    this.nextId = 0;
    this.workers = [];
    this.ready = Promise.all(Array.from({ length: size }, () => this.#spawn()));
  }

  #spawn() {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: { modelPath: this.modelPath } });
    worker.busy = 0;
    this.workers.push(worker);
    return new Promise((resolve, reject) => {
      worker.on('message', (message) => {
        if (message.ready) return resolve(worker);
        const job = this.pending.get(message.id);
        if (!job) return undefined;
        this.pending.delete(message.id);
        worker.busy -= 1;
        return message.error ? job.reject(Object.assign(new Error(message.error), { badImage: message.badImage })) : job.resolve(message.result);
      });
      worker.on('error', (error) => {
        reject(error);
        this.#fail(worker, error);
      });
    });
  }

  #fail(worker, error) {
    this.workers = this.workers.filter((w) => w !== worker);
    for (const [id, job] of this.pending) {
      if (job.worker === worker) {
        this.pending.delete(id);
        job.reject(error);
      }
    }
    if (!this.closing) this.#spawn().catch(() => {});
  }

  run(bytes, k, maxPixels) {
    const worker = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    worker.busy += 1;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker });
      worker.postMessage({ id, bytes, k, maxPixels });
    });
  }

  async close() {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
