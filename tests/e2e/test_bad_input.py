"""Bad metadata never stops a build: every row and image ends in the index with a status (and a
reason token when dropped), and the manifest's counts add up to the input.

Reader-level cases already tested elsewhere (a zip with several jsonl, a file that is not a zip,
each MMC4 validation reason, a missing column, a parquet that is not parquet) are not repeated
here; this file builds whole outputs over inputs that mix the bad with the good.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flamingo_corpus.build import run_build
from flamingo_corpus.output.manifest import summary
from flamingo_corpus.output.verify import verify
from flamingo_corpus.recipe import recipe_from_dict
from flamingo_corpus.sample.web import SampleWeb

from ..helpers import index_rows
from ..loopback_build import BASE_RECIPE, jpeg_bytes, smooth_photo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ENORMOUS = 10_000_000  # characters in one caption


def _serve_pictures(root: Path, n: int) -> None:
    root.mkdir()
    for i in range(n):
        (root / f"{i}.jpg").write_bytes(jpeg_bytes(smooth_photo(100 + i)))


def _corrupt_first_row_group(path: Path) -> None:
    """Overwrite the pages of row group 0, keeping the footer: the file opens, that group does not."""
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    for c in range(meta.num_columns):
        col = meta.row_group(0).column(c)
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        data[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    path.write_bytes(bytes(data))


def _laion_inputs(folder: Path, web: str) -> dict:
    """Write the input parquet files; return {row id: expected reason, or None if kept}."""
    folder.mkdir()
    good = [f"{web}/{i}.jpg" for i in range(5)]
    caption = "a smooth picture of colours"
    expected = {}

    def table(name, columns, outcomes, **kw):
        pq.write_table(pa.table(columns), folder / name, **kw)
        expected.update({f"{name}:{i}": reason for i, reason in enumerate(outcomes)})

    # Text columns as strings; optional numeric columns holding strings, some not numbers at all.
    rows = [
        (good[0], caption, None),
        (None, caption, "no_url"),
        ("", caption, "no_url"),
        ("   ", caption, "no_url"),
        (f"{web}/1.jpg?null-caption", None, "no_caption"),
        (f"{web}/1.jpg?empty-caption", "", "no_caption"),
        ("file:///etc/passwd", caption, "bad_scheme"),
        ("ftp://127.0.0.1/pub/picture.jpg", caption, "bad_scheme"),
        (
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==",
            caption,
            "bad_scheme",
        ),
        (f"{web}/1.jpg?enormous", ("word " * (ENORMOUS // 5)), "caption_too_long"),
        ("http://[::1/broken-ipv6.jpg", caption, "bad_url"),
        (f"{web}/missing.jpg", caption, "http_404"),
        (f"{web}/1.jpg?unsafe", caption, "unsafe"),
    ]
    punsafe = ["0.01", "high", None, None, None, None, None, None, None, None, None, "n/a", "0.99"]
    width = ["320", "wide", None, None, None, None, None, None, None, None, None, None, "320"]
    table(
        "a-strings.parquet",
        {"URL": [r[0] for r in rows], "TEXT": [r[1] for r in rows], "punsafe": punsafe, "WIDTH": width},
        [r[2] for r in rows],
    )
    # Binary columns: decoded as UTF-8 where they are, dropped with a reason where not.
    table(
        "b-binary.parquet",
        {
            "URL": pa.array(
                [good[1].encode(), good[2].encode() + b"?x", f"{web}/\xff.jpg".encode("latin-1")], pa.binary()
            ),
            "TEXT": pa.array(
                ["a café picture".encode(), b"caption with \xff\xfe bytes", caption.encode()], pa.binary()
            ),
        },
        [None, "caption_not_utf8", "url_not_utf8"],
    )
    # A string column holding bytes that are not UTF-8 (some writers do not check): pyarrow would
    # raise on the whole row group when converting it.
    table(
        "c-bad-string.parquet",
        {
            "URL": [good[2], good[3] + "?y"],
            "TEXT": pa.array([caption.encode(), b"not \xc3\x28 utf-8"], pa.binary()).view(pa.string()),
        },
        [None, "caption_not_utf8"],
    )
    # Wrong column types: URL as integers, caption as a list of strings.
    table(
        "d-wrong-types.parquet",
        {"URL": pa.array([1, 2], pa.int64()), "TEXT": pa.array([["a", "b"], ["c"]], pa.list_(pa.string()))},
        ["bad_column_type", "bad_column_type"],
    )
    # A corrupt row group among good ones: its rows are dropped, the next group's are read.
    table(
        "e-corrupt-group.parquet",
        {"URL": [f"{web}/9.jpg", f"{web}/9.jpg?b", good[3], good[4]], "TEXT": [caption] * 4},
        ["unreadable_row_group", "unreadable_row_group", None, None],
        row_group_size=2,
        compression="none",
    )
    _corrupt_first_row_group(folder / "e-corrupt-group.parquet")
    # A truncated file (no footer) and an empty one: one row each, as their rows cannot be told apart.
    buf = io.BytesIO()
    pq.write_table(pa.table({"URL": good, "TEXT": [caption] * 5}), buf)
    (folder / "f-truncated.parquet").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "g-empty.parquet").write_bytes(b"")
    expected.update({"f-truncated.parquet:*": "unreadable_input", "g-empty.parquet:*": "unreadable_input"})
    # Numbers that are not finite: read as missing, never written into a sample's JSON as the
    # non-JSON words NaN / Infinity.
    table(
        "h-non-finite.parquet",
        {
            "URL": [f"{web}/5.jpg"],
            "TEXT": [caption],
            "punsafe": [float("nan")],
            "pwatermark": [float("-inf")],
            "similarity": [float("inf")],
            "WIDTH": [float("inf")],
        },
        [None],
    )
    return expected


def _recipe(tmp_path: Path, corpus: str, path: str, **sections) -> object:
    data = {
        **BASE_RECIPE,
        "name": f"bad-{corpus}",
        "input": {"corpus": corpus, "path": path},
        "shard": {"samples_per_shard": 2},
        **sections,
    }
    return recipe_from_dict(data, base_dir=tmp_path)


def _assert_counts_add_up(out: Path, rows: list, unit: str, n_in: int) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    totals = manifest["totals"] if manifest["unit"] == unit else manifest[unit]["totals"]
    kind = {"rows": "row", "documents": "document", "images": "image"}[unit]
    mine = [r for r in rows if r["kind"] == kind]
    assert totals["accounted"] == len(mine) == n_in
    assert totals["kept"] + totals["dropped"] == n_in
    assert totals["kept"] == sum(r["status"] == "kept" for r in mine)
    return manifest


def test_bad_laion_metadata_is_dropped_with_reasons(tmp_path):
    _serve_pictures(tmp_path / "web", 6)
    with SampleWeb(tmp_path / "web") as web:
        expected = _laion_inputs(tmp_path / "in", web.url)
        recipe = _recipe(tmp_path, "laion", str(tmp_path / "in" / "*.parquet"))
        result = run_build(recipe, str(tmp_path / "out"))
    out = tmp_path / "out"
    rows = index_rows(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a row is in the index twice"
    assert set(ids) == set(expected)
    for r in rows:
        want = expected[r["id"]]
        if want is None:
            assert (r["status"], r["reason"]) == ("kept", None), r
            assert r["key"] and r["shard"]
        else:
            assert (r["status"], r["reason"]) == ("dropped", want), (r["id"], r["reason"], r["detail"])
            assert r["stage"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["b-binary.parquet:0"]["caption"] == "a café picture"  # binary UTF-8 is read as text
    assert "WIDTH" not in by_id["d-wrong-types.parquet:0"]["detail"]
    assert "URL is int64" in by_id["d-wrong-types.parquet:0"]["detail"]
    # Inputs: rows from the footers, plus one for each file whose footer is unreadable.
    manifest = _assert_counts_add_up(out, rows, "rows", len(expected))
    assert manifest["totals"]["rows_in"] == result.rows_in == len(expected)
    assert result.kept == sum(v is None for v in expected.values()) == 6
    non_finite = by_id["h-non-finite.parquet:0"]
    with tarfile.open(out / non_finite["shard"]) as tar:
        member = json.loads(tar.extractfile(f"{non_finite['key']}.json").read(), parse_constant=_not_json)
    assert member["metadata"]["punsafe"] is None and member["metadata"]["similarity"] is None
    assert "WARNING" not in summary(result)
    report = verify(str(out))
    assert report.ok, str(report)
    _assert_complete_again(recipe, out, result)


def _not_json(word: str):
    raise AssertionError(f"{word} in a sample's JSON: not JSON")


def _assert_complete_again(recipe, out: Path, result) -> None:
    """The same build again finds the output complete; its summary comes from the manifest."""
    again = run_build(recipe, str(out))
    assert again.already_complete and "complete already" in summary(again)
    for kind in result.kinds:
        assert again.drops_of(kind) == result.drops_of(kind)
        assert (again.kept_of(kind), again.accounted_of(kind)) == (result.kept_of(kind), result.accounted_of(kind))


def _doc(
    web: str,
    images: list,
    texts=("A first sentence here.", "A second sentence there."),
    matrix=None,
    url="http://example.com/page",
) -> dict:
    n, m = len(images), len(texts)
    if matrix is None:
        matrix = [[0.3 if i == j else 0.1 for j in range(m)] for i in range(n)]
    return {
        "url": url,
        "text_list": list(texts),
        "similarity_matrix": matrix,
        "image_info": [
            {"image_name": f"img{i}.jpg", "raw_url": u, "matched_text_index": 0, "matched_sim": 0.3}
            for i, u in enumerate(images)
        ],
    }


def test_bad_mmc4_input_is_dropped_with_reasons(tmp_path):
    _serve_pictures(tmp_path / "web", 3)
    folder = tmp_path / "in"
    folder.mkdir()
    with SampleWeb(tmp_path / "web") as web:
        w = web.url
        lines = [
            json.dumps(_doc(w, [f"{w}/0.jpg", f"{w}/1.jpg"])).encode(),  # 1: kept, both images
            b"{not json",  # 2
            b'{"url": "\xff\xfe", "text_list": ["bytes that are not UTF-8"]}',  # 3
            json.dumps(_doc(w, [f"{w}/2.jpg"], matrix=[[0.3, 0.2, 0.1]])).encode(),  # 4: 1x3 for 1x2
            json.dumps(
                _doc(
                    w,
                    ["file:///etc/passwd.jpg", "data:image/jpeg;base64,AAAA", None, "ftp://127.0.0.1/a.jpg"],
                    texts=["Other text.", "More text."],
                    url=12345,
                )
            ).encode(),  # 5: no image fetchable
            b"",  # 6: blank, no document
            b"[1, 2]",  # 7
            # 8-10: valid JSON whose strings are not valid Unicode (a lone surrogate escape), in a
            # sentence, the document URL and an image URL: each would stop the build when written
            json.dumps(_doc(w, [f"{w}/0.jpg"], texts=["A sentence \ud800 broken.", "More."])).encode(),
            json.dumps(_doc(w, [f"{w}/0.jpg"], url="https://example.com/\udfff")).encode(),
            json.dumps(_doc(w, [f"{w}/\ud83d.jpg"])).encode(),
        ]
        (folder / "a-docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        with zipfile.ZipFile(folder / "b-no-jsonl.zip", "w") as z:
            z.writestr("README.txt", "no documents in here")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("docs.jsonl", lines[0] + b"\n")
        (folder / "c-truncated.zip").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        recipe = _recipe(tmp_path, "mmc4", str(folder / "*"))
        result = run_build(recipe, str(tmp_path / "out"))
    out = tmp_path / "out"
    rows = index_rows(out)
    docs = {r["id"]: r for r in rows if r["kind"] == "document"}
    assert len(docs) == sum(r["kind"] == "document" for r in rows)
    outcome = {i: (r["status"], r["reason"]) for i, r in docs.items()}
    assert outcome == {
        "a-docs.jsonl:1": ("kept", None),
        "a-docs.jsonl:2": ("dropped", "bad_json"),
        "a-docs.jsonl:3": ("dropped", "bad_json"),
        "a-docs.jsonl:4": ("dropped", "bad_matrix_shape"),
        "a-docs.jsonl:5": ("dropped", "too_few_images"),
        "a-docs.jsonl:7": ("dropped", "not_an_object"),
        "a-docs.jsonl:8": ("dropped", "bad_unicode"),
        "a-docs.jsonl:9": ("dropped", "bad_unicode"),
        "a-docs.jsonl:10": ("dropped", "bad_unicode"),
        "b-no-jsonl.zip:0": ("dropped", "zip_without_jsonl"),
        "c-truncated.zip:0": ("dropped", "bad_zip"),
    }
    images = {r["id"]: (r["status"], r["reason"]) for r in rows if r["kind"] == "image"}
    assert images == {
        "a-docs.jsonl:1#0": ("kept", None),
        "a-docs.jsonl:1#1": ("kept", None),
        "a-docs.jsonl:5#0": ("dropped", "bad_scheme"),
        "a-docs.jsonl:5#1": ("dropped", "bad_scheme"),
        "a-docs.jsonl:5#2": ("dropped", "no_url"),
        "a-docs.jsonl:5#3": ("dropped", "bad_scheme"),
    }
    assert docs["a-docs.jsonl:5"]["url"] is None  # a non-text document URL is not carried as one
    _assert_counts_add_up(out, rows, "documents", 11)
    _assert_counts_add_up(out, rows, "images", 6)
    assert result.kept == 1
    report = verify(str(out))
    assert report.ok, str(report)
    _assert_complete_again(recipe, out, result)
