"""The MMC4 interleaved pipeline: documents in, OpenFlamingo interleaved tars out.

Read MMC4 documents -> Filter documents -> Split into images and sentences
  -> Fetch images                   (shared with the LAION path: removal-list screens, download,
                                     image processing, the image store; shared.py)
  -> (Drop frequent images)         (logos, buttons, ads found in many documents)
  -> (Embed with CLIP)              (images and sentences, one model, one RunInference; with
                                     clip.enabled false, the release's own similarity matrix is
                                     used) -> (Score NSFW head) -> (Dedup semantic duplicates)
  -> (Decontaminate against eval sets)
  -> Align documents                (with mmc4.windows: cut into OpenFlamingo windows, windows.py)
  -> Write output (shared: shards + index of documents, images and windows)
"""

from __future__ import annotations

from typing import List, Optional

import apache_beam as beam

from ..dedup.near import DropFrequentImages
from ..output.shard import canonical_json
from ..recipe import Recipe
from ..records import Sample
from ..safety.decontaminate import Decontaminate
from ..safety.nsfw import ScoreNsfw
from ..shared import FetchImages, ReleaseImages, WriteOutput
from ..stage import Stages
from ..store.blocks import StoreSpec, default_spec
from .documents import AssembleDocuments, FilterDocuments, ReadMmc4Documents, SplitDocuments
from .windows import check_windows

__all__ = ["build_mmc4", "mmc4_members"]


def mmc4_members(key: str, s: Sample) -> dict:
    """One MMC4 document in the OpenFlamingo contract: a single <key>.json member."""
    return {"__key__": key, "json": canonical_json({**s.document, "key": key})}


def _is_image(s: Sample, n: int) -> int:
    return 0 if s.image_bytes is not None or s.stored_images else 1


def build_mmc4(
    p: beam.Pipeline, recipe: Recipe, inputs: List[str], output_dir: str, store: Optional[StoreSpec] = None
) -> None:
    """Add the MMC4 stages to ``p``: the jsonl shards ``inputs`` -> tars and index in
    ``output_dir``, the images fetched through ``store`` (default: ``<output_dir>/_build/store``)."""
    store = store or default_spec(recipe, inputs, output_dir)
    check_windows(recipe.mmc4.windows)  # a tokenizer file that does not load: one line here, not per worker
    stage = Stages()
    docs = stage(p, "Read MMC4 documents", ReadMmc4Documents(inputs))
    docs = stage(docs, "Filter documents", FilterDocuments(recipe.mmc4))
    split = SplitDocuments(recipe.mmc4, release_matrix=not recipe.clip.enabled)
    images, sentences, url_drops = docs | "Split into images and sentences" >> split
    stage.drops.append(url_drops)
    images = stage(images, "Fetch images", FetchImages(recipe, store))
    if recipe.dedup.max_image_documents is not None:
        images = stage(images, "Drop frequent images", DropFrequentImages(recipe.dedup))
    if recipe.clip.enabled:
        from ..clip.stage import EmbedWithClip  # here: it pulls in torch, which a build without CLIP never needs

        embedded = (
            (images, sentences)
            | "Images and sentences" >> beam.Flatten()
            | "Embed with CLIP" >> EmbedWithClip(recipe.clip)
        )
        images, sentences = embedded | "Split embeddings" >> beam.Partition(_is_image, 2)
    # No stage after this one looks at pixels; decontamination tells low-detail images by their
    # variant hashes, and releases them.
    images = images | "Release images" >> ReleaseImages(keep_variants=bool(recipe.decontamination.index))
    if recipe.clip.enabled:
        if recipe.safety.nsfw_head:
            images = stage(images, "Score NSFW head", ScoreNsfw(recipe.safety))
        if recipe.dedup.semantic:  # across documents; off by default, as in mmc4
            from ..dedup.semantic import DedupSemantic  # here: it imports scipy.cluster

            images = stage(images, "Dedup semantic duplicates", DedupSemantic(recipe.dedup))
    # else: alignment uses the similarity matrix the release ships (mmc4: CLIP ViT-L/14).
    if recipe.decontamination.index:  # eval-set images; sentences are left in place
        images = stage(
            images,
            "Decontaminate against eval sets",
            Decontaminate(recipe.decontamination, recipe.clip, release_variants=True),
        )
    aligned = stage((docs, images, sentences), "Align documents", AssembleDocuments(recipe.mmc4))
    (aligned, *stage.drops) | "Write output" >> WriteOutput(recipe.shard, output_dir, mmc4_members)
