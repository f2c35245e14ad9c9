"""Decode one image file into the RGB PIL image a person sees, or say in plain words why not.

Real collections hold truncated JPEGs, zero-byte files, PNGs with alpha, CMYK, 16-bit
greyscale, animated GIFs, decompression bombs, sideways phone photos (EXIF orientation)
and things that are not image files at all (directories, FIFOs, broken links). Everything
here either returns an 8-bit RGB image, upright as a viewer shows it, or raises BadImage
with a reason a person understands.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# PIL's own default (about 89M pixels); above it we refuse instead of allocating gigabytes.
DEFAULT_MAX_PIXELS = 89_478_485

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")

_ORIENTATION = 0x0112


class BadImage(Exception):
    """An image that cannot be used; str(e) is the reason recorded in `rejected`."""


@dataclass(frozen=True)
class ResizeRule:
    """How the model's preprocessing resizes an image before it crops, read from its transform.

    The cost of an image is not its file's pixel count: open_clip's default resize scales
    the short side to the model input, so a 200000x1 strip (667 bytes as a PNG) becomes
    44.8M x 224 pixels. The pixel limit is checked on this resized size too.
    """

    kind: str                   # "shortest" (torchvision Resize(int)), "squash" (Resize((h, w))), "keep-ratio"
    size: tuple[int, int]       # target (h, w)
    max_size: int | None = None  # torchvision's cap on the long side
    longest: float = 0.0        # open_clip ResizeKeepRatio: 0 = fit the short side, 1 = the long side

    def output_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) of a w x h image after the resize step."""
        if self.kind == "squash":
            return self.size[1], self.size[0]
        if self.kind == "keep-ratio":
            from open_clip.transform import ResizeKeepRatio

            nh, nw = ResizeKeepRatio.get_params(SimpleNamespace(size=(w, h)), self.size, self.longest)
            return int(nw), int(nh)
        # torchvision's rule for Resize(int): the short side to `size`, the long side scaled (floored)
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size[0], int(self.size[0] * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def describe(self) -> str:
        if self.kind == "squash":
            return f"squashed to {self.size[1]}x{self.size[0]}"
        if self.kind == "keep-ratio":
            return f"scaled to fit {self.size[1]}x{self.size[0]} ({'long' if self.longest >= 0.5 else 'short'} side)"
        return f"short side to {self.size[0]}"


def resize_rule(preprocess, image_size: int) -> ResizeRule:
    """The first resize step of an open_clip preprocess (a torchvision Compose).

    A transform we do not recognise falls back to open_clip's default rule (short side to
    the model's input side), the one that upscales thin images the most.
    """
    from torchvision.transforms import Resize

    try:
        from open_clip.transform import ResizeKeepRatio
    except ImportError:  # pragma: no cover - open_clip is a dependency
        ResizeKeepRatio = ()  # noqa: N806
    for t in getattr(preprocess, "transforms", [preprocess]):
        if isinstance(t, Resize):
            size = [t.size] if isinstance(t.size, int) else list(t.size)
            if len(size) == 1:
                return ResizeRule("shortest", (int(size[0]), int(size[0])), t.max_size)
            return ResizeRule("squash", (int(size[0]), int(size[1])))
        if ResizeKeepRatio and isinstance(t, ResizeKeepRatio):
            return ResizeRule("keep-ratio", (int(t.size[0]), int(t.size[1])), longest=float(t.longest))
    return ResizeRule("shortest", (image_size, image_size))


def open_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, resize: ResizeRule | None = None,
             draft: bool = False) -> Image.Image:
    """Open `path` as an 8-bit RGB image with its EXIF orientation applied.

    `resize`: the model's resize rule; an image whose resized size exceeds `max_pixels`
    (extreme aspect ratios) is refused before any pixel is decoded.
    `draft`: for JPEGs at least twice the resized size, let the decoder scale down while
    decoding (DCT scaling). Several times faster, but the pixels differ from a full decode
    followed by the model's resize, so the vectors differ slightly (README: --draft-decode).
    """
    f = _open_file(path)
    with f:
        return _decode(f, max_pixels, resize, draft)


# Plain words for the errors a file system gives; the rest get the system's own message.
_OS_REASONS = {
    errno.ENOENT: "file not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EISDIR: "is a directory, not an image file",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "I/O error while reading the file (disk or network file system)",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.ESTALE: "stale network file handle",
}


def os_reason(e: OSError, path: str | None = None) -> str:
    """A user-facing reason for an OSError from opening or reading a file."""
    if e.errno == errno.ENOENT and path is not None and os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symbolic link (its target {target} does not exist)"
    reason = _OS_REASONS.get(e.errno or -1)
    if reason:
        return reason
    return f"cannot read file: {e.strerror or e}"


_NOT_REGULAR = ((stat.S_ISDIR, "is a directory, not an image file"),
                (stat.S_ISFIFO, "not a regular file (a named pipe, FIFO)"),
                (stat.S_ISSOCK, "not a regular file (a socket)"),
                (stat.S_ISCHR, "not a regular file (a character device)"),
                (stat.S_ISBLK, "not a regular file (a block device)"))


