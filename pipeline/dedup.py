"""Exact image dedup across the whole build: one sample per encoded-image sha256.

The representative is deterministic, whatever order the runner delivers the group in: highest
CLIP similarity first, then the smallest input position.
"""
from __future__ import annotations

import apache_beam as beam

from .records import Sample
from .stage import KeepOnePerKey, input_order

STAGE = "dedup"


def representative_order(s: Sample):
    """Highest similarity first, then input order."""
    sim = s.similarity if s.similarity is not None else float("-inf")
    return (-sim, *input_order(s))


class DedupExactImages(beam.PTransform):
    """One sample per encoded-image sha256."""

    def expand(self, samples):
        return samples | "One sample per image sha256" >> KeepOnePerKey(
            lambda s: s.sha256, representative_order, "duplicate_image", STAGE)
