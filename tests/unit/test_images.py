"""The image stage: resize parity with img2dataset, rejection reasons, colour modes, EXIF, hashes."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import struct  # noqa: E402
import warnings  # noqa: E402
import zlib  # noqa: E402

import imagehash  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from flamingo_corpus.images.process import ImageRejected, decode, process_image, resize, target_size  # noqa: E402
from flamingo_corpus.recipe import ImageConfig  # noqa: E402

# img2dataset 1.47 with albumentations 1.4 warns about its own calls; not this project's concern.
pytestmark = pytest.mark.filterwarnings(
    "ignore:value is deprecated:DeprecationWarning",
    "ignore:'imghdr' is deprecated:DeprecationWarning",
)

MODES = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")
WHITE = (255, 255, 255)


# ---------------------------------------------------------------- helpers


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with two shapes: real structure for resizing and perceptual hashing."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = x.astype(np.uint8)
    arr[..., 1] = y.astype(np.uint8)
    arr[..., 2] = (seed * 60) % 256
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    d.ellipse((width * 0.1, height * 0.2, width * 0.5, height * 0.7), fill=(240, 240, 20))
    d.rectangle((width * 0.6, height * 0.1, width * 0.9, height * 0.5), fill=(20, 20, 200))
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def open_bytes(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def cfg(**kw) -> ImageConfig:
    return dataclasses.replace(ImageConfig(), **kw)


def img2dataset_resize(data: bytes, c: ImageConfig):
    """img2dataset's own Resizer on the same bytes and settings: (size, original size, encoded bytes)."""
    from img2dataset.resizer import Resizer

    resizer = Resizer(
        image_size=c.image_size,
        resize_mode=c.resize_mode,
        resize_only_if_bigger=c.resize_only_if_bigger,
        encode_format="png" if c.encode_format == "png" else "jpg",
        encode_quality=1 if c.encode_format == "png" else c.encode_quality,
    )
    img_str, width, height, original_width, original_height, err = resizer(io.BytesIO(data))
    assert err is None, err
    return (width, height), (original_width, original_height), img_str


def rejected(data: bytes, c: ImageConfig) -> ImageRejected:
    with pytest.raises(ImageRejected) as e:
        process_image(data, c)
    assert isinstance(e.value.reason, str) and e.value.reason
    return e.value


# ---------------------------------------------------------------- parity with img2dataset

SIZES = [
    (640, 480),  # landscape, larger
    (480, 640),  # portrait, larger
    (300, 300),  # square, larger
    (256, 256),  # square, exactly image_size
    (100, 60),  # landscape, smaller
    (60, 100),  # portrait, smaller
    (300, 200),  # long side larger, short side smaller
    (200, 300),
    (256, 120),  # long side exactly image_size
    (513, 512),  # keep_ratio: 256.5 -> rounding as albumentations rounds
    (515, 512),  # keep_ratio: 257.5
    (777, 301),
    (129, 383),
]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("mode", MODES)
def test_output_sizes_match_img2dataset(mode, fmt):
    checked = 0
    for w, h in SIZES:
        data = encode(scene(w, h), fmt)
        for only_if_bigger in (False, True):
            c = cfg(resize_mode=mode, image_size=256, resize_only_if_bigger=only_if_bigger)
            theirs_size, theirs_original, _ = img2dataset_resize(data, c)
            ours = process_image(data, c)
            label = f"{fmt} {w}x{h} {mode} resize_only_if_bigger={only_if_bigger}"
            assert (ours.width, ours.height) == theirs_size, label
            assert (ours.original_width, ours.original_height) == theirs_original == (w, h), label
            assert open_bytes(ours.data).size == (ours.width, ours.height), label
            checked += 1
    assert checked == 2 * len(SIZES)


@pytest.mark.parametrize("image_size", [64, 224, 800])
def test_output_sizes_match_img2dataset_at_other_image_sizes(image_size):
    for w, h in [(640, 480), (333, 1001), (150, 150), (90, 45)]:
        data = encode(scene(w, h), "PNG")
        for mode in MODES:
            for only_if_bigger in (False, True):
                c = cfg(resize_mode=mode, image_size=image_size, resize_only_if_bigger=only_if_bigger)
                theirs_size, _, _ = img2dataset_resize(data, c)
                ours = process_image(data, c)
                assert (ours.width, ours.height) == theirs_size, (w, h, mode, only_if_bigger)


