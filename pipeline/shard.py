"""Numbering the kept samples and writing them into webdataset tars.

Numbering is deterministic and needs no global sort: kept samples are counted per input chunk
(``chunk_rows`` consecutive input rows of one file), the counts become offsets in one small side
input (one entry per chunk), and each chunk ranks its samples' ids by input position.  Rank r goes to shard
``r // samples_per_shard`` under the key ``%010d`` % r: the same input and recipe always give the
same shards, member for member and byte for byte (fixed tar mtime, sorted members, canonical
JSON), which is what makes re-running or resuming a build safe.

Tars are written in webdataset's layout (the bytes webdataset's ``TarWriter`` writes, see
``_write_members``) to a temporary name and renamed when complete, on any Beam filesystem
(local, gs://, s3://, hdfs://).  Right after the rename a small record of the shard (name,
sample count, bytes, sha256) is written under ``_build/complete/``: a build that is killed and
started again reuses a shard only when its record is there, the tar on disk matches it, and the
tar this run would write is that same tar (see ``_WriteShard``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import io
import posixpath
import tarfile
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from .index import WORK_DIR
from .records import KEPT, IndexRow, Sample
from .stage import DROPPED_TAG, DedupRule, drop, input_order

log = logging.getLogger(__name__)

KEY_DIGITS = 10
SHARD_DIGITS = 6
TAR_MTIME = 0.0  # fixed member mtime: reproducible bytes
TMP_SUFFIX = ".tmp"  # a tar being written; what an interrupted write leaves behind
COMPLETE_DIR = "complete"  # under the output's _build/: one record per shard written whole


def sample_key(rank: int) -> str:
    return f"{rank:0{KEY_DIGITS}d}"


def shard_name(shard: int) -> str:
    return f"{shard:0{SHARD_DIGITS}d}.tar"


def chunk_of(s: Sample, chunk_rows: int) -> str:
    return f"{s.source_index:06d}-{s.row // chunk_rows:012d}"


def chunk_offsets(counts: List[Tuple[str, int]]) -> Dict[str, int]:
    """{chunk: number of kept samples in all earlier chunks}."""
    offsets, total = {}, 0
    for chunk, n in sorted(counts):
        offsets[chunk] = total
        total += n
    return offsets


class _RankChunk(beam.DoFn):
    def process(self, item, offsets):
        chunk, positions = item
        base = offsets[chunk]
        for i, (*_, sample_id) in enumerate(sorted(positions)):
            yield sample_id, base + i


class _KeepFirstPosition(beam.DoFn):
    """One dedup key's small records -> the kept sample's (chunk, position), and (id, kept id)
    for each duplicate."""

    DUPLICATE_TAG = "duplicate"

    def process(self, item):
        _, group = item
        group = sorted(group, key=lambda rec: rec[:2])  # (order, id): total, whatever the delivery order
        (_, kept_id, chunk, position), *duplicates = group
        yield chunk, position
        for _, dup_id, _, _ in duplicates:
            yield beam.pvalue.TaggedOutput(self.DUPLICATE_TAG, (dup_id, kept_id))


class _RankOrDrop(beam.DoFn):
    """A sample met by its rank, or by the id of the duplicate that was kept in its place."""

    def __init__(self, dedup: Optional[DedupRule]):
        self.dedup = dedup

    def process(self, item):
        sample_id, joined = item
        (sample,) = joined["sample"]
        ranks, kept_as = joined["rank"], joined.get("duplicate_of", ())
        if ranks:
            yield ranks[0], sample
        elif kept_as:
            yield drop(sample, self.dedup.reason, self.dedup.stage, duplicate_of=kept_as[0])
        else:  # every sample is either ranked or a duplicate: anything else is a bug here
            raise RuntimeError(f"sample {sample_id!r} got neither a rank nor a duplicate verdict")


class NumberSamples(beam.PTransform):
    """Samples -> (rank, sample), ranks 0..n-1 in input order; with ``dedup``, also the drops of
    the duplicates it removes (a second output, IndexRows): ``(ranked, dropped)``.

    Only the small (position, id) tuples are grouped per chunk to be ranked; the ranks then meet
    their samples in a join by id, so no worker ever holds a chunk's images at once.  An exact
    dedup handed in as ``dedup`` is decided on small (key, order, id, position) records before the
    ranking (only the kept are ranked) and applied in that same join: the samples, images
    included, are shuffled once for both, where a dedup stage of its own would group them by its
    key first.
    """

    def __init__(self, chunk_rows: int, dedup: Optional[DedupRule] = None):
        super().__init__()
        self.chunk_rows = chunk_rows
        self.dedup = dedup

    def expand(self, samples):
        rows, rule = self.chunk_rows, self.dedup
        joined = {"sample": samples | "Key by id" >> beam.Map(lambda s: (s.id, s))}
        if rule is None:
            positions = samples | "Position in chunk" >> beam.Map(
                lambda s: (chunk_of(s, rows), (*input_order(s), s.id)))
        else:
            decided = (
                samples
                | "Dedup key and position" >> beam.Map(
                    lambda s: (rule.key(s), (rule.order(s), s.id, chunk_of(s, rows), (*input_order(s), s.id))))
                | "Group dedup key" >> beam.GroupByKey()
                | "Keep first per key" >> beam.ParDo(_KeepFirstPosition()).with_outputs(
                    _KeepFirstPosition.DUPLICATE_TAG, main="kept")
            )
            positions, joined["duplicate_of"] = decided.kept, decided[_KeepFirstPosition.DUPLICATE_TAG]
        offsets = (
            positions
            | "Count per chunk" >> beam.combiners.Count.PerKey()
            | "All chunk counts" >> beam.combiners.ToList()
            | "Chunk offsets" >> beam.Map(chunk_offsets)
        )
        joined["rank"] = (
            positions
            | "Group chunk" >> beam.GroupByKey()
            | "Rank within chunk" >> beam.ParDo(_RankChunk(), offsets=beam.pvalue.AsSingleton(offsets))
        )
        out = (joined | "Join ranks" >> beam.CoGroupByKey()
               | "Rank and sample" >> beam.ParDo(_RankOrDrop(rule)).with_outputs(DROPPED_TAG, main="ranked"))
        return out.ranked, out[DROPPED_TAG]


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
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


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


def write_tar(path: str, samples: Iterable[dict]) -> Tuple[int, int, str]:
    """Write webdataset samples to ``path`` atomically; returns (count, bytes, sha256)."""
    tmp = path + TMP_SUFFIX
    with FileSystems.create(tmp) as raw:
        out = _HashingWriter(raw)
        count = _write_members(out, samples)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
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
    with FileSystems.create(record_path(output_dir, info["name"])) as f:
        f.write(canonical_json(info))


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

    def _complete(self, name: str, path: str, ranked) -> Optional[dict]:
        record = read_record(self.output_dir, name)
        if record is None:
            return None
        found = [m for r in FileSystems.match([path]) for m in r.metadata_list]
        if len(found) != 1 or found[0].size_in_bytes != record["bytes"]:
            return None
        members = (self.to_members(sample_key(r), s) for r, s in ranked)
        if tar_digest(members) != (record["count"], record["bytes"], record["sha256"]):
            log.info("%s: on disk from an earlier run but with other samples; writing it again", name)
            return None
        if file_digest(path) != (record["bytes"], record["sha256"]):
            log.warning("%s: differs from its completion record; writing it again", name)
            return None
        return record

    def process(self, item):
        shard, ranked = item
        ranked = sorted(ranked, key=lambda rs: rs[0])
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
            members = (self.to_members(sample_key(r), s) for r, s in ranked)
            count, size, sha = write_tar(path, members)
            info = {"name": name, "count": count, "bytes": size, "sha256": sha}
            write_record(self.output_dir, info)
            Metrics.counter("shards", "written").inc()
        for r, s in ranked:
            key = sample_key(r)
            yield beam.pvalue.TaggedOutput(self.INDEX_TAG, IndexRow.from_sample(
                s, KEPT, stage=self.stage, key=key, shard=name))
            for child in s.children:  # MMC4: the images kept inside the document
                yield beam.pvalue.TaggedOutput(self.INDEX_TAG, dataclasses.replace(child, key=key, shard=name))
        yield {**info, "skipped": record is not None}


class WriteShards(beam.PTransform):
    """Kept samples -> webdataset tars in ``output_dir``; returns (shard infos, index rows).
    A shard info is {name, count, bytes, sha256, skipped}: ``skipped`` when a resumed build found
    the shard already complete and left it as it was.  The index rows are those of the samples
    written, and, with ``dedup`` (an exact dedup applied in the numbering, see
    ``NumberSamples``), those of the duplicates it dropped.

    ``to_members(key, sample)`` gives the tar members of one sample: the LAION and MMC4 paths
    share everything here but that function.
    """

    def __init__(self, output_dir: str, samples_per_shard: int, chunk_rows: int,
                 to_members: Callable[[str, Sample], dict], stage: str = "shard",
                 dedup: Optional[DedupRule] = None):
        super().__init__()
        self.output_dir = output_dir
        self.samples_per_shard = samples_per_shard
        self.chunk_rows = chunk_rows
        self.to_members = to_members
        self.stage = stage
        self.dedup = dedup

    def expand(self, samples):
        per = self.samples_per_shard
        ranked, duplicates = samples | "Number samples" >> NumberSamples(self.chunk_rows, self.dedup)
        out = (
            ranked
            | "Key by shard" >> beam.Map(lambda rs: (rs[0] // per, rs))
            | "Group shard" >> beam.GroupByKey()
            | "Write tar" >> beam.ParDo(_WriteShard(self.output_dir, self.to_members, self.stage)).with_outputs(
                _WriteShard.INDEX_TAG, main="shards")
        )
        if self.dedup is None:
            return out.shards, out[_WriteShard.INDEX_TAG]
        return out.shards, (out[_WriteShard.INDEX_TAG], duplicates) | "Index rows" >> beam.Flatten()
