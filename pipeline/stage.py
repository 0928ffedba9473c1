"""What every stage has in common: a main output of samples and a side output of drops.

A stage's DoFn yields a ``Sample`` to pass it on, or ``drop(sample, reason)`` to retire it with a
reason.  ``apply_with_drops`` wires the two outputs so a composite stage reads as one line, and
counts both in Beam metrics (visible in the runner's UI and in the build summary).
"""
from __future__ import annotations

from typing import Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from .records import IndexRow, Sample, dropped

DROPPED_TAG = "dropped"


def drop(sample: Sample, reason: str, stage: str, detail: Optional[str] = None, **extra) -> pvalue.TaggedOutput:
    Metrics.counter("drops", f"{stage}.{reason}").inc()
    return pvalue.TaggedOutput(DROPPED_TAG, dropped(sample, reason, stage, detail, **extra))


def apply_with_drops(pcoll, label: str, dofn: beam.DoFn, *args, **kwargs) -> Tuple[beam.PCollection, beam.PCollection]:
    """``pcoll | label >> ParDo(dofn)`` split into (samples passed on, IndexRows dropped)."""
    out = pcoll | label >> beam.ParDo(dofn, *args, **kwargs).with_outputs(DROPPED_TAG, main="kept")
    return out.kept, out[DROPPED_TAG]


class FlattenDrops(beam.PTransform):
    """All stages' drop outputs as one PCollection of IndexRow."""

    def expand(self, pcolls):
        return tuple(pcolls) | beam.Flatten()


__all__ = ["DROPPED_TAG", "drop", "apply_with_drops", "FlattenDrops", "IndexRow"]
