"""The image store's block format: written whole, read back checked, damage named."""

from __future__ import annotations

import base64
import hashlib

import pytest

from flamingo_corpus.records import Sample
from flamingo_corpus.store.blocks import (
    STORED_KEY,
    DamagedBlock,
    StoreDamaged,
    attach_images,
    differences,
    read_block,
    read_images,
    retryable,
    stored_refs,
    with_images,
    write_block,
)
from flamingo_corpus.store.fetch import _row

DIGEST = "ab" * 32


def _rows(n: int, ok_every: int = 1) -> list:
    rows = []
    for i in range(n):
        r = _row(Sample(id=f"f:{i}", source_index=0, row=i, url=f"http://x/{i}.jpg", caption="c"), 1, "run1")
        if i % ok_every == 0:
            image = bytes([i % 256]) * (3000 + i)
            r.update(status="ok", image=image, sha256=hashlib.sha256(image).hexdigest(), image_format="jpg")
        else:
            r.update(stage="download", reason="http_503", retryable=True)
        rows.append(r)
    return rows


def test_a_block_reads_back_as_written(tmp_path):
    path = str(tmp_path / "b" / "000000000.parquet")
    rows = _rows(150, ok_every=3)
    write_block(path, reversed(rows), DIGEST, "f", 0)
    back = read_block(path, DIGEST)
    assert [r["id"] for r in back] == [r["id"] for r in rows]  # sorted by row
    assert back == rows
    assert read_block(str(tmp_path / "missing.parquet"), DIGEST) is None
    assert not list((tmp_path / "b").glob("*.tmp-*"))  # the temporary name is gone


@pytest.mark.parametrize("damage", ["flip", "truncate", "digest", "empty"])
def test_damage_is_detected_and_named(tmp_path, damage):
    path = tmp_path / "000000003.parquet"
    rows = _rows(100)
    write_block(str(path), rows, DIGEST, "f", 3)
    data = bytearray(path.read_bytes())
    if damage == "flip":  # a byte inside an image: the page checksum (or the image's sha256) catches it
        data[len(data) // 3] ^= 0x40
    elif damage == "truncate":  # a write cut short
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))
    digest = "cd" * 32 if damage == "digest" else DIGEST
    with pytest.raises(DamagedBlock) as e:
        read_block(str(path), digest)
    assert e.value.path == str(path)
    if damage == "digest":
        assert "another recipe digest" in e.value.why


def test_images_are_read_back_by_row_group_and_checked(tmp_path):
    path = str(tmp_path / "000000000.parquet")
    rows = _rows(300)
    write_block(path, rows, DIGEST, "f", 0)
    got = read_images(path, ["f:5", "f:290"], [5, 290], DIGEST)
    assert got == {"f:5": rows[5]["image"], "f:290": rows[290]["image"]}
    with pytest.raises(StoreDamaged, match="has no image for f:999"):
        read_images(path, ["f:999"], [5], DIGEST)
    with pytest.raises(StoreDamaged, match="is missing"):
        read_images(str(tmp_path / "gone.parquet"), ["f:1"], [1], DIGEST)


def test_samples_get_their_images_back_block_by_block(tmp_path):
    a, b = (
        str(tmp_path / "s" / "d" / "blocks" / "f" / "000000000.parquet"),
        str(tmp_path / "s" / "d" / "blocks" / "f" / "000000001.parquet"),
    )
    rows = _rows(20)
    write_block(a, rows[:10], DIGEST, "f", 0)
    write_block(b, rows[10:], DIGEST, "f", 1)
    (tmp_path / "s" / "d" / "store.json").write_text('{"digest": "%s"}' % DIGEST)
    laion = [
        Sample(id=f"f:{i}", source_index=0, row=i, url=None, stored_images=((a if i < 10 else b, f"f:{i}", i),))
        for i in (1, 4, 12)
    ]
    doc = Sample(
        id="d",
        source_index=0,
        row=3,
        url=None,
        document={
            "image_info": [{"raw_url": "u", STORED_KEY: [b, "f:15", 15]}, {"raw_url": "v", "image_base64": "AA=="}]
        },
    )
    out = list(with_images([*laion, doc]))
    assert [s.image_bytes for s in out[:3]] == [rows[1]["image"], rows[4]["image"], rows[12]["image"]]
    info = out[3].document["image_info"]
    assert info[0] == {"raw_url": "u", "image_base64": base64.b64encode(rows[15]["image"]).decode()}
    assert info[1] == {"raw_url": "v", "image_base64": "AA=="}
    assert stored_refs(doc) == [(b, "f:15", 15)] and stored_refs(out[3]) == []
    plain = Sample(id="p", source_index=0, row=0, url=None, image_bytes=b"x")
    assert attach_images(plain, lambda ref: b"never") is plain


def test_only_transient_download_failures_are_retryable():
    for reason in (
        "timeout",
        "deadline",
        "dns_timeout",
        "connection_reset",
        "connect_error",
        "truncated",
        "http_429",
        "http_503",
        "http_500",
        "http_599",
        "http_408",
    ):
        assert retryable("download", reason), reason
    for reason in ("http_404", "http_410", "not_image", "robots_disallowed", "too_large", "dns_error", "http_5000"):
        assert not retryable("download", reason), reason
    assert not retryable("image", "too_small") and not retryable("image", "timeout")


def test_differences_name_each_changed_setting():
    before = {"download": {"timeout_s": 10.0}, "image": {"image_size": 224, "encode_quality": 95}}
    after = {"download": {"timeout_s": 10.0}, "image": {"image_size": 256, "encode_quality": 95}}
    assert differences(after, before) == ["image.image_size 224 -> 256"]


def test_records_travel_the_shuffles_as_their_values():
    """Beam pickles Samples and IndexRows through every shuffle: their values in order, not their
    field names, and they come back equal."""
    import pickle

    from apache_beam.coders.coders import FastPrimitivesCoder

    from flamingo_corpus.records import IndexRow

    s = Sample(
        id="rows.parquet:123",
        source_index=0,
        row=123,
        url="http://127.0.0.1:4000/img/0000123.jpg",
        caption="a picture",
        sha256="ab" * 32,
        image_len=9000,
        stored_images=(("/s/d/blocks/rows.parquet/000000000.parquet", "rows.parquet:123", 123),),
    )
    r = IndexRow.from_sample(s, "kept", stage="shard", key="0000000001")
    coder = FastPrimitivesCoder()
    for record in (s, r):
        assert coder.decode(coder.encode(record)) == record and pickle.loads(pickle.dumps(record)) == record
        assert b"stored_images" not in coder.encode(record) and b"original_width" not in coder.encode(record)
    assert len(coder.encode(s)) < 400
