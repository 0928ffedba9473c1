"""Exact image dedup across the whole build: one sample per encoded-image sha256.

The representative is deterministic, whatever order the runner delivers the group in: highest
CLIP similarity first, then the smallest input position.
"""
from __future__ import annotations

import apache_beam as beam

from .records import Sample
from .stage import apply_with_drops, drop

STAGE = "dedup"


def representative_order(s: Sample):
    sim = s.similarity if s.similarity is not None else float("-inf")
    return (-sim, s.source_index, s.row, s.position if s.position is not None else -1)


class _KeepBest(beam.DoFn):
    def process(self, item):
        _, group = item
        group = sorted(group, key=representative_order)
        yield group[0]
        for dup in group[1:]:
            yield drop(dup, "duplicate_image", STAGE, duplicate_of=group[0].id)


class DedupExactImages(beam.PTransform):
    def expand(self, samples):
        grouped = (
            samples
            | "Key by image sha256" >> beam.Map(lambda s: (s.sha256, s))
            | "Group identical images" >> beam.GroupByKey()
        )
        return apply_with_drops(grouped, "Keep best of each image", _KeepBest())
