// Image bytes -> model input in Node: PNG/JPEG decoding here, the preprocessing itself in js-common.
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { applyOrientation, exifOrientation, toGrayscale, toModelInput } from '../../js-common/preprocess.js';

export { specFromMetadata } from '../../js-common/preprocess.js';

export class ImageError extends Error {}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47]);
const JPEG_SIGNATURE = Buffer.from([0xff, 0xd8, 0xff]);

/**
 * Decode PNG or JPEG bytes to { width, height, rgba, depth, colorType }; throws ImageError on anything else.
 * 16-bit PNG samples are kept whole (toGrayscale reads them as Pillow does); JPEGs are turned upright by their
 * EXIF orientation.
 */
export function decode(bytes, maxPixels) {
  let image;
  try {
    if (bytes.subarray(0, 4).equals(PNG_SIGNATURE)) {
      const [depth, colorType] = [bytes[24], bytes[25]]; // from the IHDR chunk, which a PNG must start with
      const png = PNG.sync.read(bytes, { skipRescale: depth === 16 });
      image = { width: png.width, height: png.height, rgba: png.data, depth, colorType };
    } else if (bytes.subarray(0, 3).equals(JPEG_SIGNATURE)) {
      const jpg = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: maxPixels / 1e6, maxMemoryUsageInMB: 1024 });
      image = applyOrientation({ width: jpg.width, height: jpg.height, rgba: jpg.data }, exifOrientation(jpg.exifBuffer));
    } else {
      throw new ImageError('not a PNG or JPEG image');
    }
  } catch (error) {
    if (error instanceof ImageError) throw error;
    const kind = bytes.subarray(0, 4).equals(PNG_SIGNATURE) ? 'PNG' : 'JPEG';
    throw new ImageError(`cannot decode the image: truncated or corrupt ${kind}`);
  }
  if (image.width * image.height > maxPixels) {
    throw new ImageError(`${image.width}x${image.height} pixels is over the limit of ${maxPixels}`);
  }
  return image;
}

/** Image bytes -> Float32Array input of one image. */
export function preprocess(bytes, spec, maxPixels) {
  const image = decode(bytes, maxPixels);
  return toModelInput(toGrayscale(image, spec), image.width, image.height, spec);
}