@pytest.mark.parametrize("w,h", [(100, 60), (60, 100), (640, 300), (300, 640)])
def test_border_pads_with_white_in_the_same_place_as_img2dataset(w, h):
    data = encode(Image.new("RGB", (w, h), (200, 30, 30)), "PNG")
    c = cfg(resize_mode="border", image_size=256, encode_format="png", encode_quality=10)
    _, _, theirs_png = img2dataset_resize(data, c)
    ours = process_image(data, c)
    theirs = np.asarray(open_bytes(theirs_png).convert("RGB"))
    mine = np.asarray(open_bytes(ours.data).convert("RGB"))
    assert mine.shape == theirs.shape == (256, 256, 3)
    white_theirs = (theirs == 255).all(axis=2)
    white_mine = (mine == 255).all(axis=2)
    assert white_mine.any() and not white_mine.all()
    assert np.array_equal(white_mine, white_theirs)


def test_target_size_modes():
    c = cfg(image_size=256)
    assert target_size(640, 480, dataclasses.replace(c, resize_mode="no")) == (640, 480)
    assert target_size(640, 480, dataclasses.replace(c, resize_mode="keep_ratio")) == (341, 256)
    assert target_size(640, 480, dataclasses.replace(c, resize_mode="center_crop")) == (341, 256)
    assert target_size(640, 480, dataclasses.replace(c, resize_mode="border")) == (256, 192)
    assert target_size(640, 480, dataclasses.replace(c, resize_mode="keep_ratio_largest")) == (256, 192)
    # enlarging unless resize_only_if_bigger
    assert target_size(64, 32, dataclasses.replace(c, resize_mode="border")) == (256, 128)
    assert target_size(64, 32, dataclasses.replace(c, resize_mode="border", resize_only_if_bigger=True)) == (64, 32)


def test_center_crop_and_border_give_square_outputs():
    data = encode(scene(640, 300), "PNG")
    for mode in ("center_crop", "border"):
        p = process_image(data, cfg(resize_mode=mode, image_size=128, encode_format="png"))
        assert (p.width, p.height) == (128, 128)


def test_resize_only_if_bigger_leaves_small_images_alone():
    data = encode(scene(100, 60), "PNG")
    for mode in MODES:
        p = process_image(data, cfg(resize_mode=mode, image_size=256, resize_only_if_bigger=True, encode_format="png"))
        assert (p.width, p.height) == (100, 60), mode


