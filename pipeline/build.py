"""Running a build: recipe + output directory + Beam options -> tars, index, manifest, summary."""
from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from typing import List, Optional, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from .clip_model import resolve_pretrained
from .index import INDEX_DIR, WORK_DIR
from .manifest import MANIFEST, SIZES, BuildResult, collect, summary, write_manifest
from .recipe import Recipe
from .sources import match_inputs

log = logging.getLogger(__name__)


class OutputExists(RuntimeError):
    pass


def count_parquet_rows(paths: Sequence[str], limit: Optional[int]) -> int:
    """Input rows from the parquet footers: what the index must account for."""
    total = 0
    for path in paths:
        try:
            with FileSystems.open(path) as f:
                n = pq.ParquetFile(f).metadata.num_rows
        except Exception:  # an unreadable file is reported by the pipeline itself
            continue
        total += min(n, limit) if limit is not None else n
    return total


def _previous_outputs(output_dir: str) -> List[str]:
    patterns = ["*.tar", "*.tar.tmp", MANIFEST, SIZES, f"{INDEX_DIR}/*", f"{WORK_DIR}/*"]
    return [m.path for r in FileSystems.match([posixpath.join(output_dir, p) for p in patterns])
            for m in r.metadata_list]


def prepare_output(output_dir: str, overwrite: bool) -> None:
    old = _previous_outputs(output_dir)
    if old and not overwrite:
        raise OutputExists(f"{output_dir} already holds a build ({len(old)} files); pass --overwrite to replace it")
    if old:
        FileSystems.delete(old)
    if "://" not in output_dir and not FileSystems.exists(output_dir):
        FileSystems.mkdirs(output_dir)


@contextlib.contextmanager
def sample_web_for(recipe: Recipe):
    """The embedded loopback web server, when the recipe asks for it (sample builds)."""
    if not recipe.sample_web.enabled:
        yield None
        return
    from .sample_web import SampleWeb

    with SampleWeb(recipe.sample_web.root, port=recipe.sample_web.port) as web:
        log.info("sample web serving %s at %s", recipe.sample_web.root, web.url)
        yield web


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    opts = PipelineOptions(list(beam_args))
    opts.view_as(beam.options.pipeline_options.SetupOptions).save_main_session = False
    return opts


def run_build(recipe: Recipe, output_dir: str, beam_args: Sequence[str] = (), overwrite: bool = False) -> BuildResult:
    output_dir = output_dir.rstrip("/")
    inputs = match_inputs(recipe.input.path)
    if recipe.input.corpus == "laion":
        from .laion import build_laion as build
        rows_in, kind = count_parquet_rows(inputs, recipe.input.limit), "row"
    else:
        from .mmc4_pipeline import build_mmc4 as build
        rows_in, kind = None, "document"  # counting lines would read every shard twice
    prepare_output(output_dir, overwrite)
    if recipe.clip.enabled:
        resolve_pretrained(recipe.clip)  # builds the tiny synthetic-world CLIP here, not in every worker
    log.info("building %s: %d input files -> %s", recipe.name, len(inputs), output_dir)
    start = time.monotonic()
    with sample_web_for(recipe):
        with beam.Pipeline(options=pipeline_options(beam_args)) as p:
            build(p, recipe, inputs, output_dir)
    result = collect(output_dir, recipe, rows_in, time.monotonic() - start, kind=kind)
    write_manifest(result)
    return result


__all__ = ["run_build", "summary", "OutputExists"]
