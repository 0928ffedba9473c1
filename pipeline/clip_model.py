"""Loading an open_clip model and embedding images and texts with it.

Users name a model as open_clip does: a model name plus a pretrained tag (``ViT-L-14`` +
``openai``) or a local checkpoint path; a custom architecture comes with its JSON config.  The
tag ``synthetic-world`` names the tiny model this project trains on its own synthetic images
(tests and the sample build, where no real weights can be downloaded); it resolves to a local
checkpoint, built once and cached, and from there loads through the same open_clip call.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np

from .clip_preprocess import SplitPreprocess

if TYPE_CHECKING:  # torch is imported lazily: Beam launchers need not load it
    import torch
from .recipe import ClipConfig

log = logging.getLogger(__name__)
SYNTHETIC_TAG = "synthetic-world"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.startswith("cuda") else "fp32"


def resolve_pretrained(cfg: ClipConfig) -> Optional[str]:
    """The pretrained argument open_clip gets: a tag, a path, or the tiny model's checkpoint."""
    from . import tiny_clip

    if cfg.model == tiny_clip.TINY_MODEL_NAME:
        tiny_clip.register_tiny_config()
        if cfg.pretrained in (None, SYNTHETIC_TAG):
            return str(tiny_clip.ensure_tiny_clip(log=log.info))
    elif cfg.pretrained == SYNTHETIC_TAG:
        raise ValueError(f"pretrained {SYNTHETIC_TAG!r} only exists for model {tiny_clip.TINY_MODEL_NAME!r}")
    return cfg.pretrained


@dataclass
class ClipModel:
    model: object
    preprocess: object
    tokenizer: object
    device: str
    precision: str
    # JPEG decode and resize release the GIL: a few threads keep a GPU fed (and cost little on CPU).
    threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))

    def __post_init__(self):
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="clip-preprocess")
        self.split = SplitPreprocess.from_transform(self.preprocess)

    def _autocast(self):
        import torch

        if self.device.startswith("cuda") and self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def pixels_from_bytes(self, encoded: Sequence[bytes]) -> "torch.Tensor":
        """Decode and preprocess encoded images on the thread pool: the model's input, on CPU."""
        import torch

        batch = torch.stack(list(self._pool.map(self._prepare, encoded)))
        return self.split.normalize(batch) if self.split else batch

    def _prepare(self, data: bytes):
        image = decode_rgb(data)
        return self.split.cpu(image) if self.split else self.preprocess(image)

    def embed_encoded(self, encoded: Sequence[bytes], chunk: Optional[int] = None) -> np.ndarray:
        """Embeddings of encoded images, decoding ahead while the model runs.

        The pool decodes and preprocesses the whole batch in order; every ``chunk`` images go to
        the model as soon as they are ready.  On CUDA the forward pass is asynchronous, so the
        next chunk is being prepared while the GPU works on this one; results are copied back once.
        """
        import torch

        chunk = chunk or max(16, len(encoded) // 4)
        outputs, ready = [], []
        with torch.inference_mode(), self._autocast():
            for tensor in self._pool.map(self._prepare, encoded):
                ready.append(tensor)
                if len(ready) == chunk:
                    outputs.append(self._encode_images(ready))
                    ready = []
            if ready:
                outputs.append(self._encode_images(ready))
            emb = torch.nn.functional.normalize(torch.cat(outputs).float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32)

    def _encode_images(self, tensors: list):
        import torch

        # No pin_memory(): page-locking a fresh batch cost more than the copy (measured on an H100).
        pixels = torch.stack(tensors).to(self.device, non_blocking=True)
        return self.model.encode_image(self.split.normalize(pixels) if self.split else pixels)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(list(texts))
        with torch.inference_mode(), self._autocast():
            emb = self.model.encode_text(tokens.to(self.device, non_blocking=True))
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32)


def load_clip(cfg: ClipConfig) -> ClipModel:
    import open_clip

    if cfg.model_config:
        open_clip.add_model_config(cfg.model_config)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    pretrained = resolve_pretrained(cfg)
    log.info("loading CLIP %s (%s) on %s, %s", cfg.model, pretrained, device, precision)
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.model, pretrained=pretrained, device=device)
    model.eval()
    return ClipModel(model, preprocess, open_clip.get_tokenizer(cfg.model), device, precision)


def decode_rgb(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def texts_of(samples) -> List[str]:
    return [s.caption or "" for s in samples]
