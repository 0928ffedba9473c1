"""The MMC4 sample build end to end: DESIGN.md section 6, as OpenFlamingo's loader reads it.

The sample recipe cuts documents into OpenFlamingo windows (mmc4.windows): each json in the tars is
one window of a document (``doc_id``, ``window``); test_mmc4_windows.py checks the windows."""

from __future__ import annotations

import base64
import collections
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from flamingo_corpus.build import run_build
from flamingo_corpus.mmc4.align import loader_view

from ..helpers import index_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _documents(out: Path):
    docs = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                assert ext == "json", m.name  # exactly one member per document
                docs[key] = json.loads(tf.extractfile(m).read())
    return docs


def _input_lines(recipe):
    return Path(recipe.input.path).read_text().splitlines()


def test_every_document_satisfies_the_loader_contract(mmc4_build):
    out, result = mmc4_build
    docs = _documents(out)
    assert len(docs) == result.kept_of("window") > result.kept > 0
    for key, doc in docs.items():
        sim = np.asarray(doc["similarity_matrix"], dtype=float)
        info = doc["image_info"]
        assert sim.shape == (len(info), len(doc["text_list"]))
        indices = [im["matched_text_index"] for im in info]
        assert indices == sorted(indices), key  # the k-th <image> is the k-th image_info entry
        for im, row in zip(info, sim):
            raw = base64.b64decode(im["image_base64"])
            assert isinstance(im["image_base64"], str) and len(raw) // 1000 > 10  # the loader's 11 kB rule
            assert Image.open(io.BytesIO(raw)).convert("RGB").size == (im["width"], im["height"])
            assert im["image_name"] and im["raw_url"].startswith("http://127.0.0.1:")
            assert im["matched_sim"] == pytest.approx(row[im["matched_text_index"]])
        # A one-to-one reassignment of the written matrix gives back the written indices.
        rows, cols = linear_sum_assignment(-sim)
        expected = {int(r): int(c) for r, c in zip(rows, cols)}
        for i in range(len(info)):
            expected.setdefault(i, int(np.argmax(sim[i])))  # leftover images: argmax (mmc4)
        assert [expected[i] for i in range(len(info))] == indices, key
        assert loader_view(sim, 0.24, 6), key  # the loader keeps at least one image


def test_text_survives_and_images_land_on_their_sentences(mmc4_build, mmc4_recipe):
    out, _ = mmc4_build
    source = {}
    for n, line in enumerate(_input_lines(mmc4_recipe), start=1):
        try:
            source[f"docs.jsonl:{n}"] = json.loads(line)
        except json.JSONDecodeError:
            pass
    described = 0
    for doc in _documents(out).values():
        original = source[doc["doc_id"]]
        first = doc["window"]["first_sentence"]
        assert doc["text_list"] == original["text_list"][first : first + len(doc["text_list"])]
        assert doc["url"] == original["url"]
        for im in doc["image_info"]:
            sentence = doc["text_list"][im["matched_text_index"]]
            described += any(w in sentence for w in ("circle", "square", "triangle", "star", "cross", "ring"))
    # The inserted sentences describe the images: CLIP must put most images on them.
    total = sum(len(d["image_info"]) for d in _documents(out).values())
    assert described >= 0.8 * total


def test_every_document_and_image_is_in_the_index_once(mmc4_build, mmc4_recipe):
    out, result = mmc4_build
    rows = index_rows(out)
    lines = _input_lines(mmc4_recipe)
    docs = [r for r in rows if r["kind"] == "document"]
    assert sorted(r["id"] for r in docs) == sorted(f"docs.jsonl:{n}" for n in range(1, len(lines) + 1))
    images = [r for r in rows if r["kind"] == "image"]
    expected_images = set()
    for n, line in enumerate(lines, start=1):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        doc_row = next(r for r in docs if r["id"] == f"docs.jsonl:{n}")
        if (
            doc_row["stage"] != "read"
            and doc_row["reason"] != "duplicate_document"
            and doc_row["reason"] not in ("too_few_sentences", "too_many_sentences", "could_have_url_duplicate")
        ):
            expected_images |= {f"docs.jsonl:{n}#{i}" for i in range(len(doc["image_info"]))}
    assert len(images) == len({r["id"] for r in images})
    assert {r["id"] for r in images} == expected_images
    kept_docs = {r["doc_id"]: r["key"] for r in docs if r["status"] == "kept"}
    window_keys = collections.defaultdict(set)  # a kept image is in one of its document's windows
    for r in rows:
        if r["kind"] == "window" and r["status"] == "kept":
            window_keys[r["doc_id"]].add(r["key"])
    for r in images:
        if r["status"] == "kept":
            assert r["key"] in window_keys[r["doc_id"]]
    for doc_id, key in kept_docs.items():
        assert key == min(window_keys[doc_id])  # a document row names its first window
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["kept"] == len(kept_docs)
    assert manifest["windows"]["totals"]["kept"] == sum(json.loads((out / "sizes.json").read_text()).values())
    assert manifest["images"]["totals"]["kept"] == sum(r["status"] == "kept" for r in images)


def test_every_kind_of_trouble_has_its_reason(mmc4_build):
    out, _ = mmc4_build
    rows = index_rows(out)
    reasons = collections.Counter((r["kind"], r["reason"]) for r in rows if r["status"] == "dropped")
    for kind, reason in [
        ("document", "bad_json"),
        ("document", "bad_matrix_shape"),
        ("document", "duplicate_document"),
        ("document", "too_few_images"),
        ("image", "http_404"),
        ("image", "too_small"),
        ("image", "bad_aspect_ratio"),
        ("image", "too_few_bytes"),
        ("image", "bad_extension"),
        ("image", "url_blocklisted_word"),
        ("image", "duplicate_in_document"),
    ]:
        assert reasons[(kind, reason)] > 0, (kind, reason)


def test_multiprocess_build_gives_identical_shards(mmc4_build, mmc4_recipe, tmp_path):
    _, first = mmc4_build
    again = run_build(
        mmc4_recipe, str(tmp_path / "mmc4"), ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    assert sorted(again.shards, key=lambda s: s["name"]) == sorted(first.shards, key=lambda s: s["name"])


def test_without_clip_the_release_matrix_aligns(mmc4_recipe, tmp_path):
    """clip.enabled: false aligns with the similarity matrices the documents ship with."""
    import dataclasses

    recipe = dataclasses.replace(
        mmc4_recipe,
        clip=dataclasses.replace(mmc4_recipe.clip, enabled=False),
        mmc4=dataclasses.replace(mmc4_recipe.mmc4, loader_threshold=None),
    )
    result = run_build(recipe, str(tmp_path / "mmc4"))
    source = {f"docs.jsonl:{n}": line for n, line in enumerate(_input_lines(recipe), start=1)}
    docs = _documents(tmp_path / "mmc4")
    assert len(docs) == result.kept_of("window") > 0
    for doc in docs.values():
        original = json.loads(source[doc["doc_id"]])
        rows = {
            (im["image_name"], im["raw_url"]): row
            for im, row in zip(original["image_info"], original["similarity_matrix"])
        }
        first, n = doc["window"]["first_sentence"], len(doc["text_list"])
        for im, row in zip(doc["image_info"], doc["similarity_matrix"]):
            assert row == rows[(im["image_name"], im["raw_url"])][first : first + n]
