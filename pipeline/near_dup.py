"""Near-duplicate images across a whole build, by perceptual hash, without all-pairs comparison.

Two images are near duplicates when their 64-bit pHashes (``Sample.phash``, 16 hex digits) differ
in at most ``k`` bits; near-duplicate groups are the connected components of that relation.

Banding: the 64 bits are cut into ``k + 1`` bands.  By pigeonhole, two hashes within distance
``k`` agree exactly on at least one band, so only hashes sharing a (band index, band value) are
candidates, and each candidate pair is confirmed by its true Hamming distance (XOR + popcount over
numpy uint64 arrays).  The cost is the number of candidate pairs: roughly
``(k + 1) * n**2 / 2 / 2**(64 / (k + 1))`` for uniform hashes, so it grows fast with ``k``
(bands of 5-6 bits at k=10) and with constant images (logos), which land in one bucket; identical
hashes are therefore collapsed before any pairwise work.

``near_duplicate_groups`` is the in-memory reference, ``all_pairs_groups`` the O(n^2) brute force
that tests compare it with, ``DedupNearImages`` the Beam stage, and ``DropFrequentImages`` the MMC4
rule against images repeated over many documents.
"""
from __future__ import annotations

from typing import Dict, Hashable, Iterable, List, Sequence, Set, Tuple

import apache_beam as beam
import numpy as np

from .dedup import representative_order
from .records import Sample
from .stage import apply_with_drops, drop

STAGE = "near_dup"
HASH_BITS = 64
# Elements of one XOR block in ``close_pairs`` (uint64: 32 MiB), so a huge bucket stays bounded.
_BLOCK_ELEMENTS = 1 << 22


# --- pure functions ---------------------------------------------------------------------------

def band_layout(k: int) -> List[Tuple[int, int]]:
    """(shift, mask) of each of the ``k + 1`` bands, most significant first, widths differing by
    at most one bit."""
    if not 0 <= k < HASH_BITS:
        raise ValueError(f"max distance must be in [0, {HASH_BITS}), got {k}")
    width, extra = divmod(HASH_BITS, k + 1)
    layout, top = [], HASH_BITS
    for index in range(k + 1):
        bits = width + (index < extra)
        top -= bits
        layout.append((top, (1 << bits) - 1))
    return layout


def bands(phash_hex: str, k: int) -> List[Tuple[int, int]]:
    """(band index, band value) of the ``k + 1`` bands of a 64-bit hash given as hex."""
    value = int(phash_hex, 16)
    return [(index, (value >> shift) & mask) for index, (shift, mask) in enumerate(band_layout(k))]


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hashes given as hex."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def to_uint64(phashes: Iterable[str]) -> np.ndarray:
    """Hex hashes as a numpy uint64 array."""
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def close_pairs(values: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j), i < j, of the pairs of ``values`` (uint64) within distance ``k``.

    Vectorised XOR + popcount, a block of rows at a time so memory stays bounded whatever the size.
    """
    n = len(values)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    found_i, found_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for start in range(0, n - 1, rows):
        stop = min(start + rows, n - 1)
        distance = np.bitwise_count(values[start:stop, None] ^ values[None, start + 1:])
        i, j = np.nonzero(distance <= k)
        i, j = i + start, j + start + 1
        upper = j > i
        found_i.append(i[upper])
        found_j.append(j[upper])
    return np.concatenate(found_i), np.concatenate(found_j)


def banded_candidate_pairs(values: np.ndarray, k: int) -> int:
    """How many pairs the banding compares for these (distinct) hashes: the cost of a run."""
    total = 0
    for shift, mask in band_layout(k):
        _, counts = np.unique((values >> np.uint64(shift)) & np.uint64(mask), return_counts=True)
        total += int((counts * (counts - 1) // 2).sum())
    return total


def _band_buckets(values: np.ndarray, shift: int, mask: int) -> Iterable[np.ndarray]:
    """Indices of ``values`` sharing one value of a band, for each value shared by two or more."""
    band = (values >> np.uint64(shift)) & np.uint64(mask)
    order = np.argsort(band, kind="stable")
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(band[order])) + 1, [len(values)]))
    sizes = np.diff(bounds)
    for lo, size in zip(bounds[:-1][sizes > 1], sizes[sizes > 1]):
        yield order[lo:lo + size]


def banded_edges(values: np.ndarray, k: int) -> np.ndarray:
    """Distinct pairs (i, j), i < j, of ``values`` within distance ``k``, found by banding."""
    found = [np.empty((0, 2), np.int64)]
    for shift, mask in band_layout(k):
        for members in _band_buckets(values, shift, mask):
            i, j = close_pairs(values[members], k)
            found.append(np.stack([members[i], members[j]], axis=1))
    edges = np.concatenate(found)
    return np.unique(np.sort(edges, axis=1), axis=0)


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
    and the edges between those indices; ids sharing a hash are in one component."""
    uf = UnionFind()
    for a, b in edges.tolist():
        uf.union(a, b)
    groups: Dict[Hashable, Set] = {}
    for id_, index in zip(ids, value_index.tolist()):
        groups.setdefault(uf.find(index), set()).add(id_)
    return [g for g in groups.values() if len(g) > 1]


