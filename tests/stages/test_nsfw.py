"""The NSFW head: file format and maths, punsafe precedence, and a build that drops what a head
trained by the test flags (a stand-in class, since tests do not carry unsafe images)."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest

from flamingo_corpus.clip.model import load_clip
from flamingo_corpus.recipe import ClipConfig, RecipeError, SafetyConfig, recipe_from_dict
from flamingo_corpus.records import Sample
from flamingo_corpus.safety.nsfw import NsfwHead, NsfwHeadError, ScoreNsfw, load_head
from flamingo_corpus.sample import synthetic

from ..beam_util import run_collect
from ..loopback_build import TINY_CLIP as SHARED_TINY_CLIP
from ..loopback_build import build_over_loopback, jpeg_bytes

TINY_CLIP = {**SHARED_TINY_CLIP, "batch_size": 16}
FLAGGED = "red"  # the stand-in "unsafe" class of these tests: red shapes (the tiny CLIP separates colours)


def _mlp(rng, sizes):
    return NsfwHead(
        [rng.normal(size=(a, b)).astype(np.float32) for a, b in zip(sizes, sizes[1:])],
        [rng.normal(size=b).astype(np.float32) for b in sizes[1:]],
    )


def test_head_maths_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    head = _mlp(rng, [8, 16, 1])
    x = rng.normal(size=(5, 8)).astype(np.float32)
    hidden = np.maximum(x @ head.weights[0] + head.biases[0], 0)
    expected = 1 / (1 + np.exp(-(hidden @ head.weights[1] + head.biases[1])[:, 0]))
    np.testing.assert_allclose(head.score(x), expected, rtol=1e-5)
    head.save(str(tmp_path / "head.npz"))
    again = load_head(str(tmp_path / "head.npz"), expected_dim=8)
    np.testing.assert_allclose(again.score(x), expected, rtol=1e-5)
    two_class = _mlp(rng, [8, 2])
    logits = x @ two_class.weights[0] + two_class.biases[0]
    np.testing.assert_allclose(two_class.score(x), np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1), rtol=1e-5)


def test_bad_head_files_are_clear_errors(tmp_path):
    rng = np.random.default_rng(1)
    path = str(tmp_path / "head.npz")
    _mlp(rng, [8, 4, 1]).save(path)
    with pytest.raises(NsfwHeadError, match="takes 8-d embeddings.*gives 512-d"):
        load_head(path, expected_dim=512)
    np.savez(path, w0=np.zeros((8, 4)), b0=np.zeros(4), w1=np.zeros((5, 1)), b1=np.zeros(1))
    with pytest.raises(NsfwHeadError, match="layer 1"):
        load_head(path)
    np.savez(path, w0=np.zeros((8, 3)), b0=np.zeros(3))
    with pytest.raises(NsfwHeadError, match="1 logit or 2 classes"):
        load_head(path)
    np.savez(path, w0=np.zeros((8, 1)))
    with pytest.raises(NsfwHeadError, match="missing array"):
        load_head(path)
    (tmp_path / "junk.npz").write_bytes(b"not a numpy file")
    with pytest.raises(NsfwHeadError, match="cannot read"):
        ScoreNsfw(SafetyConfig(nsfw_head=str(tmp_path / "junk.npz"), max_nsfw=0.5))
    with pytest.raises(RecipeError, match="clip.enabled"):
        recipe_from_dict({"clip": {"enabled": False}, "safety": {"nsfw_head": path}})


def test_rows_with_punsafe_are_not_rescored(tmp_path):
    path = str(tmp_path / "head.npz")
    NsfwHead([np.ones((4, 1), np.float32)], [np.full(1, 5.0, np.float32)]).save(path)  # scores ~1 for all
    emb = np.full(4, 0.5, np.float32)
    samples = [
        Sample(id="laion:0", source_index=0, row=0, url="u", image_embedding=emb, meta={"punsafe": 0.01}),
        Sample(id="laion:1", source_index=0, row=1, url="u", image_embedding=emb, meta={"punsafe": None}),
        Sample(id="mmc4:2", source_index=0, row=2, url="u", image_embedding=emb),
    ]
    score = ScoreNsfw(SafetyConfig(nsfw_head=path, max_nsfw=0.5))
    out = run_collect(lambda p: dict(zip(("kept", "dropped"), p | beam.Create(samples) | score)))
    assert [s.id for s in out["kept"]] == ["laion:0"] and out["kept"][0].nsfw is None
    assert sorted((r.id, r.reason) for r in out["dropped"]) == [("laion:1", "nsfw"), ("mmc4:2", "nsfw")]
    assert all(r.nsfw > 0.99 and r.stage == "safety" for r in out["dropped"])


def _train_head(model, path: str) -> None:
    """Logistic regression on tiny-CLIP embeddings: FLAGGED colour against the rest."""
    scenes = list(synthetic.scenes(21, 400))
    emb = model.embed_encoded([jpeg_bytes(synthetic.render(s)) for s in scenes])
    y = np.array([s.colour == FLAGGED for s in scenes], dtype=np.float32)
    w, b = np.zeros(emb.shape[1], np.float32), np.float32(0)
    for _ in range(3000):
        p = 1 / (1 + np.exp(-(emb @ w + b)))
        w -= 4.0 * emb.T @ (p - y) / len(y)
        b -= 4.0 * np.mean(p - y)
    NsfwHead([w[:, None]], [np.array([b], np.float32)]).save(path)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_build_drops_what_the_head_flags(tmp_path, tiny_clip_checkpoint):
    model = load_clip(ClipConfig(**{k: v for k, v in TINY_CLIP.items() if k not in ("enabled", "min_similarity")}))
    head_path = str(tmp_path / "head.npz")
    _train_head(model, head_path)
    scenes = list(synthetic.scenes(22, 30))
    files = {f"{i}-{s.colour}.jpg": jpeg_bytes(synthetic.render(s)) for i, s in enumerate(scenes)}
    assert sum(s.colour == FLAGGED for s in scenes) >= 2
    rows, result = build_over_loopback(
        tmp_path,
        files,
        {
            "clip": TINY_CLIP,
            "image": {"resize_mode": "center_crop", "image_size": 224},
            "safety": {"nsfw_head": head_path, "max_nsfw": 0.5},
        },
    )
    flagged = {n for n in files if n.endswith(f"-{FLAGGED}.jpg")}
    dropped = {n for n, r in rows.items() if r["reason"] == "nsfw"}
    assert dropped == flagged
    assert all(rows[n]["nsfw"] > 0.5 and rows[n]["stage"] == "safety" for n in dropped)
    assert all(rows[n]["status"] == "kept" and rows[n]["nsfw"] <= 0.5 for n in set(files) - flagged)
    assert result.drops == {"safety/nsfw": len(flagged)}