def _open_file(path: str):
    """Open for reading without ever blocking: a FIFO named x.jpg would wait for a writer forever.

    O_NONBLOCK makes opening a FIFO return at once; fstat on the open descriptor then
    tells what it is, with no window between a check and the open.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise BadImage(os_reason(e, path)) from None
    try:
        st = os.fstat(fd)
        for is_kind, reason in _NOT_REGULAR:
            if is_kind(st.st_mode):
                raise BadImage(reason)
        if st.st_size == 0:
            raise BadImage("empty file (0 bytes)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1 when absent or unreadable: bad metadata is no reason to drop a photo."""
    try:
        o = im.getexif().get(_ORIENTATION, 1)
        return int(o) if int(o) in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - malformed EXIF blocks of every kind
        return 1


def _decode(f, max_pixels: int, resize: ResizeRule | None, draft: bool) -> Image.Image:
    with _checked(f, max_pixels, resize) as (im, out):
        if getattr(im, "is_animated", False):
            im.seek(0)  # the first frame stands for an animation
        w, h = im.size
        if draft and out is not None and im.format == "JPEG" and w >= 2 * out[0] and h >= 2 * out[1]:
            im.draft("RGB", out)
        im.load()
        # After load: Pillow applies a TIFF's orientation itself while loading and drops the tag.
        if _orientation(im) != 1:
            im = ImageOps.exif_transpose(im)
        return to_rgb(im)


def decode_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, resize: ResizeRule | None = None) -> Image.Image:
    """open_rgb for a file already read into memory (the GPU path's fallback): the same image or reason."""
    return _decode(io.BytesIO(data), max_pixels, resize, False)


@dataclass(frozen=True)
class JpegFile:
    """A JPEG that passed the header checks, for a decoder elsewhere (`--decode gpu`)."""

    data: bytes
    orientation: int            # EXIF orientation, 1..8, applied after decoding
    size: tuple[int, int]       # (width, height) as stored, before the orientation


def read_jpeg(path: str, max_pixels: int = DEFAULT_MAX_PIXELS,
              resize: ResizeRule | None = None) -> JpegFile | bytes:
    """The file's bytes after the checks open_rgb makes before decoding (from the header alone).

    A plain baseline or progressive JPEG (RGB or greyscale, ending in its end-of-image
    marker) comes back as a JpegFile; anything else (another format, CMYK, a JPEG that does not
    end where it should) as the raw bytes, for decode_bytes: a file the GPU decoder might read
    differently from Pillow is decoded by Pillow. Bad files raise BadImage with open_rgb's reason.
    """
    f = _open_file(path)
    with f:
        try:
            data = f.read()
        except OSError as e:
            raise BadImage(os_reason(e)) from None
    with _checked(io.BytesIO(data), max_pixels, resize) as (im, _out):
        # Pillow's CMYK conversion, truncated files (Pillow refuses them, a GPU decoder may
        # fill them with grey) and MPO's extra frames stay with Pillow.
        if im.format != "JPEG" or im.mode not in ("RGB", "L") or not _ends_with_eoi(data):
            return data
        return JpegFile(data, _orientation(im), im.size)


def _ends_with_eoi(data: bytes) -> bool:
    """Whether the JPEG ends in its end-of-image marker (FF D9), allowing trailing padding."""
    return data[-64:].rstrip(b"\0 \t\r\n").endswith(b"\xff\xd9")


@contextlib.contextmanager
def _checked(f, max_pixels: int, resize: ResizeRule | None) -> Iterator[tuple[Image.Image, tuple[int, int] | None]]:
    """The image opened lazily (header only) and checked; any failure inside becomes a BadImage.

    Yields (image, its size after the model's resize or None); nothing is decoded here.
    """
    # Truncated files must fail, not decode as grey padding.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Our own size check (below, before any pixel is decoded) replaces Pillow's, so the
    # reason names the image's size and the limit the user set.
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(f)
            Image.MAX_IMAGE_PIXELS = pil_limit
            w, h = im.size
            if w == 0 or h == 0:
                raise BadImage(f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise BadImage(f"image too large ({w}x{h} = {w * h / 1e6:.0f}M pixels, limit {max_pixels / 1e6:.0f}M)")
            out = None
            if resize is not None:
                # Either orientation: the transpose comes after this check, and for some
                # formats (TIFF) Pillow has already applied it to the reported size.
                out = max((resize.output_size(w, h), resize.output_size(h, w)), key=lambda s: s[0] * s[1])
                if out[0] * out[1] > max_pixels:
                    ratio = max(w, h) / min(w, h)
                    raise BadImage(
                        f"extreme aspect ratio ({w}x{h}, {ratio:.0f}:1): the model's resize ({resize.describe()}) "
                        f"would make it {out[0]}x{out[1]} = {out[0] * out[1] / 1e6:.0f}M pixels, "
                        f"limit {max_pixels / 1e6:.0f}M")
            yield im, out
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"image too large (decompression bomb guard: {e})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image, or an image format Pillow cannot read") from None
    except OSError as e:
        if e.errno is not None:  # the file system failed, not the image data
            raise BadImage(os_reason(e)) from None
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
