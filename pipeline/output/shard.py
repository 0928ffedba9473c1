"""Numbering the kept samples and writing them into webdataset tars.

Shards follow the input, as img2dataset's do: the input is cut into blocks of
``samples_per_shard`` consecutive rows of one file, and the samples kept from a block make one
shard (no shard for a block that keeps none), so a shard holds at most ``samples_per_shard``
samples.  Keys are still global: rank r (``%010d`` % r) counts the kept samples before it in
input order.  Numbering needs no global sort: the kept samples of each block are counted on small
records, the counts become one small side input (first rank and shard number of each block), and
the samples, grouped by block, are ranked inside their group.  The images are therefore shuffled
once, by that grouping, and nothing else moves them before the tars are written.

The same input and recipe always give the same shards, member for member and byte for byte
(fixed tar mtime, sorted members, canonical JSON), which is what makes re-running or resuming a
build safe.

Tars are written in webdataset's layout (the bytes webdataset's ``TarWriter`` writes, see
``_write_members``) to a temporary name and renamed when complete, on any Beam filesystem
(local, gs://, s3://, hdfs://).  Right after the rename a small record of the shard (name,
sample count, bytes, sha256) is written under ``_build/complete/``: a build that is killed and
started again reuses a shard only when its record is there, the tar on disk matches it, and the
tar this run would write is that same tar (see ``_WriteShard``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import tarfile
import uuid
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ..progress import record
from ..records import KEPT, IndexRow, Sample
from ..stage import DROPPED_TAG, DedupRule, drop, input_order
from ..store.blocks import with_images
from .atomic import atomic_write
from .index import WORK_DIR

log = logging.getLogger(__name__)

__all__ = [
    "WriteShards",
    "NumberSamples",
    "canonical_json",
    "sample_key",
    "shard_name",
    "shard_layout",
    "write_tar",
    "KEY_DIGITS",
    "TAR_MTIME",
    "COMPLETE_DIR",
    "TMP_SUFFIX",
]

KEY_DIGITS = 10
SHARD_DIGITS = 6
# Fixed member mtime, for reproducible bytes.  An int: tarfile's (default) PAX format stores a
# float mtime in an extended header of its own, 1 KiB more for every member (3 KiB a LAION sample).
TAR_MTIME = 0
TMP_SUFFIX = ".tmp"  # a tar being written; what an interrupted write leaves behind
COMPLETE_DIR = "complete"  # under the output's _build/: one record per shard written whole


def sample_key(rank: int) -> str:
    return f"{rank:0{KEY_DIGITS}d}"


def shard_name(shard: int) -> str:
    return f"{shard:0{SHARD_DIGITS}d}.tar"


def block_of(s: Sample, rows_per_block: int) -> str:
    """The input block of a sample: ``rows_per_block`` consecutive rows of one input file."""
    return f"{s.source_index:06d}-{s.row // rows_per_block:012d}"


def shard_layout(counts: List[Tuple[str, int]]) -> Dict[str, Tuple[int, int, int]]:
    """{block: (rank of its first sample, its shard number, its sample count)} for the blocks
    that keep a sample, in block order: ranks and shard numbers are dense."""
    layout, rank, shard = {}, 0, 0
    for block, n in sorted(counts):
        if n:
            layout[block] = (rank, shard, n)
            rank += n
            shard += 1
    return layout


def _sort_key(s: Sample) -> tuple:
    return (*input_order(s), s.id)  # total: ids are unique


class _KeepFirstRecord(beam.DoFn):
    """One dedup key's small records -> the kept sample's block, and (block, (id, kept id)) for
    each duplicate."""

    DUPLICATE_TAG = "duplicate"

    def process(self, item):
        _, group = item
        group = sorted(group, key=lambda rec: rec[:2])  # (order, id): total, whatever the delivery order
        (_, kept_id, block), *duplicates = group
        yield block
        for _, dup_id, dup_block in duplicates:
            yield beam.pvalue.TaggedOutput(self.DUPLICATE_TAG, (dup_block, (dup_id, kept_id)))


class _RankBlock(beam.DoFn):
    """(block, samples) -> (shard number, [(rank, sample)] in input order); with a dedup, the
    block's duplicates (named by the ``duplicates`` side input) leave as drops instead."""

    def __init__(self, dedup: Optional[DedupRule]):
        self.dedup = dedup

    def process(self, item, layout, duplicates=None):
        block, samples = item
        kept_as = dict(duplicates[block]) if duplicates is not None else {}
        kept = []
        for s in samples:
            if s.id in kept_as:
                kept_id = kept_as[s.id]
                yield drop(s, self.dedup.reason, self.dedup.stage, self.dedup.detail(kept_id), duplicate_of=kept_id)
            else:
                kept.append(s)
        if not kept:
            return
        first, shard, count = layout[block]
        if len(kept) != count:  # the counts and the groups come from the same samples: a bug here
            raise RuntimeError(f"block {block}: {len(kept)} samples to rank, {count} counted")
        kept.sort(key=_sort_key)
        yield shard, [(first + i, s) for i, s in enumerate(kept)]


