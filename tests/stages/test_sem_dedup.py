"""Semantic dedup (SemDeDup): the cluster rule against brute force, the Beam stage on one and two
worker processes, and a LAION build where re-rendered pictures go that pHash cannot catch."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from flamingo_corpus.clip.model import load_clip
from flamingo_corpus.dedup.hamming_index import variant_groups
from flamingo_corpus.dedup.semantic import (
    DedupSemantic,
    FitCentroids,
    assign,
    cluster_duplicates,
    fit_centroids,
    quantize_rows,
    semantic_duplicates,
    spherical_kmeans,
    stable_hash,
)
from flamingo_corpus.images.perceptual import hamming, phash
from flamingo_corpus.images.process import process_image
from flamingo_corpus.recipe import ClipConfig, DedupConfig, ImageConfig, RecipeError, recipe_from_dict
from flamingo_corpus.records import Sample
from flamingo_corpus.sample import synthetic

from ..beam_util import local_pipeline, run_collect
from ..loopback_build import TINY_CLIP as SHARED_TINY_CLIP
from ..loopback_build import build_over_loopback, jpeg_bytes

TINY_CLIP = {**SHARED_TINY_CLIP, "batch_size": 16}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _blobs(seed: int, n_blobs: int = 6, per_blob: int = 30, dim: int = 32):
    """Embeddings around ``n_blobs`` directions, with a few planted near-copies in each."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_blobs, dim)))
    points = []
    for c in centres:
        base = _unit(c + 0.5 * rng.normal(size=(per_blob, dim)))
        copies = _unit(base[:5] + 0.02 * rng.normal(size=(5, dim)))
        points.extend(base)
        points.extend(copies)
    return _unit(np.array(points))


def _brute_force(emb: np.ndarray, threshold: float) -> dict:
    """The rule spelled out pair by pair: j is a duplicate of the most similar earlier i above
    the threshold, and points at the kept member i's chain ends on."""
    kept_of, out = {}, {}
    for j in range(len(emb)):
        sims = [(float(emb[i] @ emb[j]), i) for i in range(j)]
        best = max(sims, default=(-2.0, -1))
        if best[0] > threshold:
            kept_of[j] = kept_of[best[1]]
            out[str(j)] = str(kept_of[j])
        else:
            kept_of[j] = j
    return out


def test_cluster_rule_matches_brute_force():
    emb = _blobs(1)
    got = cluster_duplicates([str(i) for i in range(len(emb))], emb, 0.97)
    assert got == _brute_force(emb, 0.97)
    assert len(got) >= 6 * 5 * 0.9  # the planted copies are found
    assert all(target not in got for target in got.values())  # duplicate_of always names a kept one


def test_a_big_cluster_is_processed_in_blocks(monkeypatch):
    import flamingo_corpus.dedup.semantic as sem

    emb = _blobs(2)
    whole = cluster_duplicates([str(i) for i in range(len(emb))], emb, 0.97)
    monkeypatch.setattr(sem, "_BLOCK_ELEMENTS", 300)  # blocks of one or two rows
    assert cluster_duplicates([str(i) for i in range(len(emb))], emb, 0.97) == whole


def test_clusters_keep_planted_copies_together():
    emb = _blobs(3)
    centroids = fit_centroids(emb, 6)
    assert centroids.shape == (6, emb.shape[1])
    # unit length up to the rounding of each component to a multiple of 2**-15 (quantize_rows)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=np.sqrt(emb.shape[1]) * 2**-15)
    members = [(str(i), e, (i,)) for i, e in enumerate(emb)]
    clustered = semantic_duplicates(members, centroids, 0.97)
    one_cluster = semantic_duplicates(members, centroids[:1], 0.97)
    assert one_cluster == _brute_force(emb, 0.97)
    # every planted copy is in its original's cluster, so clustering loses none of them
    planted = {str(b * 35 + 30 + c) for b in range(6) for c in range(5)}
    assert planted <= set(clustered)
    assert set(clustered) <= set(one_cluster)


def test_fit_is_deterministic_and_handles_few_rows():
    emb = _blobs(4)
    np.testing.assert_array_equal(fit_centroids(emb, 5), fit_centroids(emb, 5))
    assert fit_centroids(emb[:3], 5).shape == (3, emb.shape[1])
    assert fit_centroids(np.zeros((0, 0)), 5).shape[0] == 0
    assert stable_hash("row:1") == stable_hash("row:1") != stable_hash("row:2")


def _digest(centroids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(centroids, dtype=np.float32).tobytes()).hexdigest()


