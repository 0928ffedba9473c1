"""Hamming-space search over 64-bit pHashes without all-pairs comparison: the algorithm of near-dup.

Two images are near duplicates when their 64-bit pHashes (``Sample.phash``, 16 hex digits) differ
in at most ``k`` bits; near-duplicate groups are the connected components of that relation.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index
hashing", CVPR 2012): the 64 bits are cut into ``m`` bands.  Write ``k = m * r + a`` (``r =
floor(k / m)``, ``0 <= a < m``).  If two hashes are within ``k``, one of the first ``a + 1`` bands
differs in at most ``r`` bits or one of the others in at most ``r - 1`` (else the distance would be at least
``(a + 1)(r + 1) + (m - a - 1) r = k + 1``); that is each band's *radius*.  Each hash is stored
under its exact (band index, band value) and probes the band values within the band's radius of
its own (1..radius bits flipped); the hashes it meets are candidates, confirmed by the true
Hamming distance (XOR + popcount).  ``m = k + 1`` gives radius 0 everywhere: plain banding.

Why ``m`` matters: a band of ``w`` bits holds about ``n / 2**w`` of ``n`` uniform hashes per
value, and a probe costs one lookup plus one comparison per hash met.  Narrow bands (plain banding
at k=5 has ~11-bit bands, 5-6 bits at k=10) make buckets grow with ``n``: quadratic.  Wide bands
keep buckets near one hash but need ``sum(C(w, i), i <= r)`` probes per hash.  ``auto_bands``
picks ``m`` from ``k`` and ``n``: the in-memory search (``multi_index_edges``) from the number of
distinct hashes it is given, the Beam stage from ``k`` and a typical ``n`` (it is built before the
data is seen), see there.

How it scales: with ``m`` fixed, probes per hash are constant and candidates per hash grow as
``n / 2**w``; choosing ``m`` from ``n`` keeps bands near ``log2(n)`` bits (Norouzi et al.: ``m``
about ``64 / log2(n)``), so buckets stay near one hash, but a wider band at the same ``k`` has a
larger radius and more probes.  Exact search is therefore not linear in ``n`` at large ``k / 64``:
the per-hash cost of multi-index hashing grows about as ``n ** H(k / 64)`` (``H`` the binary
entropy; ~``n ** 0.4`` at k=5, ~``n ** 0.6`` at k=10) when ``m`` can follow ``n`` continuously.
Measured from 1M to 10M hashes in docs/benchmarks.md.

Each edge is produced exactly once: only by the first band within its radius, and within that
band only by the hash whose band value is the smaller of the two (a probe flips bits to a larger
value) or, on an exact band match, once as a pair of their shared bucket.  A duplicate edge would
be harmless to the connected components, but the Beam stage gathers all edges on one worker, so none is made.
Identical hashes (logos) are collapsed before any of this, so 10^5 copies of one image cost
linear time.

``near_duplicate_groups`` is the in-memory reference (numpy) and ``all_pairs_groups`` the O(n^2)
brute force that tests compare it with; the Beam stage that uses the band plan is ``near.py``.
"""

from __future__ import annotations

import functools
import itertools
from math import comb
from typing import Dict, Hashable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components

from ..images.perceptual import BUILD_VARIANTS, split_variants

HASH_BITS = 64
# Candidate pairs (or XOR elements in ``close_pairs``) handled at once: 1M, so memory stays bounded
# (tens of MiB per block) whatever the size of a bucket.
_BLOCK_ELEMENTS = 1 << 20
# Band values looked up at once (one flip mask, this many probing hashes): at 10M hashes a whole
# mask's lookup made ~200 MB of temporaries, which the allocator maps and the kernel zeroes afresh
# for every one of the ~3,600 masks (167 of 832 CPU-seconds went to the system at k=10); 1M-element
# chunks reuse the heap (docs/benchmarks.md).
_PROBE_CHUNK = 1 << 20
# Bands up to this width are looked up in a direct table of bucket starts and sizes (at 2**24:
# 192 MiB), when it has at most 16 entries a hash; others by binary search in the sorted values.
_TABLE_MAX_BITS = 24
# ``auto_bands`` chooses for this many distinct hashes, weighing a band value looked up as this
# many candidate comparisons: fitted on the 2-core benchmark machine at 1M hashes (k=10, 4 bands:
# 2.2e8 lookups + 3.3e9 candidates in 15 s; 5 bands: 7.6e7 + 9.7e9 in 35 s; so ~3.5 ns a
# candidate and ~18 ns a lookup; docs/benchmarks.md).
AUTO_HASHES = 1 << 20
# The Beam stage stores every variant hash (``perceptual.BUILD_VARIANTS``, up to 33 a sample) in
# the buckets the pHashes probe, so its plan is chosen for that many stored hashes: at k=6 the plan
# for 2**20 alone (4 bands of 16 bits) would meet ~520 stored hashes a probed bucket, modeled 6.5x
# the work of 3 bands of 21-22 bits (``near.DedupNearImages``).
STORED_PER_SAMPLE = 1 + BUILD_VARIANTS
LOOKUP_COST = 5.0