class NumberSamples(beam.PTransform):
    """Samples -> shards to write, ``(shard number, [(rank, sample)])`` with ranks 0..n-1 in
    input order; with ``dedup``, also the drops of the duplicates it removes (a second output,
    IndexRows): ``(shards, dropped)``.

    A shard is the kept samples of one input block (``rows_per_block`` rows, see the module
    docstring).  Blocks are counted on small (block) records; the samples are grouped by block
    once and ranked in the group.  An exact dedup handed in as ``dedup`` is decided on small
    (key, order, id, block) records before the counting (only the kept are counted), and its
    verdicts reach the groups as a side input keyed by block: the images are shuffled once for
    the dedup, the numbering and the sharding, where a dedup stage of its own would group them by
    its key first.
    """

    def __init__(self, rows_per_block: int, dedup: Optional[DedupRule] = None):
        super().__init__()
        self.rows_per_block = rows_per_block
        self.dedup = dedup

    def expand(self, samples):
        rows, rule = self.rows_per_block, self.dedup
        side = {}
        if rule is None:
            blocks = samples | "Block of each sample" >> beam.Map(lambda s: block_of(s, rows))
        else:
            decided = (
                samples
                | "Dedup key and block" >> beam.Map(lambda s: (rule.key(s), (rule.order(s), s.id, block_of(s, rows))))
                | "Group dedup key" >> beam.GroupByKey()
                | "Keep first per key"
                >> beam.ParDo(_KeepFirstRecord()).with_outputs(_KeepFirstRecord.DUPLICATE_TAG, main="kept")
            )
            blocks = decided.kept
            side["duplicates"] = beam.pvalue.AsMultiMap(decided[_KeepFirstRecord.DUPLICATE_TAG])
        layout = (
            blocks
            | "Count per block" >> beam.combiners.Count.PerElement()
            | "All block counts" >> beam.combiners.ToList()
            | "Shard layout" >> beam.Map(shard_layout)
        )
        out = (
            samples
            | "Key by block" >> beam.Map(lambda s: (block_of(s, rows), s))
            | "Group block" >> beam.GroupByKey()
            | "Rank block"
            >> beam.ParDo(_RankBlock(rule), layout=beam.pvalue.AsSingleton(layout), **side).with_outputs(
                DROPPED_TAG, main="shards"
            )
        )
        return out.shards, out[DROPPED_TAG]


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through (to ``f``, or nowhere
    when ``f`` is None: the size and sha256 a tar would have, without writing it)."""

    def __init__(self, f=None):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b) if self.f is not None else len(b)

    def flush(self):
        pass


def canonical_json(obj) -> bytes:
    """``obj`` as compact, key-sorted UTF-8 JSON. Strict JSON: a NaN or infinity (which Python's
    json would write as the non-JSON ``NaN``/``Infinity``, and which MMC4 lines may carry, since
    Python reads those words) is written as null."""
    try:
        text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.encode("utf-8")


def _finite(obj):
    """``obj`` with every float that is not finite replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


TAR_USER = TAR_GROUP = "bigdata"  # webdataset's TarWriter defaults
TAR_MODE = 0o444


