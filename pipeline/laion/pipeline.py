"""The LAION image-text pipeline: parquet rows in, OpenFlamingo-ready tars out.

    Read LAION rows -> Filter metadata -> (Blocklist URLs) -> Download images
      -> (Blocklist downloads) -> Process images -> (Blocklist images)
      -> Score with CLIP -> (Score NSFW head) -> Dedup exact images -> (Dedup near images)
      -> (Dedup semantic duplicates)
      -> Write shards (+ index of every row)

Exact image dedup is a stage of its own when near or semantic dedup follow it; otherwise it is
decided inside "Write shards" (see ``DedupExactImages``).
"""

from __future__ import annotations

from typing import List

import apache_beam as beam

from ..dedup.exact import EXACT_IMAGES, DedupExactImages
from ..dedup.near import DedupNearImages
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
from .metadata import FilterMetadata
from .read import ReadLaionRows

EXTENSIONS = {"jpg": "jpg", "png": "png"}


def laion_members(key: str, s: Sample) -> dict:
    """One LAION sample in the OpenFlamingo contract: <key>.jpg|png, <key>.txt, <key>.json."""
    provenance = {
        "key": key,
        "id": s.id,
        "url": s.url,
        "caption": s.caption,
        "original_width": s.original_width,
        "original_height": s.original_height,
        "width": s.width,
        "height": s.height,
        "similarity": s.similarity,
        "sha256": s.sha256,
        "phash": s.phash,
        "language": s.language,
        "source": {"index": s.source_index, "row": s.row},
        "metadata": s.meta,
    }
    return {
        "__key__": key,
        EXTENSIONS[s.image_format]: s.image_bytes,
        "txt": s.caption.encode("utf-8"),
        "json": canonical_json(provenance),
    }


def build_laion(p: beam.Pipeline, recipe: Recipe, inputs: List[str], output_dir: str) -> None:
    stage = Stages()
    removal = read_removal_list(p, recipe.safety)  # the recipe's removal list, read once for every screen
    rows = stage(p, "Read LAION rows", ReadLaionRows(recipe.input, inputs))
    rows = stage(rows, "Filter metadata", FilterMetadata(recipe.filters))
    rows = screen(rows, removal, stage, "url")
    rows = stage(rows, "Download images", DownloadImages(recipe.download))
    rows = screen(rows, removal, stage, "download")
    rows = stage(rows, "Process images", ProcessImages(recipe.image))
    rows = screen(rows, removal, stage, "image")
    if recipe.clip.enabled:
        # Imported here: flamingo_corpus.clip.stage pulls in torch (through Beam's RunInference), and every
        # worker imports this module (laion_members is pickled by reference), so a build with CLIP
        # off would pay torch's import (~1.5 CPU-s and ~500 MiB per worker) for nothing.
        from ..clip.stage import ScoreWithClip

        rows = stage(rows, "Score with CLIP", ScoreWithClip(recipe.clip))
    rows = decontaminate(rows, recipe, stage)  # eval-set images and captions (decontamination.index)
    if recipe.safety.nsfw_head:
        rows = stage(rows, "Score NSFW head", score_nsfw(recipe.safety))
    exact_in_numbering = recipe.dedup.exact and not (recipe.dedup.near or recipe.dedup.semantic)
    if recipe.dedup.exact and not exact_in_numbering:  # near and semantic dedup see unique images
        rows = stage(rows, "Dedup exact images", DedupExactImages())
    if recipe.dedup.near:
        rows = stage(
            rows, "Dedup near images", DedupNearImages(recipe.dedup.near_max_distance, bands=recipe.dedup.near_bands)
        )
    if recipe.dedup.semantic:
        from ..dedup.semantic import semantic_dedup  # here for the same reason: it imports scipy.cluster

        rows = stage(rows, "Dedup semantic duplicates", semantic_dedup(recipe.dedup))
    # When exact dedup is the last dedup, the shard numbering decides it on (sha256, id) records
    # and applies it in the join it makes anyway: one shuffle of the images fewer (DedupExactImages).
    shards, kept_index = rows | "Write shards" >> WriteShards(
        output_dir, recipe.shard.samples_per_shard, laion_members, dedup=EXACT_IMAGES if exact_in_numbering else None
    )
    shards | "Record shards" >> WriteShardList(output_dir)
    (
        (kept_index, *stage.drops)
        | "Every row" >> beam.Flatten()
        | "Write index" >> WriteIndex(output_dir, recipe.shard.index_shards)
    )
