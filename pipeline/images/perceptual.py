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
867 images; docs/benchmarks.md).  Version 3 also trims letterbox and pillarbox bars: black or
white bars on two opposite sides only (a picture padded to a square or to 16:9), which the
four-sided frame rule left in (black bars to a square: 25% of copies found, 95% with the trim).
Pillow and imagehash have no auto-crop; ``ImageOps.crop`` removes a fixed width, which is why the
box is computed here.  The masks are Pillow's C difference and channel maximum compared in
numpy: ``Image.point`` with a threshold function rebuilds and rounds its lookup table in Python
on every call, and a numpy int16 difference over three channels is slower still.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import scipy.fftpack
from PIL import Image, ImageChops

TOLERANCE = 40  # JPEG ringing next to a sharp frame edge stays below this per channel
FRAME_NOISE = 16  # a frame pixel is within this of the frame colour (JPEG noise on a flat area)
FRAME_UNIFORM = 0.95  # fraction of the outermost ring that must be frame-coloured
BAR_DARK, BAR_LIGHT = 32, 224  # letterbox bars: every channel at most / at least this
BAR_UNIFORM = 0.99  # fraction of each of the two bars' outer lines that must be bar-coloured
THUMBNAIL = 256  # side of the picture the frame is searched on
HASH_SIDE = 32  # imagehash's pHash resamples to 32x32 and keeps the 8x8 lowest DCT frequencies
HASH_INPUT = 128  # side the trimmed picture is reduced to for imagehash's pHash (which sees 32x32)
VERSION = 3  # of the hash's definition: stored with hashes that outlive a build (the eval index)
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
    if near >= FRAME_UNIFORM * total:
        return True
    # Letterbox or pillarbox: black or white bars on two opposite sides only (a picture padded to
    # a square or to 16:9), the picture touching the other two.  Only black and white, and only
    # clean bars: a dark sky above a dark foreground, or a grey backdrop, would be cut in one copy
    # and not in another (a greyscale or resized one), which moves the hash by 20 bits.
    if not (max(colour) <= BAR_DARK or min(colour) >= BAR_LIGHT):
        return False
    uniform = [len(strip) - int(strip.sum()) >= BAR_UNIFORM * len(strip) for strip in strips]
    return (uniform[0] and uniform[1]) or (uniform[2] and uniform[3])


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


def _grey32(picture: Image.Image) -> np.ndarray:
    """imagehash's pHash input: the picture in grey, Lanczos-resampled to 32x32 (uint8)."""
    return np.asarray(picture.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS))


def _dct8(pixels: np.ndarray, freqs: int = 8) -> np.ndarray:
    """The ``freqs`` x ``freqs`` lowest frequencies of the 2-D DCT-II, as imagehash computes them
    (rows: vertical frequency, columns: horizontal); imagehash's pHash keeps 8."""
    return scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:freqs, :freqs]


def _hex(coefficients: np.ndarray) -> str:
    """The 64 bits "coefficient above the median", row-major, as 16 hex digits (imagehash's form)."""
    return np.packbits(coefficients > np.median(coefficients)).tobytes().hex()


def phash(img: Image.Image) -> str:
    """64-bit pHash of the picture without its frame, as 16 hex digits.  The same bits as
    ``imagehash.phash`` of the trimmed, reduced picture (computed here so that the coefficients
    also serve ``build_variants``)."""
    return _hex(_dct8(_grey32(_reduced(trim_frame(img), HASH_INPUT))))


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


# --- copies that are not the same picture: mirrored, cropped, rotated ------------------------------
#
# One pHash moves by 6 or more bits when 2-3% of the picture is cut away or it turns by 2 degrees,
# and by ~32 bits when it is mirrored (docs/dedup-and-safety.md has the measured curve).  Two
# cheap remedies, one per side of a comparison:
#
# - the eval index stores the hashes of many *variants* of each evaluation picture (mirrored,
#   cropped, rotated with the corners cut): ``INDEX_VARIANTS``, 190 a picture;
# - every training image carries a few variant hashes of its own (``phash_and_variants``, up to 33), so
#   near-duplicate search can pair one image's pHash with another's variant.
#
# Both are made from the same 32x32 grey picture the pHash came from (``variant_coefficients``):
# the DCT of a mirrored picture is the DCT with the odd horizontal frequencies negated, a crop is
# two small matrix products (rows and columns are resampled apart), a turn a bilinear gather of
# the 1024 pixels.  Against cutting and turning the picture itself and hashing each copy, these
# hashes differ by 1.5-3 bits on average, catch as many copies, and cost microseconds.