def _write_members(out: _HashingWriter, samples: Iterable[dict]) -> int:
    """Stream webdataset samples into a tar: per sample, its members ``<key>.<ext>`` sorted by
    extension, fixed mtime, mode, user and group.

    These are exactly the tarfile calls of ``webdataset.TarWriter(out, mtime=TAR_MTIME,
    encoder=False)`` (0.2.x; its ``format`` argument never reaches tarfile, so the format is
    tarfile's default), so the bytes are the same.  They are made here because importing
    webdataset imports torch when it is installed: ~1.5 CPU-s and ~500 MiB in every worker
    process, which a build with CLIP off has no other use for.
    """
    count = 0
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext in sorted(k for k in sample if not k.startswith("_")):
                data = sample[ext]
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise ValueError(f"{key}.{ext} is {type(data).__name__}, not bytes")
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), TAR_MTIME, TAR_MODE
                info.uname, info.gname = TAR_USER, TAR_GROUP
                tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def tmp_tar_path(path: str) -> str:
    """Where ``write_tar`` writes ``path`` before the rename: a name of its own for every attempt
    (``000001-<8 hex>.tar.tmp``), so that two attempts at one shard (a retried bundle whose first
    attempt still runs on a lost worker, a speculative copy) never write into one file."""
    assert path.endswith(".tar"), path
    return f"{path[: -len('.tar')]}-{uuid.uuid4().hex[:8]}.tar{TMP_SUFFIX}"


def write_tar(path: str, samples: Iterable[dict]) -> Tuple[int, int, str]:
    """Write webdataset samples to ``path`` atomically; returns (count, bytes, sha256).  Writing
    the same samples again (a retried bundle) gives the same bytes under the same name."""
    tmp = tmp_tar_path(path)
    try:
        with FileSystems.create(tmp) as raw:
            out = _HashingWriter(raw)
            count = _write_members(out, samples)
    except BaseException:  # a full disk, a bad member, a kill signal: no partial tar stays behind
        with contextlib.suppress(Exception):
            if FileSystems.exists(tmp):
                FileSystems.delete([tmp])
        raise
    if "://" not in path:
        os.replace(tmp, path)  # atomic, over a tar an earlier attempt renamed (Beam's rename may refuse)
    else:
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])
    record("written", count)
    return count, out.size, out.sha.hexdigest()


def tar_digest(samples: Iterable[dict]) -> Tuple[int, int, str]:
    """(count, bytes, sha256) of the tar ``write_tar`` would write, computed without writing it."""
    out = _HashingWriter()
    count = _write_members(out, samples)
    return count, out.size, out.sha.hexdigest()


def file_digest(path: str, block: int = 1 << 20) -> Tuple[int, str]:
    """(bytes, sha256) of a file on any Beam filesystem, read in blocks."""
    sha, size = hashlib.sha256(), 0
    with FileSystems.open(path) as f:
        while True:
            b = f.read(block)
            if not b:
                return size, sha.hexdigest()
            sha.update(b)
            size += len(b)


def records_dir(output_dir: str) -> str:
    return posixpath.join(output_dir, WORK_DIR, COMPLETE_DIR)


def record_path(output_dir: str, name: str) -> str:
    return posixpath.join(records_dir(output_dir), name + ".json")


def read_record(output_dir: str, name: str) -> Optional[dict]:
    """The completion record of shard ``name``, or None when there is none or it is unreadable
    (a record cut short by a kill is as good as none: the shard is written again)."""
    path = record_path(output_dir, name)
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            record = json.loads(f.read())
        return record if all(k in record for k in ("name", "count", "bytes", "sha256")) else None
    except Exception:  # noqa: BLE001 - any unreadable record means "not complete"
        return None


def write_record(output_dir: str, info: dict) -> None:
    """The completion record, written whole or not at all (a retried bundle writes it again)."""
    atomic_write(record_path(output_dir, info["name"]), canonical_json(info))


