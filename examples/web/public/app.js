// Classifies a dropped image with the exported .onnx via onnxruntime-web (wasm files served from the package).
// Labels and preprocessing come from the model's metadata_props, read with protobufjs and a partial ONNX schema.
import * as ort from '/ort/ort.wasm.min.mjs';
import { pngOrientation, upright } from '/common/orientation.js';
import { pngForDecoding } from '/common/png.js';
import {
  calibrationOf, checkGraphAgainstMetadata, familiarityAnswer, specFromMetadata, toChannels, toModelInput, topK,
} from '/common/preprocess.js';

const TOP_K = 5;
const $ = (id) => document.getElementById(id);

// Only the fields we read: ModelProto.metadata_props (field 14) of StringStringEntryProto {key = 1, value = 2}.
const schema = protobuf.Root.fromJSON({
  nested: {
    StringStringEntryProto: { fields: { key: { type: 'string', id: 1 }, value: { type: 'string', id: 2 } } },
    ModelProto: { fields: { metadataProps: { rule: 'repeated', type: 'StringStringEntryProto', id: 14 } } },
  },
});

function readMetadata(bytes) {
  const model = schema.lookupType('ModelProto').decode(bytes);
  const props = Object.fromEntries(model.metadataProps.map((p) => [p.key, p.value]));
  if (!('vggdeploy.format' in props)) throw new Error('this .onnx carries no vggdeploy metadata');
  return Object.fromEntries(Object.entries(props).map(([key, value]) => [key, JSON.parse(value)]));
}

async function loadModel() {
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const [bytes, info] = await Promise.all([
    fetch('/model.onnx').then((r) => r.arrayBuffer()).then((b) => new Uint8Array(b)),
    fetch('/model-info.json').then((r) => r.json()),
  ]);
  const metadata = readMetadata(bytes);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
  const spec = specFromMetadata(metadata.preprocessing);
  checkGraphAgainstMetadata(session, metadata, spec);
  return { metadata, info, session, spec };
}

// A canvas keeps premultiplied alpha, which rounds semi-transparent pixels; a WebGL texture uploaded without
// premultiplication and read back gives the decoded bytes exactly. Where WebGL is missing, the canvas is used for
// opaque images and semi-transparent ones are refused rather than answered inexactly.
function exactPixels(bitmap) {
  const gl = new OffscreenCanvas(bitmap.width, bitmap.height).getContext('webgl2', { premultipliedAlpha: false });
  if (!gl || Math.max(bitmap.width, bitmap.height) > gl.getParameter(gl.MAX_TEXTURE_SIZE)) return null;
  gl.bindTexture(gl.TEXTURE_2D, gl.createTexture());
  gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
  gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
  gl.bindFramebuffer(gl.FRAMEBUFFER, gl.createFramebuffer());
  gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, gl.getParameter(gl.TEXTURE_BINDING_2D), 0);
  const rgba = new Uint8Array(4 * bitmap.width * bitmap.height);
  gl.readPixels(0, 0, bitmap.width, bitmap.height, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
  return gl.getError() === gl.NO_ERROR ? rgba : null;
}

function canvasPixels(bitmap) {
  const context = new OffscreenCanvas(bitmap.width, bitmap.height).getContext('2d', { colorSpace: 'srgb' });
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  for (let i = 3; i < data.length; i += 4) {
    if (data[i] !== 255) throw new Error('this browser cannot read semi-transparent pixels exactly (no WebGL 2)');
  }
  return data;
}

/** PNG bit depth and colour type from the IHDR chunk, or null for other formats. */
function pngHeader(bytes) {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  return signature.every((b, i) => bytes[i] === b) ? { depth: bytes[24], colorType: bytes[25] } : null;
}

