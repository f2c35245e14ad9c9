"""JPEG decoding on the model's device (`build-index --decode gpu`).

A decode-bound GPU run cannot reach the model's rate with Pillow in the loader workers,
so the work is split: the workers read each file and make the checks the CPU path makes
from the header alone (size, pixel limit, the model's resize, EXIF orientation:
images.read_jpeg), and the main process decodes whole batches with torchvision's
`decode_jpeg` on the device, then applies the orientation, the model's resize, the centre
crop and the normalisation there. What the device decoder might read differently from
Pillow (not a JPEG, CMYK, a file not ending in its end-of-image marker) is decoded by Pillow
in the worker as on the CPU path, and a file the device decoder refuses is decoded by
Pillow in the main process: the same image, or the same rejection reason, as `--decode cpu`.

The geometry follows Pillow's: the resize runs as two one-axis passes (width, then height)
each rounded to 8 bits, which is what Pillow does for an 8-bit image; a single 2-D resize in
float differs from it by up to ~20 levels at sharp edges, the two passes by at most one level
on ~0.02% of the pixels (Pillow's fixed-point filter weights). The same code runs with
device='cpu' (torchvision's CPU decoder), which is how it is tested without a GPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from .images import BadImage, JpegFile, ResizeRule, decode_bytes, resize_rule

if TYPE_CHECKING:
    import torch

# torchvision.transforms.InterpolationMode values the device resize reproduces
_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}


class UnsupportedPreprocess(InputError):
    """The model's preprocessing has a step the device path does not reproduce."""


@dataclass(frozen=True)
class Plan:
    """The model's preprocessing as the device path runs it: resize, centre crop, normalise."""

    resize: ResizeRule
    mode: str                                   # bicubic or bilinear
    crop: tuple[int, int]                       # (h, w)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def plan_of(preprocess, image_size: int) -> Plan:
    """Read an open_clip preprocess (Resize, CenterCrop, RGB conversion, ToTensor, Normalize).

    Raises UnsupportedPreprocess naming the step otherwise: the device path must compute
    what the CPU path computes, or not run.
    """
    from torchvision.transforms import CenterCrop, Normalize, Resize, ToTensor

    try:
        from open_clip.transform import ResizeKeepRatio
    except ImportError:  # pragma: no cover - open_clip is a dependency
        ResizeKeepRatio = ()  # noqa: N806
    mode = crop = mean = std = None
    for t in getattr(preprocess, "transforms", [preprocess]):
        name = type(t).__name__
        if isinstance(t, Resize) or (ResizeKeepRatio and isinstance(t, ResizeKeepRatio)):
            interp = getattr(t.interpolation, "value", str(t.interpolation))
            if interp not in _MODES or getattr(t, "antialias", True) is False:
                raise UnsupportedPreprocess(f"--decode gpu: the model resizes with {interp} interpolation"
                                            f"{'' if getattr(t, 'antialias', True) else ' without antialiasing'}; "
                                            "the device path reproduces bicubic and bilinear only (use --decode cpu)")
            mode = _MODES[interp]
        elif isinstance(t, CenterCrop):
            crop = tuple(int(v) for v in t.size)
        elif isinstance(t, Normalize):
            mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
        elif isinstance(t, ToTensor) or name in ("MaybeToTensor", "MaybeConvertMode") or \
                getattr(t, "__name__", "") == "_convert_to_rgb":
            continue  # the decoder already gives 8-bit RGB
        else:
            raise UnsupportedPreprocess(f"--decode gpu: the model's preprocessing has a step the device path does "
                                        f"not reproduce ({t!r}); use --decode cpu")
    if mode is None or crop is None or mean is None:
        raise UnsupportedPreprocess("--decode gpu: the model's preprocessing is not a resize, centre crop and "
                                    f"normalisation ({preprocess!r}); use --decode cpu")
    return Plan(resize_rule(preprocess, image_size), mode, crop, mean, std)  # type: ignore[arg-type]


@dataclass
class Pending:
    """A batch as the workers send it: JPEG bytes to decode on the device, or images Pillow already did.

    One uint8 tensor holds all the batch's JPEG bytes (one shared-memory segment per batch,
    not one per image); `spans[i]` is item i's slice of it, or None when `ready` has item i
    preprocessed by the CPU path.
    """

    blob: torch.Tensor
    spans: list[tuple[int, int] | None]
    orientation: list[int]
    ready: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.spans)

    @classmethod
    def collate(cls, payloads: list) -> Pending:
        """Worker side: payloads are JpegFile or a preprocessed tensor, one per item that passed the checks."""
        import torch

        chunks: list[bytes] = []
        spans: list[tuple[int, int] | None] = []
        orient: list[int] = []
        ready: dict[int, torch.Tensor] = {}
        at = 0
        for i, p in enumerate(payloads):
            if isinstance(p, JpegFile):
                chunks.append(p.data)
                spans.append((at, at + len(p.data)))
                orient.append(p.orientation)
                at += len(p.data)
            else:
                spans.append(None)
                orient.append(1)
                ready[i] = p
        blob = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8) if at else torch.zeros(0, dtype=torch.uint8)
        return cls(blob, spans, orient, ready)

    @classmethod
    def cat(cls, parts: list[Pending]) -> Pending:
        """Batches regrouped after a loader worker died (embed._ChunkLoader)."""
        import torch

        spans: list[tuple[int, int] | None] = []
        orient: list[int] = []
        ready: dict[int, torch.Tensor] = {}
        at = n = 0
        for p in parts:
            spans += [None if s is None else (s[0] + at, s[1] + at) for s in p.spans]
            orient += p.orientation
            ready.update({n + i: t for i, t in p.ready.items()})
            at += len(p.blob)
            n += len(p)
        return cls(torch.cat([p.blob for p in parts]), spans, orient, ready)


