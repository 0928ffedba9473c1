"""``flamingo-corpus why``: every row of the sample builds can be asked for, by id, URL and key."""

from __future__ import annotations

import tarfile

import pytest

from flamingo_corpus import cli
from flamingo_corpus.output.why import explain, find_rows

from ..helpers import index_rows

pytestmark = pytest.mark.slow


def test_every_laion_row_is_found_by_its_id_and_explained(sample_build):
    out, _ = sample_build
    rows = index_rows(out)
    assert len(rows) == 311
    for row in rows:
        (found,) = [r for r in find_rows(str(out), row["id"]) if r["id"] == row["id"]]
        text = explain(str(out), row["id"])
        if row["status"] == "kept":
            assert f"shard {row['shard']} as key {row['key']}" in text
        else:
            assert f"at {row['stage']}: {row['reason']}" in text
            assert "passed" in text
            assert row["detail"], f"{row['id']}: {row['stage']}/{row['reason']} has no detail"
            assert row["detail"] in text


def test_a_kept_rows_key_and_shard_are_where_the_tar_has_them(sample_build):
    out, _ = sample_build
    kept = [r for r in index_rows(out) if r["status"] == "kept"][:5]
    for row in kept:
        (by_key,) = find_rows(str(out), row["key"])
        assert by_key["id"] == row["id"]
        with tarfile.open(out / row["shard"]) as tar:
            assert f"{row['key']}.txt" in tar.getnames()


def test_a_url_finds_its_row(sample_build):
    out, _ = sample_build
    row = next(r for r in index_rows(out) if r["url"] and r["status"] == "dropped")
    assert row["id"] in {r["id"] for r in find_rows(str(out), row["url"])}


def test_an_mmc4_image_shows_its_document_and_a_document_its_images(mmc4_build):
    out, _ = mmc4_build
    rows = index_rows(out)
    image = next(r for r in rows if r["kind"] == "image" and r["status"] == "dropped")
    text = explain(str(out), image["id"])
    assert "of the document:" in text and f"{image['doc_id']}  (MMC4 document)" in text
    doc_images = [r for r in rows if r["kind"] == "image" and r["doc_id"] == image["doc_id"]]
    text = explain(str(out), image["doc_id"])
    for r in doc_images:
        assert f"{r['id']}  (MMC4 image)" in text


def test_the_command_line(sample_build, capsys, tmp_path):
    out, _ = sample_build
    assert cli.main(["why", str(out), "metadata.parquet:0"]) == 0
    assert "metadata.parquet:0" in capsys.readouterr().out
    assert cli.main(["why", str(out), "no-such-row"]) == 1
    assert "no row" in capsys.readouterr().err
    assert cli.main(["why", str(tmp_path), "x"]) == 2
    err = capsys.readouterr().err
    assert "no index/ folder" in err and "Traceback" not in err
