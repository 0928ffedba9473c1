"""Near-duplicate images across a whole build, by perceptual hash, without all-pairs comparison.

Two images are near duplicates when their 64-bit pHashes (``Sample.phash``, 16 hex digits) differ
in at most ``k`` bits; near-duplicate groups are the connected components of that relation.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index
hashing", CVPR 2012): the 64 bits are cut into ``m`` bands.  Write ``k = m * r + a`` (``r =
floor(k / m)``, ``0 <= a < m``).  If two hashes are within ``k``, one of the first ``a + 1`` bands differs in at most ``r``
bits or one of the others in at most ``r - 1`` (else the distance would be at least
``(a + 1)(r + 1) + (m - a - 1) r = k + 1``); that is each band's *radius*.  Each hash is stored
under its exact (band index, band value) and probes the band values within the band's radius of
its own (1..radius bits flipped); the hashes it meets are candidates, confirmed by the true
Hamming distance (XOR + popcount).  ``m = k + 1`` gives radius 0 everywhere: plain banding.

Why ``m`` matters: a band of ``w`` bits holds about ``n / 2**w`` of ``n`` uniform hashes per
value, and a probe costs one lookup plus one comparison per hash met.  Narrow bands (plain banding
at k=5 has ~11-bit bands, 5-6 bits at k=10) make buckets grow with ``n``: quadratic.  Wide bands
keep buckets near one hash but need ``sum(C(w, i), i <= r)`` probes per hash.  ``auto_bands``
picks ``m`` from ``k`` alone (the Beam stage cannot know ``n`` when it is built), see there.

Each edge is produced exactly once: only by the first band within its radius, and within that
band only by the hash whose band value is the smaller of the two (a probe flips bits to a larger
value) or, on an exact band match, once as a pair of their shared bucket.  A duplicate edge would
be harmless to union-find, but the Beam stage gathers all edges on one worker, so none is made.
Identical hashes (logos) are collapsed before any of this, so 10^5 copies of one image cost
linear time.

``near_duplicate_groups`` is the in-memory reference (numpy), ``all_pairs_groups`` the O(n^2)
brute force that tests compare it with, ``DedupNearImages`` the Beam stage, and
``DropFrequentImages`` the MMC4 rule against images repeated over many documents.
"""
from __future__ import annotations

import functools
import itertools
from math import comb
from typing import Dict, Hashable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import apache_beam as beam
import numpy as np

from .dedup import representative_order
from .records import Sample
from .stage import apply_with_drops, drop

STAGE = "near_dup"
HASH_BITS = 64
# Candidate pairs (or XOR elements in ``close_pairs``) handled at once: 1M, so memory stays bounded
# (tens of MiB per block) whatever the size of a bucket.
_BLOCK_ELEMENTS = 1 << 20
# Bands up to this width are looked up in a direct table of bucket starts and sizes (at 2**24:
# 192 MiB), when it has at most 16 entries a hash; others by binary search in the sorted values.
_TABLE_MAX_BITS = 24
# ``auto_bands`` chooses for this many distinct hashes, weighing a band value looked up as this
# many candidate comparisons: fitted on the 2-core benchmark machine at 1M hashes (k=10, 4 bands:
# 2.2e8 lookups + 3.3e9 candidates in 15 s; 5 bands: 7.6e7 + 9.7e9 in 35 s; so ~3.5 ns a
# candidate and ~18 ns a lookup; docs/benchmarks.md).
AUTO_HASHES = 1 << 20
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
        bucket = n / 2.0 ** band.width
        cost += (1 + flipped / 2) * LOOKUP_COST + (bucket / 2 + flipped / 2 * bucket)
    return cost


