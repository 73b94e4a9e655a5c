// PNG chunks, for the Node service and the browser page: what their decoders are given, so that the pixels they
// decode are the ones vggdeploy's Python reference reads.

export const latin1 = (bytes, start, end) => String.fromCharCode(...bytes.subarray(start, end));

/** A PNG's chunks as { kind, start, end } (start of the length field, end after the CRC), up to IEND or a cut. */
export function pngChunks(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks = [];
  for (let at = 8; at + 8 <= bytes.length;) {
    const end = at + 12 + view.getUint32(at);
    chunks.push({ kind: latin1(bytes, at + 4, at + 8), start: at, end: Math.min(end, bytes.length) });
    if (chunks.at(-1).kind === 'IEND') break;
    at = end;
  }
  return chunks;
}

/**
 * The PNG as a decoder here must see it:
 *  - without its eXIf chunk: a decoder then gives the stored pixels, never turned (orientation.js turns them);
 *  - for a gray PNG (colour type 0), without its tRNS chunk: the reference (Pillow's "L") ignores a gray colour key,
 *    where pngjs and browsers make the pixels of that gray transparent black.
 */
export function pngForDecoding(bytes) {
  const gray = bytes[25] === 0; // the colour type, in the IHDR chunk a PNG must start with
  const dropped = (kind) => kind === 'eXIf' || (gray && kind === 'tRNS');
  const kept = [bytes.subarray(0, 8), ...pngChunks(bytes).filter(({ kind }) => !dropped(kind))
    .map(({ start, end }) => bytes.subarray(start, end))];
  const out = new Uint8Array(kept.reduce((total, part) => total + part.length, 0));
  kept.reduce((at, part) => { out.set(part, at); return at + part.length; }, 0);
  return out;
}
