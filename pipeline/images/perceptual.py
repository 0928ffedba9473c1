"""The perceptual hash every stage compares: pHash of the picture without a uniform frame.

imagehash's 64-bit pHash survives recompression and resizing, but not a border: a white frame of
4% a side moves it by up to ~22 bits, because the DCT sees a different picture.  Web copies are
often framed (letterboxing, passe-partout, padding to a square), so before hashing the picture is
cut to the box of pixels that differ from the frame colour.  A picture is framed when its four
corners agree within ``TOLERANCE`` (per channel); otherwise it is hashed whole.  Training images,
removal lists and the evaluation index all go through ``phash`` so their hashes compare.

Trimming works on a thumbnail (pHash itself sees only 32x32), so it costs little on large images,
and the trimmed picture is box-reduced again to at most ``HASH_INPUT`` pixels a side before
imagehash's pHash, which resamples its input to 32x32 with a Lanczos filter whose cost grows with
the input: 170 us from the 256-pixel thumbnail, a third of the hashing of a typical web image,
against about 45 us from 128 pixels.  ``VERSION`` numbers this definition of the hash; version 1
hashed the thumbnail itself, and its hashes are within a bit or two of these (mean 0.98 bits over
867 images; docs/benchmarks.md).
Pillow and imagehash have no auto-crop; ``ImageOps.crop`` removes a fixed width, which is why the
box is computed here.  The masks are Pillow's C difference and channel maximum compared in
numpy: ``Image.point`` with a threshold function rebuilds and rounds its lookup table in Python
on every call, and a numpy int16 difference over three channels is slower still.
"""

from __future__ import annotations

from typing import Optional, Tuple

import imagehash
import numpy as np
from PIL import Image, ImageChops

TOLERANCE = 40  # JPEG ringing next to a sharp frame edge stays below this per channel
FRAME_NOISE = 16  # a frame pixel is within this of the frame colour (JPEG noise on a flat area)
FRAME_UNIFORM = 0.95  # fraction of the outermost ring that must be frame-coloured
THUMBNAIL = 256  # side of the picture the frame is searched on
HASH_INPUT = 128  # side the trimmed picture is reduced to for imagehash's pHash (which sees 32x32)
VERSION = 2  # of the hash's definition: stored with hashes that outlive a build (the eval index)
MAX_FRAMES = 4  # nested frames removed at most
DETECT = 64  # side of the reduced copy the frame is found on: averaging evens out noise and texture
MIN_CONTENT = 0.5  # a frame leaves at least this fraction of each side; less is a subject on a plain
# background, whose box moves with every edit, so such images are hashed whole


def _reduced(img: Image.Image, side: int) -> Image.Image:
    """A copy at most ``side`` pixels a side and more than ``side / 2`` (unless the image is
    smaller): an integer box reduction (``Image.reduce``, each output pixel the mean of a k x k
    block), the cheapest area average Pillow has.  A ``resize`` to exactly ``side`` cost about
    three times as much (0.43 against 0.13 ms on a 512x384 image) and pHash, which sees 32x32,
    does not need the exact size."""
    factor = -(-max(img.size) // side)  # ceil
    return img.reduce(factor) if factor > 1 else img.copy()


def _corners_agree(img: Image.Image) -> Optional[Tuple[int, ...]]:
    w, h = img.size
    corners = [img.getpixel(xy) for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))]
    for c in corners[1:]:
        if max(abs(a - b) for a, b in zip(c, corners[0])) > TOLERANCE:
            return None
    return tuple(round(sum(c[i] for c in corners) / 4) for i in range(len(corners[0])))


def _far(img: Image.Image, colour: Tuple[int, ...], threshold: int) -> np.ndarray:
    """Per pixel of an RGB image: whether any channel differs from ``colour`` by more than
    ``threshold`` (Pillow's C difference and channel maximum, then one numpy comparison)."""
    r, g, b = ImageChops.difference(img, Image.new("RGB", img.size, colour)).split()
    return np.asarray(ImageChops.lighter(ImageChops.lighter(r, g), b)) > threshold


def _ring_is_uniform(img: Image.Image, colour: Tuple[int, ...]) -> bool:
    """Whether the outermost ring of pixels is frame-coloured: a textured or noisy background is
    not a frame (cutting it would follow the noise and make the hash unstable).  The ring is
    counted as four strips (top, bottom, left, right edge), so the corners count twice."""
    far = _far(img, colour, FRAME_NOISE)
    strips = (far[0], far[-1], far[:, 0], far[:, -1])
    total = sum(len(strip) for strip in strips)
    near = total - sum(int(strip.sum()) for strip in strips)
    return near >= FRAME_UNIFORM * total


def _frame_colour(img: Image.Image) -> Optional[Tuple[int, ...]]:
    """The frame's colour when the image has a uniform frame, else None.  Decided on a reduced
    copy, where averaging evens out noise and texture, so copies of one picture decide alike."""
    small = _reduced(img, DETECT)
    colour = _corners_agree(small)
    return colour if colour is not None and _ring_is_uniform(small, colour) else None


def content_box(img: Image.Image) -> Optional[Tuple[int, int, int, int]]:
    """(left, top, right, bottom) of the picture inside a uniform frame, or None when there is no
    frame to remove (no uniform frame, or what it holds is too small to be a framed picture)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    frame = _frame_colour(rgb)
    if frame is None:
        return None
    # a pixel is picture when any channel differs from the frame by more than TOLERANCE
    picture = _far(rgb, frame, TOLERANCE)
    rows, cols = np.flatnonzero(picture.any(axis=1)), np.flatnonzero(picture.any(axis=0))
    if not len(rows):
        return None
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if box == (0, 0, *rgb.size):
        return None
    left, top, right, bottom = box
    if right - left < MIN_CONTENT * rgb.width or bottom - top < MIN_CONTENT * rgb.height:
        return None
    return box


def trim_frame(img: Image.Image) -> Image.Image:
    """The picture without its uniform frame, reduced to at most ``THUMBNAIL`` pixels a side."""
    thumb = _reduced(img if img.mode == "RGB" else img.convert("RGB"), THUMBNAIL)
    # Frames nest (a white passe-partout around a picture with a plain margin of its own): trim
    # until none is left, so a framed copy ends where the unframed original's trim ends.
    for _ in range(MAX_FRAMES):
        box = content_box(thumb)
        if box is None:
            break
        thumb = thumb.crop(box)
    return thumb


def phash(img: Image.Image) -> str:
    """64-bit pHash of the picture without its frame, as 16 hex digits."""
    return str(imagehash.phash(_reduced(trim_frame(img), HASH_INPUT)))


def phash_bytes(data: bytes) -> str:
    """``phash`` of an encoded image (decoding errors propagate)."""
    import io

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return phash(img)


def bit_distance(a: int, b: int) -> int:
    """Number of differing bits between two hashes given as integers."""
    return bin(a ^ b).count("1")


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hashes given as hex (the form ``Sample.phash`` has)."""
    return bit_distance(int(a, 16), int(b, 16))