@functools.lru_cache(maxsize=None)
def auto_bands(k: int) -> int:
    """Bands for distance ``k`` when the recipe leaves ``near_bands`` unset: the ``m`` with the
    lowest ``modeled_cost`` for ``AUTO_HASHES`` (2**20) hashes, ties to more bands.

    The rule depends on ``k`` alone because the Beam stage is built before the data is seen.  It
    puts band widths near log2 of the population (buckets of about one hash) while keeping probes
    few: k=0 -> 1 band, k=1..3 -> k+1 bands (radius 0, 16-32 bits), k=4, 5, 8 -> 3 bands of 21-22
    bits (radius 1 or 2), k=6, 7 and 9 up -> 4 bands of 16 bits (k=10: radii 2, 2, 2, 1).
    Measured at 1M hashes (docs/benchmarks.md): k=5 3 bands 1.3 s, 4 bands 2.3 s, plain banding
    (6) 6.7 s, 2 bands 28 s; k=10 4 bands 15 s, 3 bands 29 s, 5 bands 35 s, 6 bands 55 s.  A Beam
    run has more hashes but pays a shuffled element per probe (hundreds of comparisons): at 10^8
    hashes the model then picks 3 or 4 bands for k=5 and 10 too, so one rule serves both; a big
    run can still be tuned with the recipe's ``dedup.near_bands``.
    """
    _check_distance(k)
    return min(range(1, k + 2), key=lambda m: (modeled_cost(k, m), -m))


def _check_distance(k: int) -> None:
    if not 0 <= k < HASH_BITS:
        raise ValueError(f"max distance must be in [0, {HASH_BITS}), got {k}")


def band_plan(k: int, bands: Optional[int] = None) -> List[Band]:
    """The ``bands`` bands (``auto_bands(k)`` when None) for distance ``k``, most significant
    first, widths differing by at most one bit, with their search radii."""
    _check_distance(k)
    m = auto_bands(k) if bands is None else bands
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
        masks = [(1 << top) | sum(1 << bit for bit in low)
                 for size in range(band.radius) for low in itertools.combinations(range(top), size)]
        yield top, masks


# --- pure functions ---------------------------------------------------------------------------

def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hashes given as hex."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def to_uint64(phashes: Iterable[str]) -> np.ndarray:
    """Hex hashes as a numpy uint64 array."""
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def _blocked_pairs(left: np.ndarray, right: np.ndarray, k: int, upper: bool):
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
    return _blocked_pairs(values, values, k, upper=True)


def _found_on_earlier_band(xor: np.ndarray, plan: Sequence[Band], index: int) -> np.ndarray:
    """Whether each pair (given as the XOR of its hashes) is within radius on a band before
    ``index``: the band that produces each edge is the first one within radius."""
    earlier = np.zeros(len(xor), dtype=bool)
    for band in plan[:index]:
        bits = (xor >> np.uint64(band.shift)) & np.uint64(band.mask)
        earlier |= np.bitwise_count(bits) <= band.radius
    return earlier


class _SortedBand:
    """One band's values of all hashes, sorted, with the range of positions holding each value.

    Hand-written rather than a dict of buckets so that every lookup is a vectorised gather: a
    direct table of bucket starts and sizes for bands up to ``_TABLE_MAX_BITS`` wide when the
    table is not much larger than the data, binary search (``np.searchsorted``) otherwise.
    Probing the sorted values keeps lookups nearly sequential.
    """

    def __init__(self, values: np.ndarray, band: Band):
        band_values = (values >> np.uint64(band.shift)) & np.uint64(band.mask)
        self.order = np.argsort(band_values, kind="stable")
        self.sorted = band_values[self.order]
        self.values = values[self.order]
        self.size = self.start = None
        if band.width <= _TABLE_MAX_BITS and 1 << band.width <= 16 * len(values):
            self.sorted = self.sorted.astype(np.int64)
            self.size = np.bincount(self.sorted, minlength=1 << band.width).astype(np.int32)
            self.start = np.cumsum(self.size) - self.size

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


def _probe_ranges(table: _SortedBand, band: Band, counts: dict):
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
            hit, first, size = table.lookup(own ^ mask)
            yield prober[hit], first, size