class Variant(NamedTuple):
    """A copy a web page might hold: ``mirror`` left-right, then turned by ``angle`` degrees
    (counter-clockwise) with the corners cut (the largest centred rectangle of the same shape),
    then ``crop`` (left, top, right, bottom: fractions of each side cut away)."""

    name: str
    mirror: bool = False
    angle: float = 0.0
    crop: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


def inner_scale(width: float, height: float, angle: float) -> float:
    """Side of the largest centred rectangle of the picture's shape inside the picture turned by
    ``angle`` degrees, as a fraction of the picture's side."""
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    return min(width / (width * c + height * s), height / (width * s + height * c))


def rotate_inside(img: Image.Image, angle: float) -> Image.Image:
    """The picture turned by ``angle`` degrees with its corners cut away (no background shows)."""
    if not angle:
        return img
    w, h = img.size
    turned = img.rotate(angle, resample=Image.Resampling.BICUBIC)
    k = inner_scale(w, h, angle)
    cw, ch = w * k, h * k
    return turned.crop((round((w - cw) / 2), round((h - ch) / 2), round((w + cw) / 2), round((h + ch) / 2)))


def crop_fraction(img: Image.Image, crop: Tuple[float, float, float, float]) -> Image.Image:
    """The picture with fractions (left, top, right, bottom) of its sides cut away."""
    if not any(crop):
        return img
    w, h = img.size
    left, top, right, bottom = crop
    return img.crop((round(left * w), round(top * h), round(w - right * w), round(h - bottom * h)))


def variant_picture(img: Image.Image, variant: Variant) -> Image.Image:
    """``variant`` applied to a picture (mirror, turn, crop: in that order)."""
    if variant.mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop_fraction(rotate_inside(img, variant.angle), variant.crop)


def crop_name(crop: Tuple[float, float, float, float]) -> str:
    """ "crop-left5%-bottom10%": the sides cut and how much (fractions of the side)."""
    sides = zip(("left", "top", "right", "bottom"), crop)
    return "crop-" + "-".join(f"{side}{round(cut * 100)}%" for side, cut in sides if cut)


def _mirrored(geometry: List[Variant]) -> List[Variant]:
    return [v._replace(name=f"mirrored {v.name}".strip(), mirror=True) for v in geometry]


# The eval index's grid: every crop of 0, 5 or 10% on each side (80), turns of 1 to 7 degrees
# either way (14), the picture itself, and the mirror of each.  A web copy cut by up to 10% on
# each side is then within 2.5% a side of a grid crop, where the pHash moves by about 4 bits;
# a coarser grid (centre crops, single sides and corners: 44 variants, version 1) caught 35% of
# random crops, this one 80% (docs/dedup-and-safety.md).
INDEX_CROP_STEPS = (0.0, 0.05, 0.1)
INDEX_ANGLES = tuple(sign * a for a in range(1, 8) for sign in (1.0, -1.0))


def _variant_grid() -> Tuple[Variant, ...]:
    geometry = [Variant("")]
    for crop in itertools.product(INDEX_CROP_STEPS, repeat=4):
        if any(crop):
            geometry.append(Variant(crop_name(crop), crop=crop))
    geometry += [Variant(f"rotated{angle:+g}deg", angle=angle) for angle in INDEX_ANGLES]
    return tuple(geometry + _mirrored(geometry))


