"""The per-row parquet index and the build's counts.

Every input row ends in exactly one IndexRow (kept, with its key and shard, or dropped, with its
reason).  The index is written as parquet files under ``index/``; the counts per
(status, reason) and the shard list are written as small JSON files under ``_build/`` that the
launcher turns into manifest.json once the pipeline has finished.
"""

from __future__ import annotations

import json
import posixpath

import apache_beam as beam
import pyarrow as pa

from ..records import IndexRow
from .atomic import atomic_write

__all__ = ["WriteIndex", "WriteShardList", "WriteJsonLines", "INDEX_SCHEMA", "INDEX_DIR", "WORK_DIR"]

INDEX_DIR = "index"
WORK_DIR = "_build"

INDEX_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source_index", pa.int64()),
        ("row", pa.int64()),
        ("status", pa.string()),
        ("kind", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("stage", pa.string()),
        ("key", pa.string()),
        ("shard", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("doc_id", pa.string()),
        ("position", pa.int64()),
        ("language", pa.string()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("bytes", pa.int64()),
        ("similarity", pa.float64()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("duplicate_of", pa.string()),
        ("nsfw", pa.float64()),
        ("attempts", pa.int64()),
    ]
)
assert set(INDEX_SCHEMA.names) == set(IndexRow.__dataclass_fields__), "index schema and IndexRow disagree"


def _json_line(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def _index_dict(r: IndexRow) -> dict:
    """An IndexRow as the parquet writer's dict.  Its fields are all scalars, so a shallow copy is
    what ``dataclasses.asdict`` gives, at a fifteenth of its cost (asdict deep-copies field by field)."""
    return {name: getattr(r, name) for name in INDEX_SCHEMA.names}


# The index writer buffers a row group before writing it: Beam's default of 64 MiB made the worker
# that writes the index grow by about 1 kB per row up to that size (benchmarks/store.py, memory).
# Row groups of about 8 MiB (some 8,000 rows) cap it lower and read as well with pyarrow and DuckDB.
INDEX_ROW_GROUP_BYTES = 8 * 1024 * 1024


class WriteIndex(beam.PTransform):
    """IndexRows -> parquet index files, and the counts per (stage, status, reason) as JSON lines."""

    def __init__(self, output_dir: str, num_shards: int = 0):
        super().__init__()
        self.output_dir = output_dir
        self.num_shards = num_shards

    def expand(self, rows):
        dicts = rows | "Index rows as dicts" >> beam.Map(_index_dict)
        dicts | "Write index parquet" >> beam.io.WriteToParquet(
            posixpath.join(self.output_dir, INDEX_DIR, "index"),
            INDEX_SCHEMA,
            file_name_suffix=".parquet",
            num_shards=self.num_shards,
            row_group_buffer_size=INDEX_ROW_GROUP_BYTES,
        )
        return (
            rows
            | "Status and reason" >> beam.Map(lambda r: ((r.kind, r.stage or "", r.status, r.reason or ""), 1))
            | "Count per reason" >> beam.CombinePerKey(sum)
            | "Counts as JSON"
            >> beam.MapTuple(
                lambda k, n: _json_line(
                    {"kind": k[0], "stage": k[1], "status": k[2], "reason": k[3] or None, "count": n}
                )
            )
            | "Write counts" >> WriteJsonLines(posixpath.join(self.output_dir, WORK_DIR, "counts.jsonl"))
        )


def _write_lines(lines, path: str) -> str:
    atomic_write(path, "".join(line + "\n" for line in sorted(lines)).encode("utf-8"))
    return path


class WriteJsonLines(beam.PTransform):
    """JSON lines that fit one worker (the counts: a line per drop reason; the shard list: a line
    per shard, ~230k lines and ~25 MB for LAION-2B) -> one file at ``path``, sorted, written by one
    step.  Not ``WriteToText``: with ``num_shards=1`` it gathers the lines on one worker as well,
    and its initialise, write and finalise stages cost about 0.3 s of every local build.  A
    retried step writes the same file again whole."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, lines):
        return lines | "Gather lines" >> beam.combiners.ToList() | "Write file" >> beam.Map(_write_lines, self.path)


class WriteShardList(beam.PTransform):
    """Shard infos -> ``_build/shards.jsonl``, a JSON line per shard, for the manifest."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, shards):
        return (
            shards
            | "Shards as JSON" >> beam.Map(_json_line)
            | "Write shard list" >> WriteJsonLines(posixpath.join(self.output_dir, WORK_DIR, "shards.jsonl"))
        )
