"""Dataset statistics (pipeline/stats/compute.py) and the HTML report (pipeline/stats/report.py).

Every figure is checked against the index itself: read whole with pyarrow here, counted in plain
Python, and compared with what the streaming aggregates returned.  The first tests run on a small
index written by hand (two parquet files, so the aggregates must combine across files); the slow
ones on the session's LAION and MMC4 sample builds.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flamingo_corpus import cli
from flamingo_corpus.output.index import INDEX_SCHEMA
from flamingo_corpus.output.manifest import BuildResult, summary
from flamingo_corpus.recipe import recipe_from_dict
from flamingo_corpus.records import IndexRow
from flamingo_corpus.stats import compute as stats
from flamingo_corpus.stats import report

from ..helpers import index_rows

# --- a small hand-written build --------------------------------------------------------------


def _row(i: int, status: str = "kept", stage: str = "shard", reason=None, **kw) -> dict:
    return IndexRow(
        id=f"in.parquet:{i}", source_index=0, row=i, status=status, stage=stage, reason=reason, **kw
    ).as_dict()


CRAFTED = [
    _row(
        0,
        url="http://a.example/0.jpg",
        caption="a red circle",
        similarity=0.91,
        language="en",
        original_width=640,
        original_height=480,
        bytes=9000,
        key="0000000000",
        shard="000000.tar",
    ),
    _row(
        1,
        url="http://a.example/1.jpg",
        caption="a blue square on grey",
        similarity=0.82,
        language="en",
        original_width=300,
        original_height=300,
        bytes=7000,
        key="0000000001",
        shard="000000.tar",
    ),
    _row(
        2,
        "dropped",
        "clip",
        "low_similarity",
        url="http://b.example/2.jpg",
        caption="nothing like it",
        similarity=0.05,
        language="en",
        original_width=200,
        original_height=100,
    ),
    _row(
        3,
        "dropped",
        "dedup",
        "duplicate_image",
        url="http://b.example/3.jpg",
        caption="a red circle",
        similarity=0.90,
        language="en",
        original_width=640,
        original_height=480,
        duplicate_of="in.parquet:0",
    ),
    _row(
        4,
        "dropped",
        "dedup",
        "duplicate_image",
        url="http://c.example/4.jpg",
        caption="a red circle again",
        similarity=0.89,
        language="fr",
        original_width=640,
        original_height=480,
        duplicate_of="in.parquet:0",
    ),
    _row(
        5,
        "dropped",
        "dedup",
        "duplicate_image",
        url="http://c.example/5.jpg",
        caption="blue square",
        similarity=0.80,
        language="en",
        original_width=300,
        original_height=300,
        duplicate_of="in.parquet:1",
    ),
    _row(6, "dropped", "download", "http_404", url="HTTP://User@A.Example:8080/x.jpg", caption="gone"),
    _row(7, "dropped", "download", "http_404", url="https://a.example/y.jpg?z=1", caption="gone too"),
    _row(8, "dropped", "download", "timeout", url="http://b.example/slow.jpg", caption="slow one"),
    _row(9, "dropped", "download", "http_403", url="http://c.example/f.jpg", caption="forbidden here"),
    _row(10, "dropped", "download", "http_404", url="http://d.example/g.jpg", caption="gone again"),
    _row(11, "dropped", "download", "timeout", url="http://e.example/h.jpg", caption=None),
    _row(12, "dropped", "metadata", "bad_scheme", url="ftp://f.example/i.jpg", caption="wrong scheme"),
    _row(13, "dropped", "metadata", "no_url", url=None, caption="no url at all", language=None),
]


def _write_build(root: Path, rows, unit: str = "rows", shards=()) -> Path:
    (root / "index").mkdir(parents=True)
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(
            pa.Table.from_pylist(part, schema=INDEX_SCHEMA), root / "index" / f"index-{i:05d}-of-00002.parquet"
        )
    manifest = {
        "unit": unit,
        "recipe": {"name": "crafted", "clip": {"min_similarity": 0.3}},
        "recipe_sha256": "0" * 64,
        "shards": list(shards),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def crafted(tmp_path) -> Path:
    return _write_build(tmp_path / "crafted", CRAFTED)


def test_funnel_starts_with_every_row_and_ends_with_the_kept(crafted):
    f = stats.funnel(crafted).to_pylist()
    assert f[0] == {"step": "rows in", "stage": None, "reason": None, "count": 14, "remaining": 14}
    assert f[-1]["step"] == "kept" and f[-1]["count"] == 2
    drops = f[1:-1]
    assert sum(s["count"] for s in drops) + f[-1]["count"] == f[0]["count"]
    assert drops[-1]["remaining"] == f[-1]["count"]
    assert [s["stage"] for s in drops] == [
        "metadata",
        "metadata",
        "download",
        "download",
        "download",
        "clip",
        "dedup",
    ]  # pipeline order, largest reason first within a stage
    assert {(s["stage"], s["reason"]): s["count"] for s in drops}[("download", "http_404")] == 3


def test_retries_count_the_rows_fetched_again_and_what_became_of_them(tmp_path):
    rows = [
        _row(0, attempts=1, url="http://a.example/0.jpg"),
        _row(1, attempts=2, url="http://a.example/1.jpg"),  # a retry brought it in: kept
        _row(
            2, "dropped", "clip", "low_similarity", attempts=3, url="http://a.example/2.jpg"
        ),  # fetched, later dropped
        _row(3, "dropped", "download", "timeout", attempts=2, url="http://b.example/3.jpg"),
        _row(4, "dropped", "download", "timeout", attempts=1, url="http://b.example/4.jpg"),
        _row(5, "dropped", "metadata", "no_url"),  # never fetched
    ]
    b = _write_build(tmp_path / "b", rows)
    assert stats.retries(b) == {"fetched more than once": 3, "recovered": 2, "still failing": 1}
    (errors,) = [p for p in report.sections(b, samples=0) if p.name == "download-errors"]
    assert "3 rows were fetched more than once" in errors.note and "2 recovered, 1 still failing" in errors.note


def test_headline_counts_downloads_as_everything_past_the_download_stage(crafted):
    h = stats.headline(crafted)
    assert (h["rows in"], h["rows kept"], h["rows dropped"]) == (14, 2, 12)
    assert h["rows downloaded"] == 6  # kept, clip and dedup drops
    assert h["rows kept %"] == pytest.approx(14.3)


def test_headline_and_the_build_summary_give_the_same_figures(crafted):
    """The report's headline (from the index) and the summary and manifest (from the build's
    counts) compute their figures with one function: the same counts give the same figures."""
    counts = Counter((r["stage"], r["status"], r["reason"]) for r in CRAFTED)
    result = BuildResult(
        str(crafted),
        recipe_from_dict({"name": "crafted"}),
        len(CRAFTED),
        [{"stage": s, "status": st, "reason": r, "count": n} for (s, st, r), n in counts.items()],
        [],
        0.0,
    )
    h = stats.headline(crafted)
    assert result.totals_of() == {
        "accounted": h["rows in"],
        "kept": h["rows kept"],
        "dropped": h["rows dropped"],
        "downloaded": h["rows downloaded"],
    }
    assert h["rows downloaded"] == 6 and "  downloaded              6" in summary(result)


def test_host_of_takes_the_host_of_any_url():
    urls = pa.table(
        {
            "url": [
                "HTTP://User@A.Example:8080/x.jpg",
                "https://a.example/y.jpg?z=1",
                "no-scheme/a.jpg",
                None,
                "ftp://f.example/i",
                "http://[::1]/x",
                "https://b.example",
            ]
        }
    )
    hosts = ds.dataset(urls).to_table(columns={"h": stats.host_of(pc.field("url"))}).column("h").to_pylist()
    assert hosts == ["a.example", "a.example", stats.NO_HOST, stats.NO_HOST, "f.example", "[::1]", "b.example"]


def test_download_errors_by_domain_add_up_with_the_long_tail_in_one_row(crafted):
    t = stats.download_errors_by_domain(crafted, top=2).to_pylist()
    assert [r["domain"] for r in t] == ["a.example", "b.example", "(other: 3 domains)"]
    assert t[0] == {"domain": "a.example", "total": 2, "http_404": 2, "timeout": 0, "http_403": 0}
    assert t[2]["total"] == 3 and t[2]["http_404"] == 1 and t[2]["http_403"] == 1 and t[2]["timeout"] == 1
    assert sum(r["total"] for r in t) == 6
    by_reason = {r["reason"]: r["count"] for r in stats.download_errors(crafted).to_pylist()}
    assert by_reason == {"http_404": 3, "timeout": 2, "http_403": 1}
    for reason, n in by_reason.items():
        assert sum(r[reason] for r in t) == n


def test_similarity_histogram_counts_each_scored_row_once_across_index_files(crafted):
    h = stats.similarity_histogram(crafted, bins=10)
    assert list(h.counts) == ["kept", "dropped"]
    assert h.total("kept") == 2 and h.total("dropped") == 4  # unscored rows are not counted
    kept = [r["similarity"] for r in CRAFTED if r["status"] == "kept"]
    dropped = [r["similarity"] for r in CRAFTED if r["status"] == "dropped" and r["similarity"] is not None]
    assert np.array_equal(h.counts["kept"], np.histogram(kept, bins=h.edges)[0])
    assert np.array_equal(h.counts["dropped"], np.histogram(dropped, bins=h.edges)[0])
    assert h.edges[0] == pytest.approx(0.05) and h.edges[-1] == pytest.approx(0.91)
    assert stats.similarity_threshold(crafted) == 0.3


def test_sizes_languages_and_captions(crafted):
    sides = stats.image_sides(crafted)
    assert sides.log and sides.total("width") == sides.total("height") == 6
    assert sides.edges[0] == pytest.approx(100) and sides.edges[-1] == pytest.approx(640)
    ratios = stats.aspect_ratios(crafted)
    assert ratios.total("kept") == 2 and ratios.total("dropped") == 4
    assert stats.encoded_bytes(crafted).total("kept") == 2
    words, chars = stats.caption_lengths(crafted)
    captions = [r for r in CRAFTED if r["caption"]]
    assert words.total() == chars.total() == len(captions)
    assert np.array_equal(
        words.counts["dropped"],
        np.histogram([len(r["caption"].split()) for r in captions if r["status"] == "dropped"], bins=words.edges)[0],
    )
    langs = {r["language"]: (r["kept"], r["dropped"]) for r in stats.languages(crafted).to_pylist()}
    assert langs == {"en": (2, 3), "fr": (0, 1), stats.NO_LANGUAGE: (0, 8)}
    top1 = stats.languages(crafted, top=1).to_pylist()
    assert top1[-1]["language"] == "(other: 2)" and sum(r["total"] for r in top1) == 14


def test_duplicate_groups_count_the_kept_copy(crafted):
    t = stats.duplicate_groups(crafted).to_pylist()
    assert t == [
        {"stage": "dedup", "reason": "duplicate_image", "group_size": 2, "groups": 1, "rows_dropped": 1},
        {"stage": "dedup", "reason": "duplicate_image", "group_size": 3, "groups": 1, "rows_dropped": 2},
    ]


def test_nothing_to_count_gives_empty_results_and_figures_that_say_so(tmp_path):
    b = _write_build(tmp_path / "bare", [_row(i, "dropped", "metadata", "no_url") for i in range(2)])
    h = stats.similarity_histogram(b)
    assert h.empty and h.total() == 0
    assert stats.duplicate_groups(b).num_rows == 0 and stats.download_errors_by_domain(b).num_rows == 0
    parts = report.sections(b, samples=0)
    assert all(p.figure is not None for p in parts if p.name != "headline")  # "no ... in this build" panels
    _self_contained(report.render_html(stats.open_build(b), parts))
    assert stats.sample_items(b) == [] and len(stats.document_sample(b)) == 0


def test_stats_command_explains_itself(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["stats", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: flamingo-corpus stats" in text and "--output" in text and "--png-dir" in text


def test_a_folder_that_is_no_build_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(stats.StatsError, match="manifest.json"):
        stats.open_build(tmp_path)
    assert cli.main(["stats", str(tmp_path), "--output", str(tmp_path / "r.html")]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


# --- the sample builds ------------------------------------------------------------------------


def _is_png(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        return im.format == "PNG" and im.size[0] > 50


def _self_contained(html: str) -> list:
    """The data: URIs of the page's images, after checking it links to nothing."""
    assert not re.search(r"\bhref\s*=", html, re.I)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", html, re.I)
    assert "url(" not in html and "@import" not in html
    srcs = re.findall(r"\bsrc\s*=\s*['\"]([^'\"]*)['\"]", html, re.I)
    assert len(srcs) == html.count("<img")
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert _is_png(base64.b64decode(src.split(",", 1)[1]))
    return srcs