# --- the band plan --------------------------------------------------------------------------------


class Band(NamedTuple):
    """One band of the 64-bit hash: its bits are ``(hash >> shift) & mask``; two hashes within
    distance k have some band with at most ``radius`` differing bits."""

    index: int
    shift: int
    width: int
    radius: int

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1

    def probes(self) -> int:
        """Band values a hash looks up on this band, its own included."""
        return sum(comb(self.width, i) for i in range(self.radius + 1))


def _layout(k: int, m: int) -> List[Band]:
    width, extra = divmod(HASH_BITS, m)
    radius, spare = divmod(k, m)
    layout, top = [], HASH_BITS
    for index in range(m):
        bits = width + (index < extra)
        top -= bits
        layout.append(Band(index, top, bits, radius if index <= spare else radius - 1))
    return layout


def modeled_cost(k: int, m: int, n: int = AUTO_HASHES) -> float:
    """Work per hash of the search with ``m`` bands among ``n`` uniform distinct hashes, in
    candidate comparisons: each band value looked up costs ``LOOKUP_COST`` and meets ``n / 2**w``
    hashes; a probe is made from one side of each pair only, so half of the flipped values count."""
    cost = 0.0
    for band in _layout(k, m):
        flipped = band.probes() - 1
        bucket = n / 2.0**band.width
        cost += (1 + flipped / 2) * LOOKUP_COST + (bucket / 2 + flipped / 2 * bucket)
    return cost


@functools.lru_cache(maxsize=None)
def auto_bands(k: int, n: int = AUTO_HASHES) -> int:
    """Bands for distance ``k`` among ``n`` distinct hashes when the caller (the recipe's
    ``near_bands``) leaves it unset: the ``m`` with the lowest ``modeled_cost``, ties to more bands.

    The in-memory search passes its own ``n``; the Beam stage, built before the data is seen,
    uses ``AUTO_HASHES`` (2**20).  The rule puts band widths near log2 of the population (buckets
    of about one hash) while keeping probes few.  At 2**20 hashes: k=0 -> 1 band, k=1..3 -> k+1
    bands (radius 0, 16-32 bits), k=4, 5, 8 -> 3 bands of 21-22 bits (radius 1 or 2), k=6, 7 and 9
    up -> 4 bands of 16 bits (k=10: radii 2, 2, 2, 1); from about 4M hashes k=10 takes 3 bands of
    21-22 bits (radii 3, 3, 2), and small populations take more, narrower bands.
    Measured at 1M hashes (docs/benchmarks.md): k=5 3 bands 1.3 s, 4 bands 2.3 s, plain banding
    (6) 6.7 s, 2 bands 28 s; k=10 4 bands 15 s, 3 bands 29 s, 5 bands 35 s, 6 bands 55 s.  A Beam
    run has more hashes but pays a shuffled element per probe (hundreds of comparisons): at 10^8
    hashes the model then picks 3 or 4 bands for k=5 and 10 too, so one rule serves both; a big
    run can still be tuned with the recipe's ``dedup.near_bands``.
    """
    _check_distance(k)
    return min(range(1, k + 2), key=lambda m: (modeled_cost(k, m, max(n, 1)), -m))


def _check_distance(k: int) -> None:
    if not 0 <= k < HASH_BITS:
        raise ValueError(f"max distance must be in [0, {HASH_BITS}), got {k}")


