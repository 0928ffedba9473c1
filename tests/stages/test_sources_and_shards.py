"""Reading LAION parquet into samples, and numbering and writing samples into shards."""

from __future__ import annotations

import hashlib
import random
import tarfile

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flamingo_corpus.dedup.exact import EXACT_IMAGES, DedupExactImages
from flamingo_corpus.inputs import match_inputs
from flamingo_corpus.laion.read import ReadLaionRows
from flamingo_corpus.output.shard import NumberSamples, sample_key, shard_layout, shard_name, write_tar
from flamingo_corpus.recipe import InputConfig, LaionColumns
from flamingo_corpus.records import Sample

from ..beam_util import run_collect


def _run_read(paths, config=None):
    config = config or InputConfig()

    def build(p):
        kept, dropped = p | ReadLaionRows(config, paths)
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    return out["kept"], out["dropped"]


def test_rows_of_every_row_group_get_stable_ids_and_metadata(tmp_path):
    n = 250
    table = pa.table(
        {
            "URL": [f"http://example.com/{i}.jpg" for i in range(n)],
            "TEXT": [f"caption {i}" for i in range(n)],
            "WIDTH": list(range(n)),
            "punsafe": [float("nan") if i % 7 == 0 else 0.01 * (i % 100) for i in range(n)],
        }
    )
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path, row_group_size=64)  # 4 row groups
    kept, dropped = _run_read([str(path)])
    assert dropped == []
    by_row = {s.row: s for s in kept}
    assert sorted(by_row) == list(range(n))
    for i, s in by_row.items():
        assert s.id == f"part-00000.parquet:{i}" and s.url == f"http://example.com/{i}.jpg"
        assert s.caption == f"caption {i}" and s.meta["width"] == i
        assert "height" not in s.meta  # optional column absent: no error, no value
        assert s.meta["punsafe"] is None if i % 7 == 0 else s.meta["punsafe"] == pytest.approx(0.01 * (i % 100))


def test_custom_column_names_and_limit(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"link": ["http://a/1", "http://a/2", "http://a/3"], "alt": ["x y", "y z", "z w"]}), path)
    cfg = InputConfig(columns=LaionColumns(url="link", caption="alt"), limit=2)
    kept, _ = _run_read([str(path)], cfg)
    assert sorted((s.row, s.url, s.caption) for s in kept) == [(0, "http://a/1", "x y"), (1, "http://a/2", "y z")]


def test_missing_required_column_drops_every_row_with_a_reason(tmp_path):
    path = tmp_path / "nocaption.parquet"
    pq.write_table(pa.table({"URL": ["http://a/1", "http://a/2"]}), path)
    kept, dropped = _run_read([str(path)])
    assert kept == []
    assert sorted(d.row for d in dropped) == [0, 1]
    assert {d.reason for d in dropped} == {"missing_column"} and "TEXT" in dropped[0].detail


def test_unreadable_file_is_a_recorded_drop(tmp_path):
    good, bad = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"URL": ["http://a/1"], "TEXT": ["a b"]}), good)
    bad.write_bytes(b"PAR1 this is not parquet")
    kept, dropped = _run_read([str(good), str(bad)])
    assert [s.id for s in kept] == ["a.parquet:0"]
    assert [(d.reason, d.source_index) for d in dropped] == [("unreadable_input", 1)]


def test_match_inputs_sorts_and_complains(tmp_path):
    for name in ("b.parquet", "a.parquet"):
        (tmp_path / name).write_bytes(b"")
    assert [p.rsplit("/", 1)[1] for p in match_inputs(str(tmp_path / "*.parquet"))] == ["a.parquet", "b.parquet"]
    with pytest.raises(FileNotFoundError):
        match_inputs(str(tmp_path / "*.nothing"))


def test_shard_layout_numbers_blocks_that_keep_samples_densely_in_block_order():
    layout = shard_layout(
        [("000001-000000000000", 3), ("000000-000000000002", 0), ("000000-000000000001", 5), ("000000-000000000000", 2)]
    )
    assert layout == {
        "000000-000000000000": (0, 0, 2),
        "000000-000000000001": (2, 1, 5),
        "000001-000000000000": (7, 2, 3),
    }  # the empty block gets no shard
    assert shard_layout([]) == {}


def _flat(shards):
    return [rs for _, ranked in shards for rs in ranked]