def _confirmed(table: _SortedBand, prober: np.ndarray, first: np.ndarray, size: np.ndarray, k: int,
               counts: dict) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
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


def multi_index_edges(values: np.ndarray, k: int, bands: Optional[int] = None,
                      stats: Optional[dict] = None) -> np.ndarray:
    """Pairs (i, j), i < j, of distinct ``values`` (uint64) within distance ``k``, each exactly
    once, found by multi-index hashing with ``bands`` bands.  ``stats``, when given, gets the
    number of band values looked up (``probes``) and of candidate pairs compared (``candidates``).

    Band by band, so memory holds one band's sorted copy plus a block of candidates.
    """
    plan = band_plan(k, bands)
    counts = {"probes": 0, "candidates": 0}
    found = [np.empty((0, 2), np.int64)]
    for band in plan:
        table = _SortedBand(values, band)
        for ranges in _probe_ranges(table, band, counts):
            for a, b in _confirmed(table, *ranges, k, counts):
                later = ~_found_on_earlier_band(table.values[a] ^ table.values[b], plan, band.index)
                found.append(np.stack([table.order[a[later]], table.order[b[later]]], axis=1))
    if stats is not None:
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
    return np.sort(np.concatenate(found), axis=1)


def candidate_pairs(values: np.ndarray, k: int, bands: Optional[int] = None) -> int:
    """How many candidate pairs the search compares for these (distinct) hashes, without
    comparing them: the cost of a run, for benchmarks and for choosing ``bands``."""
    counts = {"probes": 0, "candidates": 0}
    total = 0
    for band in band_plan(k, bands):
        table = _SortedBand(values, band)
        for _, _, size in _probe_ranges(table, band, counts):
            total += int(size.sum())
    return total


class UnionFind:
    """Disjoint sets over hashable items (path halving, union by size)."""

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


def _groups_from_edges(ids: Sequence, value_index: np.ndarray, edges: np.ndarray) -> List[Set]:
    """Components (two members or more) of ids, given each id's index into the distinct hashes
    and the edges between those indices; ids sharing a hash are in one component.  Only ids in
    an edge or sharing their hash reach the (pure Python) union-find, so a million singletons
    cost a numpy mask, not a million calls."""
    uf = UnionFind()
    for a, b in edges.tolist():
        uf.union(a, b)
    involved = np.zeros(int(value_index.max(initial=-1)) + 1, dtype=bool)
    involved[edges.ravel()] = True
    involved |= np.bincount(value_index, minlength=len(involved)) > 1
    groups: Dict[Hashable, Set] = {}
    for row in np.flatnonzero(involved[value_index]).tolist():
        groups.setdefault(uf.find(int(value_index[row])), set()).add(ids[row])
    return [g for g in groups.values() if len(g) > 1]


def near_duplicate_groups(hashes: Dict[Hashable, str], k: int, bands: Optional[int] = None,
                          stats: Optional[dict] = None) -> List[Set]:
    """Groups (two members or more) of ids whose hashes are connected by distance <= ``k``.

    Identical hashes are collapsed first, the distinct ones are paired by multi-index hashing
    with ``bands`` bands (None: ``auto_bands(k)``); ``stats`` as in ``multi_index_edges``.
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


# --- Beam: DedupNearImages ---------------------------------------------------------------------

_STORED, _PROBE = 0, 1


def _hash_entry(s: Sample):
    """(hash, member) of a sample with a pHash; a member is (id, order key)."""
    if s.phash is not None:
        yield int(s.phash, 16), (s.id, representative_order(s))


def _edge(a: tuple, b: tuple) -> tuple:
    """An edge between two members (id, order key), smaller id first."""
    return tuple(sorted((a, b), key=lambda m: m[0]))


def _copy_edges(item):
    """Samples sharing one exact hash: each is joined to the one with the smallest id (linear
    in the copies, so a logo repeated 10^5 times costs no pairwise work)."""
    _, members = item
    anchor = min(members, key=lambda m: m[0])
    for member in members:
        if member[0] != anchor[0]:
            yield _edge(anchor, member)


def _anchor(item):
    """(hash, the member with the smallest id): the one copy of a hash that is searched."""
    value, members = item
    return value, min(members, key=lambda m: m[0])


def _index_entries(item, plan: Sequence[Band], masks: Sequence[Sequence[Tuple[int, int]]]):
    """((band index, band value), (role, hash, member)): the hash stored under each of its band
    values, and probing the values within each band's radius (a flip mask only when its top bit
    is clear in the hash's value, so each pair is probed from one side)."""
    value, member = item
    for band in plan:
        own = (value >> band.shift) & band.mask
        yield (band.index, own), (_STORED, value, member)
        for top_bit, mask in masks[band.index]:
            if not own & top_bit:
                yield (band.index, own ^ mask), (_PROBE, value, member)