def band_plan(k: int, bands: Optional[int] = None, n: int = AUTO_HASHES) -> List[Band]:
    """The ``bands`` bands (``auto_bands(k, n)`` when None) for distance ``k``, most significant
    first, widths differing by at most one bit, with their search radii."""
    _check_distance(k)
    m = auto_bands(k, n) if bands is None else bands
    if not 1 <= m <= k + 1:
        raise ValueError(f"bands must be in [1, {k + 1}] for max distance {k}, got {m}")
    return _layout(k, m)


def bands(phash_hex: str, k: int, m: Optional[int] = None) -> List[Tuple[int, int]]:
    """(band index, band value) of each band of a 64-bit hash given as hex."""
    value = int(phash_hex, 16)
    return [(b.index, (value >> b.shift) & b.mask) for b in band_plan(k, m)]


def flip_masks(band: Band) -> Iterator[Tuple[int, List[int]]]:
    """(top bit, masks) for each bit of the band: every mask of 1..radius bits whose highest set
    bit is ``top``.  A hash probes ``value ^ mask`` only when ``top`` is clear in its value, so the
    probe goes to a larger value and each pair is looked up from one side only."""
    for top in range(band.width if band.radius else 0):
        masks = [
            (1 << top) | sum(1 << bit for bit in low)
            for size in range(band.radius)
            for low in itertools.combinations(range(top), size)
        ]
        yield top, masks


# --- pure functions ---------------------------------------------------------------------------