def test_numbering_follows_input_order_whatever_the_arrival_order():
    rng = random.Random(3)
    positions = sorted(rng.sample([(f, r) for f in range(3) for r in range(500)], 400))
    shuffled = positions[:]
    rng.shuffle(shuffled)
    samples = [Sample(id=f"{f}:{r}", source_index=f, row=r, url=None) for f, r in shuffled]
    out = run_collect(lambda p: {"r": (p | beam.Create(samples) | NumberSamples(rows_per_block=37))[0]})
    got = sorted((rank, (s.source_index, s.row)) for rank, s in _flat(out["r"]))
    assert [rank for rank, _ in got] == list(range(len(positions)))
    assert [pos for _, pos in got] == positions
    # one shard per input block that kept a sample, numbered densely in input order, its samples
    # in rank order
    blocks = sorted({(f, r // 37) for f, r in positions})
    shards = sorted(out["r"], key=lambda item: item[0])
    assert [shard for shard, _ in shards] == list(range(len(blocks)))
    for (_, ranked), block in zip(shards, blocks):
        assert {(s.source_index, s.row // 37) for _, s in ranked} == {block}
        assert [rank for rank, _ in ranked] == sorted(rank for rank, _ in ranked)
        assert len(ranked) <= 37


def _numbered(samples, transform_before=None, dedup=None):
    def build(p):
        rows = p | beam.Create(samples)
        drops = []
        if transform_before is not None:
            rows, dropped = rows | transform_before
            drops.append(dropped)
        shards, dropped = rows | NumberSamples(rows_per_block=7, dedup=dedup)
        drops.append(dropped)
        return {"shards": shards, "dropped": drops | beam.Flatten()}

    out = run_collect(build)
    return (
        sorted((rank, s.id) for rank, s in _flat(out["shards"])),
        sorted((d.id, d.reason, d.stage, d.duplicate_of) for d in out["dropped"]),
    )


def test_exact_dedup_inside_the_numbering_equals_the_dedup_stage_before_it():
    """Handed to NumberSamples, the exact image dedup keeps, drops and ranks exactly what the
    stage of its own (a shuffle of the whole samples) followed by the numbering does."""
    rng = random.Random(11)
    images = [hashlib.sha256(bytes([i])).hexdigest() for i in range(25)]
    samples = []
    for f in range(2):
        for r in rng.sample(range(60), 45):
            samples.append(
                Sample(
                    id=f"{f}:{r}",
                    source_index=f,
                    row=r,
                    url=None,
                    sha256=rng.choice(images),
                    similarity=rng.choice([None, 0.2, 0.3, 0.3]),
                )
            )
    rng.shuffle(samples)
    inside = _numbered(samples, dedup=EXACT_IMAGES)
    before = _numbered(samples, transform_before=DedupExactImages())
    assert inside == before
    ranked, dropped = inside
    assert [rank for rank, _ in ranked] == list(range(len(ranked))) and len(ranked) == len(
        set(images) & {s.sha256 for s in samples}
    )
    assert len(ranked) + len(dropped) == len(samples)
    assert {reason for _, reason, _, _ in dropped} == {"duplicate_image"}


def _members(i):
    key = sample_key(i)
    return {"__key__": key, "jpg": bytes([i]) * 100, "txt": f"caption {i}".encode(), "json": b"{}"}


def test_write_tar_is_atomic_deterministic_and_sorted(tmp_path):
    a, b = tmp_path / "a" / shard_name(0), tmp_path / "b" / shard_name(0)
    a.parent.mkdir(), b.parent.mkdir()
    ca = write_tar(str(a), (_members(i) for i in range(5)))
    cb = write_tar(str(b), (_members(i) for i in range(5)))
    assert ca == cb and ca[0] == 5
    assert a.read_bytes() == b.read_bytes()
    assert ca[1] == a.stat().st_size and ca[2] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*/*.tmp"))
    with tarfile.open(a) as tf:
        assert tf.getnames()[:3] == ["0000000000.jpg", "0000000000.json", "0000000000.txt"]
        assert tf.extractfile("0000000003.txt").read() == b"caption 3"
    write_tar(str(a), (_members(i) for i in range(2)))  # rewriting replaces the file whole
    with tarfile.open(a) as tf:
        assert len(tf.getnames()) == 6


def test_tars_are_byte_identical_to_webdataset_tarwriter(tmp_path):
    """The shard writer makes webdataset's tarfile calls itself (importing webdataset imports
    torch); a tar must stay byte for byte what TarWriter writes, or resumed builds and completion
    records of earlier builds would no longer match."""
    import webdataset as wds

    from flamingo_corpus.output.shard import TAR_MTIME

    rng = random.Random(3)
    samples = [
        {
            "__key__": sample_key(i),
            "jpg": rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000])),
            "txt": f"caption é {i}".encode(),
            "json": b"{}",
            "_meta": "not written",
        }
        for i in range(40)
    ]
    path = tmp_path / shard_name(0)
    count, size, sha = write_tar(str(path), iter(samples))
    with open(tmp_path / "wds.tar", "wb") as f:
        writer = wds.TarWriter(f, mtime=TAR_MTIME, encoder=False)
        for s in samples:
            writer.write(s)
        writer.close()
    assert (count, size) == (40, path.stat().st_size)
    assert path.read_bytes() == (tmp_path / "wds.tar").read_bytes()
    with tarfile.open(path) as tf:  # plain ustar members: no extended header before each
        assert all(not m.pax_headers for m in tf.getmembers())
        assert len(tf.getmembers()) == 120
    with pytest.raises(ValueError):
        write_tar(str(tmp_path / shard_name(1)), iter([{"__key__": "k", "txt": "a str, not bytes"}]))


def test_source_names_are_unique_even_when_file_names_repeat():
    from flamingo_corpus.inputs import source_names

    assert source_names(["/d/a.parquet", "/d/b.parquet"]) == ["a.parquet", "b.parquet"]
    assert source_names(["/d/x/part.parquet", "/d/y/part.parquet"]) == ["x/part.parquet", "y/part.parquet"]
    assert source_names(["gs://b/2023/s.jsonl.zip", "gs://b/2024/s.jsonl.zip"]) == [
        "2023/s.jsonl.zip",
        "2024/s.jsonl.zip",
    ]


def test_same_file_name_in_two_folders_keeps_both(tmp_path):
    paths = []
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "part.parquet"
        pq.write_table(pa.table({"URL": [f"http://a/{folder}"], "TEXT": ["a b"]}), path)
        paths.append(str(path))
    kept, _ = _run_read(paths)
    assert sorted(s.id for s in kept) == ["x/part.parquet:0", "y/part.parquet:0"]
