"""The two stretches of the story that the LAION and MMC4 pipelines share, named once.

    Fetch images:  (Blocklist urls) -> Download and process images, through the image store
                   (the removal list screens the downloaded bytes there) -> (Blocklist images)
    Release images: after the last stage that looks at pixels (CLIP), a sample keeps where its
                   image is in the store, not the bytes: no shuffle after it moves an image
    Write output:  Write shards (the images read back from the store) -> Record shards
                   -> Every index row -> Write index

The corpora differ before the fetch (how samples are read and filtered) and between the fetch and
the output (CLIP, safety, dedup, alignment): laion/pipeline.py and mmc4/pipeline.py spell out
those parts and call these two for the rest.  A module of its own, beside the two pipelines that
use it, rather than in download/ or output/: ``FetchImages`` spans the download, image and safety
stages, and both composites are wiring of stages, not stages of their own.
"""

from __future__ import annotations

from typing import Callable, Optional

import apache_beam as beam

from .output.index import WriteIndex, WriteShardList
from .output.shard import WriteShards
from .recipe import Recipe, ShardConfig
from .records import Sample
from .safety.screen import ApplyBlocklist, read_removal_list
from .stage import DedupRule, Stages
from .store.blocks import StoreSpec
from .store.fetch import FetchBlocks

__all__ = ["FetchImages", "ReleaseImages", "WriteOutput"]


class FetchImages(beam.PTransform):
    """Samples with URLs -> (samples with processed images, every drop on the way).

    Downloading and processing go through the image store ``store`` (store/fetch.py): rows it
    holds are taken from it, the others fetched and written to it block by block.  With a
    removal list (``safety.blocklist``), it is read once and screens the URLs before anything is
    downloaded, the bytes as downloaded, and the encoded image and its pHash.
    """

    def __init__(self, recipe: Recipe, store: StoreSpec):
        super().__init__()
        self.recipe = recipe
        self.store = store

    def expand(self, samples):
        recipe, stage = self.recipe, Stages()
        removal = read_removal_list(samples.pipeline, recipe.safety) if recipe.safety.blocklist else None
        if removal is not None:
            samples = stage(samples, "Blocklist urls", ApplyBlocklist(removal, "url"))
        samples = stage(
            samples, "Download and process images", FetchBlocks(recipe.download, recipe.image, self.store, removal)
        )
        if removal is not None:
            samples = stage(samples, "Blocklist images", ApplyBlocklist(removal, "image"))
        return samples, tuple(stage.drops) | "Fetch drops" >> beam.Flatten()


def _release(s: Sample, keep_variants: bool = False) -> Sample:
    if not keep_variants:  # decontamination and near dup read them
        s = s.without_variants()
    if s.image_bytes is None or not s.stored_images:
        return s
    return s.replace(image_bytes=None, image_len=len(s.image_bytes))


class ReleaseImages(beam.PTransform):
    """Samples -> the same samples without their image bytes, which the store holds (they keep
    where: ``stored_images``, and how many bytes: ``image_len``).  Applied after the last stage
    that looks at pixels, so that no shuffle after it carries an image.  The variant hashes
    (``Sample.phash_variants``) go too, unless ``keep_variants`` (a build with decontamination,
    which tells low-detail images by them, or near dup)."""

    def __init__(self, keep_variants: bool = False):
        super().__init__()
        self.keep_variants = keep_variants

    def expand(self, samples):
        return samples | "Release image bytes" >> beam.Map(_release, self.keep_variants)


class WriteOutput(beam.PTransform):
    """(kept samples, *drop outputs) -> the tars, the shard list and the index of every input.

    ``to_members(key, sample)`` gives a kept sample's tar members, the one thing the corpora
    write differently; ``dedup`` is an exact dedup left to the shard numbering (``WriteShards``).
    """

    def __init__(
        self,
        cfg: ShardConfig,
        output_dir: str,
        to_members: Callable[[str, Sample], dict],
        dedup: Optional[DedupRule] = None,
    ):
        super().__init__()
        self.cfg, self.output_dir, self.to_members, self.dedup = cfg, output_dir, to_members, dedup

    def expand(self, inputs):
        kept, *drops = inputs
        shards, kept_index = kept | "Write shards" >> WriteShards(
            self.output_dir, self.cfg.samples_per_shard, self.to_members, dedup=self.dedup
        )
        shards | "Record shards" >> WriteShardList(self.output_dir)
        return (
            (kept_index, *drops)
            | "Every index row" >> beam.Flatten()
            | "Write index" >> WriteIndex(self.output_dir, self.cfg.index_shards)
        )
