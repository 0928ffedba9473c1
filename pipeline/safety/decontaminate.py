"""Evaluation-set decontamination: training samples that are evaluation images or captions go.

A model scored on COCO, Flickr30K, VQAv2, ... must not have trained on those images, and web
crawls hold many copies of them (recompressed, resized, framed).  The stage compares every
sample with the eval index (``flamingo-corpus index-eval``, pipeline/safety/eval_index.py):

- perceptual hash within ``decontamination.phash_distance`` of an eval image's (the same framed-
  picture-aware pHash the image stage stores) or of one of its stored copy variants (mirrored,
  cropped, rotated with the corners cut: ``perceptual.INDEX_VARIANTS``);
- CLIP image embedding at least ``min_cosine`` similar to an eval image's (when the build embeds
  images and the index holds embeddings of the same model);
- caption equal, after ``filters.text.match_key``, to an eval caption (LAION rows).

A match is dropped with reason ``eval_overlap`` and a detail naming the eval item, the variant
that matched and the evidence ("coco:val2014/x.jpg phash_distance=2", "coco:val2014/x.jpg
mirrored phash_distance=3", "... cosine=0.9731", "caption coco:<item>").  A training image of low
detail (``hamming_index.low_detail`` on its build variants, ``Sample.phash_variants``) counts
against an eval image's variants only within ``phash_distance - eval_index.LOW_DETAIL_MARGIN``,
and its evidence says so ("coco:val2014/x.jpg crop-left5% low-detail phash_distance=2").

The index is lookup data (about 80 bytes of arrays a hash, ~183 hashes an eval picture: some
600 MiB for COCO val2014): each worker reads it once in ``setup`` through Beam's FileSystems, so
a gs:// index serves a Dataflow job.  Samples are batched so one batch meets the
whole index in one vectorised XOR/popcount and one matrix product.

MMC4: the stage screens images only.  Sentences are not dropped: removing one would shift the
sentence indices the similarity matrix and the image assignments refer to, and a sentence that
happens to equal an eval caption is not what leaks an eval image.
"""

from __future__ import annotations

import logging
from typing import List, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from ..recipe import ClipConfig, DecontaminationConfig
from ..records import Sample
from ..stage import apply_with_drops, drop
from .eval_index import EvalIndex, load_index, read_header

__all__ = ["Decontaminate"]

log = logging.getLogger(__name__)

STAGE = "decontaminate"
REASON = "eval_overlap"
MAX_BATCH = 256


class _MatchBatch(beam.DoFn):
    def __init__(self, cfg: DecontaminationConfig, use_embeddings: bool, release_variants: bool):
        self.cfg, self.use_embeddings, self.release_variants = cfg, use_embeddings, release_variants
        self.checked = Metrics.counter(STAGE, "checked")

    def setup(self):
        self._index: EvalIndex = load_index(self.cfg.index)

    def process(self, batch: List[Sample]):
        matches = self._index.match(
            [s.phash for s in batch],
            [s.image_embedding for s in batch] if self.use_embeddings else (),
            [s.caption if s.kind == "row" else None for s in batch],
            phash_distance=self.cfg.phash_distance,
            min_cosine=self.cfg.min_cosine if self.use_embeddings else None,
            check_captions=self.cfg.captions,
            build_variants=[s.phash_variants for s in batch],
            checks=[s.phash_checks[0] if s.phash_checks else None for s in batch],
            check_distance=self.cfg.check_distance,
        )
        self.checked.inc(len(batch))
        for s, m in zip(batch, matches):
            if m:
                yield drop(s, REASON, STAGE, detail=m.detail)
            else:
                yield s.without_variants() if self.release_variants else s


class Decontaminate(beam.PTransform):
    """Drop samples whose image or caption is in the eval index -> (kept, dropped).

    The samples must carry their build variant hashes (``Sample.phash_variants``): an image of
    low detail is told by them (``eval_index.LOW_DETAIL_MARGIN``), and one without any counts as
    of low detail.  ``release_variants``: the kept samples leave without them (no later stage
    reads them)."""

    def __init__(
        self, cfg: DecontaminationConfig, clip_cfg: Optional[ClipConfig] = None, release_variants: bool = False
    ):
        super().__init__()
        if not cfg.index:
            raise ValueError("decontamination.index is not set")
        # Read the footer now: a missing index, one of another hash version or of another CLIP
        # model fails the build before it starts, not in every worker.
        header = read_header(cfg.index)
        self.use_embeddings = bool(
            clip_cfg is not None and clip_cfg.enabled and cfg.min_cosine is not None and header.has_embeddings
        )
        if self.use_embeddings and clip_cfg is not None:
            header.check_clip(clip_cfg)
        elif clip_cfg is not None and clip_cfg.enabled and cfg.min_cosine is not None:
            log.warning(
                "eval index %s has no CLIP embeddings: matching by perceptual hash%s only",
                cfg.index,
                " and caption" if cfg.captions else "",
            )
        self.cfg, self.release_variants = cfg, release_variants

    def expand(self, samples):
        batches = samples | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=MAX_BATCH)
        return apply_with_drops(
            batches, "Match eval index", _MatchBatch(self.cfg, self.use_embeddings, self.release_variants)
        )
