"""Reading the input metadata: LAION parquet rows, one Sample per row.

Input files are matched once when the pipeline is built (sorted, so each file has a stable
``source_index``); then every parquet row group becomes its own unit of work, so a few huge files
still spread over many workers.  The row id is ``<file name>:<row>`` (the path below the common
folder where file names repeat): stable as long as the file is, and unique in the build.
"""
from __future__ import annotations

import logging
import math
import posixpath
from typing import Iterable, List, Tuple

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from .recipe import InputConfig, LaionColumns
from .records import Sample
from .stage import apply_with_drops, drop

log = logging.getLogger(__name__)

# Canonical names of the optional LAION columns, as the rest of the pipeline sees them in Sample.meta.
OPTIONAL_COLUMNS = ("width", "height", "similarity", "punsafe", "pwatermark", "language", "hash", "key")


def match_inputs(pattern: str) -> List[str]:
    """All files matching a path or glob on any Beam filesystem, sorted; an error if none."""
    paths = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    if not paths:
        raise FileNotFoundError(f"no input files match {pattern!r}")
    return paths


def source_names(paths: List[str]) -> List[str]:
    """Names of the input files in row ids: the file names, or where two inputs share a file
    name (shards of the same name in two folders), the paths below their common folder."""
    base = [posixpath.basename(p.rstrip("/")) for p in paths]
    if len(set(base)) == len(base):
        return base
    common = posixpath.commonpath([posixpath.dirname(p) for p in paths]) if "://" not in paths[0] else \
        posixpath.commonprefix([posixpath.dirname(p) + "/" for p in paths]).rsplit("/", 1)[0]
    return [p[len(common):].lstrip("/") for p in paths]


def input_units(paths: List[str]) -> List[Tuple[int, str, str]]:
    """(source_index, path, source name) of every input file."""
    return list(zip(range(len(paths)), paths, source_names(paths)))


class _ListRowGroups(beam.DoFn):
    """(source_index, path, name) -> one work item per parquet row group, with its first row number."""

    def process(self, item: Tuple[int, str, str]) -> Iterable[Tuple[int, str, str, int, int]]:
        source_index, path, name = item
        try:
            with FileSystems.open(path) as f:
                meta = pq.ParquetFile(f).metadata
        except Exception as e:  # an unreadable file is reported, the rest of the build goes on
            log.error("cannot read parquet footer of %s: %s", path, e)
            yield source_index, path, name, -1, 0
            return
        first = 0
        for rg in range(meta.num_row_groups):
            yield source_index, path, name, rg, first
            first += meta.row_group(rg).num_rows


def _value(v):
    """Parquet nulls and NaNs become None."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


class _ReadRowGroup(beam.DoFn):
    def __init__(self, columns: LaionColumns, limit):
        self.columns = columns
        self.limit = limit

    def process(self, item: Tuple[int, str, str, int, int]):
        source_index, path, name, rg, first = item
        if rg < 0:
            yield drop(Sample(id=f"{name}:*", source_index=source_index, row=-1, url=None),
                       "unreadable_input", "read", detail=path)
            return
        if self.limit is not None and first >= self.limit:
            return
        with FileSystems.open(path) as f:
            pf = pq.ParquetFile(f)
            present = set(pf.schema_arrow.names)
            wanted = {"url": self.columns.url, "caption": self.columns.caption}
            wanted.update({k: getattr(self.columns, k) for k in OPTIONAL_COLUMNS if getattr(self.columns, k)})
            available = {k: c for k, c in wanted.items() if c in present}
            table = pf.read_row_group(rg, columns=sorted(set(available.values())))
        data = {k: table.column(c).to_pylist() for k, c in available.items()}
        missing = [wanted[k] for k in ("url", "caption") if k not in available]
        for i in range(table.num_rows):
            row = first + i
            if self.limit is not None and row >= self.limit:
                break
            url, caption = data.get("url", [None] * table.num_rows)[i], data.get("caption", [None] * table.num_rows)[i]
            meta = {k: _value(data[k][i]) for k in OPTIONAL_COLUMNS if k in data}
            s = Sample(id=f"{name}:{row}", source_index=source_index, row=row,
                       url=url if isinstance(url, str) else None,
                       caption=caption if isinstance(caption, str) else None, meta=meta)
            if missing:
                yield drop(s, "missing_column", "read", detail=f"{path} has no column {', '.join(missing)}")
            else:
                yield s


class ReadLaionRows(beam.PTransform):
    """LAION metadata parquet files -> (Samples, drops for unreadable input)."""

    def __init__(self, config: InputConfig, paths: List[str]):
        super().__init__()
        self.config = config
        self.paths = paths

    def expand(self, pbegin):
        units = (
            pbegin
            | "Input files" >> beam.Create(input_units(self.paths))
            | "List row groups" >> beam.ParDo(_ListRowGroups())
            | "Spread row groups" >> beam.Reshuffle()
        )
        return apply_with_drops(units, "Read row groups", _ReadRowGroup(self.config.columns, self.config.limit))
