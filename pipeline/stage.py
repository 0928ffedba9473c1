"""What every stage has in common: a main output of samples and a side output of drops.

A stage's DoFn yields a ``Sample`` to pass it on, or ``drop(sample, reason)`` to retire it with a
reason.  ``apply_with_drops`` wires the two outputs so a composite stage reads as one line, and
counts both in Beam metrics (visible in the runner's UI and in the build summary).
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from .progress import record
from .records import Sample, dropped

__all__ = [
    "Stages",
    "apply_with_drops",
    "drop",
    "duplicate_detail",
    "KeepOnePerKey",
    "DedupRule",
    "input_order",
    "DROPPED_TAG",
]

DROPPED_TAG = "dropped"


def drop(sample: Sample, reason: str, stage: str, detail: Optional[str] = None, **extra) -> pvalue.TaggedOutput:
    Metrics.counter("drops", f"{stage}.{reason}").inc()
    record(f"{stage} dropped")
    return pvalue.TaggedOutput(DROPPED_TAG, dropped(sample, reason, stage, detail, **extra))


def duplicate_detail(same: str, kept_id: str) -> str:
    """The detail of an exact-dedup drop: what the duplicate shares with the row kept, and its id."""
    return f"same {same} as {kept_id}"


def apply_with_drops(pcoll, label: str, dofn: beam.DoFn, *args, **kwargs) -> Tuple[beam.PCollection, beam.PCollection]:
    """``pcoll | label >> ParDo(dofn)`` split into (samples passed on, IndexRows dropped)."""
    out = pcoll | label >> beam.ParDo(dofn, *args, **kwargs).with_outputs(DROPPED_TAG, main="kept")
    return out.kept, out[DROPPED_TAG]


class _KeepFirst(beam.DoFn):
    def __init__(self, order: Callable[[Sample], tuple], reason: str, stage: str, same: str):
        self.order, self.reason, self.stage, self.same = order, reason, stage, same

    def process(self, item):
        _, group = item
        group = sorted(group, key=self.order)
        yield group[0]
        detail = duplicate_detail(self.same, group[0].id)
        for dup in group[1:]:
            yield drop(dup, self.reason, self.stage, detail=detail, duplicate_of=group[0].id)


class DedupRule(NamedTuple):
    """An exact dedup: samples with equal ``key`` are duplicates; the first by ``order`` (a total
    order) is kept, the others are dropped with ``reason`` at ``stage``, their detail naming what
    they share (``same``) and the one kept: "same sha256 as <id>"."""

    key: Callable[[Sample], str]
    order: Callable[[Sample], tuple]
    reason: str
    stage: str
    same: str = "key"

    def detail(self, kept_id: str) -> str:
        return duplicate_detail(self.same, kept_id)


class KeepOnePerKey(beam.PTransform):
    """Exact dedup: samples grouped by ``key``; the first by ``order`` is kept, the others are
    dropped with ``reason``, ``duplicate_of`` naming the one kept and the detail "same ``same`` as
    <its id>".  ``order`` must be total, so the choice does not depend on the order the runner
    delivers a group in."""

    def __init__(
        self,
        key: Callable[[Sample], str],
        order: Callable[[Sample], tuple],
        reason: str,
        stage: str,
        same: str = "key",
    ):
        super().__init__()
        self.key, self.order, self.reason, self.stage, self.same = key, order, reason, stage, same

    def expand(self, samples):
        key = self.key
        grouped = samples | "Key" >> beam.Map(lambda s: (key(s), s)) | "Group" >> beam.GroupByKey()
        return apply_with_drops(grouped, "Keep first", _KeepFirst(self.order, self.reason, self.stage, self.same))


def input_order(s: Sample) -> tuple:
    """Position in the input: file, row (or line), image position."""
    return (s.source_index, s.row, s.position if s.position is not None else -1)


class Stages:
    """Chains stages that return (kept, dropped) and keeps every drop output for the index."""

    def __init__(self):
        self.drops: List[beam.PCollection] = []

    def __call__(self, pcoll, label: str, transform):
        kept, dropped = pcoll | label >> transform
        self.drops.append(dropped)
        return kept
