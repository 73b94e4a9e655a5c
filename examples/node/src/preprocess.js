// Image bytes -> model input in Node: PNG/JPEG decoding here, the preprocessing itself in js-common.
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { toGrayscale, toModelInput } from '../../js-common/preprocess.js';

export { specFromMetadata } from '../../js-common/preprocess.js';

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

/** Image bytes -> Float32Array input of one image. */
export function preprocess(bytes, spec, maxPixels) {
  const image = decode(bytes, maxPixels);
  return toModelInput(toGrayscale(image, spec), image.width, image.height, spec);
}
