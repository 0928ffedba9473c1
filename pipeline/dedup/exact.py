"""Exact image dedup across the whole build: one sample per encoded-image sha256.

The representative is deterministic, whatever order the runner delivers the group in: highest
CLIP similarity first, then the smallest input position.
"""

from __future__ import annotations

import apache_beam as beam

from ..records import Sample
from ..stage import DedupRule, KeepOnePerKey, input_order

__all__ = ["DedupExactImages", "EXACT_IMAGES", "representative_order"]

STAGE = "dedup"


def representative_order(s: Sample):
    """Highest similarity first, then input order."""
    sim = s.similarity if s.similarity is not None else float("-inf")
    return (-sim, *input_order(s))


def image_sha256(s: Sample) -> str:
    return s.sha256


EXACT_IMAGES = DedupRule(image_sha256, representative_order, "duplicate_image", STAGE, "sha256")


class DedupExactImages(beam.PTransform):
    """One sample per encoded-image sha256, as a stage of its own: the samples, images included,
    are grouped by sha256.  When no other dedup follows, the LAION path instead hands
    ``EXACT_IMAGES`` to the shard numbering (``WriteShards(dedup=...)``), which decides it on
    small (sha256, id) records and applies it in the join it makes anyway: the same drops, and
    the images cross one shuffle fewer."""

    def expand(self, samples):
        return samples | "One sample per image sha256" >> KeepOnePerKey(*EXACT_IMAGES)
