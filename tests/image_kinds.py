"""Every kind of image `vggdeploy run` accepts, made from one picture, with the logits the Python reference gives.

The non-Python consumers are tested against these files: each must give the same logits within the golden tolerance,
or refuse the kind in words.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_KINDS = ("gray8", "gray_transparent_key", "gray16", "gray_alpha8", "gray_alpha16", "rgb8", "rgba8", "palette", "palette_transparent",
             "rgb16", "rgba16", "one_by_one", "large_4000x3000", *(f"exif_orientation_{o}_png" for o in range(2, 9)),
             "exif_transposed_png_after_idat", "malformed_exif_png", "animated_png", "blank_white")  # fmt: skip
JPEG_KINDS = ("rgb_jpeg", "gray_jpeg", "cmyk_jpeg", "exif_rotated_jpeg")


def _raw_png(width: int, height: int, color_type: int, samples: np.ndarray) -> bytes:
    """A 16-bit PNG written byte by byte (Pillow writes 16 bits for grayscale only)."""

    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, kind, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, position = [], 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        chunks.append((png[position + 4 : position + 8], png[position + 8 : position + 8 + length]))
        position += 12 + length
    return chunks


def _exif_moved_after_idat(png: bytes) -> bytes:
    """The same PNG with its eXIf chunk after the image data (allowed; a decoder must read to the end for it)."""
    chunks = _chunks(png)
    exif = [c for c in chunks if c[0] == b"eXIf"]
    rest = [c for c in chunks if c[0] not in (b"eXIf", b"IEND")]
    return png[:8] + b"".join(png_chunk(kind, data) for kind, data in (*rest, *exif, (b"IEND", b"")))


UNDO_ORIENTATION = {  # the transposition that EXIF orientation N undoes
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _orientation(value: int, endian: str) -> Image.Exif:
    """EXIF holding only an orientation, in little (``<``, "II") or big (``>``, "MM") endian byte order."""
    exif = Image.Exif()
    exif[0x0112] = value
    exif.endian = endian
    return exif


def write_image_kinds(gray: np.ndarray, folder: Path) -> dict[str, Path]:
    """The picture ``gray`` (uint8 HxW) in every kind, as files in ``folder``; alpha and colour vary across it."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = gray.shape
    rng = np.random.default_rng(0)
    ramp = np.linspace(64, 255, width, dtype=np.float32)[None, :].repeat(height, 0).astype(np.uint8)  # alpha
    tint = np.stack([gray, np.clip(gray.astype(int) * 3 // 4 + 40, 0, 255), 255 - gray], -1).astype(np.uint8)
    low_bits = rng.integers(0, 256, gray.shape)  # 16-bit samples that are not just 8-bit ones times 257
    sixteen = gray.astype(np.uint16) * 256 + low_bits
    images: dict[str, bytes] = {}

    def save(image: Image.Image, format: str, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=format, **options)
        return buffer.getvalue()

    rgb = Image.fromarray(tint, "RGB")
    images["gray8"] = save(Image.fromarray(gray, "L"), "PNG")
    # a colour key on the picture's most common non-black gray: decoders make those pixels transparent black, and
    # the reference (Pillow's "L") ignores a gray key; a key on black pixels could not tell the two apart
    key = int(np.bincount(gray[gray > 0].ravel()).argmax())
    images["gray_transparent_key"] = save(Image.fromarray(gray, "L"), "PNG", transparency=key)
    images["gray16"] = save(Image.fromarray(sixteen.astype(np.uint16)), "PNG")
    images["gray_alpha8"] = save(Image.fromarray(np.stack([gray, ramp], -1), "LA"), "PNG")
    images["gray_alpha16"] = _raw_png(width, height, 4, np.stack([sixteen, ramp.astype(np.uint16) * 257], -1))
    images["rgb8"] = save(rgb, "PNG")
    images["rgba8"] = save(Image.fromarray(np.dstack([tint, ramp]), "RGBA"), "PNG")
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=200)
    images["palette"] = save(palette, "PNG")
    images["palette_transparent"] = save(palette, "PNG", transparency=int(np.asarray(palette)[0, 0]))
    tint16 = tint.astype(np.uint16) * 256 + rng.integers(0, 256, tint.shape)
    images["rgb16"] = _raw_png(width, height, 2, tint16)
    images["rgba16"] = _raw_png(width, height, 6, np.dstack([tint16, ramp.astype(np.uint16) * 257]))
    images["one_by_one"] = save(
        Image.fromarray(gray[height // 2 : height // 2 + 1, width // 2 : width // 2 + 1], "L"), "PNG"
    )
    images["large_4000x3000"] = save(Image.fromarray(gray, "L").resize((4000, 3000), Image.BILINEAR), "PNG")
    images["rgb_jpeg"] = save(rgb, "JPEG", quality=95)
    images["gray_jpeg"] = save(Image.fromarray(gray, "L"), "JPEG", quality=95)
    images["cmyk_jpeg"] = save(rgb.convert("CMYK"), "JPEG", quality=95)
    # EXIF orientation 6: the stored pixels are to be turned 90 degrees clockwise; 5: transposed (mirrored too)
    turned = Image.fromarray(np.rot90(gray, 1).copy(), "L")
    images["exif_rotated_jpeg"] = save(turned, "JPEG", quality=95, exif=_orientation(6, "<"))
    for orientation, method in UNDO_ORIENTATION.items():  # stored so that the upright image is the picture again
        stored = Image.fromarray(gray, "L").transpose(method)
        images[f"exif_orientation_{orientation}_png"] = save(stored, "PNG", exif=_orientation(orientation, "<"))
    transposed = Image.fromarray(np.dstack([tint, ramp]).transpose(1, 0, 2).copy(), "RGBA")
    images["exif_transposed_png_after_idat"] = _exif_moved_after_idat(
        save(transposed, "PNG", exif=_orientation(5, ">"))
    )
    plain = save(Image.fromarray(gray, "L"), "PNG")  # an eXIf chunk that is not EXIF: read as stored, not refused
    images["malformed_exif_png"] = plain[:33] + png_chunk(b"eXIf", b"not EXIF") + plain[33:]
    images["blank_white"] = save(Image.new("L", (width, height), 255), "PNG")  # unlike any training image
    images["animated_png"] = save(Image.fromarray(gray, "L"), "PNG", save_all=True, append_images=[rgb.rotate(90)])
    paths = {}
    for name, data in images.items():
        path = folder / (name + (".jpg" if name.endswith("jpeg") else ".png"))
        path.write_bytes(data)
        paths[name] = path
    return paths


def reference_answers(model_path: Path, paths: dict[str, Path]) -> dict[str, dict]:
    """What `vggdeploy run` (the Python reference) computes for each file, decoded to the model's colour (gray or
    RGB): its logits, and for a model with the familiarity output its score and flag."""
    from vggdeploy.deploy.contract import familiarity_threshold
    from vggdeploy.deploy.preprocess import PreprocessSpec, decode_image, to_model_input
    from vggdeploy.deploy.session import ProviderSettings, open_model, run_scored

    model = open_model(model_path, ProviderSettings(provider="cpu"))
    spec = PreprocessSpec.from_metadata(model.metadata["preprocessing"])
    threshold = familiarity_threshold(model.metadata)
    answers = {}
    for name, path in paths.items():
        logits, scores = run_scored(model.session, to_model_input([decode_image(path, spec.color)], spec))
        answers[name] = {"file": path.name, "logits": logits[0].tolist()}
        if threshold is not None:
            answers[name].update(familiarity=float(scores[0]), unfamiliar=bool(scores[0] < threshold))
    return answers


def write_fixture_set(gray: np.ndarray, model_path: Path, folder: Path) -> Path:
    """The images plus ``expected.json`` ({kind: {file, logits[, familiarity, unfamiliar]}}), as the consumers' tests
    read them."""
    expected = reference_answers(model_path, write_image_kinds(gray, folder))
    tolerance = {"logits_atol": 1e-3, "familiarity_atol": 1e-3}
    (folder / "expected.json").write_text(json.dumps({"tolerance": tolerance, "kinds": expected}, indent=1))
    return folder / "expected.json"


def cpp_answers_on_every_kind(program: Path, model_path: Path, fixture: Path) -> dict[str, dict]:
    """examples/cpp's answers to every PNG kind of the fixture set, checked against the Python reference's logits,
    familiarity score and flag (none for a model without them) within its tolerance, and its refusal of every JPEG
    kind in words; by kind."""
    written = json.loads(fixture.read_text())
    expected, tolerance = written["kinds"], written["tolerance"]
    files = [str(fixture.parent / expected[kind]["file"]) for kind in (*PNG_KINDS, *JPEG_KINDS)]
    run = subprocess.run([str(program), str(model_path), *files, "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr  # the JPEGs
    answers = {Path(answer["file"]).stem: answer for answer in map(json.loads, run.stdout.splitlines())}
    assert sorted(answers) == sorted(PNG_KINDS)
    worst = {
        kind: max(abs(a - b) for a, b in zip(answer["logits"], expected[kind]["logits"], strict=True))
        for kind, answer in answers.items()
    }
    assert max(worst.values()) <= tolerance["logits_atol"], worst
    for kind, answer in answers.items():
        if "familiarity" not in expected[kind]:  # a model without the familiarity output
            assert answer["familiarity"] is None and answer["unfamiliar"] is None, kind
            continue
        assert abs(answer["familiarity"] - expected[kind]["familiarity"]) <= tolerance["familiarity_atol"], kind
        assert answer["unfamiliar"] == expected[kind]["unfamiliar"], kind
    refused = run.stderr.strip().splitlines()
    assert len(refused) == len(JPEG_KINDS), refused
    assert all("not a PNG file (this example decodes PNG only)" in line for line in refused), refused
    return answers
