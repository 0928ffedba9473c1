"""The MMC4 sample build with OpenFlamingo windows (mmc4.windows, on in the shipped recipes): every
document written is one the loader accepts and sees whole."""

from __future__ import annotations

import collections
import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.optimize import linear_sum_assignment

from flamingo_corpus import cli
from flamingo_corpus.build import run_build
from flamingo_corpus.output.manifest import summary

from ..helpers import index_rows
from ..mmc4_loader import clip_tokenize, hf_tokenize, loader_view, train_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WINDOW_REASONS = {"long_sentence", "window_without_image", "single_image_window", "past_first_window"}


def _windows(out: Path) -> dict:
    docs = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                docs[m.name.split(".", 1)[0]] = json.loads(tf.extractfile(m).read())
    return docs


def _check_build(out: Path, tokenize, trim: bool = False) -> dict:
    """The loader's view of every window written, and the index's account of windows and images;
    returns the figures."""
    windows = _windows(out)
    rows = index_rows(out)
    seen = 0
    for key, doc in windows.items():
        view = loader_view(doc, tokenize)
        assert view.accepted, (key, doc["id"], view.why)
        assert view.seen == len(view.kept), key  # no image the loader keeps lies past its tokens
        seen += view.seen
        # the loader's own one-to-one assignment on the window's matrix gives the written one
        sim = np.asarray(doc["similarity_matrix"], dtype=float)
        _, cols = linear_sum_assignment(-sim)
        assert cols.tolist() == [im["matched_text_index"] for im in doc["image_info"]], key
        assert doc["window"]["tokens"] <= 256 and doc["id"] == f"{doc['doc_id']}/w{doc['window']['index']}"
    by_kind = collections.defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    kept_windows = {r["key"]: r for r in by_kind["window"] if r["status"] == "kept"}
    assert kept_windows.keys() == windows.keys()
    for key, r in kept_windows.items():
        assert r["doc_id"] == windows[key]["doc_id"] and r["id"] == windows[key]["id"]  # which document
    first_key = {}
    for r in sorted(kept_windows.values(), key=lambda r: r["position"]):
        first_key.setdefault(r["doc_id"], r["key"])
    kept_docs = [r for r in by_kind["document"] if r["status"] == "kept"]
    assert {r["id"] for r in kept_docs} == set(first_key)
    assert all(r["key"] == first_key[r["id"]] for r in kept_docs)  # a document row names its first window
    keys_of = collections.defaultdict(set)
    for key, doc in windows.items():
        keys_of[doc["doc_id"]].add(key)
    images = by_kind["image"]
    inside = [r for r in images if r["status"] == "kept"]
    assert all(r["key"] in keys_of[r["doc_id"]] for r in inside)
    assert len(inside) == sum(len(d["image_info"]) for d in windows.values())
    outside = [r for r in images if r["status"] == "dropped" and r["reason"] in WINDOW_REASONS]
    # the images the loader would keep: aligned, at its threshold, inside a window or left outside
    keepable = [r for r in inside + outside if r["similarity"] is not None and r["similarity"] >= 0.24]
    if not trim:  # trim leaves the images past the first window out on purpose
        assert seen >= 0.95 * len(keepable), (seen, len(keepable))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["windows"]["totals"]["kept"]
        == len(windows)
        == sum(json.loads((out / "sizes.json").read_text()).values())
    )
    assert manifest["totals"]["kept"] == len(kept_docs)
    return {"documents": len(kept_docs), "windows": len(windows), "seen": seen, "keepable": len(keepable)}


def test_the_sample_build_with_estimated_tokens(mmc4_build):
    out, result = mmc4_build
    figures = _check_build(out, clip_tokenize())
    print(f"\nsample build, estimated tokens: {figures}")
    text = summary(result)
    assert "windows" in text and "estimated" in text and "in a window" in text


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> str:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_a_tokenizer_file_and_trim_with_the_release_matrix(mmc4_recipe, tokenizer_file, tmp_path):
    """The recipe names the language model's tokenizer; trim keeps each document's first window,
    and with the release's matrix the images that cannot be kept in it are never downloaded."""
    windows = dataclasses.replace(mmc4_recipe.mmc4.windows, mode="trim", tokenizer=tokenizer_file)
    recipe = dataclasses.replace(
        mmc4_recipe,
        clip=dataclasses.replace(mmc4_recipe.clip, enabled=False),
        mmc4=dataclasses.replace(mmc4_recipe.mmc4, windows=windows),
    )
    result = run_build(recipe, str(tmp_path / "out"))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_file)
    tokenizer.add_special_tokens(["<|endofchunk|>", "<image>"])
    figures = _check_build(tmp_path / "out", hf_tokenize(tokenizer), trim=True)
    windows_written = _windows(tmp_path / "out")
    assert all(d["window"]["index"] == 0 and not d["window"]["tokens_estimated"] for d in windows_written.values())
    assert figures["documents"] == figures["windows"]  # trim: one window per document
    drops = result.drops_of("image")
    print(f"\ntrim with a tokenizer file: {figures}; not downloaded: {drops.get('metadata/past_first_window', 0)}")
    assert drops.get("metadata/past_first_window", 0) > 0
    assert "counted with" in summary(result)


def test_a_tokenizer_file_that_does_not_load_stops_the_build_with_one_line(mmc4_recipe, tmp_path, capsys):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("not json")
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "sample-mmc4.yaml").read_text())
    data["input"]["path"] = mmc4_recipe.input.path
    data["sample_web"] = {"enabled": False}  # the build stops before any image is asked for
    data["mmc4"]["windows"]["tokenizer"] = str(bad)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    assert cli.main(["build", str(recipe), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("flamingo-corpus:")]  # beside the log's lines
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "mmc4.windows.tokenizer" in errors[0] and str(bad) in errors[0]
