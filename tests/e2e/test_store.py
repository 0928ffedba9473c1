"""The image store: re-filter without the web, retry only what failed, damaged and foreign blocks
fetched again, MMC4 the same way.  Every count of requests is the loopback server's own."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flamingo_corpus.build import run_build
from flamingo_corpus.recipe import recipe_from_dict
from flamingo_corpus.sample.web import SampleWeb
from flamingo_corpus.store.blocks import block_files, list_blocks

from ..helpers import index_rows
from ..loopback_build import BASE_RECIPE, jpeg_bytes, serve_rows, smooth_photo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TINY_CLIP = {"enabled": True, "model": "flamingo-tiny-clip", "pretrained": "synthetic-world", "device": "cpu"}


def _recipe(tmp_path: Path, block_rows: int = 8, **sections):
    merged = {
        **BASE_RECIPE,
        "input": {"path": str(tmp_path / "rows.parquet")},
        "store": {"block_rows": block_rows},
        "shard": {"samples_per_shard": 4},
    }
    for section, values in sections.items():
        merged[section] = {**merged.get(section, {}), **values}
    return recipe_from_dict(merged, base_dir=tmp_path)


def _requests(web: SampleWeb) -> int:
    return sum(web.counts().values())


def _pictures(n: int, offset: int = 0) -> dict:
    return {f"{i}.jpg": jpeg_bytes(smooth_photo(offset + i)) for i in range(n)}


def _by_id(out: Path) -> dict:
    return {r["id"]: r for r in index_rows(out)}


def _assert_same_output(a: Path, b: Path) -> None:
    names = sorted(p.name for p in b.glob("*.tar"))
    assert sorted(p.name for p in a.glob("*.tar")) == names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "sizes.json").read_bytes() == (b / "sizes.json").read_bytes()
    assert _by_id(a) == _by_id(b)


def test_refilter_after_the_image_stage_makes_no_request(tmp_path):
    """Build once; change the CLIP threshold, the dedup settings and the shard size; build again
    from the same store: no request at all, and the output a build from nothing would give."""
    files = _pictures(36)
    files.update({f"copy{i}.jpg": files[f"{i}.jpg"] for i in range(6)})  # exact duplicates
    store = tmp_path / "store"
    with serve_rows(tmp_path, files) as web:
        first = _recipe(tmp_path, clip={**TINY_CLIP, "min_similarity": -1.0})
        result = run_build(first, str(tmp_path / "first"), store=str(store))
        fetched = _requests(web)
        assert fetched == len(files) and result.store["rows_fetched"] == len(files)
        assert sum(r["reason"] == "duplicate_image" for r in index_rows(tmp_path / "first")) == 6

        sims = sorted(r["similarity"] for r in index_rows(tmp_path / "first") if r["similarity"] is not None)
        changed = _recipe(
            tmp_path,
            clip={**TINY_CLIP, "min_similarity": sims[len(sims) // 2]},
            dedup={"exact": False, "near": True, "near_max_distance": 4},
            shard={"samples_per_shard": 3},
        )
        again = run_build(changed, str(tmp_path / "again"), store=str(store))
        assert _requests(web) == fetched  # not one request
        assert again.store["rows_from_store"] == len(files) and again.store["rows_fetched"] == 0
        assert again.store["blocks_written"] == 0

        fresh = run_build(changed, str(tmp_path / "fresh"), store=str(tmp_path / "other-store"))
        assert _requests(web) == 2 * fetched
    _assert_same_output(tmp_path / "again", tmp_path / "fresh")
    rows = index_rows(tmp_path / "again")
    assert any(r["reason"] == "low_similarity" for r in rows) and not any(
        r["reason"] == "duplicate_image" for r in rows
    )
    assert again.kept == fresh.kept and all(r["attempts"] == 1 for r in rows)


def test_a_change_that_decides_the_stored_bytes_is_named_and_fetched_again(tmp_path, caplog):
    files = _pictures(12)
    store = tmp_path / "store"
    with serve_rows(tmp_path, files) as web:
        run_build(_recipe(tmp_path), str(tmp_path / "a"), store=str(store))
        assert _requests(web) == 12
        with caplog.at_level(logging.WARNING, logger="flamingo_corpus.build"):
            result = run_build(
                _recipe(tmp_path, image={"image_size": 128}, download={"threads": 3}),
                str(tmp_path / "b"),
                store=str(store),
            )
        assert _requests(web) == 24 and result.store["rows_fetched"] == 12
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "image.image_size 256 -> 128" in warning and "download.threads" not in warning
    assert len(list_blocks(str(store))) == 2  # the first recipe's blocks stay, beside the new ones
    assert {r["width"] for r in index_rows(tmp_path / "b") if r["status"] == "kept"} == {128}


def test_retry_failed_fetches_only_the_transient_failures(tmp_path):
    files = _pictures(14)
    paths = [f"{i}.jpg" for i in range(10)] + [f"flaky/1/{i}.jpg" for i in (10, 11, 12)] + ["status/404/13.jpg"]
    paths += ["status/410/x.jpg", "as-html/13.jpg"]
    store = tmp_path / "store"
    retry_none = {"retries": 0}  # the first 503 is the answer of the first run
    with serve_rows(tmp_path, files, paths) as web:
        recipe = _recipe(tmp_path, block_rows=4, download=retry_none)
        run_build(recipe, str(tmp_path / "first"), store=str(store))
        first = _by_id(tmp_path / "first")
        failed = {i for i, r in first.items() if r["reason"] == "http_503"}
        assert len(failed) == 3 and all(first[i]["attempts"] == 1 for i in failed)
        before = web.counts()

        # Without --retry-failed the store's answer stands, and nothing is requested.
        run_build(recipe, str(tmp_path / "plain"), store=str(store))
        assert web.counts() == before
        assert _by_id(tmp_path / "plain") == first

        result = run_build(recipe, str(tmp_path / "retried"), store=str(store), retry_failed=True)
        after = web.counts()
    asked = {p: after[p] - before.get(p, 0) for p in after if after[p] != before.get(p, 0)}
    assert asked == {f"/flaky/1/{i}.jpg": 1 for i in (10, 11, 12)}  # permanent failures and images: not again
    retried = _by_id(tmp_path / "retried")
    for i, r in retried.items():
        if i in failed:
            assert r["status"] == "kept" and r["attempts"] == 2, r
        else:
            assert r["attempts"] == first[i]["attempts"] and r["reason"] == first[i]["reason"], r
    assert {r["reason"] for r in retried.values()} >= {"http_404", "http_410", "not_image"}
    assert result.store["rows_retried"] == 3 and result.store["rows_recovered"] == 3
    # The store now holds the recovered rows, and what fetched them.
    runs = {
        r["id"]: r["run"] for b in block_files(list(list_blocks(str(store)))[0]) for r in pq.read_table(b).to_pylist()
    }
    assert {runs[i] for i in failed} == {result.store["run"]}
    assert len({runs[i] for i in retried if i not in failed}) == 1 and result.store["run"] not in {
        runs[i] for i in retried if i not in failed
    }


def test_damaged_and_foreign_blocks_are_fetched_again_with_a_warning(tmp_path, caplog):
    files = _pictures(40)
    store = tmp_path / "store"
    with serve_rows(tmp_path, files) as web:
        recipe = _recipe(tmp_path)  # 5 blocks of 8 rows
        run_build(recipe, str(tmp_path / "first"), store=str(store))
        run_build(_recipe(tmp_path, image={"image_size": 64}), str(tmp_path / "small"), store=str(store))
        ours, theirs = (block_files(folder) for folder in sorted(list_blocks(str(store)), key=_folder_of(recipe)))
        flipped, cut, foreign = Path(ours[1]), Path(ours[3]), Path(ours[4])
        data = bytearray(flipped.read_bytes())
        data[len(data) // 2] ^= 0x01
        flipped.write_bytes(bytes(data))
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
        shutil.copyfile(theirs[4], foreign)  # another recipe's block under this recipe's name
        before = _requests(web)
        with caplog.at_level(logging.WARNING, logger="flamingo_corpus.store.fetch"):
            result = run_build(recipe, str(tmp_path / "again"), store=str(store))
        assert _requests(web) - before == 8 * 3  # the rows of those three blocks, no other
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in (flipped, cut, foreign):
        assert any(str(path) in w for w in warnings), (path, warnings)
    assert any("another recipe digest" in w for w in warnings)
    assert result.store["blocks_damaged"] == 3
    _assert_same_output(tmp_path / "again", tmp_path / "first")
    assert len(index_rows(tmp_path / "again")) == 40


def _folder_of(recipe):
    from flamingo_corpus.store.blocks import DIGEST_CHARS, store_digest, store_sections

    ours = store_digest(store_sections(recipe))[:DIGEST_CHARS]
    return lambda folder: (not folder.endswith(ours), folder)


def _documents(path: Path, base_url: str, n_docs: int) -> None:
    docs = []
    for d in range(n_docs):
        images = [f"{3 * d + k}.jpg" for k in range(3)]
        match = [0.3, 0.2, 0.2]  # each image's own sentence; the other sentences score 0.1
        text = [f"sentence {j} of document {d}" for j in range(4)]
        docs.append(
            {
                "url": f"http://example.com/{d}",
                "text_list": text,
                "image_info": [{"image_name": n, "raw_url": f"{base_url}/{n}"} for n in images],
                "similarity_matrix": [[match[k] if j == k else 0.1 for j in range(4)] for k in range(3)],
            }
        )
    path.write_text("\n".join(json.dumps(doc) for doc in docs) + "\n")


def test_mmc4_images_go_through_the_store_too(tmp_path):
    n_docs = 10
    store = tmp_path / "store"
    web_root = tmp_path / "web"
    web_root.mkdir()
    for name, data in _pictures(3 * n_docs).items():
        (web_root / name).write_bytes(data)
    with SampleWeb(web_root) as web:
        _documents(tmp_path / "docs.jsonl", web.url, n_docs)

        def mmc4(**mmc4_cfg):
            return recipe_from_dict(
                {
                    **BASE_RECIPE,
                    "input": {"corpus": "mmc4", "path": str(tmp_path / "docs.jsonl")},
                    "mmc4": {"loader_threshold": None, **mmc4_cfg},
                    "store": {"block_rows": 3},
                    "shard": {"samples_per_shard": 4},
                }
            )

        first = run_build(mmc4(), str(tmp_path / "first"), store=str(store))
        assert _requests(web) == 3 * n_docs and first.kept_of("image") == 3 * n_docs
        changed = mmc4(min_image_similarity=0.25)  # keeps the first image of each document
        again = run_build(changed, str(tmp_path / "again"), store=str(store))
        assert _requests(web) == 3 * n_docs and again.store["rows_from_store"] == 3 * n_docs
        run_build(changed, str(tmp_path / "fresh"), store=str(tmp_path / "fresh-store"))
    _assert_same_output(tmp_path / "again", tmp_path / "fresh")
    stored = [r for b in block_files(list(list_blocks(str(store)))[0]) for r in pq.read_table(b).to_pylist()]
    assert sorted((r["doc_id"], r["position"]) for r in stored) == sorted(
        (f"docs.jsonl:{d + 1}", k) for d in range(n_docs) for k in range(3)
    )
    assert again.kept_of("image") == n_docs


def test_verify_and_stats_read_a_store(tmp_path, capsys):
    from flamingo_corpus.cli import main

    files = _pictures(10)
    paths = [*files, "status/404/a.jpg", "status/503/b.jpg"]
    store = tmp_path / "store"
    with serve_rows(tmp_path, files, paths):
        run_build(_recipe(tmp_path, block_rows=5, download={"retries": 0}), str(tmp_path / "out"), store=str(store))
    capsys.readouterr()
    assert main(["verify", str(store)]) == 0
    text = capsys.readouterr().out
    assert "blocks 3, rows 12, images 10" in text and "download/http_404" in text and text.rstrip().endswith("OK")
    assert "retryable (transient) failures 1" in text
    assert main(["stats", str(store), "--output", str(tmp_path / "store.html")]) == 0
    assert "download/http_503" in (tmp_path / "store.html").read_text()

    block = Path(block_files(list(list_blocks(str(store)))[0])[1])
    data = bytearray(block.read_bytes())
    data[len(data) // 2] ^= 0x10
    block.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(store)]) == 1
    assert f"{block}: damaged" in capsys.readouterr().out