def to_uint64(phashes: Iterable[str]) -> np.ndarray:
    """Hex hashes as a numpy uint64 array."""
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def blocked_pairs(left: np.ndarray, right: np.ndarray, k: int, upper: bool):
    """(i, j) of ``left[i]``, ``right[j]`` within distance ``k`` (only ``j > i`` when ``upper``,
    ``right`` being then ``left``), a block of rows at a time so memory stays bounded."""
    rows = max(1, _BLOCK_ELEMENTS // max(len(right), 1))
    found_i, found_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for start in range(0, len(left), rows):
        stop = min(start + rows, len(left))
        offset = start + 1 if upper else 0
        if offset >= len(right):
            break
        distance = np.bitwise_count(left[start:stop, None] ^ right[None, offset:])
        i, j = np.nonzero(distance <= k)
        i, j = i + start, j + offset
        keep = j > i if upper else slice(None)
        found_i.append(i[keep])
        found_j.append(j[keep])
    return np.concatenate(found_i), np.concatenate(found_j)


def close_pairs(values: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j), i < j, of the pairs of ``values`` (uint64) within distance ``k``.

    Vectorised XOR + popcount, a block of rows at a time so memory stays bounded whatever the size.
    """
    return blocked_pairs(values, values, k, upper=True)


def found_on_earlier_band(xor: np.ndarray, plan: Sequence[Band], index: int) -> np.ndarray:
    """Whether each pair (given as the XOR of its hashes) is within radius on a band before
    ``index``: the band that produces each edge is the first one within radius."""
    earlier = np.zeros(len(xor), dtype=bool)
    for band in plan[:index]:
        bits = (xor >> np.uint64(band.shift)) & np.uint64(band.mask)
        earlier |= np.bitwise_count(bits) <= band.radius
    return earlier


class SortedBand:
    """One band's values of all hashes, sorted, with the range of positions holding each value.

    Hand-written rather than a dict of buckets so that every lookup is a vectorised gather: a
    direct table of bucket starts and sizes for bands up to ``_TABLE_MAX_BITS`` wide when the
    table is not much larger than the data, binary search (``np.searchsorted``) otherwise.
    Probing the sorted values keeps lookups nearly sequential.
    """

    def __init__(self, values: np.ndarray, band: Band):
        band_values = (values >> np.uint64(band.shift)) & np.uint64(band.mask)
        # Positions and (table) band values in 32 bits when they fit: the eval index keeps one
        # table per band for millions of hashes, and these were 16 of its ~40 bytes a hash.
        small = len(values) < 2**31
        self.order = np.argsort(band_values, kind="stable")
        if small:
            self.order = self.order.astype(np.int32)
        self.sorted = band_values[self.order]
        self.values = values[self.order]
        self.size = self.start = None
        if band.width <= _TABLE_MAX_BITS and 1 << band.width <= 16 * len(values):
            self.sorted = self.sorted.astype(np.int32 if band.width < 31 else np.int64)
            self.size = np.bincount(self.sorted, minlength=1 << band.width).astype(np.int32)
            self.start = np.cumsum(self.size) - self.size
            if small:
                self.start = self.start.astype(np.int32)

    def lookup(self, probe: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(which probes hit, first position, bucket size) for the probed band values found."""
        if self.size is not None:
            size = self.size[probe]
            hit = np.flatnonzero(size)
            return hit, self.start[probe[hit]], size[hit]
        lo = np.searchsorted(self.sorted, probe, side="left")
        size = np.searchsorted(self.sorted, probe, side="right") - lo
        hit = np.flatnonzero(size)
        return hit, lo[hit], size[hit]


class Check(NamedTuple):
    """Check hashes for ``nearest_within``: the queries' (``has`` False where a query has none),
    the stored rows', and the distance within which they must agree (``checks_agree``)."""

    query: np.ndarray  # uint64 per query
    has: np.ndarray  # bool per query
    stored: np.ndarray  # uint64 per stored row
    distance: int


def nearest_within(
    query: np.ndarray,
    plan: Sequence[Band],
    tables: Sequence[SortedBand],
    k: int,
    penalty: Optional[np.ndarray] = None,
    check: Optional[Check] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """(stored row, distance) of the nearest stored hash within ``k`` of each ``query`` hash
    (uint64), ties to the lowest row; distance ``k + 1`` (row 0) where none is within ``k``.

    ``tables`` are the ``SortedBand`` of each band of ``plan`` (``band_plan(k)``) over the stored
    hashes.  Unlike the all-pairs search the relation is one-sided (queries against stored
    hashes), so each query probes every band value within the band's radius of its own.
    ``penalty`` (per stored row, small ints) is added to a row's distance: such a row must be
    that much closer to count, and ranks as that much farther (the distance returned is the
    true one).  ``check``: a row ``CHECK_FROM`` bits or more from a query (true distance) counts
    only when their check hashes agree; the nearest row that does is returned."""
    n, total = len(query), len(tables[0].values) if tables else 0
    none = np.iinfo(np.int64).max
    best = np.full(n, none, dtype=np.int64)  # distance * total + row: the minimum is the nearest, then first
    for band, table in zip(plan, tables):
        masks = np.array([0] + [m for _, group in flip_masks(band) for m in group], dtype=np.uint64)
        own = (query >> np.uint64(band.shift)) & np.uint64(band.mask)
        probe = (own[:, None] ^ masks[None, :]).ravel()
        asker = np.repeat(np.arange(n), len(masks))
        hit, first, size = table.lookup(probe.astype(np.int64) if table.size is not None else probe)
        if not len(hit):
            continue
        ends = np.cumsum(size)
        stored = np.arange(int(ends[-1])) + np.repeat(first - (ends - size), size)
        who = np.repeat(asker[hit], size)
        row = table.order[stored]
        distance = np.bitwise_count(query[who] ^ table.values[stored]).astype(np.int64)
        checked = np.ones(len(distance), dtype=bool)
        if check is not None:
            far = (distance >= CHECK_FROM) & check.has[who]
            checked[far] = np.bitwise_count(check.query[who[far]] ^ check.stored[row[far]]) <= check.distance
        if penalty is not None:
            distance += penalty[row]
        close = (distance <= k) & checked
        np.minimum.at(best, who[close], distance[close] * total + row[close])
    found = best != none
    rows = np.where(found, best % max(total, 1), 0)
    effective = np.where(found, best // max(total, 1), k + 1)
    if penalty is not None:
        effective = np.where(found, effective - penalty[rows], effective)
    return rows, effective


def _probe_ranges(table: SortedBand, band: Band, counts: dict):
    """(prober positions, first stored position, stored count) of one band, one flip mask at a
    time (lazily, so memory holds one mask's lookups): first each position with the later
    positions of its own bucket (exact match), then each position whose value has the mask's top
    bit clear with the bucket of its value XOR the mask."""
    everyone = np.arange(len(table.sorted))
    counts["probes"] += len(everyone)
    _, first, size = table.lookup(table.sorted)
    later = first + size - everyone - 1
    yield everyone, everyone + 1, later
    for top, masks in flip_masks(band):
        prober = everyone[(table.sorted >> top) & 1 == 0]
        own = table.sorted[prober]
        for mask in masks:
            counts["probes"] += len(prober)
            for lo in range(0, len(prober), _PROBE_CHUNK):
                hit, first, size = table.lookup(own[lo : lo + _PROBE_CHUNK] ^ mask)
                yield prober[lo : lo + _PROBE_CHUNK][hit], first, size


def _confirmed(
    table: SortedBand, prober: np.ndarray, first: np.ndarray, size: np.ndarray, k: int, counts: dict
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(prober, stored) positions within distance ``k``, each prober against the ``size`` stored
    positions from ``first``, about ``_BLOCK_ELEMENTS`` candidates at a time (``np.repeat``
    expands the ranges; only the few close pairs are mapped back to their prober)."""
    keep = size > 0
    prober, first, size = prober[keep], first[keep], size[keep]
    ends = np.cumsum(size)
    start = 0
    while start < len(size):
        base = ends[start] - size[start]
        stop = max(int(np.searchsorted(ends, base + _BLOCK_ELEMENTS, side="right")), start + 1)
        sizes, block_ends = size[start:stop], ends[start:stop] - base
        total = int(block_ends[-1])
        counts["candidates"] += total
        stored = np.arange(total) + np.repeat(first[start:stop] - (block_ends - sizes), sizes)
        xor = np.repeat(table.values[prober[start:stop]], sizes) ^ table.values[stored]
        close = np.flatnonzero(np.bitwise_count(xor) <= k)
        row = np.searchsorted(block_ends, close, side="right")
        yield prober[start:stop][row], stored[close]
        start = stop


def multi_index_edges(
    values: np.ndarray, k: int, bands: Optional[int] = None, stats: Optional[dict] = None
) -> np.ndarray:
    """Pairs (i, j), i < j, of distinct ``values`` (uint64) within distance ``k``, each exactly
    once, found by multi-index hashing with ``bands`` bands (None: ``auto_bands(k, len(values))``).
    ``stats``, when given, gets the number of band values looked up (``probes``), of candidate
    pairs compared (``candidates``) and the band count used (``bands``).

    Band by band, so memory holds one band's sorted copy plus a block of candidates.
    """
    plan = band_plan(k, bands, len(values))
    counts = {"probes": 0, "candidates": 0}
    found = [np.empty((0, 2), np.int64)]
    for band in plan:
        table = SortedBand(values, band)
        for ranges in _probe_ranges(table, band, counts):
            for a, b in _confirmed(table, *ranges, k, counts):
                later = ~found_on_earlier_band(table.values[a] ^ table.values[b], plan, band.index)
                found.append(np.stack([table.order[a[later]], table.order[b[later]]], axis=1))
    if stats is not None:
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
        stats["bands"] = len(plan)
    return np.sort(np.concatenate(found), axis=1)


def candidate_pairs(values: np.ndarray, k: int, bands: Optional[int] = None) -> int:
    """How many candidate pairs the search compares for these (distinct) hashes, without
    comparing them: the cost of a run, for benchmarks and for choosing ``bands``."""
    counts = {"probes": 0, "candidates": 0}
    total = 0
    for band in band_plan(k, bands, len(values)):
        table = SortedBand(values, band)
        for _, _, size in _probe_ranges(table, band, counts):
            total += int(size.sum())
    return total


class UnionFind:
    """Disjoint sets over hashable items (path halving, union by size): the pure-Python reference
    that tests compare ``components`` with (the stages use ``components``)."""

    def __init__(self):
        self.parent: Dict[Hashable, Hashable] = {}
        self.size: Dict[Hashable, int] = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        self.size.setdefault(x, 1)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> List[Set]:
        """The sets, each with every item seen by ``find`` or ``union``."""
        out: Dict[Hashable, Set] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), set()).add(x)
        return list(out.values())


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label (0..) of each of ``n`` nodes joined by ``edges`` (pairs of node indices):
    scipy's compiled ``connected_components`` on a sparse graph, not a Python union-find."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = scipy.sparse.csr_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def groups_of(labels: np.ndarray) -> List[np.ndarray]:
    """Indices of each label held by two or more positions, in increasing order within a group."""
    labels = np.asarray(labels)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    rows = np.flatnonzero(counts[labels] > 1)
    order = rows[np.argsort(labels[rows], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds) if len(order) else []


def _groups_from_edges(ids: Sequence, value_index: np.ndarray, edges: np.ndarray) -> List[Set]:
    """Components (two members or more) of ids, given each id's index into the distinct hashes
    and the edges between those indices; ids sharing a hash are in one component (compiled
    connected components over the distinct hashes, then one numpy grouping of the ids)."""
    distinct = int(value_index.max(initial=-1)) + 1
    labels = components(distinct, edges)[value_index]
    return [{ids[row] for row in group.tolist()} for group in groups_of(labels)]


def near_duplicate_groups(
    hashes: Dict[Hashable, str], k: int, bands: Optional[int] = None, stats: Optional[dict] = None
) -> List[Set]:
    """Groups (two members or more) of ids whose hashes are connected by distance <= ``k``.

    Identical hashes are collapsed first, the distinct ones are paired by multi-index hashing
    with ``bands`` bands (None: ``auto_bands(k, distinct hashes)``); ``stats`` as in
    ``multi_index_edges``.
    """
    ids = list(hashes)
    values = to_uint64(hashes[i] for i in ids)
    distinct, value_index = np.unique(values, return_inverse=True)
    return _groups_from_edges(ids, value_index, multi_index_edges(distinct, k, bands, stats))


def all_pairs_groups(hashes: Dict[Hashable, str], k: int) -> List[Set]:
    """The same groups as ``near_duplicate_groups`` by comparing every pair (O(n^2), for tests)."""
    ids = list(hashes)
    values = to_uint64(hashes[i] for i in ids)
    i, j = close_pairs(values, k)
    uf = UnionFind()
    for a, b in zip(i.tolist(), j.tolist()):
        uf.union(ids[a], ids[b])
    return [g for g in uf.groups() if len(g) > 1]


# Held to a stricter distance are the pairs where chance matches gather:
#
# - a pHash and a mirrored turn (``perceptual.split_variants``), within ``k - STRICT_MARGIN``.
#   Mirrored turns met unrelated pictures 6-8 times as often as plain variants
#   (docs/benchmarks.md): crops of a low-detail photograph (a retina, the sky of a photo, a clock
#   face) on either side of its middle are near mirror images of each other, and a turn blurs
#   what detail there is;
# - a pHash and a variant where either image is of low detail (``low_detail``), within ``k -
#   LOW_DETAIL_MARGIN``: at least ``LOW_DETAIL_COLLAPSED`` of its ``perceptual.BUILD_VARIANTS``
#   variant hashes equal its pHash or another variant (the image stage leaves those out), so
#   cutting or turning it barely moves its hash.  The moon, a retina, a sky, a cell: their crops
#   came within 2-4 bits of crops and turns of unrelated pictures.
#
# and every pair at pHash distance ``CHECK_FROM`` or more must also have check hashes
# (``perceptual.hashes_with_checks``: the next ring of DCT frequencies of the same picture and
# geometry) within ``check_distance`` (``recipe.dedup.near_check_distance``), when both hashes
# carry one.  With the check, the shipped k is 6 (was 5: pHash distances are even, so 4 bits),
# which finds the crops the variants' grid misses (random crops of 0-10% a side: 0.77 -> 0.89 of
# them pooled over nine draws of the copy benchmark at 20 a kind); false positives 0.30% -> 0.14%
# (docs/benchmarks.md, "Copy detection").
STRICT_MARGIN = 2
LOW_DETAIL_MARGIN = 3
LOW_DETAIL_COLLAPSED = 3
CHECK_FROM = 2


def low_detail(variants: Sequence[str]) -> bool:
    """Whether an image whose ``perceptual.phash_and_variants`` variants are ``variants`` is of
    low detail: ``LOW_DETAIL_COLLAPSED`` or more of them were duplicates (an image without
    variants, all of them equal to its pHash, is)."""
    return len(variants) <= BUILD_VARIANTS - LOW_DETAIL_COLLAPSED


def pair_limit(k: int, mirrored_turn: bool, low: bool) -> int:
    """The distance within which a pHash and a variant join: ``k``, less ``LOW_DETAIL_MARGIN`` when
    either image is of low detail, else less ``STRICT_MARGIN`` when the variant is a mirrored
    turn.  Two pHashes join within ``k``."""
    return k - LOW_DETAIL_MARGIN if low else k - STRICT_MARGIN if mirrored_turn else k


def variant_limits(variants: Sequence[str], k: int) -> List[int]:
    """The distance within which a pHash (of an image not of low detail) joins each of an image's
    ``variants``, in their order: the mirrored turns are the last (``perceptual.split_variants``),
    and all of a low-detail image's are held to ``k - LOW_DETAIL_MARGIN`` (``pair_limit``)."""
    low = low_detail(variants)
    plain, turns = split_variants(variants)
    return [pair_limit(k, False, low)] * len(plain) + [pair_limit(k, True, low)] * len(turns)


def checks_agree(one: Sequence[int], other: Sequence[int], distance: int, check_distance: Optional[int]) -> bool:
    """Whether a pair at pHash ``distance`` passes the check (``CHECK_FROM``): a check hash of one
    within ``check_distance`` of one of the other (exact copies of a pHash may carry several); a
    pair closer than ``CHECK_FROM``, a pair where a hash has no check hash (a sample made without
    one), and any pair when ``check_distance`` is None pass."""
    if check_distance is None or distance < CHECK_FROM or not one or not other:
        return True
    return any((a ^ b).bit_count() <= check_distance for a in one for b in other)


def variant_groups(
    hashes: Dict[Hashable, str],
    variants: Dict[Hashable, Sequence[str]],
    k: int,
    checks: Optional[Dict[Hashable, Sequence[str]]] = None,
    check_distance: Optional[int] = None,
) -> List[Set]:
    """Groups (two members or more) of ids joined when one's pHash is within ``k`` of the other's
    pHash or of one of the other's ``variants`` (mirrored, cropped, rotated: what
    ``perceptual.phash_and_variants`` gives; its mirrored turns within ``k - STRICT_MARGIN``, a
    variant where either image is of low detail within ``k - LOW_DETAIL_MARGIN``: ``pair_limit``)
    and, from ``CHECK_FROM`` bits on, their ``checks`` (the check hash of the pHash, then of each
    variant: ``perceptual.hashes_with_checks``) are within ``check_distance`` (``checks_agree``),
    transitively.  Brute force over (pHash, stored hash) pairs, a block at a time: the reference
    the Beam stage (``near.py``) is tested against, and what the copy-detection benchmark groups
    with."""
    ids = list(hashes)
    checks = checks or {}
    owner = {i: n for n, i in enumerate(ids)}
    query = to_uint64(hashes[i] for i in ids)
    stored_owner = np.asarray(
        [n for n, i in enumerate(ids) for _ in range(1 + len(variants.get(i, ())))], dtype=np.int64
    )
    stored = to_uint64(h for i in ids for h in (hashes[i], *variants.get(i, ())))
    # per stored hash: the limit its own image sets (``variant_limits``), whether it is a variant
    limit = np.array([x for i in ids for x in (k, *variant_limits(variants.get(i, ()), k))], dtype=np.int64)
    is_variant = np.array([n > 0 for i in ids for n in range(1 + len(variants.get(i, ())))], dtype=bool)
    low = np.array([low_detail(variants.get(i, ())) for i in ids], dtype=bool)

    def check_values(i) -> List[Tuple[int, ...]]:
        own = list(checks.get(i, ()))
        wanted = 1 + len(variants.get(i, ()))
        return [(int(c, 16),) for c in own] if len(own) == wanted else [()] * wanted

    stored_checks = [c for i in ids for c in check_values(i)]
    query_checks = [stored_checks[first] for first in np.flatnonzero(~is_variant).tolist()]  # each pHash's own
    a, b = blocked_pairs(query, stored, k, upper=False)
    # a low-detail query holds every variant to ``k - LOW_DETAIL_MARGIN`` too; two pHashes: k
    limit = np.where(low[a] & is_variant[b], np.minimum(limit[b], k - LOW_DETAIL_MARGIN), limit[b])
    distance = np.bitwise_count(query[a] ^ stored[b]).astype(np.int64)
    close = distance <= limit
    a, b, distance = a[close], b[close], distance[close]
    uf = UnionFind()
    for i in ids:
        uf.find(owner[i])
    for x, y, d in zip(a.tolist(), b.tolist(), distance.tolist()):
        other = int(stored_owner[y])
        if x != other and checks_agree(query_checks[x], stored_checks[y], d, check_distance):
            uf.union(x, other)
    return [{ids[n] for n in g} for g in uf.groups() if len(g) > 1]