def _bucket_edges(item, k: int, plan: Sequence[Band]):
    """Edges confirmed within one bucket: stored hashes with each other (exact band match) and
    probing hashes with stored ones, by true distance, vectorised; a pair is kept only when this
    band is the first within radius, so each edge leaves exactly one bucket.  Hashes here are
    distinct (copies were collapsed before)."""
    (band_index, _), entries = item
    stored, probing = [], []
    for role, value, member in entries:
        (stored if role == _STORED else probing).append((value, member))
    if not stored:
        return
    stored_values = np.array([v for v, _ in stored], dtype=np.uint64)
    pairs = [(stored, *close_pairs(stored_values, k))]
    if probing:
        probe_values = np.array([v for v, _ in probing], dtype=np.uint64)
        pairs.append((probing, *_blocked_pairs(probe_values, stored_values, k, upper=False)))
    for left, i, j in pairs:
        left_values = stored_values if left is stored else probe_values
        earlier = _found_on_earlier_band(left_values[i] ^ stored_values[j], plan, band_index)
        for a, b in zip(i[~earlier].tolist(), j[~earlier].tolist()):
            yield _edge(left[a][1], stored[b][1])


def group_representatives(edges: List[tuple]) -> Dict[str, str]:
    """id -> its group's representative id, for every id in an edge.

    The representative is the member first by (order key, id), so it does not depend on the order
    the edges arrive in.
    """
    uf, orders = UnionFind(), {}
    for (id_a, order_a), (id_b, order_b) in edges:
        orders[id_a], orders[id_b] = order_a, order_b
        uf.union(id_a, id_b)
    reps = {}
    for group in uf.groups():
        best = min(group, key=lambda i: (orders[i], i))
        reps.update({member: best for member in group})
    return reps


class _DropNonRepresentatives(beam.DoFn):
    def __init__(self, stage: str):
        self.stage = stage

    def process(self, s: Sample, representatives: Dict[str, str]):
        rep = representatives.get(s.id, s.id)
        if rep == s.id:
            yield s
        else:
            yield drop(s, "near_duplicate", self.stage, duplicate_of=rep)


