// A PNG's EXIF orientation, read and applied as vggdeploy/preprocess.py applies it (Pillow's exif_transpose on the
// eXIf chunk, wherever it lies; EXIF in PNG text chunks is not used). Shared by the Node service and the browser page:
// PNG decoders there skip the chunk (pngjs) or read it only before the pixels (Chromium), so both take it out
// (png.js) and turn the decoded pixels here.

import { latin1, pngChunks } from './png.js';

/** The EXIF orientation (tag 0x0112) of a TIFF-headed EXIF block ("II*\0" / "MM\0*", "Exif\0\0" allowed first); 1 if none. */
export function exifOrientation(exif) {
  const data = latin1(exif, 0, 6) === 'Exif\0\0' ? exif.subarray(6) : exif;
  const order = latin1(data, 0, 2);
  if (data.length < 8 || (order !== 'II' && order !== 'MM')) return 1;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const little = order === 'II';
  const ifd = view.getUint32(4, little);
  if (ifd + 2 > data.length) return 1;
  for (let e = 0, entries = view.getUint16(ifd, little); e < entries && ifd + 2 + 12 * (e + 1) <= data.length; e += 1) {
    const entry = ifd + 2 + 12 * e;
    if (view.getUint16(entry, little) === 0x0112 && view.getUint16(entry + 2, little) === 3) { // orientation, a SHORT
      const value = view.getUint16(entry + 8, little);
      return value >= 1 && value <= 8 ? value : 1;
    }
  }
  return 1;
}

/** The orientation in a PNG's eXIf chunk, before or after the pixels; 1 if it has none. */
export function pngOrientation(bytes) {
  const chunk = pngChunks(bytes).find(({ kind }) => kind === 'eXIf');
  return chunk ? exifOrientation(bytes.subarray(chunk.start + 8, Math.max(chunk.start + 8, chunk.end - 4))) : 1;
}

/**
 * The upright image ({ width, height, rgba: 4 samples a pixel, ... }), as Pillow's ImageOps.exif_transpose makes it:
 * 2 mirror, 3 turn 180 degrees, 4 flip, 5 transpose, 6 turn 90 degrees clockwise, 7 transverse, 8 turn 90 degrees
 * anticlockwise.
 */
export function upright(image, orientation) {
  if (orientation === 1) return image;
  const { width: w, height: h, rgba } = image;
  const [width, height] = orientation >= 5 ? [h, w] : [w, h];
  const source = {
    2: (x, y) => [w - 1 - x, y], 3: (x, y) => [w - 1 - x, h - 1 - y], 4: (x, y) => [x, h - 1 - y],
    5: (x, y) => [y, x], 6: (x, y) => [y, h - 1 - x], 7: (x, y) => [w - 1 - y, h - 1 - x], 8: (x, y) => [w - 1 - y, x],
  }[orientation];
  const turned = new rgba.constructor(rgba.length);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const [sx, sy] = source(x, y);
      turned.set(rgba.subarray(4 * (sy * w + sx), 4 * (sy * w + sx) + 4), 4 * (y * width + x));
    }
  }
  return { ...image, width, height, rgba: turned };
}
