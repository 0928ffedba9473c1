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
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

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

    def _autocast(self):
        import torch

        if self.device.startswith("cuda") and self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def image_tensor(self, images: Sequence) -> "torch.Tensor":
        import torch

        return torch.stack([self.preprocess(im) for im in images])

    def embed_image_tensor(self, pixels) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            emb = self.model.encode_image(pixels.to(self.device, non_blocking=True))
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32)

    def embed_images(self, images: Sequence) -> np.ndarray:
        return self.embed_image_tensor(self.image_tensor(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(list(texts))
        with torch.inference_mode(), self._autocast():
            emb = self.model.encode_text(tokens.to(self.device, non_blocking=True))
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32)


def load_clip(cfg: ClipConfig) -> ClipModel:
    import open_clip
    import torch

    if cfg.model_config:
        open_clip.add_model_config(cfg.model_config)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    pretrained = resolve_pretrained(cfg)
    log.info("loading CLIP %s (%s) on %s, %s", cfg.model, pretrained, device, precision)
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.model, pretrained=pretrained, device=device)
    model.eval()
    if device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    return ClipModel(model, preprocess, open_clip.get_tokenizer(cfg.model), device, precision)


def decode_rgb(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def texts_of(samples) -> List[str]:
    return [s.caption or "" for s in samples]