@pytest.mark.parametrize(
    "width,height,image_size",
    [(640, 480, 224), (480, 640, 224), (300, 299, 224), (1000, 333, 256), (100, 60, 224), (150, 400, 96)],
)
def test_center_crop_in_one_resize_equals_scale_then_crop(width, height, image_size):
    """The centre crop resizes only the source box it keeps; that is the full scale followed by
    the crop, shrinking (the stage's shrink filter) and enlarging (Lanczos) alike, up to the
    rounding of a value that sits at a half (the box offset is added in floating point): at most
    one level, in under 2% of the values."""
    from flamingo_corpus.images.process import SHRINK_FILTER

    c = cfg(resize_mode="center_crop", image_size=image_size)
    img = scene(width, height, seed=3)
    size = target_size(width, height, c)
    method = SHRINK_FILTER if size[0] * size[1] < width * height else Image.Resampling.LANCZOS
    full = img.resize(size, method)
    left, top = max(0, (size[0] - image_size) // 2), max(0, (size[1] - image_size) // 2)
    expected = full.crop((left, top, left + min(image_size, size[0]), top + min(image_size, size[1])))
    ours = resize(img, (width, height), c)
    assert ours.size == expected.size
    difference = np.abs(np.asarray(ours, np.int16) - np.asarray(expected, np.int16))
    assert difference.max() <= 1 and np.count_nonzero(difference) < 0.02 * difference.size


# ---------------------------------------------------------------- JPEG draft mode


def test_large_jpeg_is_decoded_in_draft_mode_and_resized_exactly():
    data = encode(scene(3000, 2000), "JPEG", quality=85)
    c = cfg(resize_mode="keep_ratio", image_size=256)
    img, w, h = decode(data, c)
    assert (w, h) == (3000, 2000)  # the original size, not the draft size
    assert img.mode == "RGB"
    assert img.width < 3000 and img.height < 2000  # decoded reduced
    assert img.width >= 384 and img.height >= 256  # never below the target
    p = process_image(data, c)
    assert (p.width, p.height) == (384, 256)
    assert (p.original_width, p.original_height) == (3000, 2000)
    theirs_size, theirs_original, _ = img2dataset_resize(data, c)
    assert (p.width, p.height) == theirs_size and (p.original_width, p.original_height) == theirs_original
    b = process_image(data, cfg(resize_mode="border", image_size=256))
    assert (b.width, b.height) == (256, 256)
    assert (b.original_width, b.original_height) == (3000, 2000)


def test_draft_mode_keeps_the_picture():
    """The draft-decoded, resized image looks like a full decode resized the slow way."""
    src = scene(3000, 2000)
    data = encode(src, "JPEG", quality=90)
    p = process_image(data, cfg(resize_mode="keep_ratio", image_size=256))
    ours = np.asarray(open_bytes(p.data).convert("RGB"), np.float32)
    reference = np.asarray(open_bytes(data).convert("RGB").resize((384, 256), Image.Resampling.BOX), np.float32)
    assert np.abs(ours - reference).mean() < 4


# ---------------------------------------------------------------- rejection reasons


def test_too_small_at_the_boundary():
    c = cfg(min_side=64)
    assert process_image(encode(scene(64, 100), "PNG"), c).original_width == 64
    assert rejected(encode(scene(63, 100), "PNG"), c).reason == "too_small"
    assert rejected(encode(scene(100, 63), "PNG"), c).reason == "too_small"


@pytest.mark.parametrize(
    "image,c,reason",
    [
        (lambda: encode(scene(63, 100), "PNG"), cfg(min_side=64), "too_small"),
        (lambda: encode(scene(300, 90), "JPEG"), cfg(max_aspect_ratio=3.0), "bad_aspect_ratio"),
        (
            lambda: encode(scene(120, 80), "PNG"),
            cfg(image_size=64, encode_format="png", min_encoded_bytes=10**6),
            "too_few_bytes",
        ),
    ],
)
def test_images_the_checks_drop_keep_their_original_size_in_the_index(image, c, reason):
    """The index row of an image the checks drop has its original width and height, as a kept
    image's has: the statistics' size and aspect-ratio plots then show what the checks removed."""
    from apache_beam import pvalue

    from flamingo_corpus.images.process import _ProcessImage
    from flamingo_corpus.records import Sample

    data = image()
    (out,) = list(_ProcessImage(c).process(Sample(id="in:0", source_index=0, row=0, url="u", image_bytes=data)))
    assert isinstance(out, pvalue.TaggedOutput)
    row = out.value
    assert row.reason == reason and row.stage == "image"
    assert (row.original_width, row.original_height) == Image.open(io.BytesIO(data)).size
    assert row.bytes == len(data)


def test_bad_aspect_ratio_at_the_boundary():
    c = cfg(max_aspect_ratio=2.0)
    assert process_image(encode(scene(200, 100), "PNG"), c).original_height == 100
    assert process_image(encode(scene(100, 200), "PNG"), c).original_width == 100
    assert rejected(encode(scene(201, 100), "PNG"), c).reason == "bad_aspect_ratio"
    assert rejected(encode(scene(100, 201), "PNG"), c).reason == "bad_aspect_ratio"


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is patched (with a correct CRC) to declare another size."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_decompression_bomb_declared_in_the_png_header():
    huge = _png_with_declared_size(30_000, 30_000)
    with Image.open(io.BytesIO(_png_with_declared_size(40, 30))) as ok:  # the patch itself is valid
        assert ok.size == (40, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert rejected(huge, cfg()).reason == "decompression_bomb"
        # above our limit but below the size at which Pillow itself refuses
        assert rejected(_png_with_declared_size(10_000, 10_000), cfg()).reason == "decompression_bomb"


def test_max_pixels_below_the_image_size():
    data = encode(scene(100, 100), "PNG")
    assert rejected(data, cfg(max_pixels=9_999)).reason == "decompression_bomb"
    assert process_image(data, cfg(max_pixels=10_000)).original_width == 100


def test_html_is_not_an_image():
    html = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>gone</body></html>"
    assert rejected(html, cfg()).reason == "not_an_image"


def test_empty_body():
    assert rejected(b"", cfg()).reason == "empty_body"


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_jpeg_is_rejected_not_raised(keep):
    data = encode(scene(400, 300), "JPEG", quality=90)
    cut = data[: int(len(data) * keep)]
    e = rejected(cut, cfg())
    assert e.reason in ("decode_error", "not_an_image")


def test_header_only_is_rejected():
    data = encode(scene(400, 300), "JPEG")
    assert rejected(data[:40], cfg()).reason in ("decode_error", "not_an_image")


def test_min_encoded_bytes():
    data = encode(Image.new("RGB", (300, 300), (128, 128, 128)), "PNG")
    e = rejected(data, cfg(min_encoded_bytes=11_000))
    assert e.reason == "too_few_bytes"
    assert process_image(data, cfg(min_encoded_bytes=0)).data


# ---------------------------------------------------------------- colour modes


def test_rgba_transparent_pixels_become_white():
    img = Image.new("RGBA", (64, 48), (10, 120, 250, 255))
    img.paste((200, 0, 0, 0), (0, 0, 32, 48))  # left half: red, fully transparent
    img.putpixel((40, 10), (0, 0, 0, 128))  # half-transparent black: mid grey on white
    p = process_image(encode(img, "PNG"), cfg(resize_mode="no", encode_format="png"))
    out = open_bytes(p.data)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == WHITE
    assert out.getpixel((50, 30)) == (10, 120, 250)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((40, 10)))


def test_la_transparent_pixels_become_white():
    img = Image.new("LA", (40, 40), (30, 255))
    img.paste((30, 0), (0, 0, 20, 40))
    p = process_image(encode(img, "PNG"), cfg(resize_mode="no", encode_format="png"))
    out = open_bytes(p.data)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == WHITE
    assert out.getpixel((30, 5)) == (30, 30, 30)


def test_palette_with_transparency_becomes_white():
    img = Image.new("P", (40, 40), 0)
    img.putpalette([200, 0, 0, 0, 0, 220] + [0] * (254 * 3))
    img.paste(1, (20, 0, 40, 40))
    data = encode(img, "PNG", transparency=0)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    p = process_image(data, cfg(resize_mode="no", encode_format="png"))
    out = open_bytes(p.data)
    assert out.getpixel((5, 5)) == WHITE  # was red, transparent
    assert out.getpixel((30, 5)) == (0, 0, 220)


def test_grayscale_inputs_give_rgb():
    img = Image.new("L", (80, 60), 90)
    for fmt in ("PNG", "JPEG"):
        p = process_image(encode(img, fmt), cfg(resize_mode="no", encode_format="png"))
        out = open_bytes(p.data)
        assert out.mode == "RGB"
        r, g, b = out.getpixel((40, 30))
        assert r == g == b and abs(r - 90) <= 2


def test_cmyk_jpeg_gives_rgb():
    img = Image.new("CMYK", (300, 200), (255, 0, 0, 0))  # pure cyan
    data = encode(img, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    for mode in ("no", "keep_ratio"):  # with and without draft reduction
        p = process_image(data, cfg(resize_mode=mode, image_size=100))
        out = open_bytes(p.data)
        assert out.mode == "RGB"
        r, g, b = out.getpixel((out.width // 2, out.height // 2))
        assert r < 20 and g > 235 and b > 235


def test_16_bit_grayscale_png_gives_rgb():
    img = Image.new("I;16", (50, 50), 40_000)
    p = process_image(encode(img, "PNG"), cfg(resize_mode="no", encode_format="png"))
    assert open_bytes(p.data).mode == "RGB"


# ---------------------------------------------------------------- EXIF orientation


def _rotated_jpeg(stored_w: int, stored_h: int, orientation: int) -> bytes:
    img = Image.new("RGB", (stored_w, stored_h), (20, 160, 20))
    img.paste((230, 0, 0), (0, 0, stored_w // 5, stored_h // 5))  # red marker, stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_6_reports_the_displayed_size():
    data = _rotated_jpeg(300, 200, 6)
    assert Image.open(io.BytesIO(data)).size == (300, 200)
    p = process_image(data, cfg(resize_mode="no", encode_format="png"))
    assert (p.original_width, p.original_height) == (200, 300)
    assert (p.width, p.height) == (200, 300)
    out = open_bytes(p.data)
    # orientation 6 = rotate 90 degrees clockwise to display: stored top-left is displayed top-right
    r, g, b = out.getpixel((out.width - 5, 5))
    assert r > 180 and g < 60
    r, g, b = out.getpixel((5, 5))
    assert g > 120 and r < 60


def test_exif_rotated_large_jpeg_in_draft_mode():
    data = _rotated_jpeg(3000, 2000, 6)
    p = process_image(data, cfg(resize_mode="keep_ratio", image_size=256))
    assert (p.original_width, p.original_height) == (2000, 3000)
    assert (p.width, p.height) == (256, 384)
    out = open_bytes(p.data)
    r, g, _ = out.getpixel((out.width - 5, 5))
    assert r > 180 and g < 60


def test_exif_orientation_1_is_not_transposed():
    p = process_image(_rotated_jpeg(300, 200, 1), cfg(resize_mode="no"))
    assert (p.original_width, p.original_height) == (300, 200)
    assert (p.width, p.height) == (300, 200)


# ---------------------------------------------------------------- encoding and hashes


def test_png_output_when_encode_format_is_png():
    p = process_image(encode(scene(300, 200), "JPEG"), cfg(encode_format="png", image_size=128))
    assert p.format == "png"
    assert p.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert open_bytes(p.data).format == "PNG"


def test_jpeg_output_by_default_and_quality_matters():
    data = encode(scene(300, 200), "PNG")
    hi = process_image(data, cfg(encode_quality=95))
    lo = process_image(data, cfg(encode_quality=30))
    assert hi.format == "jpg" and hi.data.startswith(b"\xff\xd8")
    assert open_bytes(hi.data).format == "JPEG"
    assert len(lo.data) < len(hi.data)


def test_sha256_is_of_the_returned_bytes():
    for fmt in ("jpg", "png"):
        p = process_image(encode(scene(200, 150), "PNG"), cfg(encode_format=fmt))
        assert p.sha256 == hashlib.sha256(p.data).hexdigest()


def test_phash_survives_recompression_and_resizing_but_not_another_image():
    src = scene(480, 360)
    c = cfg(resize_mode="keep_ratio", image_size=256)
    reference = process_image(encode(src, "JPEG", quality=95), c).phash
    assert len(reference) == 16 and int(reference, 16) >= 0
    copies = [
        encode(src, "PNG"),
        encode(src, "JPEG", quality=50),
        encode(src.resize((240, 180), Image.Resampling.LANCZOS), "JPEG", quality=80),
        encode(src.resize((720, 540), Image.Resampling.LANCZOS), "JPEG", quality=70),
    ]
    for data in copies:
        assert process_image(data, c).phash == reference
    # the hash is the 64-bit DCT hash of the picture itself (without a frame, which it has not)
    assert reference == str(imagehash.phash(open_bytes(encode(src, "JPEG", quality=95)).convert("RGB")))
    framed = ImageOps.expand(src, border=24, fill=WHITE)
    assert process_image(encode(framed, "JPEG", quality=90), c).phash == reference
    other = Image.new("RGB", (480, 360), WHITE)
    d = ImageDraw.Draw(other)
    for x in range(0, 480, 40):
        d.rectangle((x, 0, x + 19, 360), fill=(0, 0, 0))
    other_hash = process_image(encode(other, "JPEG"), c).phash
    assert len(other_hash) == 16
    assert imagehash.hex_to_hash(other_hash) - imagehash.hex_to_hash(reference) > 10


# ---------------------------------------------------------------- output quality on real photographs


def _photo(name: str) -> Image.Image:
    """A photograph shipped inside an installed package (no download)."""
    from pathlib import Path

    import matplotlib
    import skimage.data

    if name == "grace_hopper":
        return Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _psnr_against_full_decode(data: bytes, c: ImageConfig) -> float:
    """PSNR of the stage's output against the full decode resized by Lanczos over the whole
    source, then centre-cropped (benchmarks/image_quality.py's reference; centre_crop only)."""
    full = open_bytes(data).convert("RGB")
    size = target_size(*full.size, c)
    scaled = full.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - c.image_size) // 2, (size[1] - c.image_size) // 2
    expected = np.asarray(scaled.crop((left, top, left + c.image_size, top + c.image_size)), np.float64)
    ours = np.asarray(open_bytes(process_image(data, c).data).convert("RGB"), np.float64)
    return 10 * np.log10(255.0**2 / np.mean((ours - expected) ** 2))


# photo -> PSNR floor (dB) of its 224 px centre crop (JPEG q90 in, q95 out): measured with the draft
# to 2x the target and the bicubic shrink (36.84, 36.41, 35.99, 37.12 dB), less about 1 dB; the
# draft to about the target and the box shrink before gave 29.88, 28.78, 32.29 and 31.33 dB.
QUALITY_FLOORS = {"astronaut": 35.8, "grace_hopper": 35.4, "hubble_deep_field": 35.0, "immunohistochemistry": 36.1}


@pytest.mark.parametrize("name", sorted(QUALITY_FLOORS))
def test_output_is_close_to_a_full_decode_lanczos_resize_of_real_photos(name, monkeypatch):
    """No quality traded for speed: the drafted decode and the shrink give a picture within the
    measured floor of the full-quality reference; the settings before (draft to about the target
    size, box filter) fall below it, so the floor tells them apart."""
    from flamingo_corpus.images import process as stage

    data = encode(_photo(name), "JPEG", quality=90)
    c = cfg(resize_mode="center_crop", image_size=224, encode_quality=95)
    assert _psnr_against_full_decode(data, c) >= QUALITY_FLOORS[name]
    monkeypatch.setattr(stage, "DRAFT_OVERSAMPLE", 1)
    monkeypatch.setattr(stage, "SHRINK_FILTER", Image.Resampling.BOX)
    assert _psnr_against_full_decode(data, c) < QUALITY_FLOORS[name]
