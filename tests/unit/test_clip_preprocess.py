"""The split preprocessing gives the pixels open_clip's own transform gives, on PIL (the CPU path)
and on tensors (the GPU path, whose maths is checked here on CPU tensors)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from flamingo_corpus.clip.model import decode_chw, decode_rgb, load_clip
from flamingo_corpus.clip.preprocess import SplitPreprocess, gpu_decodable
from flamingo_corpus.recipe import ClipConfig
from flamingo_corpus.sample import synthetic


@pytest.mark.parametrize("size", [(300, 200), (224, 224), (120, 400)])
def test_split_equals_the_whole_transform(size):
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")  # random weights: only the transform
    split = SplitPreprocess.from_transform(preprocess)
    assert split is not None
    image = synthetic.render(synthetic.random_scene(random.Random(size[0])), *size)
    whole = preprocess(image)
    parts = split.normalize(split.cpu(image).unsqueeze(0))[0]
    assert parts.shape == whole.shape == (3, 224, 224)
    assert torch.allclose(parts, whole, atol=1e-5)


def test_unusual_transforms_are_used_whole():
    from torchvision import transforms as T

    assert (
        SplitPreprocess.from_transform(
            T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        )
        is None
    )
    assert SplitPreprocess.from_transform(lambda im: im) is None


# --- the tensor path (the GPU's preprocessing, run here on CPU tensors) ------------------------

SAMPLE_IMAGES = Path(__file__).resolve().parents[2] / "pipeline" / "assets" / "sample" / "laion" / "web"
# One bundled sample JPEG of each shape: 48x40 (enlarged), 600x90, portrait, landscape, square.
SAMPLE_FILES = ["00003.jpg", "00125.jpg", "00005.jpg", "00004.jpg", "00008.jpg", "00010.jpg", "00001.jpg"]


def _sample(name: str) -> bytes:
    return (SAMPLE_IMAGES / "img" / name).read_bytes()


def _encode(image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _grainy(seed: int, size=(333, 250)) -> bytes:
    """A synthetic scene with film grain: a photo's high-frequency content, the hardest case."""
    rng = np.random.default_rng(seed)
    image = np.asarray(synthetic.render(synthetic.random_scene(random.Random(seed)), *size), dtype=np.float32)
    return _encode(
        Image.fromarray(np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)), quality=95
    )


@pytest.fixture(scope="module")
def vit_split():
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    return SplitPreprocess.from_transform(preprocess)


