"""The LAION image-text pipeline: parquet rows in, OpenFlamingo-ready tars out.

    Read LAION rows -> Filter metadata -> Fetch images -> (Score with CLIP) -> Release images
      -> (Decontaminate against eval sets) -> (Score NSFW head) -> (Dedup exact images)
      -> (Dedup near images) -> (Dedup semantic duplicates) -> Write output

"Fetch images", "Release images" and "Write output" are the parts the MMC4 pipeline shares (shared.py): removal-list
screens, download and image processing; shards and the index of every row.  Exact image dedup is
a stage of its own when near or semantic dedup follow it; otherwise it is decided inside "Write
output" (see ``DedupExactImages``).
"""

from __future__ import annotations

from typing import List, Optional

import apache_beam as beam

from ..dedup.exact import EXACT_IMAGES, DedupExactImages
from ..dedup.near import DedupNearImages
from ..output.shard import canonical_json
from ..recipe import Recipe
from ..records import Sample
from ..safety.decontaminate import Decontaminate
from ..safety.nsfw import ScoreNsfw
from ..shared import FetchImages, ReleaseImages, WriteOutput
from ..stage import Stages
from ..store.blocks import StoreSpec, default_spec
from .metadata import FilterMetadata
from .read import ReadLaionRows

__all__ = ["build_laion", "laion_members"]

EXTENSIONS = {"jpg": "jpg", "png": "png"}


def laion_members(key: str, s: Sample) -> dict:
    """One LAION sample in the OpenFlamingo contract: <key>.jpg|png, <key>.txt, <key>.json."""
    assert s.image_format is not None and s.caption is not None  # a kept LAION sample has both
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


def build_laion(
    p: beam.Pipeline, recipe: Recipe, inputs: List[str], output_dir: str, store: Optional[StoreSpec] = None
) -> None:
    """Add the LAION stages to ``p``: the parquet files ``inputs`` -> tars and index in
    ``output_dir``, the images fetched through ``store`` (default: ``<output_dir>/_build/store``)."""
    store = store or default_spec(recipe, inputs, output_dir)
    stage = Stages()
    rows = stage(p, "Read LAION rows", ReadLaionRows(recipe.input, inputs))
    rows = stage(rows, "Filter metadata", FilterMetadata(recipe.filters))
    rows = stage(rows, "Fetch images", FetchImages(recipe, store))
    if recipe.clip.enabled:
        # Imported here: flamingo_corpus.clip.stage pulls in torch (through Beam's RunInference), and every
        # worker imports this module (laion_members is pickled by reference), so a build with CLIP
        # off would pay torch's import (~1.5 CPU-s and ~500 MiB per worker) for nothing.
        from ..clip.stage import ScoreWithClip

        rows = stage(rows, "Score with CLIP", ScoreWithClip(recipe.clip))
    # no stage after this one looks at pixels (nor, but decontamination and near dup, at the
    # variant hashes: decontamination tells low-detail images by them, and releases them)
    decontaminate = bool(recipe.decontamination.index)
    rows = rows | "Release images" >> ReleaseImages(keep_variants=recipe.dedup.near or decontaminate)
    if decontaminate:  # eval-set images and captions
        rows = stage(
            rows,
            "Decontaminate against eval sets",
            Decontaminate(recipe.decontamination, recipe.clip, release_variants=not recipe.dedup.near),
        )
    if recipe.safety.nsfw_head:
        rows = stage(rows, "Score NSFW head", ScoreNsfw(recipe.safety))
    exact_in_numbering = recipe.dedup.exact and not (recipe.dedup.near or recipe.dedup.semantic)
    if recipe.dedup.exact and not exact_in_numbering:  # near and semantic dedup see unique images
        rows = stage(rows, "Dedup exact images", DedupExactImages())
    if recipe.dedup.near:
        rows = stage(rows, "Dedup near images", DedupNearImages(recipe.dedup))
    if recipe.dedup.semantic:
        from ..dedup.semantic import DedupSemantic  # here for the same reason: it imports scipy.cluster

        rows = stage(rows, "Dedup semantic duplicates", DedupSemantic(recipe.dedup))
    # When exact dedup is the last dedup, the shard numbering decides it on (sha256, id) records
    # and applies it in the join it makes anyway: one shuffle of the images fewer (DedupExactImages).
    (rows, *stage.drops) | "Write output" >> WriteOutput(
        recipe.shard, output_dir, laion_members, dedup=EXACT_IMAGES if exact_in_numbering else None
    )