class _WriteShard(beam.DoFn):
    """(shard number, [(rank, sample)]) -> shard info dict, plus index rows of kept samples.

    A shard already complete on disk is not written again: a resumed build would write the same
    bytes anyway.  "Complete" is checked, not assumed: the completion record must be there, the
    tar must have the record's size and sha256, and the tar this run would write must be that
    tar.  The last check matters because the web changes between runs (a URL that failed before
    may answer now and shift every later rank); it costs encoding the tar in memory and reading
    the file back, not writing it.  Anything short of that and the shard is written afresh, its
    stale record removed first, so a record always describes a tar that was renamed whole.
    """

    INDEX_TAG = "index"

    def __init__(self, output_dir: str, to_members: Callable[[str, Sample], dict], stage: str):
        self.output_dir = output_dir
        self.to_members = to_members
        self.stage = stage

    def _members(self, ranked) -> Iterable[dict]:
        """The tar members of the ranked samples, their images read back from the store block by block."""
        samples = with_images([s for _, s in ranked])
        return (self.to_members(sample_key(r), s) for (r, _), s in zip(ranked, samples))

    def _complete(self, name: str, path: str, ranked) -> Optional[dict]:
        record = read_record(self.output_dir, name)
        if record is None:
            return None
        found = [m for r in FileSystems.match([path]) for m in r.metadata_list]
        if len(found) != 1 or found[0].size_in_bytes != record["bytes"]:
            return None
        members = self._members(ranked)
        if tar_digest(members) != (record["count"], record["bytes"], record["sha256"]):
            log.info("%s: on disk from an earlier run but with other samples; writing it again", name)
            return None
        if file_digest(path) != (record["bytes"], record["sha256"]):
            log.warning("%s: differs from its completion record; writing it again", name)
            return None
        return record

    def process(self, item):
        shard, ranked = item  # in rank order (NumberSamples)
        name = shard_name(shard)
        path = posixpath.join(self.output_dir, name)
        record = self._complete(name, path, ranked)
        if record is not None:
            Metrics.counter("shards", "skipped_complete").inc()
            info = {"name": name, "count": record["count"], "bytes": record["bytes"], "sha256": record["sha256"]}
        else:
            stale = record_path(self.output_dir, name)
            if FileSystems.exists(stale):
                FileSystems.delete([stale])
            members = self._members(ranked)
            count, size, sha = write_tar(path, members)
            info = {"name": name, "count": count, "bytes": size, "sha256": sha}
            write_record(self.output_dir, info)
            Metrics.counter("shards", "written").inc()
        for r, s in ranked:
            key = sample_key(r)
            yield beam.pvalue.TaggedOutput(
                self.INDEX_TAG, IndexRow.from_sample(s, KEPT, stage=self.stage, key=key, shard=name)
            )
            for child in s.children:  # MMC4: the images kept inside the document
                yield beam.pvalue.TaggedOutput(self.INDEX_TAG, dataclasses.replace(child, key=key, shard=name))
        yield {**info, "skipped": record is not None}


class WriteShards(beam.PTransform):
    """Kept samples -> webdataset tars in ``output_dir``; returns (shard infos, index rows).
    A shard info is {name, count, bytes, sha256, skipped}: ``skipped`` when a resumed build found
    the shard already complete and left it as it was.  The index rows are those of the samples
    written, and, with ``dedup`` (an exact dedup applied in the numbering, see
    ``NumberSamples``), those of the duplicates it dropped.

    A shard holds the kept samples of ``samples_per_shard`` consecutive input rows (fewer when
    rows were dropped), as img2dataset's shards do.  ``to_members(key, sample)`` gives the tar
    members of one sample: the LAION and MMC4 paths share everything here but that function.
    """

    def __init__(
        self,
        output_dir: str,
        samples_per_shard: int,
        to_members: Callable[[str, Sample], dict],
        stage: str = "shard",
        dedup: Optional[DedupRule] = None,
    ):
        super().__init__()
        self.output_dir = output_dir
        self.samples_per_shard = samples_per_shard
        self.to_members = to_members
        self.stage = stage
        self.dedup = dedup

    def expand(self, samples):
        shards, duplicates = samples | "Number samples" >> NumberSamples(self.samples_per_shard, self.dedup)
        out = shards | "Write tar" >> beam.ParDo(
            _WriteShard(self.output_dir, self.to_members, self.stage)
        ).with_outputs(_WriteShard.INDEX_TAG, main="shards")
        if self.dedup is None:
            return out.shards, out[_WriteShard.INDEX_TAG]
        return out.shards, (out[_WriteShard.INDEX_TAG], duplicates) | "Index rows" >> beam.Flatten()
