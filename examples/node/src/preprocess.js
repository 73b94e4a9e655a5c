// Image bytes -> model input in Node: PNG/JPEG decoding here, the preprocessing itself in js-common.
import sharp from 'sharp';
import { PNG } from 'pngjs';
import { pngOrientation, upright } from '../../js-common/orientation.js';
import { pngForDecoding } from '../../js-common/png.js';
import { toChannels, toModelInput } from '../../js-common/preprocess.js';

export { specFromMetadata } from '../../js-common/preprocess.js';

export class ImageError extends Error {}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47]);
const JPEG_SIGNATURE = Buffer.from([0xff, 0xd8, 0xff]);

/**
 * Decode PNG or JPEG bytes to { width, height, rgba, depth, colorType }; throws ImageError on anything else.
 * PNG through pngjs, its 16-bit samples kept whole (toChannels reads them as Pillow does), then turned upright by the
 * orientation of its eXIf chunk; JPEG through sharp (libvips with mozjpeg), turned upright by its EXIF orientation;
 * CMYK JPEG is refused.
 */
export async function decode(bytes, maxPixels) {
  let image;
  try {
    if (bytes.subarray(0, 4).equals(PNG_SIGNATURE)) {
      const [depth, colorType] = [bytes[24], bytes[25]]; // from the IHDR chunk, which a PNG must start with
      if (bytes.length >= 24) tooManyPixels(bytes.readUInt32BE(16), bytes.readUInt32BE(20), maxPixels); // before decoding
      const png = PNG.sync.read(Buffer.from(pngForDecoding(bytes)), { skipRescale: depth === 16 });
      image = upright({ width: png.width, height: png.height, rgba: png.data, depth, colorType }, pngOrientation(bytes));
    } else if (bytes.subarray(0, 3).equals(JPEG_SIGNATURE)) {
      // libvips decodes JPEG with mozjpeg (libjpeg-turbo's decoder, as Pillow uses), so the pixels are Pillow's
      const jpg = sharp(bytes, { failOn: 'truncated' });
      const header = await jpg.metadata();
      tooManyPixels(header.width, header.height, maxPixels);
      if (header.space === 'cmyk') {
        // libvips converts CMYK through an ICC profile, Pillow with a plain formula: the answers would differ
        throw new ImageError('CMYK JPEGs are not supported here (their colours convert differently); convert to RGB');
      }
      const { data, info } = await jpg.rotate().ensureAlpha().raw().toBuffer({ resolveWithObject: true });
      image = { width: info.width, height: info.height, rgba: data }; // .rotate(): upright by EXIF, like exif_transpose
    } else {
      throw new ImageError('not a PNG or JPEG image');
    }
  } catch (error) {
    if (error instanceof ImageError) throw error;
    const kind = bytes.subarray(0, 4).equals(PNG_SIGNATURE) ? 'PNG' : 'JPEG';
    throw new ImageError(`cannot decode the image: truncated or corrupt ${kind}`);
  }
  return image;
}

/** A decompression bomb is refused from its header, before a pixel is decoded. */
function tooManyPixels(width, height, maxPixels) {
  if (width * height > maxPixels) throw new ImageError(`${width}x${height} pixels is over the limit of ${maxPixels}`);
}

/** Image bytes -> Float32Array input of one image. */
export async function preprocess(bytes, spec, maxPixels) {
  const image = await decode(bytes, maxPixels);
  return toModelInput(toChannels(image, spec), image.width, image.height, spec);
}