def reorient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """A [C, H, W] image turned upright as Pillow's ImageOps.exif_transpose does for this EXIF orientation."""
    import torch

    if orientation == 2:    # FLIP_LEFT_RIGHT
        return img.flip(-1)
    if orientation == 3:    # ROTATE_180
        return img.flip(-2, -1)
    if orientation == 4:    # FLIP_TOP_BOTTOM
        return img.flip(-2)
    if orientation == 5:    # TRANSPOSE
        return img.transpose(-2, -1)
    if orientation == 6:    # ROTATE_270 (clockwise)
        return torch.rot90(img, -1, (-2, -1))
    if orientation == 7:    # TRANSVERSE
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:    # ROTATE_90
        return torch.rot90(img, 1, (-2, -1))
    return img


class DeviceDecoder:
    """Main side: Pending batches in, the model's input tensor on `device` out (plus rejections)."""

    def __init__(self, preprocess, image_size: int, device: str, max_pixels: int):
        import torch

        self.plan = plan_of(preprocess, image_size)
        self.preprocess, self.device, self.max_pixels = preprocess, torch.device(device), max_pixels
        self.mean = torch.tensor(self.plan.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(self.plan.std, device=self.device).view(1, 3, 1, 1) * 255.0

    def __call__(self, ids: np.ndarray, batch: Pending) -> tuple[np.ndarray, torch.Tensor | None, list[tuple[int, str]]]:
        """(ids that decoded, their preprocessed images [n, 3, H, W] on the device, (id, reason) rejected)."""
        import torch

        pos = [i for i, s in enumerate(batch.spans) if s is not None]
        datas = [batch.blob[a:b] for a, b in (batch.spans[i] for i in pos)]
        decoded = self._decode(datas)
        out: dict[int, torch.Tensor] = {}
        bad: list[tuple[int, str]] = []
        on_device: list[tuple[int, torch.Tensor]] = []
        for i, img in zip(pos, decoded, strict=True):
            if img is None:  # the device decoder refused it: Pillow decides, as on the CPU path
                a, b = batch.spans[i]  # type: ignore[misc]
                try:
                    out[i] = self.preprocess(decode_bytes(batch.blob[a:b].numpy().tobytes(), self.max_pixels,
                                                          self.plan.resize)).to(self.device)
                except BadImage as e:
                    bad.append((int(ids[i]), str(e)))
                except Exception as e:  # noqa: BLE001 - as the CPU path: one odd file must not stop the run
                    bad.append((int(ids[i]), f"cannot decode: {type(e).__name__}: {e}"))
            else:
                on_device.append((i, reorient(img, batch.orientation[i])))
        for i, x in self._geometry(on_device):
            out[i] = x
        for i, t in batch.ready.items():
            out[i] = t.to(self.device, non_blocking=True)
        keep = sorted(out)
        if not keep:
            return np.zeros(0, np.int64), None, bad
        return ids[keep], torch.stack([out[i] for i in keep]), bad

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Decoded [3, H, W] uint8 images; None for each the decoder refused.

        decode_jpeg gives nothing back for a list with one bad file in it, so a failed batch
        is decoded again one file at a time.
        """
        if not datas:
            return []
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision >= 0.29 warns that its decoders move to torchcodec
            try:
                return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                pass
            one: list[torch.Tensor | None] = []
            for d in datas:
                try:
                    one.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    one.append(None)
            return one

    def _geometry(self, images: list[tuple[int, torch.Tensor]]) -> list[tuple[int, torch.Tensor]]:
        """Resize, centre crop and normalise, batched over images of the same size (a camera's photos)."""
        import torch
        from torchvision.transforms.functional import center_crop

        groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        for i, img in images:
            groups.setdefault(tuple(img.shape[-2:]), []).append((i, img))
        done: list[tuple[int, torch.Tensor]] = []
        for (h, w), members in groups.items():
            x = torch.stack([img for _, img in members]).float()
            ow, oh = self.plan.resize.output_size(w, h)
            x = self._resize(x, oh, ow)
            x = center_crop(x, list(self.plan.crop))
            x = (x - self.mean) / self.std
            done += [(i, x[k]) for k, (i, _) in enumerate(members)]
        return done

    def _resize(self, x: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
        """Pillow's resize of an 8-bit image: width first, then height, each pass rounded to 0..255."""
        from torch.nn.functional import interpolate

        h, w = x.shape[-2:]
        if ow != w:
            x = interpolate(x, size=(h, ow), mode=self.plan.mode, antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255)
        if oh != h:
            x = interpolate(x, size=(oh, ow), mode=self.plan.mode, antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255)
        return x


def check_ready(preprocess, image_size: int, device: str) -> None:
    """Before a `--decode gpu` run starts: the preprocessing is reproducible and the device decodes a JPEG."""
    import io

    import torch
    from PIL import Image

    plan_of(preprocess, image_size)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(buf, "JPEG")
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], mode=ImageReadMode.RGB,
                        device=torch.device(device))
    except (RuntimeError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--decode gpu: torchvision here cannot decode JPEGs on {device} ({msg[:200]}); "
                         "use --decode cpu") from None
