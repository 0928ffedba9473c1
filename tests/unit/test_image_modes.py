"""Every image mode Pillow decodes keeps its picture through the conversion to 8-bit RGB: the
pixels are compared with the picture each file was made from, not only the mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from flamingo_corpus.images.process import process_image
from flamingo_corpus.recipe import ImageConfig

CFG = ImageConfig(resize_mode="no", encode_format="png")
SIZE = (64, 48)


def _picture() -> Image.Image:
    """A smooth colour picture with dark and bright parts (no flat white that would hide a clip)."""
    y, x = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _grey() -> np.ndarray:
    return np.asarray(_picture().convert("L"), dtype=np.float64)


def _saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    out = process_image(data, CFG)
    return np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"), dtype=np.float64)


def _as_grey(values: np.ndarray, mode: str, fmt: str) -> bytes:
    return _saved(Image.fromarray(values, mode) if mode else Image.fromarray(values), fmt)


CASES = {
    # name: (encoded bytes, the picture expected, mean absolute error allowed)
    "L png": (lambda: _saved(_picture().convert("L"), "PNG"), "grey", 1),
    "I;16 png (16-bit greyscale)": (lambda: _as_grey((_grey() * 257).astype(np.uint16), None, "PNG"), "grey", 1),
    "I;16 png, dark": (lambda: _as_grey((_grey() * 257 / 8).astype(np.uint16), None, "PNG"), "grey/8", 1),
    "I tiff (32-bit, 16-bit range)": (lambda: _as_grey((_grey() * 257).astype(np.int32), "I", "TIFF"), "grey", 1),
    "I tiff (32-bit, 8-bit range)": (lambda: _as_grey(_grey().astype(np.int32), "I", "TIFF"), "grey", 1),
    "F tiff (0..1)": (lambda: _as_grey((_grey() / 255).astype(np.float32), "F", "TIFF"), "grey", 1),
    "F tiff (0..255)": (lambda: _as_grey(_grey().astype(np.float32), "F", "TIFF"), "grey", 1),
    "1 png": (
        lambda: _saved(_picture().convert("L").point(lambda v: 255 if v > 128 else 0).convert("1"), "PNG"),
        "bw",
        1,
    ),
    "P png": (lambda: _saved(_picture().quantize(64), "PNG"), "rgb", 8),
    "P png with transparency": (lambda: _saved(_picture().quantize(64), "PNG", transparency=300), "rgb", 8),
    "RGBA png, opaque": (lambda: _saved(_picture().convert("RGBA"), "PNG"), "rgb", 1),
    "LA png, opaque": (lambda: _saved(_picture().convert("LA"), "PNG"), "grey", 1),
    "CMYK jpeg": (lambda: _saved(_picture().convert("CMYK"), "JPEG", quality=95), "rgb", 6),
    "YCbCr jpeg": (lambda: _saved(_picture(), "JPEG", quality=95), "rgb", 4),
    "L jpeg": (lambda: _saved(_picture().convert("L"), "JPEG", quality=95), "grey", 3),
    "RGB tiff": (lambda: _saved(_picture(), "TIFF"), "rgb", 1),
    "RGB bmp": (lambda: _saved(_picture(), "BMP"), "rgb", 1),
    "RGB gif": (lambda: _saved(_picture(), "GIF"), "rgb", 12),
    "RGB webp lossless": (lambda: _saved(_picture(), "WEBP", lossless=True), "rgb", 1),
    "RGBA webp, opaque": (lambda: _saved(_picture().convert("RGBA"), "WEBP", lossless=True), "rgb", 1),
}


def _expected(kind: str) -> np.ndarray:
    grey = _grey()
    if kind == "rgb":
        return np.asarray(_picture(), dtype=np.float64)
    if kind == "grey":
        values = grey
    elif kind == "grey/8":
        values = np.floor(grey * 257 / 8) / 257
    else:  # bw
        values = np.where(grey > 128, 255.0, 0.0)
    return np.repeat(values[..., None], 3, axis=-1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_mode_keeps_its_picture(name):
    make, kind, tolerance = CASES[name]
    got = _decoded(make())
    want = _expected(kind)
    assert got.shape == want.shape
    error = np.abs(got - want).mean()
    assert error <= tolerance, f"{name}: mean absolute error {error:.1f} (a clipped 16-bit picture is ~200)"


def test_transparent_pixels_are_white_not_black():
    rgba = np.zeros((SIZE[1], SIZE[0], 4), dtype=np.uint8)  # fully transparent black
    got = _decoded(_saved(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert got.min() == 255


def test_a_bomb_is_a_bomb_whatever_other_threads_do():
    """The download threads process images side by side: the same bomb must be decided the same
    way in every one (a process-wide warnings filter set by one thread decided another's)."""
    from concurrent.futures import ThreadPoolExecutor

    from flamingo_corpus.images.process import ImageRejected
    from flamingo_corpus.sample.web import png_bomb

    bomb = png_bomb(10000)
    small = _saved(_picture(), "PNG")
    cfg = ImageConfig()

    def decide(data: bytes) -> str:
        try:
            process_image(data, cfg)
            return "kept"
        except ImageRejected as e:
            return e.reason

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(decide, [bomb, small] * 40))
    assert set(outcomes[0::2]) == {"decompression_bomb"} and set(outcomes[1::2]) == {"kept"}