def test_fit_is_byte_identical_from_run_to_run_and_with_or_without_pruning(monkeypatch):
    """The k-means is exact arithmetic on quantized rows: repeated runs, the pruned and the plain
    Lloyd's iterations, a warm start or none, and float32 score blocks of any size give the same
    centroid bits."""
    import flamingo_corpus.dedup.semantic as sem

    emb = _blobs(6, n_blobs=12, per_blob=60, dim=48)
    reference, stats = spherical_kmeans(emb, 10)
    assert stats["iterations"] >= 2
    for _ in range(2):
        assert _digest(spherical_kmeans(emb, 10)[0]) == _digest(reference)
    assert _digest(spherical_kmeans(emb, 10, prune=False)[0]) == _digest(reference)
    monkeypatch.setattr(sem, "_SCORES_BLOCK", 97)  # a few rows per float32 product
    assert _digest(spherical_kmeans(emb, 10)[0]) == _digest(reference)
    # a different seed is a different start: a guard that the checks above compare something
    assert _digest(spherical_kmeans(emb, 10, seed=1)[0]) != _digest(reference)
    # centroids are multiples of 2**-15 of unit length
    assert np.array_equal(np.rint(reference * 2**15) / 2**15, reference)
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1, atol=1e-3)


def test_assign_is_the_exact_nearest_centroid_ties_to_the_lowest_index():
    """assign decides in float32 only where rounding cannot change the answer: its labels equal
    the float64 products of the quantized values (exact), also for rows on a tie or a hair away."""
    rng = np.random.default_rng(7)
    rows = quantize_rows(rng.normal(size=(3000, 64)))
    centroids = quantize_rows(rng.normal(size=(40, 64)))
    centroids[5] = centroids[3]  # an exact tie: 3 wins
    centroids[9] = quantize_rows((centroids[8] + 2**-13 * rng.normal(size=64))[None])[0]  # near-ties
    rows[:50] = centroids[3]
    rows[50:100] = centroids[8]
    labels, best, second = assign(rows, centroids)
    exact = rows.astype(np.float64) @ centroids.astype(np.float64).T
    assert np.array_equal(labels, np.argmax(exact, axis=1))
    assert set(labels[:50].tolist()) == {3}
    top = exact[np.arange(len(rows)), labels]
    assert np.all(best <= top) and np.all(top - best < 1e-4)
    exact[np.arange(len(rows)), labels] = -np.inf
    assert np.all(second >= exact.max(axis=1))


def _fit_digest(tmp_path, options) -> str:
    members = [(s.id, s.image_embedding, (s.row,)) for s in _samples(n_blobs=12, per_blob=60)]
    with local_pipeline(options=PipelineOptions(options)) as p:
        (
            p
            | beam.Create(members)
            | FitCentroids(n_clusters=9, fit_rows=500)
            | beam.Map(_digest)
            | beam.io.WriteToText(str(tmp_path / "digest"))
        )
    return "".join(f.read_text() for f in tmp_path.glob("digest*")).strip()