async function decodeImage(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const png = pngHeader(bytes);
  if (png?.depth === 16 && png.colorType === 0) {
    // The reference reads 16-bit gray at full precision; browsers reduce it to 8 bits first.
    throw new Error('16-bit grayscale PNGs are read inexactly by browsers; use the Node service or vggdeploy run');
  }
  // A PNG's eXIf orientation is applied here, not by the browser (Chromium reads it only before the pixels);
  // a JPEG's EXIF orientation is applied by the browser, as every current one does.
  const source = png ? new Blob([pngForDecoding(bytes)], { type: 'image/png' }) : file;
  const bitmap = await createImageBitmap(source, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const rgba = exactPixels(bitmap) ?? canvasPixels(bitmap);
  const stored = { width: bitmap.width, height: bitmap.height, rgba, colorType: png?.colorType };
  const image = png ? upright(stored, pngOrientation(bytes)) : stored;
  return { ...image, bitmap: image === stored ? bitmap : await uprightBitmap(image) };
}

/** A bitmap of the upright pixels, for the preview. */
function uprightBitmap({ width, height, rgba }) {
  return createImageBitmap(new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.length), width, height));
}

function show(result, image, metadata) {
  $('result').hidden = false;
  const preview = $('preview');
  preview.getContext('2d').drawImage(image.bitmap, 0, 0, preview.width, preview.height);
  $('label').textContent = `${result.top[0].label} (${(100 * result.top[0].probability).toFixed(1)} %)`
    + (result.unfamiliar ? ' - unfamiliar: unlike the training images, so the probabilities say nothing about it' : '');
  $('bars').replaceChildren(...result.top.map(({ label, probability }) => {
    const row = document.createElement('div');
    row.className = 'bar';
    row.innerHTML = `<span></span><span class="track"><span class="fill" style="width:${(100 * probability).toFixed(1)}%"></span></span><span></span>`;
    row.children[0].textContent = label;
    row.children[2].textContent = `${(100 * probability).toFixed(1)} %`;
    return row;
  }));
}

async function classify(model, file) {
  const image = await decodeImage(file);
  const input = toModelInput(toChannels(image, model.spec), image.width, image.height, model.spec);
  const { io, labels } = model.metadata;
  const feeds = { [io.input.name]: new ort.Tensor('float32', input, [1, model.spec.channels, model.spec.height, model.spec.width]) };
  const outputs = await model.session.run(feeds);
  const logits = Array.from(outputs[io.output.name].data);
  const { temperature, calibrated } = calibrationOf(model.metadata);
  const top = topK(logits, labels, TOP_K, temperature);
  const result = { file: file.name, logits, top, calibrated, temperature, ...familiarityAnswer(model.metadata, outputs) };
  show(result, image, model.metadata);
  window.lastResult = result; // read by the page's self-test
  return result;
}

try {
  const model = await loadModel();
  const { metadata, info } = model;
  $('status').textContent = `Model ${metadata.model.name} (${info.file}, ${(info.bytes / 1e6).toFixed(2)} MB, `
    + `test accuracy ${(100 * metadata.training.test_accuracy).toFixed(2)} %), onnxruntime-web wasm, `
    + `${ort.env.wasm.numThreads} thread(s). Input ${metadata.preprocessing.resize.height}x${metadata.preprocessing.resize.width} ${metadata.preprocessing.color}. `
    + (calibrationOf(metadata).calibrated
      ? `Probabilities calibrated: softmax(logits / ${calibrationOf(metadata).temperature.toFixed(4)}).`
      : 'Probabilities uncalibrated: plain softmax.');
  const run = (file) => classify(model, file).catch((error) => {
    $('status').innerHTML = '';
    $('status').append(Object.assign(document.createElement('span'), { className: 'error', textContent: `Could not classify ${file.name}: ${error.message}` }));
  });
  $('file').addEventListener('change', (event) => event.target.files[0] && run(event.target.files[0]));
  const drop = $('drop');
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    if (event.dataTransfer.files[0]) run(event.dataTransfer.files[0]);
  });
  window.modelReady = true;
} catch (error) {
  $('status').className = 'error';
  $('status').textContent = `Could not load the model: ${error.message}`;
  window.modelError = error.message;
}
