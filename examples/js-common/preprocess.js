// The vggdeploy preprocessing in plain JavaScript, shared by the Node service and the browser page.
// It follows the model's "preprocessing" metadata exactly: grayscale (luma weights) or R, G, B in float, alpha over
// black -> scale to [0, 1] -> bilinear resize on half-pixel centres, no antialiasing -> (x - mean) / std per channel,
// NCHW float32.

/**
 * Decoded pixels -> the model's channels (1 gray, or 3 RGB planes) as one Float32Array in [0, 1], exactly as
 * vggdeploy/preprocess.py (Pillow) reads them. `rgba` holds 4 samples a pixel. PNG decoders also pass `depth` and
 * `colorType` (from the IHDR chunk):
 *  - 16-bit gray (colorType 0): sample / 65535, full precision (repeated to 3 planes for an RGB model);
 *  - gray of 1-8 bits: sample / 255; a tRNS colour key is ignored, as Pillow's "L" mode ignores it;
 *  - anything else: 16-bit samples keep their high byte (as Pillow's 8-bit modes do), luma in float (grayscale
 *    models) or R, G, B (RGB models), alpha composited over black, / 255.
 */
export function toChannels({ width, height, rgba, depth = 8, colorType }, spec) {
  const area = width * height;
  const planes = new Float32Array(area * spec.channels);
  const shift = depth === 16 ? 8 : 0;
  for (let i = 0; i < area; i += 1) {
    const p = 4 * i;
    if (colorType === 0) {
      const value = depth === 16 ? rgba[p] / 65535 : rgba[p] / 255;
      for (let c = 0; c < spec.channels; c += 1) planes[c * area + i] = value;
      continue;
    }
    const [r, g, b, a] = [rgba[p] >> shift, rgba[p + 1] >> shift, rgba[p + 2] >> shift, rgba[p + 3] >> shift];
    if (spec.channels === 1) {
      const [wr, wg, wb] = spec.lumaWeights;
      planes[i] = ((wr * r + wg * g + wb * b) * (a / 255)) / 255;
    } else {
      [r, g, b].forEach((value, c) => { planes[c * area + i] = (value * (a / 255)) / 255; });
    }
  }
  return planes;
}

// 1-D bilinear taps on half-pixel centres: source = (o + 0.5) * in / out - 0.5, clamped at 0 and the last pixel.
function taps(inSize, outSize) {
  const lower = new Int32Array(outSize);
  const upper = new Int32Array(outSize);
  const fraction = new Float32Array(outSize);
  for (let o = 0; o < outSize; o += 1) {
    const source = Math.max((o + 0.5) * (inSize / outSize) - 0.5, 0);
    lower[o] = Math.min(Math.floor(source), inSize - 1);
    upper[o] = Math.min(lower[o] + 1, inSize - 1);
    fraction[o] = Math.min(Math.max(source - lower[o], 0), 1);
  }
  return { lower, upper, fraction };
}

/** Resize and normalise decoded planes (from toChannels) into the (1, C, H, W) model input. */
export function toModelInput(planes, width, height, spec) {
  const rows = taps(height, spec.height);
  const cols = taps(width, spec.width);
  const inArea = width * height;
  const outArea = spec.height * spec.width;
  const out = new Float32Array(outArea * spec.channels);
  for (let c = 0; c < spec.channels; c += 1) {
    const plane = planes.subarray(c * inArea, (c + 1) * inArea);
    for (let y = 0; y < spec.height; y += 1) {
      const top = rows.lower[y] * width;
      const bottom = rows.upper[y] * width;
      const fy = rows.fraction[y];
      for (let x = 0; x < spec.width; x += 1) {
        const fx = cols.fraction[x];
        const l = cols.lower[x];
        const r = cols.upper[x];
        const upperRow = plane[top + l] * (1 - fx) + plane[top + r] * fx;
        const lowerRow = plane[bottom + l] * (1 - fx) + plane[bottom + r] * fx;
        out[c * outArea + y * spec.width + x] = (upperRow * (1 - fy) + lowerRow * fy - spec.mean[c]) / spec.std[c];
      }
    }
  }
  return out;
}

/** The preprocessing numbers from the model's metadata (nothing is hard-coded here). */
export function specFromMetadata(preprocessing) {
  const { resize } = preprocessing;
  const channels = { grayscale: 1, rgb: 3 }[preprocessing.color];
  if (!channels || resize.method !== 'bilinear' || resize.coordinate_transformation !== 'half_pixel' || resize.antialias
    || preprocessing.alpha !== 'composite_over_black' || (channels === 1 && preprocessing.luma_weights?.length !== 3)
    || preprocessing.mean?.length !== channels || preprocessing.std?.length !== channels) {
    throw new Error(`unsupported preprocessing ${JSON.stringify(preprocessing)}`);
  }
  return {
    height: resize.height,
    width: resize.width,
    channels,
    mean: preprocessing.mean,
    std: preprocessing.std,
    lumaWeights: preprocessing.luma_weights,
  };
}