@pytest.fixture(scope="module")
def tiny_cpu(tiny_clip_checkpoint):
    return load_clip(ClipConfig(model="flamingo-tiny-clip", pretrained=str(tiny_clip_checkpoint), device="cpu"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 points decode_jpeg to TorchCodec
@pytest.mark.parametrize(
    "data", [*(pytest.param(_sample(n), id=n) for n in SAMPLE_FILES), pytest.param(_grainy(1), id="grain")]
)
def test_tensor_geometry_gives_pils_pixels(vit_split, data):
    """torch's antialiased bicubic resize + crop on decoded tensors gives PIL's pixels to a level."""
    pil = vit_split.cpu(decode_rgb(data)).permute(2, 0, 1).float()
    decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    assert torch.equal(decoded, decode_chw(data))  # libjpeg-turbo both: the same decoded pixels
    tensor = vit_split.geometry_tensor(decoded.unsqueeze(0))[0]
    assert tensor.shape == pil.shape == (3, 224, 224)
    diff = (tensor - pil).abs()
    assert diff.mean() < 0.5  # of 255 levels
    assert (diff > 2).float().mean() < 0.01


def test_pixels_normalise_like_the_pil_path(vit_split):
    data = [_sample(n) for n in SAMPLE_FILES]
    pil = torch.stack([vit_split.normalize(vit_split.cpu(decode_rgb(d)).unsqueeze(0))[0] for d in data])
    tensor = vit_split.pixels([decode_chw(d) for d in data])
    assert tensor.shape == pil.shape and tensor.dtype == torch.float32
    assert (tensor - pil).abs().mean() < 0.01  # one level is 1 / (255 std) ~ 0.015
    assert vit_split.pixels([decode_chw(d) for d in data], dtype=torch.bfloat16).dtype == torch.bfloat16


def test_pixels_of_mixed_sizes_equal_each_alone(vit_split):
    images = [decode_chw(_sample(n)) for n in SAMPLE_FILES[:4]] + [decode_chw(_sample(SAMPLE_FILES[0]))]
    together = vit_split.pixels(images)
    for i, image in enumerate(images):
        assert torch.allclose(together[i], vit_split.pixels([image])[0])
    with pytest.raises(ValueError, match="3xHxW"):
        vit_split.pixels([images[0][:1]])


def test_tensor_path_embeddings_match_the_pil_path(tiny_cpu):
    """The tiny CLIP (64 px input, the hardest resize) embeds both paths' pixels alike."""
    data = [_sample(n) for n in SAMPLE_FILES] + [_grainy(s) for s in range(3)]
    pil, tensor = tiny_cpu.pixels_from_bytes(data), tiny_cpu.pixels_on_device(data)
    assert (pil - tensor).abs().mean() < 0.01
    with torch.inference_mode():
        a = torch.nn.functional.normalize(tiny_cpu.model.encode_image(pil), dim=-1)
        b = torch.nn.functional.normalize(tiny_cpu.model.encode_image(tensor), dim=-1)
    assert (a * b).sum(1).min() > 0.99


# --- which files nvJPEG gets, and what happens to the others -----------------------------------


def _scene(size=(200, 150)):
    return synthetic.render(synthetic.random_scene(random.Random(11)), *size)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("baseline", True),
        ("progressive", True),
        ("grey", True),
        ("444", True),
        ("422", True),
        ("cmyk", False),
        ("png", False),
        ("truncated", False),
        ("trailing", False),
        ("empty", False),
        ("html", False),
    ],
)
def test_gpu_decodable(kind, expected):
    image = _scene()
    data = {
        "baseline": lambda: _encode(image, quality=95),
        "progressive": lambda: _encode(image, progressive=True),
        "grey": lambda: _encode(image.convert("L")),
        "444": lambda: _encode(image, subsampling=0),
        "422": lambda: _encode(image, subsampling=1),
        "cmyk": lambda: _encode(image.convert("CMYK")),
        "png": lambda: _encode(image, "PNG"),
        "truncated": lambda: _encode(image)[:3000],
        "trailing": lambda: _encode(image) + b"\0" * 10,
        "empty": lambda: b"",
        "html": lambda: b"<html><body>not found</body></html>",
    }[kind]()
    assert gpu_decodable(data) is expected


def test_bundled_broken_files_are_left_to_pil():
    broken = sorted((SAMPLE_IMAGES / "broken").iterdir())
    assert broken and not any(gpu_decodable(p.read_bytes()) for p in broken)
    assert all(gpu_decodable(_sample(n)) for n in SAMPLE_FILES)


def _mixed_batch():
    """JPEGs with a PNG, a CMYK JPEG, a grey JPEG and one with zeroed scan data among them."""
    image = _scene()
    good = [_sample(n) for n in SAMPLE_FILES[:4]]
    base = _encode(image, quality=90)
    sos = base.index(b"\xff\xda")
    damaged = base[: sos + 600] + bytes(200) + base[sos + 800 :]  # libjpeg decodes it, with garbage
    return [
        good[0],
        _encode(image, "PNG"),
        good[1],
        _encode(image.convert("CMYK")),
        good[2],
        _encode(image.convert("L")),
        damaged,
        good[3],
    ]