def near_duplicate_groups(hashes: Dict[Hashable, str], k: int) -> List[Set]:
    """Groups (two members or more) of ids whose hashes are connected by distance <= ``k``.

    Identical hashes are collapsed first, the distinct ones are paired by banding.
    """
    ids = list(hashes)
    values = to_uint64(hashes[i] for i in ids)
    distinct, value_index = np.unique(values, return_inverse=True)
    return _groups_from_edges(ids, value_index, banded_edges(distinct, k))


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

def _band_entries(s: Sample, k: int):
    """(band key, member) for each band of a sample's hash; a member is (id, hash, order key)."""
    if s.phash is None:
        return
    member = (s.id, int(s.phash, 16), representative_order(s))
    for index, value in bands(s.phash, k):
        yield (index, value), member


def _first_shared_band(a: int, b: int, k: int) -> int:
    """Index of the first band on which two hashes agree (-1 when none)."""
    for index, (shift, mask) in enumerate(band_layout(k)):
        if (a >> shift) & mask == (b >> shift) & mask:
            return index
    return -1


def _edge(a: tuple, b: tuple) -> tuple:
    """An edge between two members as ((id, order key), (id, order key)), smaller id first."""
    (id_a, _, order_a), (id_b, _, order_b) = sorted((a, b), key=lambda m: m[0])
    return (id_a, order_a), (id_b, order_b)


def _bucket_edges(item, k: int):
    """Edges confirmed within one band bucket.

    Members with an identical hash are chained to the class's smallest id (no pairwise work, so a
    bucket of 10^5 copies of a logo costs linear time); distinct hashes are confirmed pairwise,
    vectorised, between the classes' anchors.  An edge is emitted only by the first band its two
    hashes share, so each edge leaves exactly one bucket.
    """
    (band_index, _), members = item
    classes: Dict[int, list] = {}
    for member in sorted(members, key=lambda m: m[0]):
        classes.setdefault(member[1], []).append(member)
    anchors = [same[0] for same in classes.values()]
    if band_index == 0:
        for same in classes.values():
            for copy in same[1:]:
                yield _edge(same[0], copy)
    if len(anchors) < 2:
        return
    values = np.array([a[1] for a in anchors], dtype=np.uint64)
    for i, j in zip(*(x.tolist() for x in close_pairs(values, k))):
        if _first_shared_band(anchors[i][1], anchors[j][1], k) == band_index:
            yield _edge(anchors[i], anchors[j])


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

    samples -> (kept, dropped).  Each sample is keyed by its ``max_distance + 1`` bands; a
    GroupByKey per band gives the candidate buckets, whose pairs are confirmed by true distance.
    The confirmed edges (two ids and their order keys each, never samples) are gathered on one
    worker with ``ToList`` and joined into components by union-find; the resulting id ->
    representative dict reaches every worker as a side input.  This is the scaling limit: the edge
    list and the dict must fit one worker's memory, fine up to ~10^8 edges, while samples
    themselves are never gathered.  The representative is the best by ``representative_order``
    (highest similarity, then input order), ties broken by id, so the result does not depend on
    bundle order or worker count.  Ids must be unique; samples without a pHash pass.
    """

    def __init__(self, max_distance: int, stage: str = STAGE):
        super().__init__()
        band_layout(max_distance)  # validates it
        self.max_distance, self.stage = max_distance, stage

    def expand(self, samples):
        k = self.max_distance
        representatives = (samples
                           | "Band keys" >> beam.FlatMap(_band_entries, k)
                           | "Group by band" >> beam.GroupByKey()
                           | "Confirm pairs" >> beam.FlatMap(_bucket_edges, k)
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
