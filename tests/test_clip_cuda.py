"""The CLIP stage on CUDA (bf16 autocast) gives the CPU's scores; skipped without a GPU."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline import synthetic  # noqa: E402
from pipeline.clip_model import load_clip  # noqa: E402
from pipeline.recipe import ClipConfig  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _jpegs(n: int):
    rng = random.Random(5)
    out, captions = [], []
    for _ in range(n):
        scene = synthetic.random_scene(rng)
        buf = io.BytesIO()
        synthetic.render(scene, 200, 150).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
        captions.append(synthetic.caption(scene, rng))
    return out, captions


def test_auto_device_picks_cuda_in_bf16_and_matches_cpu(tiny_clip_checkpoint):
    images, captions = _jpegs(32)
    cfg = dict(model="flamingo-tiny-clip", pretrained=str(tiny_clip_checkpoint))
    gpu = load_clip(ClipConfig(**cfg, device="auto", precision="auto"))
    cpu = load_clip(ClipConfig(**cfg, device="cpu", precision="fp32"))
    assert gpu.device == "cuda" and gpu.precision == "bf16"
    sims = []
    for m in (gpu, cpu):
        img = m.embed_encoded(images)
        txt = m.embed_texts(captions)
        assert img.dtype == np.float32 and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-3)
        sims.append((img * txt).sum(1))
    assert np.abs(sims[0] - sims[1]).max() < 0.05  # bf16 rounding, not a different model
