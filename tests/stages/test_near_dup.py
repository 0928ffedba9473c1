"""Near-duplicate images: pHash robustness, multi-index hashing vs brute force, the Beam stages."""

from __future__ import annotations

import io
import json
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image, ImageOps

from flamingo_corpus.dedup.exact import representative_order
from flamingo_corpus.dedup.hamming_index import (
    UnionFind,
    all_pairs_groups,
    auto_bands,
    band_plan,
    bands,
    candidate_pairs,
    close_pairs,
    components,
    flip_masks,
    multi_index_edges,
    near_duplicate_groups,
    to_uint64,
    variant_groups,
)
from flamingo_corpus.dedup.near import (
    DedupNearImages,
    DropFrequentImages,
    _bucket_edges,
    _index_entries,
    group_representatives,
)
from flamingo_corpus.images import perceptual
from flamingo_corpus.images.perceptual import hamming
from flamingo_corpus.recipe import DedupConfig
from flamingo_corpus.records import Sample
from flamingo_corpus.sample import synthetic

from ..beam_util import local_pipeline, run_collect
from ..helpers import flip_bits

K = 10


# --- images and pHash -------------------------------------------------------------------------


def _noisy(scene, seed: int) -> Image.Image:
    pixels = np.asarray(synthetic.render(scene), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-25, 26, size=pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def _phash(image: Image.Image) -> str:
    return perceptual.phash(image)


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
    return [
        hamming(_phash(original), _phash(edit(original)))
        for original in (_noisy(scene, seed) for seed, scene in enumerate(SCENES))
    ]


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_recompressed_and_resized_copies_are_within_k(edit):
    assert max(_distances(EDITS[edit])) <= K


@pytest.mark.parametrize("fraction", [0.02, 0.04, 0.10])
def test_white_borders_stay_within_k(fraction):
    """perceptual.phash trims the uniform frame: white borders of 2-10% a side stay within k
    (at most 6 bits on these noisy scenes; bare pHash moved by up to ~22 bits at 4% a side)."""
    assert max(_distances(lambda im: _border(im, fraction))) <= K


def _bars(img: Image.Image, colour, vertical: bool) -> Image.Image:
    """Padded to a square with bars of ``colour`` above and below (or left and right)."""
    side = max(img.size) + 40
    size = (img.width, side) if vertical else (side, img.height)
    canvas = Image.new("RGB", size, colour)
    canvas.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
    return canvas


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255)])
@pytest.mark.parametrize("vertical", [True, False])
def test_letterbox_and_pillarbox_bars_are_trimmed(colour, vertical):
    """pHash version 3: black or white bars on two opposite sides (the picture touches the other
    two) are cut like a frame, so the padded copy hashes as the picture (bare: 10-25 bits off)."""
    data = pytest.importorskip("skimage.data")
    for name, box in (
        ("astronaut", (100, 40, 420, 280)),
        ("coffee", (80, 60, 380, 360)),
        ("rocket", (100, 50, 400, 350)),
    ):
        img = Image.fromarray(getattr(data, name)()).convert("RGB").crop(box)
        padded = _jpeg(_bars(img, colour, vertical), 90)
        assert perceptual.content_box(padded) is not None
        assert hamming(_phash(padded), _phash(_jpeg(img, 90))) <= 4


def test_grey_or_coloured_bars_on_two_sides_are_not_cut():
    """Only black and white bars count: a grey backdrop above and below a subject is part of the
    picture (cutting it in one copy and not another moved the hash by 20 bits)."""
    img = _noisy(SCENES[0], 0)
    assert perceptual.content_box(_bars(img, (114, 114, 114), vertical=True)) is None
    assert perceptual.content_box(_bars(img, (40, 55, 80), vertical=True)) is None


def test_different_images_are_not_within_k():
    rng = random.Random(7)
    for seed, scene in enumerate(SCENES):
        other = _noisy(synthetic.different_scene(scene, rng), seed + 100)
        assert hamming(_phash(_noisy(scene, seed)), _phash(other)) > K


# --- pure functions ----------------------------------------------------------------------------


def _flipped(value: int, bits) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