def test_tensor_path_handles_png_cmyk_grey_and_damaged_jpegs(tiny_cpu):
    batch = _mixed_batch()
    pil, tensor = tiny_cpu.pixels_from_bytes(batch), tiny_cpu.pixels_on_device(batch)
    assert tensor.shape == pil.shape == (len(batch), 3, 64, 64)
    assert (pil - tensor).abs().mean(dim=(1, 2, 3)).max() < 0.01  # under a level on average, per image


def test_images_the_model_must_enlarge_are_decoded_and_resized_by_pil():
    small = _sample(SAMPLE_FILES[0])  # 48x40
    assert gpu_decodable(small) and gpu_decodable(small, 40) and not gpu_decodable(small, 41)


def test_a_failed_batch_decode_falls_back_image_by_image(tiny_cpu, monkeypatch, caplog):
    """nvJPEG returns nothing when one image of a batch fails: the others are decoded alone, the
    failing one by PIL; the pixels are the same as without the failure."""
    import torchvision.io

    batch = _mixed_batch()
    expected = tiny_cpu.pixels_on_device(batch)
    real = torchvision.io.decode_jpeg
    refuse = batch[2]
    calls = []

    def flaky(tensors, **kw):
        calls.append(len(tensors))
        if any(bytes(t.numpy()) == refuse for t in tensors):
            raise RuntimeError("simulated nvJPEG failure")
        return real(tensors, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    got = tiny_cpu.pixels_on_device(batch)
    # one batch, then each JPEG alone (00003.jpg, 48x40, is smaller than the model's 64 px: PIL's)
    assert calls[0] == 5 and calls[1:] == [1] * 5
    assert "decoding one by one" in caplog.text
    assert torch.allclose(got, expected, atol=1e-6)


def test_a_truncated_jpeg_fails_as_on_the_pil_path(tiny_cpu):
    batch = [_sample(SAMPLE_FILES[0]), _encode(_scene())[:3000]]
    with pytest.raises(OSError):
        tiny_cpu.pixels_from_bytes(batch)
    with pytest.raises(OSError):
        tiny_cpu.pixels_on_device(batch)


def test_cpu_model_keeps_fp32_and_the_pil_path(tiny_cpu):
    assert tiny_cpu.device == "cpu" and tiny_cpu.input_dtype == torch.float32
    assert tiny_cpu.autocast_dtype is None and tiny_cpu.gpu_decode is False and tiny_cpu.compile is False
    data = [_sample(n) for n in SAMPLE_FILES]
    emb = tiny_cpu.embed_encoded(data)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(tiny_cpu.model.encode_image(tiny_cpu.pixels_from_bytes(data)), dim=-1)
    assert emb.dtype == np.float32 and np.allclose(emb, ref.numpy(), atol=1e-5)


def test_cpu_embeddings_do_not_depend_on_batch_size_or_batch_mates(tiny_cpu):
    """The runner forms batches as it likes; a row's float bits must not follow them, or rounded
    similarities (and with them byte-identical shards) would change between runners."""
    scenes = synthetic.scenes(13, 13)
    images = [_sample(n) for n in SAMPLE_FILES] + [_encode(synthetic.render(s, 160, 120)) for s in scenes]
    texts = [
        f"a {c} {s} {w}"
        for c in ("red", "blue")
        for s in ("circle", "star", "cross")
        for w in ("on the left", "at the top of a striped grey background")
    ]
    whole_images, whole_texts = tiny_cpu.embed_encoded(images), tiny_cpu.embed_texts(texts)
    rng = random.Random(3)
    for size in (1, 2, 3, 5, 17):
        for items, whole, embed in (
            (images, whole_images, tiny_cpu.embed_encoded),
            (texts, whole_texts, tiny_cpu.embed_texts),
        ):
            order = list(range(len(items)))
            rng.shuffle(order)
            got = np.zeros_like(whole)
            for start in range(0, len(order), size):
                chosen = order[start : start + size]
                got[chosen] = embed([items[i] for i in chosen])
            assert np.array_equal(got, whole), (size, embed.__name__)
