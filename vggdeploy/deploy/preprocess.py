"""Image file -> model input: the ONE definition of the preprocessing (numpy + Pillow only, no torch).

Training (on tensors), ``run``, ``check``, the ONNX metadata and the non-Python consumers all follow it:

1. decode; apply the EXIF orientation;
2. colour ``grayscale``: gray in float, no rounding: ``0.299 R + 0.587 G + 0.114 B``; colour ``rgb``: R, G, B in float
   (a gray image repeated to three channels). An alpha channel is composited over black (Fashion-MNIST's
   background); 8-bit values are scaled by 1/255, 16-bit ones by 1/65535;
3. resize to ``height`` x ``width`` with plain bilinear interpolation on half-pixel centres, no antialiasing
   (``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``, ONNX ``Resize`` linear/half_pixel;
   source coordinates below 0 clamp to 0, indices past the edge clamp to the last pixel);
4. normalise ``(x - mean) / std`` per channel; layout NCHW, float32.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vggdeploy.errors import DataError

FASHION_MNIST_MEAN = 0.2860  # of the 60,000 training images scaled to [0, 1]


FASHION_MNIST_STD = 0.3530


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion but without its rounding


DEFAULT_MAX_PIXELS = 50_000_000  # larger images are refused as possible decompression bombs


SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


COLORS = ("grayscale", "rgb")


@dataclass(frozen=True)
class PreprocessSpec:
    """The numbers of the preprocessing; serialised into the ONNX metadata."""

    height: int = 224
    width: int = 224
    mean: tuple[float, ...] = (FASHION_MNIST_MEAN,)  # one per channel
    std: tuple[float, ...] = (FASHION_MNIST_STD,)
    color: str = "grayscale"  # or "rgb"

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise DataError(f"unknown preprocessing colour {self.color!r} (valid: {', '.join(COLORS)})")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"{self.color} preprocessing needs {self.channels} means and stds")
        numbers = [*self.mean, *self.std]
        if not all(isinstance(x, int | float) and math.isfinite(x) for x in numbers) or min(self.std) <= 0:
            raise DataError(  # a std of 0 made every input infinite, reported as the model's NaN output
                f"the preprocessing's mean {list(self.mean)} and std {list(self.std)} must be finite numbers, every "
                "std above 0"
            )

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    def to_metadata(self) -> dict:
        conversion = (
            {
                "grayscale": "0.299*R + 0.587*G + 0.114*B in float, no rounding; alpha composited over black",
                "luma_weights": list(LUMA_WEIGHTS),
            }
            if self.color == "grayscale"
            else {"rgb": "R, G, B in float; a gray image repeated to 3 channels; alpha composited over black"}
        )
        return {
            "decode": {
                "orientation": (
                    "EXIF orientation (tag 0x0112) applied first: JPEG, TIFF, WebP, and a PNG's eXIf chunk; "
                    "malformed EXIF ignored"
                ),
                "frames": "the first frame of an animated or multi-page file",
                "float_pixels": "refused (no agreed scale)",
            },
            "color": self.color,
            **conversion,
            "alpha": "composite_over_black",
            "scale": 1 / 255,
            "scale_16bit": 1 / 65535,
            "resize": {
                "method": "bilinear",
                "coordinate_transformation": "half_pixel",
                "antialias": False,
                "height": self.height,
                "width": self.width,
            },
            "order": [self.color, "scale", "resize", "normalize"],
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": "NCHW",
            "dtype": "float32",
        }

    @classmethod
    def from_metadata(cls, values: dict) -> PreprocessSpec:
        """The spec a model's ``preprocessing`` metadata describes; what this code would do otherwise (another resize
        method, luma weighting, scale, order, alpha rule or layout) is refused, not ignored. A field an older export
        lacks means today's value."""
        if not isinstance(values, dict):
            raise DataError(f"the model's preprocessing metadata is not a JSON object: {values!r:.80}")
        color = values.get("color") if values.get("color") in COLORS else "grayscale"
        channels = 3 if color == "rgb" else 1
        today = cls(mean=(0.0,) * channels, std=(1.0,) * channels, color=color).to_metadata()
        resize = values.get("resize") if isinstance(values.get("resize"), dict) else {}
        fields = [
            (f"resize {key}", resize.get(key, value), value)
            for key, value in today["resize"].items()
            if key not in ("height", "width")  # the model's own numbers
        ]
        rules = ("alpha", "layout", "dtype", "scale", "scale_16bit", "order", "luma_weights")
        fields += [(key, values.get(key, today[key]), today[key]) for key in rules if key in today]
        for what, found, expected in fields:
            if found != expected:
                raise DataError(f"unsupported preprocessing: {what} {found!r} (this code does {expected!r})")
        try:
            return cls(
                values["resize"]["height"],
                values["resize"]["width"],
                tuple(values["mean"]),
                tuple(values["std"]),
                values.get("color", "grayscale"),
            )
        except (KeyError, IndexError, TypeError) as error:
            raise DataError(f"the model's preprocessing metadata is incomplete: missing {error}") from None