@pytest.mark.parametrize("k", [0, 5, 10, 63])
def test_band_plans_cover_the_hash_and_some_band_is_within_its_radius(k):
    """Multi-index pigeonhole: two hashes exactly k apart differ by at most its radius on some
    band, for every band count; k + 1 bands is plain banding (radius 0)."""
    rng = random.Random(k)
    for m in sorted({1, 2, 3, (k + 2) // 2, k + 1} & set(range(1, k + 2))):
        plan = band_plan(k, m)
        assert [b.index for b in plan] == list(range(m))
        assert sum(b.width for b in plan) == 64 and max(b.width for b in plan) - min(b.width for b in plan) <= 1
        assert sum(v.bit_length() for _, v in bands("ffffffffffffffff", k, m)) == 64
        for _ in range(200):
            a = rng.getrandbits(64)
            b = _flipped(a, rng.sample(range(64), k))
            assert any(bin(((a ^ b) >> band.shift) & band.mask).count("1") <= band.radius for band in plan)
        # the radii are the tightest that hold: one band over, all bands over, is distance k + 1
        assert sum(b.radius + 1 for b in plan) == k + 1
    assert {b.radius for b in band_plan(k, k + 1)} == {0}


def test_auto_bands_keeps_buckets_small_and_probes_few():
    assert auto_bands(0) == 1
    assert [(b.width, b.radius) for b in band_plan(5)] == [(22, 1), (21, 1), (21, 1)]
    assert [(b.width, b.radius) for b in band_plan(10)] == [(16, 2), (16, 2), (16, 2), (16, 1)]
    for k in range(64):
        assert 1 <= auto_bands(k) <= k + 1


@pytest.mark.parametrize("bands_", [0, 7])
def test_band_counts_outside_1_to_k_plus_1_are_refused(bands_):
    with pytest.raises(ValueError):
        band_plan(5, bands_)
    with pytest.raises(ValueError):
        DedupNearImages(DedupConfig(near_max_distance=5, near_bands=bands_))


def _planted(n: int, k: int, seed: int) -> dict:
    """Random hashes, plus near copies with 0..k flipped bits and a few copies of copies."""
    rng = random.Random(seed)
    hashes = {f"r{i}": rng.getrandbits(64) for i in range(n)}
    for i in range(n // 5):
        source = rng.choice(list(hashes.values()))
        hashes[f"c{i}"] = _flipped(source, rng.sample(range(64), rng.randint(0, k)))
    return {i: f"{v:016x}" for i, v in hashes.items()}


def _clustered(n: int, k: int, seed: int) -> dict:
    """Hashes around n // 10 base hashes with 0..k + 3 random flips each (so many pairs sit just
    inside and just outside k, and chains form), a third of them uniform, some exact copies."""
    rng = random.Random(seed)
    bases = [rng.getrandbits(64) for _ in range(n // 10)]
    hashes = {}
    for i in range(n):
        if i % 3 == 0:
            hashes[f"u{i}"] = rng.getrandbits(64)
        else:
            hashes[f"x{i}"] = _flipped(rng.choice(bases), rng.sample(range(64), rng.randint(0, k + 3)))
    return {i: f"{v:016x}" for i, v in hashes.items()}


def _sorted_groups(groups) -> list:
    return sorted(map(sorted, groups))


@pytest.mark.parametrize(
    "k,m", [(5, None), (5, 2), (5, 4), (5, 6), (10, None), (10, 3), (10, 6), (10, 11), (2, 1), (0, None)]
)
def test_multi_index_finds_the_same_groups_as_all_pairs(k, m):
    for hashes in (_clustered(3000, k, seed=k), _planted(2000, k, seed=k)):
        groups = near_duplicate_groups(hashes, k, bands=m)
        assert len(groups) > 100
        assert _sorted_groups(groups) == _sorted_groups(all_pairs_groups(hashes, k))


@pytest.mark.parametrize("k,m", [(5, None), (5, 2), (5, 6), (10, None), (10, 5)])
def test_each_close_pair_is_found_exactly_once(k, m):
    values = np.unique(to_uint64(_clustered(3000, k, seed=k + 1).values()))
    stats = {}
    edges = multi_index_edges(values, k, m, stats)
    i, j = close_pairs(values, k)
    assert len(edges) == len(i) > 500
    assert sorted(map(tuple, edges.tolist())) == sorted(zip(i.tolist(), j.tolist()))
    assert stats["candidates"] == candidate_pairs(values, k, m) >= len(edges)


def test_wider_bands_compare_fewer_candidates_than_plain_banding():
    """The point of the change, counted rather than timed: on 20k uniform hashes at k=5, the
    plan for 2**20 hashes (the Beam stage's) compares far fewer pairs than k + 1 bands of ~11 bits."""
    values = np.unique(to_uint64(_planted(20_000, 5, seed=3).values()))
    assert candidate_pairs(values, 5, auto_bands(5)) * 20 < candidate_pairs(values, 5, 6)


def test_identical_hashes_form_one_group():
    hashes = {f"logo{i}": "8f3c0a1b2c3d4e5f" for i in range(50)} | {"other": "0123456789abcdef"}
    assert near_duplicate_groups(hashes, 5) == [{f"logo{i}" for i in range(50)}]


@pytest.mark.parametrize("seed", range(6))
def test_connected_components_equal_union_find_on_random_graphs(seed):
    """The compiled connected components give the groups the pure-Python union-find gives, on
    sparse and dense random graphs, with self-loops, repeated edges and isolated nodes."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    edges = rng.integers(0, n, size=(int(rng.integers(0, 2 * n)), 2))
    uf = UnionFind()
    for node in range(n):
        uf.find(node)
    for a, b in edges.tolist():
        uf.union(a, b)
    labels = components(n, edges)
    got = {}
    for node, label in enumerate(labels.tolist()):
        got.setdefault(label, set()).add(node)
    assert _sorted_groups(got.values()) == _sorted_groups(uf.groups())


@pytest.mark.parametrize("seed", range(4))
def test_group_representatives_equal_the_union_find_rule(seed):
    """Representatives from the compiled components equal the union-find rule: each id's group
    by union-find, the group's best by (order key, id)."""
    rng = random.Random(seed)
    n = rng.randint(2, 400)
    order = {f"id{i}": (rng.choice([-0.3, -0.2, float("-inf")]), 0, rng.randint(0, 9)) for i in range(n)}
    edges = []
    for _ in range(rng.randint(1, n)):
        a, b = rng.sample(sorted(order), 2)
        edges.append(((a, order[a]), (b, order[b])))
    uf = UnionFind()
    for (a, _), (b, _) in edges:
        uf.union(a, b)
    expected = {}
    for group in uf.groups():
        best = min(group, key=lambda i: (order[i], i))
        expected.update({member: best for member in group})
    assert group_representatives(edges) == expected
    assert group_representatives(list(reversed(edges))) == expected


# --- Beam ----------------------------------------------------------------------------------------


def _dedup_samples():
    """Three near-duplicate groups (one chained through a middle hash), singletons, no-pHash rows.

    Returns the samples and the expected {dropped id: representative id}.
    """
    a, b, c = "f0e1d2c3b4a59687", "0f1e2d3c4b5a6978", "123456789abcdef0"
    rows = [
        ("a0", a, 0.30),
        ("a1", flip_bits(a, range(4)), 0.50),
        ("a2", flip_bits(a, range(4)), 0.50),
        ("b0", b, None),
        ("b1", flip_bits(b, range(8)), None),
        ("b2", flip_bits(b, range(8, 16)), None),
        ("c0", c, 0.9),
        ("c1", c, 0.9),
        ("s0", "aaaaaaaaaaaaaaaa", 0.1),
        ("s1", "5555555555555555", 0.1),
        ("n0", None, 0.2),
    ]
    samples = [
        Sample(id=i, source_index=0, row=row, url=f"http://x/{i}.jpg", phash=h, similarity=sim)
        for row, (i, h, sim) in enumerate(rows)
    ]
    # a1 and a2 tie on similarity: input order decides; b1-b0-b2 is a chain (b1, b2 are 16 apart).
    expected = {"a0": "a1", "a2": "a1", "b1": "b0", "b2": "b0", "c1": "c0"}
    return samples, expected


def _summary(kept, dropped):
    return sorted(s.id for s in kept), {d.id: (d.reason, d.duplicate_of) for d in dropped}


def _expected_summary(samples, expected):
    return (
        sorted(s.id for s in samples if s.id not in expected),
        {i: ("near_duplicate", rep) for i, rep in expected.items()},
    )


def _clustered_samples(k: int, n: int = 600):
    """Samples over clustered hashes (exact copies and chains included), similarities with ties,
    and the {dropped id: representative id} that brute force and the representative rule give."""
    rng = random.Random(k)
    hashes = _clustered(n, k, seed=k + 20)
    copies = {f"logo{i}": hashes["x1"] for i in range(30)}
    samples = [
        Sample(id=i, source_index=0, row=row, url=None, phash=h, similarity=rng.choice([None, 0.2, 0.3, 0.3]))
        for row, (i, h) in enumerate((hashes | copies).items())
    ]
    by_id = {s.id: s for s in samples}
    expected = {}
    for group in all_pairs_groups({s.id: s.phash for s in samples}, k):
        best = min(group, key=lambda i: (representative_order(by_id[i]), i))
        expected.update({i: best for i in group if i != best})
    assert len(expected) > n // 10
    return samples, expected


def _run_dedup(samples, bands_=None):
    def build(p):
        kept, dropped = p | beam.Create(samples) | DedupNearImages(DedupConfig(near_max_distance=K, near_bands=bands_))
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    return _summary(out["kept"], out["dropped"])


def test_dedup_near_images_keeps_the_representative_whatever_the_input_order():
    samples, expected = _dedup_samples()
    assert _run_dedup(samples) == _expected_summary(samples, expected)
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    assert _run_dedup(shuffled) == _expected_summary(samples, expected)


@pytest.mark.parametrize("bands_", [None, 6, K + 1])
def test_dedup_near_images_matches_brute_force_on_clustered_hashes(bands_):
    samples, expected = _clustered_samples(K)
    assert _run_dedup(samples, bands_) == _expected_summary(samples, expected)


@pytest.mark.parametrize("bands_", [None, 6, K + 1])
def test_beam_buckets_emit_each_close_pair_exactly_once(bands_):
    """The stage's keying and bucket confirmation, grouped here by a dict instead of a shuffle:
    every pair within K comes out of exactly one bucket (so the edge list stays minimal)."""
    values = sorted(set(int(h, 16) for h in _clustered(1500, K, seed=5).values()))
    plan = band_plan(K, bands_)
    masks = [[(1 << top, mask) for top, group in flip_masks(band) for mask in group] for band in plan]
    buckets = {}
    for value in values:
        for key, entry in _index_entries((value, (f"{value:016x}", ()), False, ()), plan, masks):
            buckets.setdefault(key, []).append(entry)
    edges = [tuple(sorted((a, b))) for item in buckets.items() for (a, _), (b, _) in _bucket_edges(item, K, plan)]
    i, j = close_pairs(np.array(values, dtype=np.uint64), K)
    expected = [tuple(sorted((f"{values[a]:016x}", f"{values[b]:016x}"))) for a, b in zip(i.tolist(), j.tolist())]
    assert len(expected) > 300
    assert sorted(edges) == sorted(expected)


def _as_line(record) -> str:
    return json.dumps([record.id, getattr(record, "reason", None), getattr(record, "duplicate_of", None)])


def test_dedup_near_images_on_two_worker_processes(tmp_path):
    """The multi-process DirectRunner (other bundles, other workers) gives the same result as
    the hand-written expectation and as brute force on the clustered set."""
    small, small_expected = _dedup_samples()
    clustered, clustered_expected = _clustered_samples(K)
    samples = small + clustered
    assert not {s.phash for s in small} & {s.phash for s in clustered}
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with local_pipeline(options=options) as p:
        kept, dropped = p | beam.Create(samples) | DedupNearImages(DedupConfig(near_max_distance=K))
        (
            (kept, dropped)
            | beam.Flatten()
            | beam.Map(_as_line)
            | beam.io.WriteToText(str(tmp_path / "out"), file_name_suffix=".jsonl")
        )
    lines = [json.loads(line) for f in tmp_path.glob("out*.jsonl") for line in f.read_text().splitlines()]
    got = (
        sorted(i for i, reason, _ in lines if reason is None),
        {i: (reason, rep) for i, reason, rep in lines if reason is not None},
    )
    assert got == _expected_summary(samples, small_expected | clustered_expected)


def test_drop_frequent_images_counts_distinct_documents():
    logo, icon, photo = "ffff0000ffff0000", "00ff00ff00ff00ff", "0123456789abcdef"
    placements = [
        ("d1", logo),
        ("d2", logo),
        ("d3", logo),
        ("d4", logo),
        ("d4", logo),
        ("d1", icon),
        ("d2", icon),
        ("d3", icon),
        ("d3", icon),
        ("d1", photo),
    ]
    samples = [
        Sample(id=f"{doc}:{pos}", source_index=0, row=pos, url=None, doc_id=doc, position=pos, phash=h)
        for pos, (doc, h) in enumerate(placements)
    ]

    def build(p):
        kept, dropped = p | beam.Create(samples) | DropFrequentImages(DedupConfig(max_image_documents=3))
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    assert sorted(d.id for d in out["dropped"]) == sorted(s.id for s in samples if s.phash == logo)
    assert {d.reason for d in out["dropped"]} == {"frequent_image"}
    assert sorted(s.id for s in out["kept"]) == sorted(s.id for s in samples if s.phash != logo)


# --- copies that are not the same picture (issue 21) -------------------------------------------


def _photo(data, name: str, box) -> Image.Image:
    """A crop of one of scikit-image's photographs (``data`` is ``skimage.data``), RGB."""
    return Image.fromarray(getattr(data, name)()).convert("RGB").crop(box)


def _four_originals(data) -> dict:
    """The crops of four photographs that the copies are made from."""
    return {
        "astronaut": _photo(data, "astronaut", (100, 40, 420, 280)),
        "coffee": _photo(data, "coffee", (80, 60, 480, 360)),
        "chelsea": _photo(data, "chelsea", (40, 20, 440, 290)),
        "rocket": _photo(data, "rocket", (100, 50, 500, 350)),
    }


def test_mirrored_cropped_rotated_and_framed_copies_are_grouped_with_their_original():
    """Real photographs: the pHash alone is 20-30 bits from a mirrored, cropped or rotated copy;
    the variants each image carries (perceptual.phash_and_variants) bring them within k=5 of the
    original, and unrelated photographs stay apart."""
    data = pytest.importorskip("skimage.data")

    def web(img):
        return _jpeg(img, 90).convert("RGB")

    originals = _four_originals(data)
    copies = {
        "mirrored": web(originals["astronaut"].transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "cropped": web(perceptual.crop_fraction(originals["coffee"], (0.05,) * 4)),
        "rotated": web(perceptual.rotate_inside(originals["chelsea"], 5)),
        "framed": web(ImageOps.expand(originals["rocket"], border=16, fill="white")),
    }
    unrelated = {
        "camera": _photo(data, "camera", (0, 0, 300, 250)),
        "hubble": _photo(data, "hubble_deep_field", (0, 0, 400, 300)),
        "cells": _photo(data, "immunohistochemistry", (0, 0, 300, 300)),
        "coins": _photo(data, "coins", (0, 0, 300, 200)),
    }
    pictures = {**{n: web(im) for n, im in originals.items()}, **copies, **{n: web(im) for n, im in unrelated.items()}}
    hashed = {n: perceptual.phash_and_variants(im) for n, im in pictures.items()}
    hashes = {n: h for n, (h, _) in hashed.items()}
    variants = {n: v for n, (_, v) in hashed.items()}
    for name, original in (("mirrored", "astronaut"), ("cropped", "coffee"), ("rotated", "chelsea")):
        assert hamming(hashes[name], hashes[original]) > 10  # the pHash alone misses them
    assert near_duplicate_groups(hashes, 5) == [{"framed", "rocket"}]
    groups = sorted(sorted(g) for g in variant_groups(hashes, variants, 5))
    assert groups == [["astronaut", "mirrored"], ["chelsea", "rotated"], ["coffee", "cropped"], ["framed", "rocket"]]


def test_copies_cut_unevenly_on_every_side_are_within_k_of_a_variant_of_their_original():
    """A copy cut by 0-10% on each side, each side its own amount: the tiles among the build
    crops (2.5 or 7.5% a side) put one of the original's variants within k=5 of most such copies'
    pHash (20 of these 24; build variants version 2, without the tiles: 4)."""
    data = pytest.importorskip("skimage.data")
    originals = list(_four_originals(data).values())
    rng = np.random.default_rng(21)
    found = 0
    for n in range(24):
        original = originals[n % 4]
        copy = _jpeg(perceptual.crop_fraction(original, tuple(rng.uniform(0, 0.1, 4))), 90).convert("RGB")
        own, variants = perceptual.phash_and_variants(_jpeg(original, 90).convert("RGB"))
        found += min(hamming(perceptual.phash(copy), v) for v in (own, *variants)) <= 5
    assert found >= 18


def test_only_the_chosen_build_variants_are_mirrored():
    """variant_coefficients: the picture, each crop and turn, then the mirrors of the blocks
    ``mirrored`` names, in that order (the build's: picture, centre crop, 3-degree turns)."""
    img = _noisy(SCENES[0], 0)
    crops, angles, mirrors = perceptual.BUILD_CROPS, perceptual.BUILD_ANGLES, perceptual.BUILD_MIRRORS
    blocks = perceptual.variant_coefficients(img, crops, angles, mirrors)
    plain = 1 + len(crops) + len(angles)
    assert len(blocks) == plain + 4
    np.testing.assert_allclose(blocks[:plain], perceptual.variant_coefficients(img, crops, angles)[:plain])
    for n, block in enumerate(mirrors):
        np.testing.assert_allclose(blocks[plain + n], blocks[block] * perceptual._mirror(8))
    assert perceptual.BUILD_GEOMETRY[mirrors[1] - 1].crop == (0.05,) * 4
    assert [perceptual.BUILD_GEOMETRY[b - 1].angle for b in mirrors[2:]] == [3.0, -3.0]
    own, variants = perceptual.phash_and_variants(img)
    assert len(variants) <= len(perceptual.BUILD_GEOMETRY) + len(mirrors)


def test_build_variants_are_cheap_and_match_the_transformed_pictures():
    """phash_and_variants: the first hash is phash's, bit for bit; the mirrored variant is the
    mirrored picture's pHash (the DCT's odd horizontal frequencies change sign)."""
    for seed in range(6):
        img = _noisy(SCENES[seed], seed)
        own, variants = perceptual.phash_and_variants(img)
        assert own == perceptual.phash(img) and own not in variants
        assert len(variants) == len(set(variants)) <= 1 + 2 * len(perceptual.BUILD_GEOMETRY)
        mirrored = perceptual.phash(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        assert min(hamming(mirrored, v) for v in variants) <= 2


def test_check_hashes_follow_a_copy_and_not_another_photograph():
    """hashes_with_checks: the pHash and variants of phash_and_variants, one check hash more (the
    pHash's first); on real photographs a recompressed, shrunk or cut copy's variant that meets
    the copy's pHash has its check hash within the shipped 14 bits, while the check hashes of
    different photographs are ~32 bits apart."""
    data = pytest.importorskip("skimage.data")
    photos = [Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("astronaut", "coffee", "chelsea", "rocket")]
    hashed = [perceptual.hashes_with_checks(p) for p in photos]
    for photo, (own, variants, checks) in zip(photos, hashed):
        assert (own, variants) == perceptual.phash_and_variants(photo) and len(checks) == 1 + len(variants)
        w, h = photo.size
        copies = [
            _jpeg(photo, 40),
            photo.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
            _jpeg(photo.crop((round(w * 0.025), round(h * 0.075), round(w * 0.975), round(h * 0.925))), 90),
        ]
        for copy in copies:
            copy_phash, _, copy_checks = perceptual.hashes_with_checks(copy)
            best = min(range(1 + len(variants)), key=lambda n: hamming(copy_phash, (own, *variants)[n]))
            assert hamming(copy_phash, (own, *variants)[best]) <= 6
            assert hamming(copy_checks[0], checks[best]) <= 14
    apart = [hamming(a[2][0], b[2][0]) for n, a in enumerate(hashed) for b in hashed[n + 1 :]]
    assert min(apart) > 14 and np.mean(apart) > 24


def _variant_samples(k: int, n: int = 400, check_distance=None):
    """Samples whose pHashes are far apart but whose variants lie within ``k`` of other samples'
    pHashes (a copy's relation), within ``k`` of other samples' variants only (no relation),
    equal to another's pHash, and shared by exact copies; with the {dropped id: representative}
    of the in-memory reference (``variant_groups``) and the representative rule.  With
    ``check_distance``, every hash has a check hash (``phash_checks``), random but for half of the
    copy relations, whose variant's check hash is within 0-20 bits of the other's pHash's."""
    rng = np.random.default_rng(k)
    base = [int(x) for x in rng.integers(0, 2**64, size=n, dtype=np.uint64)]
    hexes = [f"{v:016x}" for v in base]
    variants = {i: [] for i in range(n)}
    for i in range(0, n - 1, 3):  # i's variant near (i + 1)'s pHash: i and i + 1 are copies
        variants[i].append(
            flip_bits(hexes[i + 1], rng.choice(64, size=int(rng.integers(0, k + 1)), replace=False).tolist())
        )
    for i in range(1, n - 5, 7):  # i's variant near (i + 4)'s variant only: not copies
        shared = f"{int(rng.integers(0, 2**62)):016x}"
        variants[i].append(shared)
        variants[i + 4].append(flip_bits(shared, [1, 7]))
    for i in range(2, n - 2, 11):  # a variant equal to another's pHash
        variants[i].append(hexes[i + 2])
    for i in range(n):
        variants[i] += [f"{int(x):016x}" for x in rng.integers(0, 2**62, size=int(rng.integers(0, 4)))]
        if i % 5:  # most images have 33 variants, the rest are of low detail (hamming_index.low_detail)
            variants[i] += [f"{int(x):016x}" for x in rng.integers(0, 2**62, size=33 - len(variants[i]))]
    checks = {
        i: [f"{int(x):016x}" for x in rng.integers(0, 2**64, size=1 + len(variants[i]), dtype=np.uint64)]
        for i in range(n)
    }
    for i in range(0, n - 1, 6):  # half the copy relations: the variant's check agrees with the pHash's
        checks[i][1] = flip_bits(
            checks[i + 1][0], rng.choice(64, size=int(rng.integers(0, 21)), replace=False).tolist()
        )
    with_checks = check_distance is not None
    samples = [
        Sample(
            id=f"s{i:04d}",
            source_index=0,
            row=i,
            url=None,
            phash=hexes[i],
            phash_variants=tuple(variants[i]),
            phash_checks=tuple(checks[i]) if with_checks else (),
        )
        for i in range(n)
    ]
    samples += [  # exact copies of a sample: the searched copy carries the variants of them all
        Sample(
            id=f"copy{j}",
            source_index=0,
            row=n + j,
            url=None,
            phash=hexes[5],
            phash_variants=(hexes[9],),
            phash_checks=(checks[5][0], f"{j:016x}") if with_checks else (),
        )
        for j in range(4)
    ]
    by_id = {s.id: s for s in samples}
    expected = {}
    groups = variant_groups(
        {s.id: s.phash for s in samples},
        {s.id: s.phash_variants for s in samples},
        k,
        {s.id: s.phash_checks for s in samples},
        check_distance,
    )
    for group in groups:
        best = min(group, key=lambda i: (representative_order(by_id[i]), i))
        expected.update({i: best for i in group if i != best})
    return samples, expected, groups


@pytest.mark.parametrize("bands_", [None, 3])
def test_dedup_near_images_checks_pairs_as_the_reference_does(bands_):
    """With check hashes (``phash_checks``), the Beam stage keeps a pair at 2 bits or more only
    when the check hashes are within ``near_check_distance``, as ``variant_groups`` does: the
    copy relations whose checks disagree are cut, those whose checks agree stay."""
    samples, expected, groups = _variant_samples(6, check_distance=14)
    _, _, unchecked = _variant_samples(6)
    joined, joined_unchecked = set().union(*groups), set().union(*unchecked)
    assert len(groups) > 50 and joined < joined_unchecked and len(joined_unchecked - joined) > 20
    assert not any({"s0003", "s0004"} <= g for g in groups) and any({"s0003", "s0004"} <= g for g in unchecked)

    def build(p):
        cfg = DedupConfig(near_max_distance=6, near_bands=bands_, near_check_distance=14)
        kept, dropped = p | beam.Create(samples) | DedupNearImages(cfg)
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    assert _summary(out["kept"], out["dropped"]) == _expected_summary(samples, expected)


@pytest.mark.parametrize("bands_", [None, 3])
def test_dedup_near_images_probes_the_variants_as_the_reference_does(bands_):
    """The Beam stage with ``phash_variants`` gives the groups of ``variant_groups``: a pHash
    within k of another's variant joins them, two variants near each other do not."""
    samples, expected, groups = _variant_samples(5)
    assert len(groups) > 100
    assert not any({"s0001", "s0005"} <= g for g in groups)  # their variants are close, not a pHash: apart
    assert any({"s0002", "s0004"} <= g for g in groups) and any({"s0005", "s0009", "copy0"} <= g for g in groups)

    def build(p):
        kept, dropped = p | beam.Create(samples) | DedupNearImages(DedupConfig(near_max_distance=5, near_bands=bands_))
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    assert _summary(out["kept"], out["dropped"]) == _expected_summary(samples, expected)


def _strict_pair_samples():
    """Samples whose pHashes are far apart, joined (or not) through the variants of ``a``, of the
    exact copies ``f`` and ``f2`` and of the low-detail ``flat``; variants are listed as
    ``phash_and_variants`` lists them, the mirrored turns last (``perceptual.split_variants``),
    33 of them unless an image is of low detail (``hamming_index.low_detail``: 3 or more
    collapsed).  With the expected groups at k=5."""
    rng = np.random.default_rng(21)
    h = iter(f"{int(x):016x}" for x in rng.integers(0, 2**64, size=1000, dtype=np.uint64))

    def full(*first, last=()):  # 33 variants, padded with unrelated hashes
        return (*first, *(next(h) for _ in range(33 - len(first) - len(last))), *last)

    crop, tile, side, turn1, turn2, shared, flat_crop = (next(h) for _ in range(7))
    variants = {
        "a": full(crop, tile, side, last=(turn1, turn2)),  # plain variants first, its mirrored turns last
        "f": full(shared),  # ``shared`` is a plain variant of f ...
        "f2": full(last=(shared,)),  # ... and a mirrored turn of its exact copy f2
        "flat": (flat_crop,),  # 32 of its 33 variants collapsed: low detail
        "low_query": (),  # a low-detail image whose pHash is near a's plain variant
        "low_query_close": (next(h),),
    }
    phashes = {
        "a": next(h),
        "near_turn": flip_bits(turn1, range(4)),  # 4 from a's mirrored turn: more than 5 - 2, apart
        "close_turn": flip_bits(turn2, range(2)),  # 2 from a's other mirrored turn: joined
        "near_crop": flip_bits(crop, range(4)),  # 4 from a's plain variant: joined
        "f": next(h),
        "near_shared": flip_bits(shared, range(4)),  # 4 from a hash plain in f: joins f and f2
        "flat": next(h),
        "near_flat": flip_bits(flat_crop, range(4)),  # 4 from a low-detail image's variant: apart
        "close_flat": flip_bits(flat_crop, range(4, 6)),  # 2 from it (6 from near_flat): joined
        "low_query": flip_bits(tile, range(4)),  # a low-detail pHash 4 from a's plain variant: apart
        "low_query_close": flip_bits(side, range(2)),  # 2 from another: joined
    }
    phashes["f2"] = phashes["f"]
    variants.update({n: full() for n in phashes if n not in variants})
    expected = [
        {"a", "close_turn", "near_crop", "low_query_close"},
        {"f", "f2", "near_shared"},
        {"flat", "close_flat"},
    ]
    return phashes, variants, expected


def test_mirrored_turns_and_low_detail_images_join_only_within_the_stricter_distance():
    """``variant_groups``: a pHash within k of a plain variant joins its image; within k of a
    mirrored turn (the last two variants) only within k - STRICT_MARGIN; of any variant of a
    low-detail image, or itself the pHash of a low-detail image, only within k -
    LOW_DETAIL_MARGIN; a hash that one exact copy carries as a plain variant joins at k."""
    from flamingo_corpus.dedup.hamming_index import LOW_DETAIL_MARGIN, STRICT_MARGIN, low_detail, variant_limits

    assert (STRICT_MARGIN, LOW_DETAIL_MARGIN) == (2, 3)
    full = tuple(f"{n:016x}" for n in range(33))
    assert variant_limits(full, 5) == [5] * 31 + [3, 3] and variant_limits(full[:31], 5) == [5] * 29 + [3, 3]
    assert low_detail(full[:30]) and variant_limits(full[:30], 5) == [2] * 30 and low_detail(())
    phashes, variants, expected = _strict_pair_samples()
    groups = variant_groups(phashes, variants, 5)
    assert sorted(map(sorted, groups)) == sorted(map(sorted, expected))
    # at a larger k the same pairs are within the stricter distance too
    joined = set().union(*variant_groups(phashes, variants, 7))
    assert {"near_turn", "near_flat", "low_query"} <= joined


@pytest.mark.parametrize("bands_", [None, 3])
def test_the_beam_stage_holds_strict_pairs_to_the_stricter_distance(bands_):
    """The Beam stage joins through mirrored turns and low-detail images as ``variant_groups``
    does (the exact copies f and f2 are searched as one, with ``shared`` a plain variant since f
    carries it as one)."""
    phashes, variants, expected = _strict_pair_samples()
    samples = [
        Sample(id=i, source_index=0, row=row, url=None, phash=ph, phash_variants=variants[i])
        for row, (i, ph) in enumerate(phashes.items())
    ]

    def build(p):
        kept, dropped = p | beam.Create(samples) | DedupNearImages(DedupConfig(near_max_distance=5, near_bands=bands_))
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    by_id = {s.id: s for s in samples}
    reps = {}
    for group in expected:
        best = min(group, key=lambda i: (representative_order(by_id[i]), i))
        reps.update({i: best for i in group if i != best})
    assert _summary(out["kept"], out["dropped"]) == _expected_summary(samples, reps)


def test_beam_buckets_pair_each_phash_with_each_close_hash_once_and_no_two_variants():
    """With variant hashes in the buckets (stored only, never probing): every pHash-pHash and
    pHash-variant pair within K leaves exactly one bucket, and no variant-variant pair does."""
    values = sorted(set(int(h, 16) for h in _clustered(1200, K, seed=7).values()))
    is_variant = {v: n % 3 == 0 for n, v in enumerate(values)}
    plan = band_plan(K)
    masks = [[(1 << top, mask) for top, group in flip_masks(band) for mask in group] for band in plan]
    buckets = {}
    for value in values:
        member = (f"{value:016x}", ())
        for key, entry in _index_entries((value, member, is_variant[value], ()), plan, masks):
            buckets.setdefault(key, []).append(entry)
    edges = [tuple(sorted((a, b))) for item in buckets.items() for (a, _), (b, _) in _bucket_edges(item, K, plan)]
    i, j = close_pairs(np.array(values, dtype=np.uint64), K)
    expected = [
        tuple(sorted((f"{values[a]:016x}", f"{values[b]:016x}")))
        for a, b in zip(i.tolist(), j.tolist())
        if not (is_variant[values[a]] and is_variant[values[b]])
    ]
    assert len(expected) > 200 and len(expected) < len(i)
    assert sorted(edges) == sorted(expected)


def test_mirrored_cropped_and_letterboxed_copies_are_dropped_by_the_beam_stage():
    """End to end on real photographs: the image stage hashes each JPEG (pHash, variants and their
    check hashes), the Beam stage at the shipped settings (k=6, check hashes within 14) drops a
    mirrored, a corner-cropped, a letterboxed, a rotated and a randomly cropped copy (6 bits from
    its original's nearest variant: what k=6 finds) as near duplicates of their originals and
    keeps the unrelated photographs."""
    data = pytest.importorskip("skimage.data")
    from flamingo_corpus.images.process import process_image
    from flamingo_corpus.recipe import ImageConfig

    def letterbox(img):
        canvas = Image.new("RGB", (max(img.size),) * 2)
        canvas.paste(img, (0, (img.width - img.height) // 2))
        return canvas

    originals = _four_originals(data)
    copies = {
        "mirrored": ("astronaut", originals["astronaut"].transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "corner": ("coffee", perceptual.crop_fraction(originals["coffee"], (0.1, 0.1, 0, 0))),
        "letterboxed": ("chelsea", letterbox(originals["chelsea"])),
        "rotated": ("rocket", perceptual.rotate_inside(originals["rocket"], -3)),
        "cropped": ("chelsea", perceptual.crop_fraction(originals["chelsea"], (0.0, 0.05, 0.02, 0.07))),
    }
    unrelated = {
        "camera": _photo(data, "camera", (0, 0, 300, 250)),
        "hubble": _photo(data, "hubble_deep_field", (0, 0, 400, 300)),
        "coins": _photo(data, "coins", (0, 0, 300, 200)),
    }
    pictures = {**originals, **{n: im for n, (_, im) in copies.items()}, **unrelated}
    cfg = ImageConfig(min_side=0, min_encoded_bytes=0)
    samples = []
    for row, (name, img) in enumerate(pictures.items()):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        p = process_image(buf.getvalue(), cfg)
        samples.append(
            Sample(
                id=name,
                source_index=0,
                row=row,
                url=None,
                phash=p.phash,
                phash_variants=p.phash_variants,
                phash_checks=p.phash_checks,
            )
        )
    by_id = {s.id: s for s in samples}
    for name in ("mirrored", "corner", "rotated", "cropped"):  # the pHash alone misses these (the bars are trimmed)
        assert hamming(by_id[name].phash, by_id[copies[name][0]].phash) > 6
    chelsea = by_id["chelsea"]
    assert min(hamming(by_id["cropped"].phash, h) for h in (chelsea.phash, *chelsea.phash_variants)) == 6

    def build(p):
        cfg = DedupConfig(near_max_distance=6, near_check_distance=14)
        kept, dropped = p | beam.Create(samples) | DedupNearImages(cfg)
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    assert sorted(s.id for s in out["kept"]) == sorted([*originals, *unrelated])
    assert {d.id: (d.reason, d.duplicate_of) for d in out["dropped"]} == {
        name: ("near_duplicate", original) for name, (original, _) in copies.items()
    }