class DedupNearImages(beam.PTransform):
    """One sample per near-duplicate group (pHash within ``max_distance`` bits, transitively).

    samples -> (kept, dropped).  Samples are first grouped by exact hash: copies are joined to
    the copy with the smallest id, which alone goes on.  Each distinct hash is then keyed by its
    ``bands`` band values (stored) and by the values within each band's radius (probes), all
    through one GroupByKey; in each bucket probing and stored hashes are confirmed by true
    distance, each edge in exactly one bucket (see the module docstring).  ``bands`` None picks
    ``auto_bands(max_distance)``; a probe key costs one shuffled element, so a Beam run may prefer
    fewer probes (more bands) than the in-memory search when buckets stay small.

    The confirmed edges (two ids and their order keys each, never samples) are gathered on one
    worker with ``ToList`` and joined into components by union-find; the resulting id ->
    representative dict reaches every worker as a side input.  This is the scaling limit: the edge
    list and the dict must fit one worker's memory, fine up to ~10^8 edges, while samples
    themselves are never gathered.  The representative is the best by ``representative_order``
    (highest similarity, then input order), ties broken by id, so the result does not depend on
    bundle order or worker count.  Ids must be unique; samples without a pHash pass.
    """

    def __init__(self, max_distance: int, stage: str = STAGE, bands: Optional[int] = None):
        super().__init__()
        self.plan = band_plan(max_distance, bands)  # validates both
        self.max_distance, self.stage = max_distance, stage

    def expand(self, samples):
        k, plan = self.max_distance, self.plan
        masks = [[(1 << top, mask) for top, group in flip_masks(band) for mask in group] for band in plan]
        copies = (samples
                  | "Hash keys" >> beam.FlatMap(_hash_entry)
                  | "Group identical hashes" >> beam.GroupByKey())
        copy_edges = copies | "Join copies" >> beam.FlatMap(_copy_edges)
        near_edges = (copies
                      | "One per hash" >> beam.Map(_anchor)
                      | "Stored and probe keys" >> beam.FlatMap(_index_entries, plan, masks)
                      | "Group by band value" >> beam.GroupByKey()
                      | "Confirm pairs" >> beam.FlatMap(_bucket_edges, k, plan))
        representatives = ((copy_edges, near_edges)
                           | "Edges" >> beam.Flatten()
                           | "All edges" >> beam.combiners.ToList()
                           | "Components" >> beam.Map(group_representatives))
        return apply_with_drops(samples, "Drop near duplicates", _DropNonRepresentatives(self.stage),
                                beam.pvalue.AsSingleton(representatives))


# --- Beam: DropFrequentImages ------------------------------------------------------------------

class DistinctCount(beam.CombineFn):
    """Number of distinct inputs, counted up to ``cap`` (the set kept never exceeds ``cap``)."""

    def __init__(self, cap: int):
        self.cap = cap

    def _capped(self, values: set) -> set:
        return values if len(values) <= self.cap else set(sorted(values)[:self.cap])

    def create_accumulator(self):
        return set()

    def add_input(self, acc, value):
        acc.add(value)
        return self._capped(acc)

    def merge_accumulators(self, accs):
        return self._capped(set().union(*accs))

    def extract_output(self, acc):
        return len(acc)


def _phash_document(s: Sample):
    if s.phash is not None and s.doc_id is not None:
        yield s.phash, s.doc_id


class _DropFrequent(beam.DoFn):
    def __init__(self, max_documents: int, stage: str):
        self.max_documents, self.stage = max_documents, stage

    def process(self, s: Sample, frequent: Dict[str, int]):
        if s.phash in frequent:
            yield drop(s, "frequent_image", self.stage, detail=f"pHash in more than {self.max_documents} documents")
        else:
            yield s


class DropFrequentImages(beam.PTransform):
    """MMC4: drop, everywhere, images whose exact pHash occurs in more than ``max_documents``
    distinct documents (logos, buttons, ads).

    Keyed by exact pHash rather than near-duplicate group, so it is one CombinePerKey (distinct
    doc ids per hash, the set capped at ``max_documents + 1``) and a side input of the frequent
    hashes, which are few.  Run it before ``DedupNearImages``, which would otherwise have reduced
    a logo's copies to one.  Samples without a pHash or doc id pass.
    """

    def __init__(self, max_documents: int, stage: str = STAGE):
        super().__init__()
        self.max_documents, self.stage = max_documents, stage

    def expand(self, samples):
        n = self.max_documents
        frequent = (samples
                    | "Hash, document" >> beam.FlatMap(_phash_document)
                    | "Documents per hash" >> beam.CombinePerKey(DistinctCount(n + 1))
                    | "More than N" >> beam.Filter(lambda kv: kv[1] > n))
        return apply_with_drops(samples, "Drop frequent images", _DropFrequent(n, self.stage),
                                beam.pvalue.AsDict(frequent))