@pytest.mark.timeout(300)
def test_fit_is_the_same_bits_on_one_and_two_worker_processes(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _fit_digest(tmp_path / "one", [])
    two = _fit_digest(tmp_path / "two", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    members = sorted((s.id, s.image_embedding) for s in _samples(n_blobs=12, per_blob=60))
    assert one == two
    # and the bits of the in-memory fit on the stage's subset (Top.Of reverse=True: the smallest hashes)
    subset = sorted(sorted(members, key=lambda m: stable_hash(m[0]))[:500], key=lambda m: m[0])
    assert one == _digest(fit_centroids(np.stack([e for _, e in subset]), 9))


def _samples(n_blobs: int = 6, per_blob: int = 30):
    emb = _blobs(5, n_blobs=n_blobs, per_blob=per_blob)
    return [
        Sample(
            id=f"s:{i:03d}",
            source_index=0,
            row=i,
            url=f"http://x/{i}",
            image_embedding=e,
            similarity=round(float(0.2 + (i % 7) / 50), 4),
        )
        for i, e in enumerate(emb)
    ]


def _line(record) -> str:
    return json.dumps([record.id, getattr(record, "reason", None), getattr(record, "duplicate_of", None)])


def _run(tmp_path, options) -> list:
    cfg = DedupConfig(semantic_clusters=4, semantic_max_similarity=0.97, semantic_fit_rows=60)
    with local_pipeline(options=PipelineOptions(options)) as p:
        kept, dropped = p | beam.Create(_samples()) | DedupSemantic(cfg)
        (
            (kept, dropped)
            | beam.Flatten()
            | beam.Map(_line)
            | beam.io.WriteToText(str(tmp_path / "out"), file_name_suffix=".jsonl")
        )
    return sorted(json.loads(line) for f in tmp_path.glob("out*.jsonl") for line in f.read_text().splitlines())


@pytest.mark.timeout(300)
def test_stage_is_the_same_on_one_and_two_worker_processes(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _run(tmp_path / "one", [])
    two = _run(tmp_path / "two", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert one == two
    assert len(one) == len(_samples())
    dropped = [(i, reason, rep) for i, reason, rep in one if reason is not None]
    assert dropped and all(reason == "semantic_duplicate" for _, reason, _ in dropped)
    kept = {i for i, reason, _ in one if reason is None}
    assert all(rep in kept for _, _, rep in dropped)
    # the same decisions as the in-memory reference with the stage's own centroids rule
    assert len(dropped) >= 6 * 5 * 0.9


def test_samples_without_an_embedding_pass():
    samples = [Sample(id=f"n:{i}", source_index=0, row=i, url=None, caption="a sentence") for i in range(3)]
    cfg = DedupConfig(semantic_clusters=2, semantic_max_similarity=0.9, semantic_fit_rows=10)
    out = run_collect(
        lambda p: dict(
            zip(
                ("kept", "dropped"),
                p | beam.Create(samples) | DedupSemantic(cfg),
            )
        )
    )
    assert sorted(s.id for s in out["kept"]) == ["n:0", "n:1", "n:2"] and not out["dropped"]


def test_recipe_needs_clip_for_semantic_dedup():
    with pytest.raises(RecipeError, match="clip.enabled"):
        recipe_from_dict({"clip": {"enabled": False}, "dedup": {"semantic": True}})


# --- in a build ---------------------------------------------------------------------------------


def _moved(scene: synthetic.Scene) -> synthetic.Scene:
    return dataclasses.replace(scene, jitter_x=scene.jitter_x + 0.08, jitter_y=scene.jitter_y - 0.06)


def _near_grouped(files: dict) -> set:
    """The names the near-dup stage puts in a group (``near_max_distance`` 5), as the build's
    image stage hashes them: the stage's reference, ``hamming_index.variant_groups``."""
    cfg = ImageConfig(resize_mode="center_crop", image_size=224)
    processed = {name: process_image(data, cfg) for name, data in files.items()}
    groups = variant_groups(
        {n: p.phash for n, p in processed.items()}, {n: p.phash_variants for n, p in processed.items()}, 5
    )
    return {n for g in groups for n in g}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_build_drops_re_renders_that_phash_misses(tmp_path, tiny_clip_checkpoint):
    """The same scene rendered with the shape moved a little is a different picture to pHash but
    the same to CLIP: with near dedup on, only the semantic stage removes such copies."""
    model = load_clip(ClipConfig(**{k: v for k, v in TINY_CLIP.items() if k not in ("enabled", "min_similarity")}))
    scenes = list(synthetic.scenes(11, 40))
    encode = {f"scene{i}.jpg": jpeg_bytes(synthetic.render(s)) for i, s in enumerate(scenes)}
    moved = {f"moved{i}.jpg": jpeg_bytes(synthetic.render(_moved(s))) for i, s in enumerate(scenes)}
    emb = {name: e for name, e in zip([*encode, *moved], model.embed_encoded([*encode.values(), *moved.values()]))}
    # planted pairs: the re-render is CLIP-close and pHash-far; the rest of the scenes are distinct
    pairs = [
        i
        for i in range(len(scenes))
        if emb[f"scene{i}.jpg"] @ emb[f"moved{i}.jpg"] > 0.95
        and hamming(phash(synthetic.render(scenes[i])), phash(synthetic.render(_moved(scenes[i])))) > 10
    ]
    # ... and pictures that near dup, with its copy variants, leaves alone (it catches some moved
    # renders, and some scenes look alike to it): those it groups are left out of the build
    near = _near_grouped({**encode, **{f"moved{i}.jpg": moved[f"moved{i}.jpg"] for i in pairs}})
    pairs = [i for i in pairs if f"scene{i}.jpg" not in near and f"moved{i}.jpg" not in near]
    encode = {n: data for n, data in encode.items() if n not in near}
    assert len(pairs) >= 4
    files = {**encode, **{f"moved{i}.jpg": moved[f"moved{i}.jpg"] for i in pairs}}
    names = list(files)
    matrix = np.stack([emb[n] for n in names])
    sims = matrix @ matrix.T
    planted = {(f"scene{i}.jpg", f"moved{i}.jpg") for i in pairs}
    close = {(a, b) for x, a in enumerate(names) for y, b in enumerate(names) if x < y and sims[x, y] > 0.9}
    expected_pairs = planted | close

    rows, result = build_over_loopback(
        tmp_path,
        files,
        {
            "clip": TINY_CLIP,
            "image": {"resize_mode": "center_crop", "image_size": 224},
            "dedup": {
                "near": True,
                "near_max_distance": 5,
                "semantic": True,
                "semantic_clusters": 1,
                "semantic_max_similarity": 0.9,
                "semantic_fit_rows": 100,
            },
        },
    )
    dropped = {n: r for n, r in rows.items() if r["status"] == "dropped"}
    for a, b in planted:  # one of each planted pair goes, naming the other
        assert (a in dropped) != (b in dropped), (a, b)
        gone, other = (a, b) if a in dropped else (b, a)
        assert dropped[gone]["reason"] == "semantic_duplicate"
        assert dropped[gone]["duplicate_of"] == rows[other]["id"]
    # nothing is dropped that is not in a close pair, and near dedup took none of them
    in_pairs = {n for pair in expected_pairs for n in pair}
    assert set(dropped) <= in_pairs
    assert all(r["reason"] == "semantic_duplicate" for r in dropped.values())
    assert result.drops.get("sem_dedup/semantic_duplicate") == len(dropped) >= len(planted)
    assert result.kept + len(dropped) == len(files)