def decode_grayscale(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file (any format and mode Pillow reads) to a float32 HxW array in [0, 1]."""
    return decode_image(source, "grayscale", max_pixels)


def decode_image(source: str | Path | bytes, color: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file (any format and mode Pillow reads) to float32 in [0, 1]: HxW for ``grayscale``, 3xHxW
    for ``rgb``."""
    name = "image bytes" if isinstance(source, bytes) else str(source)
    try:
        with _only_our_pixel_limit(), Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > max_pixels:
                raise DataError(
                    f"{name}: {image.width}x{image.height} pixels is over the limit of {max_pixels:,} "
                    "(possible decompression bomb; raise --max-pixels to allow it)"
                )
            if image.mode == "F":
                raise DataError(
                    f"{name}: 32-bit float pixels have no agreed scale (0-1 or 0-255); save it as 8- or 16-bit"
                )
            image.load()
            if image.mode == "I" and not _within_16_bits(image):
                raise DataError(
                    f"{name}: 32-bit integer pixels outside 0-65535 have no agreed scale; save it as 8- or 16-bit"
                )
            image = _upright(image)
            return _to_grayscale(image) if color == "grayscale" else _to_rgb(image)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if (
            isinstance(error, OSError) and error.errno is not None
        ):  # the system's failure (permission, I/O), not Pillow's
            raise DataError(f"{name}: cannot read the file ({error.strerror})") from None
        raise DataError(f"{name}: truncated or corrupt image ({error})") from None


def _within_16_bits(image: Image.Image) -> bool:
    """Whether a 32-bit integer image (mode I) holds 16-bit values only, as a 16-bit PNG read by older Pillow does."""
    low, high = image.getextrema()
    return low >= 0 and high <= 65535


def _upright(image: Image.Image) -> Image.Image:
    """The EXIF orientation applied: from a JPEG, TIFF or WebP's EXIF, and from a PNG's eXIf chunk only (Pillow would
    also take EXIF from PNG text chunks, an old ImageMagick habit that the other consumers do not read)."""
    if image.format == "PNG" and ("exif" not in image.info or "exif" in image.text):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, struct.error, OSError):
        return image  # malformed EXIF says nothing about the pixels: as stored, as libpng, libvips and browsers read it


@contextmanager
def _only_our_pixel_limit() -> Iterator[None]:
    """Pillow's own bomb check off while a header is read (``max_pixels`` is the one limit), and back afterwards."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _to_grayscale(image: Image.Image) -> np.ndarray:
    if image.mode in SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if image.mode == "L":
        return np.asarray(image, dtype=np.float32) / 255.0
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    rgba = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32)
    gray = rgba[..., :3] @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    if has_alpha:
        gray = gray * (rgba[..., 3] / 255.0)
    return gray / 255.0


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "L":
        return np.repeat(_to_grayscale(image)[None], 3, axis=0)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    rgba = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32)
    rgb = rgba[..., :3]
    if has_alpha:
        rgb = rgb * (rgba[..., 3:] / 255.0)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)) / 255.0


def has_color(rgb: np.ndarray, tolerance: float = 1.5 / 255) -> bool:
    """Whether a decoded 3xHxW image is coloured (its channels differ), not gray stored as RGB."""
    return bool(np.abs(rgb[0] - rgb[1]).max() > tolerance or np.abs(rgb[1] - rgb[2]).max() > tolerance)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of 1-D bilinear interpolation on half-pixel centres, no antialiasing."""
    source = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    fraction = np.clip(source - lower, 0.0, 1.0)
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lower), 1.0 - fraction)
    np.add.at(weights, (rows, upper), fraction)
    return weights.astype(np.float32)


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (..., H, W) float32 arrays; the same function as ``F.interpolate`` bilinear, half-pixel."""
    in_height, in_width = images.shape[-2:]
    if (in_height, in_width) == (height, width):
        return images.astype(np.float32, copy=False)
    return bilinear_matrix(in_height, height) @ images.astype(np.float32) @ bilinear_matrix(in_width, width).T


def to_model_input(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Decoded [0, 1] arrays of any sizes (HxW gray, or CxHxW) -> one normalised (N, C, H, W) float32 batch."""
    resized = [resize_bilinear(image, spec.height, spec.width) for image in images]
    batch = np.stack([image if image.ndim == 3 else image[None] for image in resized])
    mean = np.asarray(spec.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[None, :, None, None]
    return ((batch - mean) / std).astype(np.float32)
