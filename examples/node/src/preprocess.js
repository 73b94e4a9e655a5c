// Image bytes -> model input, following the "preprocessing" metadata of the .onnx exactly:
// decode -> grayscale in float (0.299 R + 0.587 G + 0.114 B, alpha over black) -> scale to [0, 1]
// -> bilinear resize on half-pixel centres, no antialiasing -> (x - mean) / std, NCHW float32.
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';

export class ImageError extends Error {}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47]);
const JPEG_SIGNATURE = Buffer.from([0xff, 0xd8, 0xff]);

/** Decode PNG or JPEG bytes to { width, height, rgba: Uint8Array }; throws ImageError on anything else. */
export function decode(bytes, maxPixels) {
  let image;
  try {
    if (bytes.subarray(0, 4).equals(PNG_SIGNATURE)) {
      image = PNG.sync.read(bytes);
    } else if (bytes.subarray(0, 3).equals(JPEG_SIGNATURE)) {
      image = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: maxPixels / 1e6, maxMemoryUsageInMB: 1024 });
    } else {
      throw new ImageError('not a PNG or JPEG image');
    }
  } catch (error) {
    if (error instanceof ImageError) throw error;
    throw new ImageError(`cannot decode the image: ${error.message}`);
  }
  if (image.width * image.height > maxPixels) {
    throw new ImageError(`${image.width}x${image.height} pixels is over the limit of ${maxPixels}`);
  }
  return { width: image.width, height: image.height, rgba: image.data };
}

/** RGBA bytes -> grayscale Float32Array in [0, 1] (same formula as vggdeploy/preprocess.py). */
export function toGrayscale({ width, height, rgba }, spec) {
  const [wr, wg, wb] = spec.lumaWeights;
  const gray = new Float32Array(width * height);
  for (let i = 0; i < gray.length; i += 1) {
    const p = 4 * i;
    gray[i] = ((wr * rgba[p] + wg * rgba[p + 1] + wb * rgba[p + 2]) * (rgba[p + 3] / 255)) / 255;
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

/** Image bytes -> Float32Array input of one image. */
export function preprocess(bytes, spec, maxPixels) {
  const image = decode(bytes, maxPixels);
  return toModelInput(toGrayscale(image, spec), image.width, image.height, spec);
}
