"""Decode one image file into an RGB PIL image, or say in plain words why not.

Real collections hold truncated JPEGs, zero-byte files, PNGs with alpha, CMYK, 16-bit
greyscale, animated GIFs and decompression bombs. Everything here either returns an
8-bit RGB image or raises BadImage with a reason a person understands.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# PIL's own default (about 89M pixels); above it we refuse instead of allocating gigabytes.
DEFAULT_MAX_PIXELS = 89_478_485

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


class BadImage(Exception):
    """An image that cannot be used; str(e) is the reason recorded in `rejected`."""


def open_rgb(path: str, target_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `path` as an 8-bit RGB image.

    `target_size`: the model's input side. For JPEGs at least twice that size, the
    decoder is asked for a reduced-scale decode (DCT scaling), which cuts decode time
    several-fold; smaller files decode in full so their pixels match a plain decode.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except OSError as e:
        raise BadImage(f"cannot read file: {e.strerror or e}") from None
    if size == 0:
        raise BadImage("empty file (0 bytes)")

    # Truncated files must fail, not decode as grey padding.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Our own size check (below, before any pixel is decoded) replaces Pillow's, so the
    # reason names the image's size and the limit the user set.
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            Image.MAX_IMAGE_PIXELS = pil_limit
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(f"image too large ({w}x{h} = {w * h / 1e6:.0f}M pixels, limit {max_pixels / 1e6:.0f}M)")
            if w == 0 or h == 0:
                raise BadImage(f"image has no pixels ({w}x{h})")
            if getattr(im, "is_animated", False):
                im.seek(0)  # the first frame stands for an animation
            if target_size and im.format == "JPEG" and min(w, h) >= 2 * target_size:
                im.draft("RGB", (target_size, target_size))
            im.load()
            return to_rgb(im)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"image too large (decompression bomb guard: {e})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image, or an image format Pillow cannot read") from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg:
            raise BadImage("truncated or corrupt image data (file ends early)") from None
        raise BadImage(f"corrupt image: {msg}") from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise BadImage(f"corrupt image: {type(e).__name__}: {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha over white, 16-bit scaled down, CMYK converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        g = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")