INDEX_VARIANTS = _variant_grid()  # the original first; ``VARIANTS_VERSION`` numbers this set
_INDEX_CROPS = tuple(v.crop for v in INDEX_VARIANTS[1 : len(INDEX_VARIANTS) // 2] if any(v.crop))
# The names of ``variant_coefficients``'s blocks: the mirror of a crop of the picture is the
# mirrored picture cut on the other side, the mirror of a turn the mirrored picture turned back.
_INDEX_NAMES = (
    [""]
    + [crop_name(c) for c in _INDEX_CROPS]
    + [f"rotated{a:+g}deg" for a in INDEX_ANGLES]
    + ["mirrored"]
    + [f"mirrored {crop_name((c[2], c[1], c[0], c[3]))}" for c in _INDEX_CROPS]
    + [f"mirrored rotated{-a:+g}deg" for a in INDEX_ANGLES]
)
assert sorted(_INDEX_NAMES) == sorted(v.name for v in INDEX_VARIANTS)
VARIANTS_VERSION = 3  # 1: centre crops, 8% sides and corners, 12% corners, +-2/4/6 degrees; 3: check hashes


def index_hashes(img: Image.Image) -> List[Tuple[str, str, str]]:
    """(variant name, pHash, check hash) of the picture and of each of its ``INDEX_VARIANTS`` (""
    names the picture itself); a pHash already listed is left out, so the first variant that
    gives it is the one named.  The variants are made as the build's are
    (``variant_coefficients``: linear maps of the 32x32 grey picture the pHash is made of), about
    5 ms for the 190 of a picture; cutting and turning the picture itself and hashing each
    (version 1) cost 1 ms a variant and caught no more copies (docs/dedup-and-safety.md).  The
    check hash is ``hashes_with_checks``'s: the next ring of frequencies of the same variant."""
    hashes, checks = _hashes_and_checks(variant_coefficients(img, _INDEX_CROPS, INDEX_ANGLES, freqs=CHECK_FREQS))
    out: List[Tuple[str, str, str]] = []
    seen = set()
    for name, h, check in zip(_INDEX_NAMES, hashes, checks):
        if h not in seen:
            seen.add(h)
            out.append((name, h, check))
    return out


# Variants every training image carries (near-duplicate search): crops, turns and a few mirrors.
# Crops are separable (rows and columns are resampled independently), so each costs two small
# matrix products; a turn a bilinear gather of the 32x32 pixels, its taps cached per aspect ratio;
# a mirror is free (a sign change of the coefficients), but each is one more hash to store.
BUILD_CROPS = (
    (0.05, 0.05, 0.05, 0.05),  # centre 90%
    (0.1, 0.0, 0.0, 0.0),  # 10% off one side
    (0.0, 0.1, 0.0, 0.0),
    (0.0, 0.0, 0.1, 0.0),
    (0.0, 0.0, 0.0, 0.1),
    (0.0, 0.0, 0.1, 0.1),  # a corner: 10% off two sides
    (0.1, 0.0, 0.0, 0.1),
    (0.0, 0.1, 0.1, 0.0),
    (0.1, 0.1, 0.0, 0.0),
    # Tiles: 2.5 or 7.5% off each side (16).  A crop moves the pHash about as the sum of its four
    # sides' offsets, and the crops above (each side 0, 5 or 10%, few combinations) were within
    # k of a copy cut by 0-10% on each side a quarter of the time; with these every side of such
    # a copy is within 2.5% of a variant's, all four at once (copy-detection benchmark: random
    # crops 0.60 -> 0.90, docs/benchmarks.md).
    *itertools.product((0.025, 0.075), repeat=4),
)
BUILD_ANGLES = (3.0, -3.0, 5.0, -5.0)  # the copies aimed at turn by up to 5 degrees
BUILD_GEOMETRY = tuple(Variant(crop_name(c), crop=c) for c in BUILD_CROPS) + tuple(
    Variant(f"rotated{a:+g}deg", angle=a) for a in BUILD_ANGLES
)
# Which of the picture (0), the crops (1..) and the turns (after them) are mirrored too: the
# picture, the centre crop and the 3-degree turns, for the mirrored copies aimed at (mirrored;
# mirrored and cut to 90%, framed or turned 3 degrees).  A mirrored variant meets unrelated
# pictures 3 to 6 times as often as a plain one (unrelated pairs within 4 bits, per variant, over
# three draws of the copy-detection benchmark: mirrored turns 5.0, mirrored tiles 4.2, mirrored
# sides and corners 1.1, against 0.6-0.8 plain): crops of a low-detail photograph (a retina, a
# sky) on either side of its middle are near mirror images of each other.
BUILD_MIRRORS = (
    0,
    1 + BUILD_CROPS.index((0.05, 0.05, 0.05, 0.05)),
    1 + len(BUILD_CROPS) + BUILD_ANGLES.index(3.0),
    1 + len(BUILD_CROPS) + BUILD_ANGLES.index(-3.0),
)
# ``phash_and_variants`` lists the mirrors last, the mirrored turns last of all, so near-dup can
# hold them to a stricter distance (``hamming_index.STRICT_MARGIN``) without the stored
# hashes carrying their names (which would change what the image store holds): the last
# ``len(BUILD_MIRRORED_TURNS)`` hashes of an image's variants are its mirrored turns that are not
# equal to an earlier hash, and, when one was (duplicates are left out), an earlier variant, held
# to the stricter distance too: an error on the strict side only.
BUILD_MIRRORED_TURNS = BUILD_MIRRORS[-2:]
BUILD_VARIANTS = len(BUILD_GEOMETRY) + len(BUILD_MIRRORS)  # hashes an image's variants hold at most
assert BUILD_MIRRORED_TURNS == tuple(1 + len(BUILD_CROPS) + BUILD_ANGLES.index(a) for a in (3.0, -3.0))


def split_variants(variants: Sequence[str]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(the others, the mirrored turns) of an image's ``phash_and_variants`` variants, the latter
    the last ``len(BUILD_MIRRORED_TURNS)`` (see there)."""
    cut = max(len(variants) - len(BUILD_MIRRORED_TURNS), 0)
    return tuple(variants[:cut]), tuple(variants[cut:])


# Of this set: part of the image store's digest.  1: crop90%, +-4 degrees; 2: centre, sides and
# corners, +-3 and 6 degrees, all mirrored; 3: the 16 tiles, +-3 and 5 degrees, four mirrors;
# 4: the same variants, each with its check hash (``hashes_with_checks``).
BUILD_VARIANTS_VERSION = 4
_ASPECT_STEPS = 16  # the turn taps are cached per 1/16 of log2(aspect ratio)


@functools.lru_cache(maxsize=4)
def _dct_matrix(freqs: int = 8) -> np.ndarray:
    """The ``freqs`` lowest rows of scipy's (unnormalised) DCT-II matrix for 32 samples (cached:
    every image's turns use it; read-only)."""
    n = np.arange(HASH_SIDE)
    dct = 2.0 * np.cos(np.pi * np.arange(freqs)[:, None] * (2 * n[None, :] + 1) / (2 * HASH_SIDE))
    dct.flags.writeable = False
    return dct


@functools.lru_cache(maxsize=4)
def _mirror(freqs: int) -> np.ndarray:
    """The sign change that mirrors a block of ``freqs`` horizontal frequencies (the odd ones;
    cached, read-only)."""
    mirror = np.where(np.arange(freqs) % 2 == 1, -1.0, 1.0)[None, :]
    mirror.flags.writeable = False
    return mirror


def _bilinear_taps(variant: Variant, aspect: float) -> Tuple[np.ndarray, np.ndarray]:
    """(pixel indices, weights), each (4, 1024): the 32x32 grey picture of ``variant`` (mirror
    aside) as bilinear samples of the 32x32 grey picture of the original, whose width / height
    is ``aspect``; output pixel i is ``sum(weights[:, i] * original.ravel()[indices[:, i]])``."""
    width, height = aspect, 1.0
    k = inner_scale(width, height, variant.angle)
    left, top, right, bottom = variant.crop
    centres = (np.arange(HASH_SIDE) + 0.5) / HASH_SIDE
    u = (left + centres * (1 - left - right) - 0.5) * width * k  # in the turned frame, about the centre
    v = (top + centres * (1 - top - bottom) - 0.5) * height * k
    uu, vv = np.meshgrid(u, v)  # (row: v, column: u)
    c, s = math.cos(math.radians(variant.angle)), math.sin(math.radians(variant.angle))
    # PIL turns counter-clockwise on screen (y down): the turned picture at (u, v) shows the
    # original at (c u - s v, s u + c v)
    x = (c * uu - s * vv) / width + 0.5
    y = (s * uu + c * vv) / height + 0.5
    px = np.clip(x * HASH_SIDE - 0.5, 0, HASH_SIDE - 1).ravel()
    py = np.clip(y * HASH_SIDE - 0.5, 0, HASH_SIDE - 1).ravel()
    x0, y0 = np.minimum(px.astype(int), HASH_SIDE - 2), np.minimum(py.astype(int), HASH_SIDE - 2)
    fx, fy = px - x0, py - y0
    indices, weights = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            indices.append((y0 + dy) * HASH_SIDE + x0 + dx)
            weights.append(wy * wx)
    return np.stack(indices), np.stack(weights)


def _axis_sampling(cut_low: float, cut_high: float) -> np.ndarray:
    """(32, 32): one axis of a crop's 32-pixel picture as linear samples of the original's 32
    pixels, ``cut_low`` and ``cut_high`` of the side cut at either end."""
    centres = (np.arange(HASH_SIDE) + 0.5) / HASH_SIDE
    position = np.clip((cut_low + centres * (1 - cut_low - cut_high)) * HASH_SIDE - 0.5, 0, HASH_SIDE - 1)
    first = np.minimum(position.astype(int), HASH_SIDE - 2)
    weight = position - first
    m = np.zeros((HASH_SIDE, HASH_SIDE))
    m[np.arange(HASH_SIDE), first] = 1 - weight
    m[np.arange(HASH_SIDE), first + 1] += weight
    return m


@functools.lru_cache(maxsize=4)
def _crop_maps(crops: Tuple[Tuple[float, float, float, float], ...], freqs: int = 8) -> Tuple[np.ndarray, ...]:
    """(rows: (ny, f, 32), columns: (nx, 32, f), which row map and column map each crop uses):
    the DCT's f = ``freqs`` lowest frequencies of each distinct (top, bottom) and (left, right)
    resampling, so a crop's f x f coefficients are ``rows[i] @ pixels @ columns[j]``."""
    dct = _dct_matrix(freqs)
    vertical = sorted({(c[1], c[3]) for c in crops})
    horizontal = sorted({(c[0], c[2]) for c in crops})
    rows = np.stack([dct @ _axis_sampling(*v) for v in vertical])
    columns = np.stack([(dct @ _axis_sampling(*h)).T for h in horizontal])
    which_row = np.array([vertical.index((c[1], c[3])) for c in crops])
    which_column = np.array([horizontal.index((c[0], c[2])) for c in crops])
    return rows, columns, which_row, which_column


@functools.lru_cache(maxsize=128)
def _turn_taps(aspect_step: int, angles: Tuple[float, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """The ``_bilinear_taps`` of each of ``angles``, stacked ((turns, 4, 1024) each), for one
    aspect-ratio step.  Kept as taps rather than one dense (64, 1024) map per turn: the dense
    maps were 1 MiB an aspect ratio, read from memory for every image (0.2-0.5 ms on the
    benchmark machine), the taps are 64 KiB and the DCT after them is separable."""
    aspect = 2.0 ** (aspect_step / _ASPECT_STEPS)
    taps = [_bilinear_taps(Variant("", angle=a), aspect) for a in angles]
    return np.stack([i for i, _ in taps]), np.stack([w for _, w in taps])


def variant_coefficients(
    img: Image.Image,
    crops: Tuple[Tuple[float, float, float, float], ...],
    angles: Tuple[float, ...],
    mirrored: Optional[Sequence[int]] = None,
    freqs: int = 8,
) -> np.ndarray:
    """(n + len(mirrored), f, f), n = 1 + len(crops) + len(angles), f = ``freqs``: the DCT
    coefficients the pHash takes (its 8x8 lowest frequencies; 12 for ``hashes_with_checks``)
    of the picture (without its frame), of each crop and of each turn (corners cut), then of the
    mirror of each of those ``mirrored`` names by position (None: all, in the same order); all
    from the 32x32 grey picture the pHash is made of, so the first block is ``phash``'s, bit for
    bit.  The mirror is free (the odd horizontal frequencies change sign); a crop is two small
    matrix products (rows and columns are resampled apart); a turn is a bilinear gather of the
    32x32 pixels and a separable DCT."""
    picture = _reduced(trim_frame(img), HASH_INPUT)
    pixels = _grey32(picture).astype(np.float64)
    parts = [_dct8(pixels, freqs)[None]]
    if crops:
        rows, columns, which_row, which_column = _crop_maps(crops, freqs)
        parts.append((rows @ pixels)[which_row] @ columns[which_column])
    if angles:
        aspect_step = round(math.log2(picture.width / picture.height) * _ASPECT_STEPS)
        indices, weights = _turn_taps(aspect_step, angles)
        turned = (pixels.ravel()[indices] * weights).sum(axis=1).reshape(-1, HASH_SIDE, HASH_SIDE)
        dct = _dct_matrix(freqs)
        parts.append(dct @ turned @ dct.T)
    plain = np.concatenate(parts)
    return np.concatenate([plain, (plain if mirrored is None else plain[list(mirrored)]) * _mirror(freqs)])


def _hexes(coefficients: np.ndarray) -> List[str]:
    """``_hex`` of each (8, 8) block of an (n, 8, 8) stack (or row of an (n, 64) one), vectorised.
    The median is the mean of the two middle values of each sorted row, as ``np.median`` computes
    it (the same bits), but without its per-call overhead, which cost more than the rest of the
    variants."""
    flat = coefficients.reshape(len(coefficients), 64)
    ordered = np.sort(flat, axis=1)
    median = (ordered[:, 31] + ordered[:, 32]) / 2
    digits = np.packbits(flat > median[:, None], axis=1).tobytes().hex()  # one call, then cut
    return [digits[i : i + 16] for i in range(0, len(digits), 16)]


# --- check hashes: a second look at a pair the pHash brings together ---------------------------
#
# At distance 6 the 64-bit pHash of a detailed picture still meets its cropped copies (random
# crops of 0-10% a side, over nine draws of the copy benchmark at 20 a kind: 0.77 of them grouped
# with their original at distance 4, 0.92 at 6) but also, through its 33 variants, unrelated
# pictures (false positives 0.30% -> 0.73%): the lowest 8x8 frequencies of natural photographs
# are much alike.
# Each hash therefore carries a *check hash*: 64 bits "above the median" of the next frequencies
# (``CHECK_RING``: the 12x12 lowest, without the pHash's 8x8 and the 4x4 corner of the highest
# pairs), computed from the same coefficients of the same variant.  A copy's check hash follows its
# pHash (same picture, same geometry); a chance pHash match's is near 32 bits away.  Near-dup holds
# a pair at pHash distance ``CHECK_FROM`` or more to a check distance of at most
# ``recipe.dedup.near_check_distance`` (``hamming_index``); the measurements are in
# docs/benchmarks.md ("Copy detection").  Computing 12x12 instead of 8x8 frequencies costs the
# variants a few microseconds; the hashes double what the variants store (8 bytes a hash).
CHECK_FREQS = 12
CHECK_RING = np.ones((CHECK_FREQS, CHECK_FREQS), dtype=bool)
CHECK_RING[:8, :8] = False
CHECK_RING[8:, 8:] = False
assert CHECK_RING.sum() == 64
# Where the pHash's 8x8 and the check ring lie in a flattened 12x12 block, row-major (the order
# ``_hexes`` reads a block in), so one gather and one ``_hexes`` call make both hashes.
_PHASH_CELLS = np.flatnonzero(np.pad(np.ones((8, 8), dtype=bool), (0, CHECK_FREQS - 8)))
_CHECK_CELLS = np.flatnonzero(CHECK_RING)


def _hashes_and_checks(coefficients: np.ndarray) -> Tuple[List[str], List[str]]:
    """(pHash, check hash) hex strings of each (12, 12) block of an (n, 12, 12) stack."""
    flat = coefficients.reshape(len(coefficients), CHECK_FREQS * CHECK_FREQS)
    both = _hexes(np.concatenate([flat[:, _PHASH_CELLS], flat[:, _CHECK_CELLS]]))
    return both[: len(flat)], both[len(flat) :]


def phash_and_variants(img: Image.Image) -> Tuple[str, Tuple[str, ...]]:
    """``phash(img)`` and the pHashes of its build variants: each of ``BUILD_GEOMETRY``, then
    the mirrors (``BUILD_MIRRORS``: of the picture, the centre crop and the 3-degree turns, the
    turns last: ``split_variants``), duplicates of the pHash or of each other left out.  Linear
    maps of the 32x32 grey picture (``variant_coefficients``), no resampling of the image, so they
    cost a few percent of the image stage (benchmarks/copy_detection.py)."""
    first, variants, _ = hashes_with_checks(img)
    return first, variants


def hashes_with_checks(img: Image.Image) -> Tuple[str, Tuple[str, ...], Tuple[str, ...]]:
    """(``phash(img)``, its build variants as ``phash_and_variants`` gives them, the check hash
    of each of those: the pHash's first, then one per variant, in their order).  Of equal
    variant pHashes the first is kept, with its check hash."""
    (first, *rest), checks = _hashes_and_checks(
        variant_coefficients(img, BUILD_CROPS, BUILD_ANGLES, BUILD_MIRRORS, freqs=CHECK_FREQS)
    )
    # a dict keeps the first of equal hashes, in order, in linear time (a list's ``in`` made
    # this quadratic in the ~30 hashes)
    kept: dict = {}
    for h, check in zip(rest, checks[1:]):
        if h != first and h not in kept:
            kept[h] = check
    return first, tuple(kept), (checks[0], *kept.values())
