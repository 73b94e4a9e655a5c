// The vggdeploy preprocessing in plain JavaScript, shared by the Node service and the browser page.
// It follows the model's "preprocessing" metadata exactly: grayscale in float (luma weights, alpha over black)
// -> scale to [0, 1] -> bilinear resize on half-pixel centres, no antialiasing -> (x - mean) / std, NCHW float32.

/**
 * Decoded pixels -> grayscale Float32Array in [0, 1], exactly as vggdeploy/preprocess.py (Pillow) reads them.
 * `rgba` holds 4 samples a pixel. PNG decoders also pass `depth` and `colorType` (from the IHDR chunk):
 *  - 16-bit gray (colorType 0): sample / 65535, full precision;
 *  - gray of 1-8 bits: sample / 255; a tRNS colour key is ignored, as Pillow's "L" mode ignores it;
 *  - anything else: 16-bit samples keep their high byte (as Pillow's 8-bit modes do), luma in float,
 *    alpha composited over black, / 255.
 */
export function toGrayscale({ width, height, rgba, depth = 8, colorType }, spec) {
  const [wr, wg, wb] = spec.lumaWeights;
  const gray = new Float32Array(width * height);
  const shift = depth === 16 ? 8 : 0;
  for (let i = 0; i < gray.length; i += 1) {
    const p = 4 * i;
    if (colorType === 0) {
      gray[i] = depth === 16 ? rgba[p] / 65535 : rgba[p] / 255;
    } else {
      const [r, g, b, a] = [rgba[p] >> shift, rgba[p + 1] >> shift, rgba[p + 2] >> shift, rgba[p + 3] >> shift];
      gray[i] = ((wr * r + wg * g + wb * b) * (a / 255)) / 255;
    }
  }
  return gray;
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

/** Resize and normalise a grayscale image into the (1, 1, H, W) model input. */
export function toModelInput(gray, width, height, spec) {
  const rows = taps(height, spec.height);
  const cols = taps(width, spec.width);
  const out = new Float32Array(spec.height * spec.width);
  for (let y = 0; y < spec.height; y += 1) {
    const top = rows.lower[y] * width;
    const bottom = rows.upper[y] * width;
    const fy = rows.fraction[y];
    for (let x = 0; x < spec.width; x += 1) {
      const fx = cols.fraction[x];
      const l = cols.lower[x];
      const r = cols.upper[x];
      const upperRow = gray[top + l] * (1 - fx) + gray[top + r] * fx;
      const lowerRow = gray[bottom + l] * (1 - fx) + gray[bottom + r] * fx;
      out[y * spec.width + x] = (upperRow * (1 - fy) + lowerRow * fy - spec.mean) / spec.std;
    }
  }
  return out;
}

/** The preprocessing numbers from the model's metadata (nothing is hard-coded here). */
export function specFromMetadata(preprocessing) {
  const { resize } = preprocessing;
  if (preprocessing.color !== 'grayscale' || resize.method !== 'bilinear' || resize.coordinate_transformation !== 'half_pixel' || resize.antialias || preprocessing.alpha !== 'composite_over_black' || preprocessing.luma_weights?.length !== 3) {
    throw new Error(`unsupported preprocessing ${JSON.stringify(preprocessing)}`);
  }
  return {
    height: resize.height,
    width: resize.width,
    mean: preprocessing.mean[0],
    std: preprocessing.std[0],
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

/** softmax(logits / temperature), the k most likely labels first. */
export function topK(logits, labels, k, temperature = 1) {
  const scaled = logits.map((v) => v / temperature);
  const max = Math.max(...scaled);
  const exps = scaled.map((v) => Math.exp(v - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps
    .map((e, index) => ({ label: labels[index], index, probability: e / total }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, k);
}