/**
 * The model's calibration: probabilities are softmax(logits / temperature). A model exported before the
 * "calibration" metadata key existed means temperature 1 (plain softmax), calibrated false.
 */
export function calibrationOf(metadata) {
  const calibration = metadata.calibration ?? {};
  return { temperature: calibration.temperature ?? 1, calibrated: calibration.fitted === true };
}

/**
 * The familiarity output's name and threshold, or null for a model without it (an older export, or one made with
 * --no-familiarity). An image scoring below the threshold is unlike the training images.
 */
export function familiarityOf(metadata) {
  const section = metadata.familiarity;
  return section ? { name: section.output, threshold: section.threshold } : null;
}

/** The answer's familiarity fields from the session's outputs: the score and the flag, or nulls. */
export function familiarityAnswer(metadata, outputs) {
  const scored = familiarityOf(metadata);
  if (!scored) return { familiarity: null, unfamiliar: null };
  const familiarity = outputs[scored.name].data[0];
  return { familiarity, unfamiliar: !(familiarity >= scored.threshold) }; // a NaN score is no evidence of familiarity
}

/**
 * Throws when the session's graph contradicts its metadata (vggdeploy's own loader refuses such a model): the input
 * and output names, the output's class count against the labels, the input's channels x height x width against the
 * preprocessing. Labels shifted onto other classes would be wrong answers, not errors. Axes the graph leaves
 * symbolic ("batch") are not compared.
 */
export function checkGraphAgainstMetadata(session, metadata, spec) {
  if (metadata['vggdeploy.format'] !== '1') {
    // another contract: its keys may mean other things
    throw new Error(`vggdeploy format ${JSON.stringify(metadata['vggdeploy.format'])}, but this program reads format "1" only`);
  }
  const temperature = metadata.calibration?.temperature ?? 1;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature <= 0) {
    throw new Error(`calibration.temperature must be a positive number, got ${JSON.stringify(temperature)}`); // T < 0 ranks backwards
  }
  const { mean, std } = metadata.preprocessing;
  if (![...mean, ...std].every(Number.isFinite) || Math.min(...std) <= 0) {
    throw new Error(
      `the preprocessing's mean ${JSON.stringify(mean)} and std ${JSON.stringify(std)} must be finite numbers, every std above 0`,
    );
  }
  const scored = familiarityOf(metadata);
  if (scored && !Number.isFinite(scored.threshold)) {
    throw new Error(`familiarity.threshold must be a number, got ${JSON.stringify(scored.threshold)}`);
  }
  if (scored && !session.outputNames.includes(scored.name)) {
    throw new Error(`its metadata describes a ${JSON.stringify(scored.name)} output, but the graph's outputs are ${session.outputNames}`);
  }
  const { input, output } = metadata.io;
  if (!session.inputNames.includes(input.name) || !session.outputNames.includes(output.name)) {
    throw new Error(`the graph's inputs/outputs ${session.inputNames}/${session.outputNames} do not match its metadata`);
  }
  const shapeOf = (list, name) => list.find((value) => value.name === name)?.shape ?? [];
  const classes = shapeOf(session.outputMetadata, output.name).at(-1);
  if (Number.isInteger(classes) && classes !== metadata.labels.length) {
    throw new Error(`the metadata names ${metadata.labels.length} labels, but the graph outputs ${classes} classes`);
  }
  const taken = shapeOf(session.inputMetadata, input.name).slice(1);
  const made = [spec.channels, spec.height, spec.width];
  if (taken.length === 3 && taken.every(Number.isInteger) && taken.some((size, axis) => size !== made[axis])) {
    throw new Error(`the metadata's preprocessing makes ${made.join('x')} inputs, but the graph takes ${taken.join('x')}`);
  }
}

/** softmax(logits / temperature), the k most likely labels first; a NaN or infinite logit (a broken model) throws. */
export function topK(logits, labels, k, temperature = 1) {
  if (!logits.every(Number.isFinite)) throw new Error("the model's output is not finite (NaN or inf): no probabilities");
  if (logits.length !== labels.length) {
    throw new Error(`the metadata names ${labels.length} labels, but the model output ${logits.length} classes`);
  }
  const scaled = logits.map((v) => v / temperature);
  const max = Math.max(...scaled);
  const exps = scaled.map((v) => Math.exp(v - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps
    .map((e, index) => ({ label: labels[index], index, probability: e / total }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, k);
}
