"""Decode, check, resize and re-encode downloaded images.

Resizing follows img2dataset's semantics exactly (modes ``no``, ``keep_ratio``, ``center_crop``,
``border``, ``keep_ratio_largest``; output sizes rounded as its albumentations transforms do, white padding, alpha
composited on white), so recipes mean what img2dataset users expect, and a test checks our sizes
against img2dataset's own ``Resizer``.  We do not call that ``Resizer``: it decodes with OpenCV
from bytes, with no JPEG draft mode (decoding a 4000 px JPEG at 1/8 scale is several times
faster) and no decompression-bomb guard before the pixels are allocated, and it needs
albumentations at run time.  One Pillow decode serves the checks, the hashes and the resize.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import apache_beam as beam
import numpy as np
from PIL import Image, ImageOps

from ..filters import image as image_filter
from ..recipe import ImageConfig
from ..records import Sample
from ..stage import apply_with_drops, drop
from . import perceptual

__all__ = [
    "ProcessImages",
    "process_image",
    "ProcessedImage",
    "ImageRejected",
    "target_size",
    "decode",
    "resize",
    "encode",
]

STAGE = "image"
WHITE = (255, 255, 255)
_ORIENTATION = 0x0112  # EXIF tag


class ImageRejected(Exception):
    """An image the stage will not keep: ``reason`` is the index's token; ``size`` the original
    (width, height) when the header told it, recorded in the index like a kept image's."""

    def __init__(self, reason: str, detail: str = "", size: Optional[Tuple[int, int]] = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.size = size


@dataclass
class ProcessedImage:
    data: bytes
    format: str  # "jpg" | "png"
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str
    phash: str
    phash_variants: Tuple[str, ...] = ()  # pHashes of its mirrored/cropped/rotated copies (near-dup)
    phash_checks: Tuple[str, ...] = ()  # the check hash of the pHash, then of each variant (near-dup)


def target_size(width: int, height: int, cfg: ImageConfig) -> Tuple[int, int]:
    """The size img2dataset's resizer scales to, before any crop or border."""
    if cfg.resize_mode == "no":
        return width, height
    # keep_ratio / center_crop scale the short side to image_size; border / keep_ratio_largest the long one.
    side = min(width, height) if cfg.resize_mode in ("keep_ratio", "center_crop") else max(width, height)
    if cfg.resize_only_if_bigger and side <= cfg.image_size:
        return width, height
    scale = cfg.image_size / side
    return max(1, round(width * scale)), max(1, round(height * scale))


def rule_detail(reason: str, width: int, height: int, cfg: ImageConfig) -> str:
    """The size an image stage drop saw and the rule of ``cfg`` (section ``image``) that decided it:
    "48x40: a side under image.min_side 150"."""
    size = f"{width}x{height}"
    if reason == "too_small":
        return f"{size}: a side under image.min_side {cfg.min_side}"
    if reason == "bad_aspect_ratio":
        if min(width, height) <= 0:
            return f"{size}: a side of 0 pixels has no aspect ratio (image.max_aspect_ratio {cfg.max_aspect_ratio:g})"
        ratio = max(width, height) / min(width, height)
        return f"{size}: aspect ratio {ratio:.2f} > image.max_aspect_ratio {cfg.max_aspect_ratio:g}"
    if reason == "decompression_bomb":
        return f"{size}: {width * height} pixels > image.max_pixels {cfg.max_pixels}"
    return f"{size}: {reason}"


# The stage enforces image.max_pixels itself, from the header, before anything is decoded (_open).
# Pillow's own check is off: it signals through a warning, and turning that warning into an error
# (warnings.catch_warnings) changes the filters of the whole process, which every download thread
# shares; one thread's filter then decided another thread's image (the same bomb dropped as
# decompression_bomb or as not_an_image from run to run).
Image.MAX_IMAGE_PIXELS = None


def _open(data: bytes, cfg: ImageConfig) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression_bomb", str(e)) from e
    except Exception as e:  # UnidentifiedImageError and friends: the bytes are not an image
        # not str(e): Pillow's message names the BytesIO's memory address, which would make the
        # index differ from run to run; the first bytes say more about what came instead
        raise ImageRejected("not_an_image", f"{type(e).__name__}: the bytes begin {data[:16]!r}") from e
    if img.width * img.height > cfg.max_pixels:
        raise ImageRejected("decompression_bomb", rule_detail("decompression_bomb", *img.size, cfg), size=img.size)
    return img


# JPEG draft decoding (libjpeg's DCT-domain scaling by 1/2, 1/4 or 1/8) makes a large photo several
# times cheaper to decode, but the scaled IDCT is a crude filter: drafted down to about the target
# size, the picture is already aliased and no last resize can undo it (224 px outputs 32.5 dB
# median PSNR against a full decode + Lanczos, img2dataset's full decode + area filter 35.2 dB).
# So the draft stops at DRAFT_OVERSAMPLE times the target size and the last reduction, by a factor
# of at least 2 where the photo is that large, is a true antialiasing filter (SHRINK_FILTER, the
# cheapest of Pillow's that kept median and 10th-percentile PSNR above img2dataset's; Lanczos
# scores higher still for about 10-30% more CPU): benchmarks/image_quality.py measures each
# choice (docs/benchmarks.md).
DRAFT_OVERSAMPLE: float = 2
SHRINK_FILTER = Image.Resampling.BICUBIC
# Pillow's ``reducing_gap`` for the shrink: a shrink by 3x or more first averages 2x2 (or larger)
# blocks (``Image.reduce``, a cheap integer box), down to at least 1.5x the target, and resamples
# only that last step with SHRINK_FILTER. The cost of the antialiasing filter grows with the source
# size, and after the draft most shrinks are by 2-4x: on the steady-state benchmark's photographs
# this saves about 0.7 ms of ~7 ms an image, and on image_quality.py's large photos 0.6-0.7 ms,
# for 0.1-0.3 dB of PSNR there (0.65 dB or more above img2dataset's median and 10th percentile;
# unchanged over all photos). None resamples the whole way with SHRINK_FILTER.
REDUCING_GAP: Optional[float] = 1.5
# Numbers the decode and resize's pixels (1: draft to about the target, box shrink; 2: draft to 2x
# the target, bicubic shrink; 3: that with REDUCING_GAP 1.5): part of the image store's digest, so
# stored images of another version are not mixed into a build.
PIXELS_VERSION = 3

# Greyscale modes of more than 8 bits (16-bit PNGs and TIFFs, 32-bit integer and float TIFFs):
# Pillow's convert("RGB") clips their values to 255, so a 16-bit picture would come out white.
_HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """A high-bit-depth greyscale picture as 8-bit "L", scaled rather than clipped: 16-bit
    ranges by 1/257; 32-bit integers by their own range when it passes 16 bits; floats in [0, 1]
    (the usual convention) by 255, other floats clipped to [0, 255]."""
    values = np.asarray(img, dtype=np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if img.mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0
    elif img.mode.startswith("I;16") or top > 255:
        scale = 255.0 / (65535.0 if top <= 65535 else top)
    else:  # "I" holding 8-bit values
        scale = 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode Pillow decodes as 8-bit RGB that shows the same picture: transparency over white,
    high bit depths scaled, premultiplied alpha undone."""
    if img.mode in _HIGH_DEPTH:
        return _to_8bit_grey(img).convert("RGB")
    if img.mode in ("RGBa", "La"):  # premultiplied alpha: Pillow undoes it going to RGBA / LA
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def decode(data: bytes, cfg: ImageConfig) -> Tuple[Image.Image, int, int]:
    """Bytes -> RGB image (possibly JPEG-draft reduced) and the original size; checks the filters."""
    img = _open(data, cfg)
    width, height = img.size
    for reason in (
        image_filter.min_side(width, height, cfg.min_side),
        image_filter.aspect_ratio(width, height, cfg.max_aspect_ratio),
    ):
        if reason:
            raise ImageRejected(reason, rule_detail(reason, width, height, cfg), size=(width, height))
    rotated = "exif" in img.info and img.getexif().get(_ORIENTATION) in (5, 6, 7, 8)
    if rotated:  # the image is shown (and measured) transposed
        width, height = height, width
    if img.format == "JPEG":
        w, h = target_size(width, height, cfg)
        w, h = math.ceil(w * DRAFT_OVERSAMPLE), math.ceil(h * DRAFT_OVERSAMPLE)
        img.draft("RGB", (h, w) if rotated else (w, h))
    try:
        img.load()
        if "exif" in img.info:
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img), width, height
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression_bomb", str(e)) from e
    except Exception as e:
        raise ImageRejected("decode_error", str(e)[:200]) from e


def resize(img: Image.Image, original: Tuple[int, int], cfg: ImageConfig) -> Image.Image:
    """img2dataset's resize modes with Pillow (area filter to shrink, Lanczos to enlarge)."""
    size = target_size(*original, cfg)
    if cfg.resize_only_if_bigger and size == tuple(original):
        return img  # img2dataset neither crops nor pads an image it does not resize
    if cfg.resize_mode == "center_crop":
        return _center_crop(img, size, cfg.image_size)
    img = _scale(img, size)
    n = cfg.image_size
    if cfg.resize_mode == "border" and (img.width < n or img.height < n):
        canvas = Image.new("RGB", (max(n, img.width), max(n, img.height)), WHITE)
        canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
        img = canvas
    return img


def _filter(size: Tuple[int, int], source: Tuple[int, int]) -> Image.Resampling:
    return SHRINK_FILTER if size[0] * size[1] < source[0] * source[1] else Image.Resampling.LANCZOS


def _scale(img: Image.Image, size: Tuple[int, int]) -> Image.Image:
    return img if size == img.size else img.resize(size, _filter(size, img.size), reducing_gap=REDUCING_GAP)


def _center_crop(img: Image.Image, size: Tuple[int, int], n: int) -> Image.Image:
    """Scale to ``size``, then keep the centred ``n`` x ``n`` (or less) window: done as one resize
    of the matching source box (Pillow's ``box`` argument), which gives the same pixels as the
    scale-then-crop, up to the rounding of a value at a half (checked by a test), without
    resampling the columns or rows that are cut."""
    w, h = min(n, size[0]), min(n, size[1])
    if (w, h) == size:
        return _scale(img, size)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    sx, sy = img.width / size[0], img.height / size[1]
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return img.resize((w, h), _filter(size, img.size), box=box, reducing_gap=REDUCING_GAP)


def encode(img: Image.Image, cfg: ImageConfig) -> bytes:
    buf = io.BytesIO()
    if cfg.encode_format == "jpg":
        img.save(buf, format="JPEG", quality=cfg.encode_quality)
    else:
        img.save(buf, format="PNG", compress_level=min(9, max(0, cfg.encode_quality // 10)))
    return buf.getvalue()


def process_image(data: bytes, cfg: ImageConfig) -> ProcessedImage:
    """The whole image stage on one image; raises ImageRejected with a reason token."""
    if not data:
        raise ImageRejected("empty_body", "0 bytes: there is no image to decode")
    img, width, height = decode(data, cfg)
    phash, variants, checks = perceptual.hashes_with_checks(img)
    out = resize(img, (width, height), cfg)
    encoded = encode(out, cfg)
    reason = image_filter.encoded_size(len(encoded), cfg.min_encoded_bytes)
    if reason:
        detail = f"{len(encoded)} bytes re-encoded < image.min_encoded_bytes {cfg.min_encoded_bytes}"
        raise ImageRejected(reason, detail, size=(width, height))
    return ProcessedImage(
        encoded,
        cfg.encode_format,
        out.width,
        out.height,
        width,
        height,
        hashlib.sha256(encoded).hexdigest(),
        phash,
        variants,
        checks,
    )


class _ProcessImage(beam.DoFn):
    def __init__(self, cfg: ImageConfig):
        self.cfg = cfg

    def process(self, s: Sample):
        try:
            p = process_image(s.image_bytes, self.cfg)
        except ImageRejected as e:
            if e.size is not None:
                s = s.replace(original_width=e.size[0], original_height=e.size[1])
            yield drop(s, e.reason, STAGE, detail=e.detail)
            return
        except Exception as e:  # an image that breaks the decoder must not break the build
            yield drop(s, "decode_error", STAGE, detail=f"{type(e).__name__}: {e}"[:200])
            return
        yield s.replace(
            image_bytes=p.data,
            image_format=p.format,
            width=p.width,
            height=p.height,
            original_width=p.original_width,
            original_height=p.original_height,
            sha256=p.sha256,
            phash=p.phash,
            phash_variants=p.phash_variants,
            phash_checks=p.phash_checks,
        )


class ProcessImages(beam.PTransform):
    """Decode, check size and aspect ratio, resize, re-encode, hash."""

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        return apply_with_drops(samples, "Decode, resize and encode", _ProcessImage(self.cfg))
