"""The in-memory near-duplicate search chooses its band plan from the number of hashes: exact
against brute force whatever plan it picks, and the plan follows the population (counted work,
not timed; the timings at 1M and 10M hashes are in docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np
import pytest

from flamingo_corpus.dedup.hamming_index import (
    AUTO_HASHES,
    LOOKUP_COST,
    auto_bands,
    band_plan,
    close_pairs,
    modeled_cost,
    multi_index_edges,
    near_duplicate_groups,
)


def _uniform(n: int, seed: int) -> np.ndarray:
    return np.unique(np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64))


def _flip(values: np.ndarray, k: int, rng) -> np.ndarray:
    """Each value with 0..k distinct random bits flipped."""
    out = values.copy()
    for row, flips in enumerate(rng.integers(0, k + 1, size=len(values))):
        for bit in rng.choice(64, size=flips, replace=False):
            out[row] ^= np.uint64(1) << np.uint64(bit)
    return out


def _clustered(n: int, k: int, seed: int) -> np.ndarray:
    """A third uniform, the rest around n // 20 centres with 0..k + 3 flips each (pairs just
    inside and just outside k, chains, some exact copies), distinct and sorted."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**64, size=n // 20, dtype=np.uint64)
    around = _flip(centres[rng.integers(0, len(centres), size=n - n // 3)], k + 3, rng)
    return np.unique(np.concatenate([rng.integers(0, 2**64, size=n // 3, dtype=np.uint64), around]))


def _pairs(edges: np.ndarray) -> list:
    return sorted(map(tuple, edges.tolist()))


def test_the_band_count_follows_the_population():
    # the Beam stage's plan (n unknown) is the one for 2**20 hashes
    assert auto_bands(10) == auto_bands(10, AUTO_HASHES) == 4
    assert auto_bands(5) == 3
    # more hashes: wider bands (buckets near one hash); fewer: narrower bands, fewer probes
    assert auto_bands(10, 10_000_000) == 3
    assert [(b.width, b.radius) for b in band_plan(10, None, 10_000_000)] == [(22, 3), (21, 3), (21, 2)]
    assert auto_bands(5, 10_000_000) == 3
    assert auto_bands(10, 3_000) > auto_bands(10, 100_000) > auto_bands(10, 10_000_000)
    for k in (0, 1, 5, 10, 20, 63):
        bands = [auto_bands(k, n) for n in (10, 1_000, 100_000, 10**7, 10**9)]
        assert bands == sorted(bands, reverse=True) and all(1 <= m <= k + 1 for m in bands)


def test_modeled_work_per_hash_grows_slowly_only_with_the_adaptive_plan():
    """From 1M to 10M hashes the plan chosen for each n keeps the work per hash within 4x (k=10)
    and 2x (k=5); the plan fixed at 2**20 would do 7x more per hash at k=10."""
    for k, bound in ((5, 2.0), (10, 4.0)):
        per_hash = [modeled_cost(k, auto_bands(k, n), n) for n in (2**20, 10**7)]
        assert per_hash[1] < bound * per_hash[0]
    fixed = [modeled_cost(10, auto_bands(10), n) for n in (2**20, 10**7)]
    assert fixed[1] > 7 * fixed[0]


@pytest.mark.parametrize("k", [3, 5, 10])
@pytest.mark.parametrize("n", [3_000, 20_000])
def test_the_plan_chosen_for_n_finds_exactly_the_brute_force_pairs(k, n):
    for values in (_clustered(n, k, seed=n + k), _uniform(n, seed=k)):
        stats: dict = {}
        edges = multi_index_edges(values, k, None, stats)
        assert stats["bands"] == auto_bands(k, len(values))
        i, j = close_pairs(values, k)
        assert _pairs(edges) == sorted(zip(i.tolist(), j.tolist()))
    assert len(multi_index_edges(_clustered(n, k, seed=n + k), k)) > n // 20  # the data has pairs to find


@pytest.mark.parametrize("k", [5, 10])
def test_the_ten_million_plan_is_exact_on_small_clustered_data(k):
    """The plan the search takes at 10M hashes (3 wide bands, radii up to 3), forced on 5,000
    clustered hashes: the same pairs as brute force, each once."""
    values = _clustered(5_000, k, seed=7)
    edges = multi_index_edges(values, k, auto_bands(k, 10_000_000))
    i, j = close_pairs(values, k)
    assert len(edges) == len(i) > 500
    assert _pairs(edges) == sorted(zip(i.tolist(), j.tolist()))


def test_the_search_is_deterministic_and_groups_do_not_depend_on_input_order():
    values = _clustered(4_000, 10, seed=11)
    first, second = multi_index_edges(values, 10), multi_index_edges(values, 10)
    assert np.array_equal(first, second)
    hashes = {f"id{i}": f"{int(v):016x}" for i, v in enumerate(values)}
    reordered = dict(reversed(list(hashes.items())))
    assert sorted(map(sorted, near_duplicate_groups(hashes, 10))) == sorted(
        map(sorted, near_duplicate_groups(reordered, 10))
    )


def test_the_adaptive_plan_does_less_counted_work_than_the_plans_for_other_sizes():
    """On 20,000 uniform hashes at k=10, the work counted by the search (band values looked up,
    weighed as in the model, plus candidates compared) is smaller with the plan chosen for 20,000
    than with the plan for 10M hashes (3 bands) or plain banding (11 bands)."""
    values = _uniform(20_000, seed=5)

    def work(m):
        stats: dict = {}
        multi_index_edges(values, 10, m, stats)
        return stats["probes"] * LOOKUP_COST + stats["candidates"]

    chosen = work(None)
    assert chosen < work(3) and chosen < work(11)


def test_looking_up_in_chunks_changes_nothing(monkeypatch):
    """The lookups of one flip mask are made a chunk of probing hashes at a time (memory at 10M
    hashes): with chunks of 97 hashes the same pairs come out, in the same order."""
    from flamingo_corpus.dedup import hamming_index

    values = _clustered(4_000, 10, seed=13)
    whole = multi_index_edges(values, 10, 3)
    monkeypatch.setattr(hamming_index, "_PROBE_CHUNK", 97)
    assert np.array_equal(multi_index_edges(values, 10, 3), whole)
    i, j = close_pairs(values, 10)
    assert _pairs(whole) == sorted(zip(i.tolist(), j.tolist()))
