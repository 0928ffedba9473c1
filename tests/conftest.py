"""Shared fixtures: the tiny CLIP (trained once per machine) and the sample build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RECIPE = REPO / "manifests" / "sample-laion.yaml"
# The real MMC4 documents of the shared folder beside the checkout (DESIGN.md section 5).
REAL_SHARD = REPO.parent / "shared" / "data" / "mmc4" / "docs_no_face_shard_151_v3.sample.jsonl"


@pytest.fixture(scope="session")
def real_lines() -> list:
    if not REAL_SHARD.exists():
        pytest.skip(f"the real MMC4 sample is not at {REAL_SHARD} (the shared folder beside the checkout)")
    return REAL_SHARD.read_bytes().splitlines()


@pytest.fixture(scope="session")
def tiny_clip_checkpoint() -> Path:
    """The tiny CLIP checkpoint in the default cache (trained on first use, then reused)."""
    from flamingo_corpus.sample.tiny_clip import ensure_tiny_clip

    return ensure_tiny_clip()


@pytest.fixture(scope="session")
def sample_recipe():
    from flamingo_corpus.recipe import load_recipe

    return load_recipe(SAMPLE_RECIPE)


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory, tiny_clip_checkpoint, sample_recipe):
    """The local sample build, run once for the whole session on the in-process DirectRunner."""
    from flamingo_corpus.build import run_build

    out = tmp_path_factory.mktemp("sample") / "laion"
    result = run_build(sample_recipe, str(out))
    return out, result


@pytest.fixture(scope="session")
def mmc4_recipe():
    from flamingo_corpus.recipe import load_recipe

    return load_recipe(REPO / "manifests" / "sample-mmc4.yaml")


@pytest.fixture(scope="session")
def mmc4_build(tmp_path_factory, tiny_clip_checkpoint, mmc4_recipe):
    """The MMC4 sample build, run once for the session."""
    from flamingo_corpus.build import run_build

    out = tmp_path_factory.mktemp("sample") / "mmc4"
    result = run_build(mmc4_recipe, str(out))
    return out, result
