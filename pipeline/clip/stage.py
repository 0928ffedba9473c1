"""The CLIP stage: image and caption embeddings and their cosine similarity, then the threshold.

Inference runs through Beam's RunInference with a ModelHandler for open_clip: Beam batches the
elements, loads the model once per worker process (once per machine when the model is shared
across processes, as on a GPU worker) and reports inference metrics.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from ..filters import image as image_filter
from ..progress import record
from ..recipe import ClipConfig
from ..records import Sample
from ..stage import apply_with_drops, drop
from .model import ClipModel, load_clip, texts_of

__all__ = ["EmbedWithClip", "ScoreWithClip", "OpenClipHandler", "similarity_detail"]

STAGE = "clip"
# Batched float32 inference differs in the last bits with the batch's composition (which the
# runner decides); scores are rounded so the stored value and the threshold decision are the
# same on every run and every runner.
SIMILARITY_DECIMALS = 4
# Embeddings are passed on as computed: rounding them to a fixed decimal would flip some element
# across a rounding boundary in most embeddings (a 1e-7 wobble near one of d boundaries), moving
# every similarity taken from them by ~1e-6, far more often than the raw wobble moves a decision.


class OpenClipHandler(ModelHandler[Sample, Sample, ClipModel]):
    """RunInference handler: a batch of Samples in, the same Samples with embeddings out.

    A sample with image bytes gets an image embedding, one with a caption a text embedding, one
    with both (a LAION pair) also their cosine similarity.  MMC4 images and sentences travel as
    image-only and text-only samples through the same handler.
    """

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg

    def load_model(self) -> ClipModel:
        return load_clip(self.cfg)

    def run_inference(
        self, batch: Sequence[Sample], model: ClipModel, inference_args: Optional[Dict[str, Any]] = None
    ) -> Iterable[Sample]:
        with_image = [i for i, s in enumerate(batch) if s.image_bytes is not None]
        with_text = [i for i, s in enumerate(batch) if s.caption is not None]
        image_emb = dict(
            zip(with_image, model.embed_encoded([batch[i].image_bytes for i in with_image]) if with_image else [])
        )
        text_emb = dict(zip(with_text, model.embed_texts(texts_of([batch[i] for i in with_text])) if with_text else []))
        out = []
        for i, s in enumerate(batch):
            img, txt = image_emb.get(i), text_emb.get(i)
            sim = round(float(img @ txt), SIMILARITY_DECIMALS) if img is not None and txt is not None else None
            out.append(s.replace(image_embedding=img, text_embedding=txt, similarity=sim))
        record("clip", len(with_image))
        return out

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.cfg.batch_size}

    def share_model_across_processes(self) -> bool:
        # One copy of a GPU model per machine, shared by the SDK worker processes.  Beam asks on
        # the worker when it loads the model, so "auto" is resolved there, where the GPU is (the
        # launcher that built the pipeline may have none).
        from .model import resolve_device

        return resolve_device(self.cfg.device).startswith("cuda")

    def get_metrics_namespace(self) -> str:
        return "clip"


def similarity_detail(similarity: Optional[float], minimum: Optional[float]) -> str:
    """A clip drop's score and the rule (section ``clip``): "similarity 0.2133 < clip.min_similarity 0.28"."""
    if similarity is None or similarity != similarity:
        return f"no similarity (image or caption not embedded) while clip.min_similarity is {minimum:g}"
    return f"similarity {similarity:.4f} < clip.min_similarity {minimum:g}"


class _SimilarityThreshold(beam.DoFn):
    def __init__(self, minimum: Optional[float]):
        self.minimum = minimum

    def process(self, s: Sample):
        reason = image_filter.similarity(s.similarity, self.minimum)
        if reason:
            yield drop(s, reason, STAGE, detail=similarity_detail(s.similarity, self.minimum))
        else:
            yield s


class EmbedWithClip(beam.PTransform):
    """Image and/or text embeddings of every sample (and the pair's similarity where both)."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        return samples | "CLIP embeddings" >> RunInference(OpenClipHandler(self.cfg))


class ScoreWithClip(beam.PTransform):
    """Embed images and captions with CLIP, then drop pairs under the similarity threshold."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        scored = samples | "Embed" >> EmbedWithClip(self.cfg)
        return apply_with_drops(scored, "Similarity threshold", _SimilarityThreshold(self.cfg.min_similarity))