@pytest.mark.slow
@pytest.mark.timeout(900)
class TestSampleBuilds:
    def test_funnel_adds_up_to_the_index_and_the_manifest(self, sample_build):
        out, result = sample_build
        rows = index_rows(out)
        f = stats.funnel(out).to_pylist()
        assert f[0]["count"] == len(rows) == result.rows_in
        assert sum(s["count"] for s in f[1:-1]) + f[-1]["count"] == len(rows)
        assert f[-1]["count"] == sum(r["status"] == "kept" for r in rows) == result.kept
        dropped = Counter(f"{r['stage']}/{r['reason']}" for r in rows if r["status"] == "dropped")
        assert {s["step"]: s["count"] for s in f[1:-1]} == dict(dropped) == result.manifest()["drops"]
        head = stats.headline(out)
        assert head["rows downloaded"] == result.manifest()["totals"]["downloaded"]
        assert head["shards"] == len(result.shards) and head["shard bytes"] == sum(s["bytes"] for s in result.shards)

    def test_kept_and_dropped_similarities_are_what_the_index_holds(self, sample_build):
        out, _ = sample_build
        rows = index_rows(out)
        h = stats.similarity_histogram(out)
        for status in ("kept", "dropped"):
            values = [r["similarity"] for r in rows if r["status"] == status and r["similarity"] is not None]
            assert values, status  # the sample has both
            assert np.array_equal(h.counts[status], np.histogram(values, bins=h.edges)[0])
        assert h.total() == sum(r["similarity"] is not None for r in rows)

    def test_download_errors_per_domain_add_up(self, sample_build):
        out, _ = sample_build
        failed = Counter(r["reason"] for r in index_rows(out) if r["stage"] == "download")
        by_domain = stats.download_errors_by_domain(out).to_pylist()
        assert sum(r["total"] for r in by_domain) == sum(failed.values()) > 0
        assert {r["reason"]: r["count"] for r in stats.download_errors(out).to_pylist()} == dict(failed)
        assert [r["domain"] for r in by_domain] == ["127.0.0.1"]  # the sample web

    def test_captions_sizes_and_languages_count_every_row(self, sample_build):
        out, _ = sample_build
        rows = index_rows(out)
        words, chars = stats.caption_lengths(out)
        with_caption = [r for r in rows if r["caption"]]
        assert words.total() == chars.total() == len(with_caption)
        kept_words = [min(len(r["caption"].split()), 100) for r in with_caption if r["status"] == "kept"]
        assert np.array_equal(words.counts["kept"], np.histogram(kept_words, bins=words.edges)[0])
        decoded = sum(r["original_width"] is not None for r in rows)
        assert stats.image_sides(out).total("width") == decoded
        assert stats.aspect_ratios(out).total() == decoded
        langs = stats.languages(out, top=50).to_pylist()
        assert sum(r["total"] for r in langs) == len(rows)
        assert {r["language"]: r["kept"] for r in langs}["en"] == sum(
            r["language"] == "en" and r["status"] == "kept" for r in rows
        )

    def test_duplicate_groups_match_duplicate_of(self, sample_build):
        out, _ = sample_build
        copies = Counter((r["reason"], r["duplicate_of"]) for r in index_rows(out) if r["duplicate_of"])
        t = stats.duplicate_groups(out).to_pylist()
        assert sum(r["rows_dropped"] for r in t) == sum(copies.values()) > 0
        sizes = Counter((reason, n + 1) for (reason, _), n in copies.items())
        assert {(r["reason"], r["group_size"]): r["groups"] for r in t} == dict(sizes)

    def test_sample_images_are_kept_samples_with_their_captions(self, sample_build):
        out, _ = sample_build
        captions = {r["key"]: r["caption"] for r in index_rows(out) if r["status"] == "kept"}
        items = stats.sample_items(out, n=12)
        assert len(items) == 12 and len({i.key for i in items}) == 12
        for item in items:
            assert item.text == captions[item.key]
            with Image.open(io.BytesIO(item.image)) as im:
                assert im.size == (224, 224)
        assert stats.sample_items(out, n=12) == items  # seeded

    def test_stats_command_writes_one_self_contained_html_file(self, sample_build, tmp_path, capsys):
        out, result = sample_build
        html_path, pngs = tmp_path / "report.html", tmp_path / "figures"
        assert cli.main(["stats", str(out), "--output", str(html_path), "--png-dir", str(pngs)]) == 0
        printed = capsys.readouterr().out
        assert f"{result.rows_in:,}" in printed and f"{result.kept:,}" in printed
        html = html_path.read_text()
        srcs = _self_contained(html)
        names = {p.stem for p in pngs.glob("*.png")}
        assert {
            "funnel-rows",
            "similarity",
            "image-sizes",
            "caption-lengths",
            "languages",
            "duplicates",
            "download-errors",
            "shards",
            "samples",
        } <= names
        assert len(srcs) == len(names)
        text = re.sub(r"<[^>]+>", " ", html)
        for figure in (
            f"{result.rows_in:,}",
            f"{result.kept:,}",
            f"{result.rows_in - result.kept:,}",
            f"{100 * result.kept / result.rows_in:.1f}",
            f"{sum(s['bytes'] for s in result.shards):,}",
        ):
            assert figure in text
        assert "rows kept" in text and "clip/low_similarity" in text

    def test_mmc4_documents_and_images(self, mmc4_build):
        out, result = mmc4_build
        rows = index_rows(out)
        images = [r for r in rows if r["kind"] == "image"]
        docs_kept = sum(r["kind"] == "document" and r["status"] == "kept" for r in rows)
        t = stats.images_per_document(out).to_pylist()
        assert sum(r["documents_kept"] for r in t) == docs_kept == result.kept
        assert sum(r["images"] * r["documents_kept"] for r in t) == sum(r["status"] == "kept" for r in images)
        per_doc = Counter((r["source_index"], r["row"]) for r in images)
        assert sum(r["documents_in"] for r in t) == len(per_doc)
        assert {r["images"]: r["documents_in"] for r in t if r["documents_in"]} == dict(Counter(per_doc.values()))
        f = stats.funnel(out, "image").to_pylist()
        assert f[0]["count"] == len(images) and f[-1]["count"] == result.kept_of("image")
        h = stats.similarity_histogram(out, "image")
        assert h.total("kept") == sum(r["status"] == "kept" for r in images)

    def test_mmc4_document_sample_reads_sentences_and_matches_from_the_tars(self, mmc4_build):
        out, result = mmc4_build
        sample = stats.document_sample(out, documents=10, per_shard=3)
        assert len(sample) == 10 and len(sample.shards) == 4  # 3 + 3 + 3 + 1
        truth = {}
        for name in sample.shards:
            with tarfile.open(out / name) as tar:
                for m in tar.getmembers():
                    truth[m.name.split(".")[0]] = json.loads(tar.extractfile(m).read())
        for d in sample.documents:
            doc = truth[d["key"]]
            assert d["sentences"] == doc["text_list"]
            assert d["matched"] == [(i["matched_text_index"], i["matched_sim"]) for i in doc["image_info"]]
        spd = stats.sentences_per_document(sample)
        assert np.array_equal(
            spd.counts["documents"], np.histogram([len(d["sentences"]) for d in sample.documents], bins=spd.edges)[0]
        )
        landing = stats.image_landing(sample)
        assert landing.total() == sum(len(d["matched"]) for d in sample.documents)
        assert landing.edges[0] == 0 and landing.edges[-1] == 1
        items = stats.sample_items(out, n=5)
        assert len(items) == 5 and all(i.text in truth[i.key]["text_list"] for i in items if i.key in truth)

    def test_mmc4_report_holds_documents_and_images(self, mmc4_build, tmp_path):
        out, result = mmc4_build
        head = report.write_report(out, str(tmp_path / "mmc4.html"), samples=4)
        assert head["documents kept"] == result.kept and head["images kept"] == result.kept_of("image")
        html = (tmp_path / "mmc4.html").read_text()
        _self_contained(html)
        for title in (
            "Filter funnel: documents",
            "Filter funnel: images",
            "Images per document",
            "Where images land in the document",
            "Sentences per document",
        ):
            assert title in html
