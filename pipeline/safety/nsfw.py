"""NSFW scores from a small classifier head on CLIP image embeddings (the LAION safety-classifier
approach: an MLP trained on CLIP ViT-L/14 embeddings, which LAION used to produce ``punsafe``).

The head is a local file, read through Beam FileSystems so a gs:// path serves a whole job:
an ``.npz`` with ``w0, b0, w1, b1, ...`` (layer i maps ``w{i}.shape[0]`` inputs to
``w{i}.shape[1]`` outputs), ReLU between layers, and a final layer of one logit (sigmoid) or two
(softmax, class 1 = unsafe).  Any MLP exported from Keras or torch fits this form (LAION's
detector is Dense layers on ViT-L/14 embeddings); numpy runs it, so workers need no extra
framework and the head is tiny next to CLIP.

Rows whose metadata carries a ``punsafe`` value were already screened by the metadata filter
(``filters.max_punsafe``, before any download), so the head scores only images without one: MMC4
images and LAION rows with a null punsafe.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from ..filters import safety
from ..recipe import SafetyConfig
from ..records import Sample
from ..stage import apply_with_drops, drop

__all__ = ["ScoreNsfw", "NsfwHead", "NsfwHeadError", "load_head"]

STAGE = "safety"


class NsfwHeadError(ValueError):
    """A head file that cannot be used."""


@dataclass
class NsfwHead:
    weights: List[np.ndarray]
    biases: List[np.ndarray]

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[0]

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """P(unsafe) for each row of ``embeddings`` (n x input_dim)."""
        x = np.asarray(embeddings, dtype=np.float32)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w + b
            if i < len(self.weights) - 1:
                x = np.maximum(x, 0)
        if x.shape[1] == 1:
            return 1 / (1 + np.exp(-x[:, 0]))
        z = np.exp(x - x.max(axis=1, keepdims=True))
        return z[:, 1] / z.sum(axis=1)

    def save(self, path: str) -> None:
        arrays: Dict[str, Any] = {f"w{i}": w for i, w in enumerate(self.weights)}
        arrays.update({f"b{i}": b for i, b in enumerate(self.biases)})
        with open(path, "wb") as f:
            np.savez(f, **arrays)


def load_head(path: str, expected_dim: Optional[int] = None) -> NsfwHead:
    """Read and check a head file; ``expected_dim`` is the CLIP embedding size it must accept."""
    try:
        with FileSystems.open(path) as f:
            arrays = np.load(io.BytesIO(f.read()))
    except Exception as e:
        raise NsfwHeadError(f"cannot read NSFW head {path}: {e}") from e
    layers = sum(1 for name in arrays.files if name.startswith("w"))
    try:
        weights = [arrays[f"w{i}"].astype(np.float32) for i in range(layers)]
        biases = [arrays[f"b{i}"].astype(np.float32) for i in range(layers)]
    except KeyError as e:
        raise NsfwHeadError(f"NSFW head {path}: missing array {e}; expected w0, b0, w1, b1, ...") from e
    if not layers:
        raise NsfwHeadError(f"NSFW head {path}: no layers (arrays w0, b0, ...)")
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w.ndim != 2 or b.shape != (w.shape[1],) or (i and w.shape[0] != weights[i - 1].shape[1]):
            raise NsfwHeadError(f"NSFW head {path}: layer {i} has shapes {w.shape} and {b.shape}")
    if weights[-1].shape[1] not in (1, 2):
        raise NsfwHeadError(f"NSFW head {path}: the last layer must give 1 logit or 2 classes")
    head = NsfwHead(weights, biases)
    if expected_dim is not None and head.input_dim != expected_dim:
        raise NsfwHeadError(
            f"NSFW head {path} takes {head.input_dim}-d embeddings, the CLIP model gives {expected_dim}-d"
        )
    return head


class _Score(beam.DoFn):
    def __init__(self, path: str, max_nsfw: float):
        self.path, self.max_nsfw = path, max_nsfw

    def setup(self):
        self._head = load_head(self.path)

    def process(self, s: Sample):
        if s.image_embedding is None or s.meta.get("punsafe") is not None:
            yield s
            return
        if len(s.image_embedding) != self._head.input_dim:
            raise NsfwHeadError(
                f"NSFW head {self.path} takes {self._head.input_dim}-d embeddings, "
                f"got {len(s.image_embedding)}-d: it was trained for another CLIP model"
            )
        score = round(float(self._head.score(np.asarray(s.image_embedding)[None, :])[0]), 4)
        reason = safety.nsfw(score, self.max_nsfw)
        if reason:
            yield drop(
                s.replace(nsfw=score), reason, STAGE, detail=f"nsfw {score:.4f} > safety.max_nsfw {self.max_nsfw:g}"
            )
        else:
            yield s.replace(nsfw=score)


class ScoreNsfw(beam.PTransform):
    """Score images with the head ``safety.nsfw_head``, drop those above ``safety.max_nsfw``
    (reason ``nsfw``)."""

    def __init__(self, cfg: SafetyConfig):
        super().__init__()
        if not cfg.nsfw_head:
            raise ValueError("safety.nsfw_head is not set")
        load_head(cfg.nsfw_head)  # a bad head file is an error when the pipeline is built, not on a worker
        self.path, self.max_nsfw = cfg.nsfw_head, cfg.max_nsfw

    def expand(self, samples):
        return apply_with_drops(samples, "Score NSFW head", _Score(self.path, self.max_nsfw))
