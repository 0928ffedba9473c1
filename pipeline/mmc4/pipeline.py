"""The MMC4 interleaved pipeline: documents in, OpenFlamingo interleaved tars out.

Read MMC4 documents -> Filter documents -> Split into images and sentences
  -> Download images -> Process images        (the LAION path's own stages)
  -> Drop frequent images (optional: logos, buttons, ads found in many documents)
  -> Embed images and sentences with CLIP     (one model, one RunInference; with clip.enabled
                                               false, the release's own similarity matrix is used)
  -> Align images to sentences, document filters -> Write shards (+ index of documents and images)
"""

from __future__ import annotations

from typing import List

import apache_beam as beam

from ..dedup.near import DropFrequentImages
from ..dedup.semantic import semantic_dedup
from ..download.stage import DownloadImages
from ..images.process import ProcessImages
from ..output.index import WriteIndex, WriteShardList
from ..output.shard import WriteShards, canonical_json
from ..recipe import Recipe
from ..records import Sample
from ..safety.decontaminate import decontaminate
from ..safety.nsfw import score_nsfw
from ..safety.screen import read_removal_list, screen
from ..stage import Stages
from .documents import AssembleDocuments, FilterDocuments, ReadMmc4Documents, SplitDocuments


def mmc4_members(key: str, s: Sample) -> dict:
    """One MMC4 document in the OpenFlamingo contract: a single <key>.json member."""
    return {"__key__": key, "json": canonical_json({**s.document, "key": key})}


def _is_image(s: Sample, n: int) -> int:
    return 0 if s.image_bytes is not None else 1


def build_mmc4(p: beam.Pipeline, recipe: Recipe, inputs: List[str], output_dir: str) -> None:
    stage = Stages()
    removal = read_removal_list(p, recipe.safety)  # the recipe's removal list, read once for every screen
    docs = stage(p, "Read MMC4 documents", ReadMmc4Documents(inputs))
    docs = stage(docs, "Filter documents", FilterDocuments(recipe.mmc4))
    images, sentences, url_drops = docs | "Split into images and sentences" >> SplitDocuments(recipe.mmc4)
    stage.drops.append(url_drops)
    images = screen(images, removal, stage, "url")
    images = stage(images, "Download images", DownloadImages(recipe.download))
    images = screen(images, removal, stage, "download")
    images = stage(images, "Process images", ProcessImages(recipe.image))
    images = screen(images, removal, stage, "image")
    if recipe.dedup.max_image_documents is not None:
        images = stage(images, "Drop frequent images", DropFrequentImages(recipe.dedup.max_image_documents))
    if recipe.clip.enabled:
        from ..clip.stage import EmbedWithClip  # here: it pulls in torch, which a build without CLIP never needs

        embedded = (
            (images, sentences)
            | "Images and sentences" >> beam.Flatten()
            | "Embed with CLIP" >> EmbedWithClip(recipe.clip)
        )
        images, sentences = embedded | "Split embeddings" >> beam.Partition(_is_image, 2)
        if recipe.safety.nsfw_head:
            images = stage(images, "Score NSFW head", score_nsfw(recipe.safety))
        if recipe.dedup.semantic:  # across documents; off by default, as in mmc4
            images = stage(images, "Dedup semantic duplicates", semantic_dedup(recipe.dedup))
    # else: alignment uses the similarity matrix the release ships (mmc4: CLIP ViT-L/14).
    images = decontaminate(images, recipe, stage)  # eval-set images; sentences are left in place
    aligned = stage((docs, images, sentences), "Align documents", AssembleDocuments(recipe.mmc4))
    shards, kept_index = aligned | "Write shards" >> WriteShards(
        output_dir, recipe.shard.samples_per_shard, mmc4_members
    )
    shards | "Record shards" >> WriteShardList(output_dir)
    (
        (kept_index, *stage.drops)
        | "Every document and image" >> beam.Flatten()
        | "Write index" >> WriteIndex(output_dir, recipe.shard.index_shards)
    )
