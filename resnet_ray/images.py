"""Image decoding and the one preprocessing every path shares (import, predict, serve, train).

Any size, mode (RGBA, grayscale, palette, CMYK, 16-bit) or EXIF orientation in; an RGB uint8
array of the model's input size out. Pixels become model input only through `to_model_input`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

# Decoding a small file that claims huge dimensions can take gigabytes (a decompression
# bomb); 40 megapixels is more than any phone photo and far below that.
MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageError(DataError):
    """An image could not be decoded; the message says which and why."""


def decode_image(data: bytes | Path | str, size: tuple[int, int] = (64, 64),
                 source: str | None = None) -> np.ndarray:
    """Decode an image file or bytes to an RGB uint8 array of shape (height, width, 3)."""
    name = source or (str(data) if not isinstance(data, bytes) else "image")
    if isinstance(data, bytes) and not data:
        raise ImageError(f"{name}: empty, expected image bytes (JPEG, PNG, ...)")
    fp = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"{name}: {width}x{height} pixels is over the limit of "
                                     f"{MAX_PIXELS:,} pixels; expected a photo of normal size")
                img.seek(0)  # first frame of an animation
                img = ImageOps.exif_transpose(img)
                img = _to_rgb(img)
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=3.0)
                return np.asarray(img, dtype=np.uint8).copy()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, expected an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: claims more pixels than the limit of {MAX_PIXELS:,} "
                         "(a decompression bomb?); expected a photo of normal size") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (expected JPEG, PNG, BMP, GIF, WebP "
                         "or TIFF)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clip.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size and arr.max() > 0 else 1.0
        img = Image.fromarray((arr / top * 255.0).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels go white, as the photo would look on a page.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels 0-255 -> float32 in [0, 1], the recipe's normalisation."""
    return np.asarray(images, dtype=np.float32) / 255.0
