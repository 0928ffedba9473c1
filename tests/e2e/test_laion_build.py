"""The local sample build end to end: what the OpenFlamingo loader reads, and the bookkeeping."""

from __future__ import annotations

import collections
import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from flamingo_corpus.build import run_build
from flamingo_corpus.output.shard import KEY_DIGITS

from ..helpers import index_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _tars(out: Path):
    return sorted(str(p) for p in out.glob("*.tar"))


def _input_rows(recipe) -> int:
    return pq.ParquetFile(recipe.input.path).metadata.num_rows


def test_openflamingo_loader_reads_every_kept_sample(sample_build):
    out, result = sample_build
    # The loader's own pipeline (DESIGN.md section 4), with plain webdataset.
    ds = (
        wds.WebDataset(_tars(out), shardshuffle=False)
        .select(lambda s: "txt" in s and any(k in s for k in ("jpg", "png", "jpeg")))
        .decode("pilrgb")
        .to_tuple("__key__", "jpg;png;jpeg", "txt")
    )
    samples = list(ds)
    kept = [r for r in index_rows(out) if r["status"] == "kept"]
    assert len(samples) == result.kept == len(kept) > 0
    assert {k for k, _, _ in samples} == {r["key"] for r in kept}
    captions = {r["key"]: r["caption"] for r in kept}
    for key, image, text in samples:
        assert image.mode == "RGB" and image.size == (224, 224)
        assert text == captions[key]


def test_keys_and_members_follow_the_contract(sample_build, sample_recipe):
    out, _ = sample_build
    keys = []
    for tar in _tars(out):
        with tarfile.open(tar) as tf:
            names = tf.getnames()
            members = collections.defaultdict(set)
            for name in names:
                key, ext = name.split(".", 1)
                members[key].add(ext)
            for key, exts in members.items():
                assert exts == {"jpg", "txt", "json"}, (tar, key, exts)
                meta = json.loads(tf.extractfile(f"{key}.json").read())
                assert meta["key"] == key and meta["url"].startswith("http://127.0.0.1:")
                assert (
                    meta["similarity"] >= sample_recipe.clip.min_similarity
                    and meta["sha256"]
                    and len(meta["phash"]) == 16
                )
                jpg = tf.extractfile(f"{key}.jpg").read()
                assert hashlib.sha256(jpg).hexdigest() == meta["sha256"]
            keys.extend(members)
    assert len(keys) == len(set(keys))
    assert all(len(k) == KEY_DIGITS and k.isdigit() for k in keys)
    assert keys == sorted(keys)


def test_manifest_sizes_and_tars_agree(sample_build, sample_recipe):
    out, result = sample_build
    manifest = json.loads((out / "manifest.json").read_text())
    sizes = json.loads((out / "sizes.json").read_text())
    assert set(sizes) == {Path(t).name for t in _tars(out)}
    for shard in manifest["shards"]:
        path = out / shard["name"]
        data = path.read_bytes()
        assert shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
        with tarfile.open(path) as tf:
            n = len({m.split(".", 1)[0] for m in tf.getnames()})
        assert shard["count"] == sizes[shard["name"]] == n <= sample_recipe.shard.samples_per_shard
    totals = manifest["totals"]
    assert totals["kept"] == sum(sizes.values()) == result.kept
    assert totals["rows_in"] == totals["accounted"] == _input_rows(sample_recipe)
    assert totals["kept"] + sum(manifest["drops"].values()) == totals["rows_in"]
    assert manifest["recipe_sha256"] == sample_recipe.digest()
    assert manifest["recipe"]["clip"]["min_similarity"] == sample_recipe.clip.min_similarity


def test_every_input_row_is_in_the_index_once(sample_build, sample_recipe):
    out, _ = sample_build
    rows = index_rows(out)
    n = _input_rows(sample_recipe)
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(f"metadata.parquet:{i}" for i in range(n))
    for r in rows:
        if r["status"] == "kept":
            assert r["key"] and r["shard"] and r["reason"] is None
        else:
            assert r["status"] == "dropped" and r["reason"] and r["stage"] and r["key"] is None


def test_every_kind_of_trouble_has_its_reason(sample_build, sample_recipe):
    out, _ = sample_build
    rows = index_rows(out)
    reasons = collections.Counter(r["reason"] for r in rows if r["status"] == "dropped")
    for reason in (
        "http_404",
        "http_503",
        "timeout",
        "not_image",
        "not_an_image",
        "too_small",
        "bad_aspect_ratio",
        "robots_disallowed",
        "low_similarity",
        "duplicate_image",
        "duplicate_url",
        "wrong_language",
        "bad_scheme",
        "unsafe",
        "watermark",
    ):
        assert reasons[reason] > 0, reason
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        if r["reason"] in ("duplicate_image", "duplicate_url"):
            original = by_id[r["duplicate_of"]]
            assert original["id"] != r["id"]
        if r["reason"] == "duplicate_image":
            assert by_id[r["duplicate_of"]]["sha256"] == r["sha256"]
        if r["reason"] == "low_similarity":
            assert r["similarity"] < sample_recipe.clip.min_similarity


def test_multiprocess_build_gives_identical_shards(sample_build, sample_recipe, tmp_path):
    """Separate worker processes, as on a cluster, and the determinism that makes reruns safe."""
    out, first = sample_build
    again = run_build(
        sample_recipe, str(tmp_path / "laion"), ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    assert sorted(again.shards, key=lambda s: s["name"]) == sorted(first.shards, key=lambda s: s["name"])
    assert again.drops == first.drops
