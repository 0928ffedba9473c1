"""Near-duplicate images: pHash robustness, banding vs brute force, the Beam stages."""
from __future__ import annotations

import io
import json
import random

import apache_beam as beam
import imagehash
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from PIL import Image, ImageOps

from pipeline import synthetic
from pipeline.near_dup import (DedupNearImages, DropFrequentImages, all_pairs_groups, bands, hamming,
                               near_duplicate_groups)
from pipeline.records import Sample

from .beam_util import run_collect

K = 10


# --- images and pHash -------------------------------------------------------------------------

def _noisy(scene, seed: int) -> Image.Image:
    pixels = np.asarray(synthetic.render(scene), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-25, 26, size=pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def _phash(image: Image.Image) -> str:
    return str(imagehash.phash(image))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _border(image: Image.Image, fraction: float) -> Image.Image:
    return ImageOps.expand(image, border=round(image.width * fraction), fill=(255, 255, 255))


SCENES = list(synthetic.scenes(3, 8))
EDITS = {
    "jpeg q40": lambda im: _jpeg(im, 40),
    "half size": lambda im: im.resize((im.width // 2, im.height // 2)),
}


def _distances(edit) -> list:
    return [hamming(_phash(original), _phash(edit(original)))
            for original in (_noisy(scene, seed) for seed, scene in enumerate(SCENES))]


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_recompressed_and_resized_copies_are_within_k(edit):
    assert max(_distances(EDITS[edit])) <= K


def test_a_border_mostly_stays_within_k():
    """pHash is not border-proof: a white border of 4% of the width in total (2% a side) stays
    within k on most of these sharp-edged images, 4% a side often does not (up to ~22 bits)."""
    distances = _distances(lambda im: _border(im, 0.02))
    assert sum(d <= K for d in distances) >= 0.75 * len(distances)


def test_different_images_are_not_within_k():
    rng = random.Random(7)
    for seed, scene in enumerate(SCENES):
        other = _noisy(synthetic.different_scene(scene, rng), seed + 100)
        assert hamming(_phash(_noisy(scene, seed)), _phash(other)) > K


# --- pure functions ----------------------------------------------------------------------------

def test_bands_cover_the_hash_and_pigeonhole_holds():
    for k in (0, 5, 10, 63):
        parts = bands("ffffffffffffffff", k)
        assert [i for i, _ in parts] == list(range(k + 1))
        assert sum(v.bit_length() for _, v in parts) == 64
    rng = random.Random(1)
    for _ in range(200):
        a = rng.getrandbits(64)
        b = a
        for bit in rng.sample(range(64), 10):
            b ^= 1 << bit
        ha, hb = f"{a:016x}", f"{b:016x}"
        assert hamming(ha, hb) == 10
        assert set(bands(ha, 10)) & set(bands(hb, 10))


def _planted(n: int, k: int, seed: int) -> dict:
    """Random hashes, plus near copies with 0..k flipped bits and a few copies of copies."""
    rng = random.Random(seed)
    hashes = {f"r{i}": rng.getrandbits(64) for i in range(n)}
    for i in range(n // 5):
        source = rng.choice(list(hashes.values()))
        for bit in rng.sample(range(64), rng.randint(0, k)):
            source ^= 1 << bit
        hashes[f"c{i}"] = source
    return {i: f"{v:016x}" for i, v in hashes.items()}


@pytest.mark.parametrize("k", [5, 10])
def test_banding_finds_the_same_groups_as_all_pairs(k):
    hashes = _planted(3000, k, seed=k)
    groups = near_duplicate_groups(hashes, k)
    assert len(groups) > 300
    assert sorted(map(sorted, groups)) == sorted(map(sorted, all_pairs_groups(hashes, k)))


def test_identical_hashes_form_one_group():
    hashes = {f"logo{i}": "8f3c0a1b2c3d4e5f" for i in range(50)} | {"other": "0123456789abcdef"}
    assert near_duplicate_groups(hashes, 5) == [{f"logo{i}" for i in range(50)}]


# --- Beam ----------------------------------------------------------------------------------------

def _flip(phash: str, bits) -> str:
    value = int(phash, 16)
    for bit in bits:
        value ^= 1 << bit
    return f"{value:016x}"


def _dedup_samples():
    """Three near-duplicate groups (one chained through a middle hash), singletons, no-pHash rows.

    Returns the samples and the expected {dropped id: representative id}.
    """
    a, b, c = "f0e1d2c3b4a59687", "0f1e2d3c4b5a6978", "123456789abcdef0"
    rows = [
        ("a0", a, 0.30), ("a1", _flip(a, range(4)), 0.50), ("a2", _flip(a, range(4)), 0.50),
        ("b0", b, None), ("b1", _flip(b, range(8)), None), ("b2", _flip(b, range(8, 16)), None),
        ("c0", c, 0.9), ("c1", c, 0.9),
        ("s0", "aaaaaaaaaaaaaaaa", 0.1), ("s1", "5555555555555555", 0.1), ("n0", None, 0.2),
    ]
    samples = [Sample(id=i, source_index=0, row=row, url=f"http://x/{i}.jpg", phash=h, similarity=sim)
               for row, (i, h, sim) in enumerate(rows)]
    # a1 and a2 tie on similarity: input order decides; b1-b0-b2 is a chain (b1, b2 are 16 apart).
    expected = {"a0": "a1", "a2": "a1", "b1": "b0", "b2": "b0", "c1": "c0"}
    return samples, expected


def _summary(kept, dropped):
    return sorted(s.id for s in kept), {d.id: (d.reason, d.duplicate_of) for d in dropped}


def _expected_summary(samples, expected):
    return (sorted(s.id for s in samples if s.id not in expected),
            {i: ("near_duplicate", rep) for i, rep in expected.items()})


def _run_dedup(samples):
    def build(p):
        kept, dropped = p | beam.Create(samples) | DedupNearImages(K)
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    return _summary(out["kept"], out["dropped"])


def test_dedup_near_images_keeps_the_representative_whatever_the_input_order():
    samples, expected = _dedup_samples()
    assert _run_dedup(samples) == _expected_summary(samples, expected)
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    assert _run_dedup(shuffled) == _expected_summary(samples, expected)


def _as_line(record) -> str:
    return json.dumps([record.id, getattr(record, "reason", None), getattr(record, "duplicate_of", None)])


def test_dedup_near_images_on_two_worker_processes(tmp_path):
    samples, expected = _dedup_samples()
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with test_pipeline.TestPipeline(options=options) as p:
        kept, dropped = p | beam.Create(samples) | DedupNearImages(K)
        ((kept, dropped) | beam.Flatten() | beam.Map(_as_line)
         | beam.io.WriteToText(str(tmp_path / "out"), file_name_suffix=".jsonl"))
    lines = [json.loads(line) for f in tmp_path.glob("out*.jsonl") for line in f.read_text().splitlines()]
    got = (sorted(i for i, reason, _ in lines if reason is None),
           {i: (reason, rep) for i, reason, rep in lines if reason is not None})
    assert got == _expected_summary(samples, expected)


def test_drop_frequent_images_counts_distinct_documents():
    logo, icon, photo = "ffff0000ffff0000", "00ff00ff00ff00ff", "0123456789abcdef"
    placements = [("d1", logo), ("d2", logo), ("d3", logo), ("d4", logo), ("d4", logo),
                  ("d1", icon), ("d2", icon), ("d3", icon), ("d3", icon), ("d1", photo)]
    samples = [Sample(id=f"{doc}:{pos}", source_index=0, row=pos, url=None, doc_id=doc, position=pos, phash=h)
               for pos, (doc, h) in enumerate(placements)]

    def build(p):
        kept, dropped = p | beam.Create(samples) | DropFrequentImages(3)
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    assert sorted(d.id for d in out["dropped"]) == sorted(s.id for s in samples if s.phash == logo)
    assert {d.reason for d in out["dropped"]} == {"frequent_image"}
    assert sorted(s.id for s in out["kept"]) == sorted(s.id for s in samples if s.phash != logo)
