"""The CLIP stage on CUDA (bf16 weights, nvJPEG decode) gives the CPU's fp32 embeddings and
scores; skipped without a GPU."""

from __future__ import annotations

import dataclasses
import random
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flamingo_corpus.clip.model import load_clip  # noqa: E402
from flamingo_corpus.recipe import ClipConfig  # noqa: E402
from flamingo_corpus.sample import synthetic  # noqa: E402

from ..unit.test_clip_preprocess import SAMPLE_FILES, _encode, _grainy, _mixed_batch, _sample, _scene  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _jpegs(n: int):
    rng = random.Random(5)
    out, captions = [], []
    for _ in range(n):
        scene = synthetic.random_scene(rng)
        out.append(_encode(synthetic.render(scene, 200, 150), quality=90))
        captions.append(synthetic.caption(scene, rng))
    return out, captions


def _tiny(checkpoint, **kw):
    return dict(model="flamingo-tiny-clip", pretrained=str(checkpoint), **kw)


@pytest.fixture(scope="module")
def gpu(tiny_clip_checkpoint):
    return load_clip(ClipConfig(**_tiny(tiny_clip_checkpoint, device="auto", precision="auto")))


@pytest.fixture(scope="module")
def cpu(tiny_clip_checkpoint):
    return load_clip(ClipConfig(**_tiny(tiny_clip_checkpoint, device="cpu", precision="fp32")))


def _images():
    """Bundled JPEGs of several shapes and grainy ones: the images of one call differ in size."""
    return [_sample(n) for n in SAMPLE_FILES] + [_grainy(s) for s in range(5)]


def _cosines(a, b):
    return (a * b).sum(1)


def test_auto_device_picks_cuda_bf16_weights_gpu_decode_and_matches_cpu(gpu, cpu):
    assert gpu.device == "cuda" and gpu.precision == "bf16"
    assert gpu.input_dtype == torch.bfloat16 and gpu.autocast_dtype is None  # weights cast once
    assert gpu.gpu_decode is True
    images, captions = _jpegs(32)
    sims = []
    for m in (gpu, cpu):
        img = m.embed_encoded(images)
        txt = m.embed_texts(captions)
        assert img.dtype == np.float32 and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-3)
        sims.append((img * txt).sum(1))
    assert np.abs(sims[0] - sims[1]).max() < 0.05  # bf16 rounding, not a different model


@pytest.mark.parametrize("lowp, gpu_decode", [("pure", True), ("pure", False), ("autocast", True)])
def test_gpu_embeddings_match_cpu_fp32(tiny_clip_checkpoint, cpu, lowp, gpu_decode):
    m = load_clip(ClipConfig(**_tiny(tiny_clip_checkpoint, device="cuda")), lowp=lowp, gpu_decode=gpu_decode)
    assert m.gpu_decode is gpu_decode
    assert (m.autocast_dtype is None) == (lowp == "pure")
    images = _images()
    got, want = m.embed_encoded(images), cpu.embed_encoded(images)
    assert got.shape == want.shape and got.dtype == np.float32
    assert _cosines(got, want).min() > 0.99


def test_chunks_and_concurrent_callers_give_the_same_embeddings(gpu):
    images = _images()
    whole = gpu.embed_encoded(images)
    assert _cosines(gpu.embed_encoded(images, chunk=3), whole).min() > 0.999  # 4 chunks, overlapped
    results = {}

    def worker(k):
        results[k] = [gpu.embed_encoded(images[k:] + images[:k]) for _ in range(3)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, runs in results.items():
        for emb in runs:
            assert _cosines(emb, np.roll(whole, -k, axis=0)).min() > 0.999


def test_png_cmyk_grey_and_damaged_jpegs_in_a_gpu_batch(gpu, cpu):
    batch = _mixed_batch()
    got, want = gpu.embed_encoded(batch), cpu.embed_encoded(batch)
    damaged = 6  # zeroed scan data: decoders may fill the damage differently
    cos = _cosines(got, want)
    assert np.delete(cos, damaged).min() > 0.99
    assert np.isfinite(got[damaged]).all() and abs(np.linalg.norm(got[damaged]) - 1) < 1e-3


def test_a_truncated_jpeg_fails_as_on_the_cpu_and_the_gpu_goes_on(gpu, cpu):
    batch = [_sample(SAMPLE_FILES[0]), _encode(_scene())[:3000], _sample(SAMPLE_FILES[1])]
    with pytest.raises(OSError):
        cpu.embed_encoded(batch)
    with pytest.raises(OSError):
        gpu.embed_encoded(batch)
    good = [batch[0], batch[2]]
    assert _cosines(gpu.embed_encoded(good), cpu.embed_encoded(good)).min() > 0.99


def test_a_failed_nvjpeg_batch_falls_back_on_the_gpu(gpu, monkeypatch):
    import torchvision.io

    images = _images()
    expected = gpu.embed_encoded(images)
    real = torchvision.io.decode_jpeg

    def no_batches(tensors, **kw):
        if len(tensors) > 1:
            raise RuntimeError("simulated nvJPEG batch failure")
        return real(tensors, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_batches)
    assert _cosines(gpu.embed_encoded(images), expected).min() > 0.9999


def test_compiled_forward_matches_and_takes_any_batch_size(gpu):
    """ClipConfig.compile: one compile (dynamic batch dimension) serves every chunk size."""
    compiled = dataclasses.replace(gpu, compile=True)
    images = _images()
    for n in (len(images), 5):
        assert _cosines(compiled.embed_encoded(images[:n]), gpu.embed_encoded(images[:n])).min() > 0.99
