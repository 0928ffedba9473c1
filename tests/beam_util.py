"""Running a small Beam graph in-process and getting its PCollections back as lists."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from flamingo_corpus.runners.local import local_runner

# The in-process DirectRunner runs DoFns in this interpreter; a module-level sink is shared by
# reference (functions defined at module level are pickled by name), a closure would be copied.
_SINKS: dict = defaultdict(list)


def _collect(run_id: str, name: str, values) -> None:
    _SINKS[(run_id, name)].extend(values)


def local_pipeline(options: Optional[PipelineOptions] = None) -> TestPipeline:
    """A TestPipeline on the runner local builds use (the FnApiRunner, see flamingo_corpus.runners.local),
    not the DirectRunner, which would first try to download its Prism runner from GitHub."""
    options = options if options is not None else PipelineOptions([])
    return TestPipeline(runner=local_runner(options), options=options)


def run_collect(build) -> dict:
    """``build(p)`` returns {name: PCollection}; returns {name: list of its elements}."""
    run_id = uuid.uuid4().hex
    with local_pipeline() as p:
        outputs = build(p)
        for name, pcoll in outputs.items():
            (
                pcoll
                | f"All {name}" >> beam.combiners.ToList()
                | f"Collect {name}" >> beam.Map(lambda xs, n=name: _collect(run_id, n, xs))
            )
    return {name: _SINKS.pop((run_id, name), []) for name in outputs}
