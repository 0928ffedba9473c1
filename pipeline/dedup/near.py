"""Near-duplicate images across a whole build, by perceptual hash: the Beam stages.

Two images are near duplicates when their 64-bit pHashes differ in at most ``k`` bits, or one's
pHash is within ``k`` of a hash of a mirrored, cropped or rotated copy of the other (its
``phash_variants``); groups are the connected components of that relation, found with the band
plan of ``hamming_index.py`` (multi-index hashing) so that no pair of hashes is compared unless a
band brings them together.
``DedupNearImages`` keeps one representative per group (``exact.representative_order``);
``DropFrequentImages`` is the MMC4 rule against images repeated over many documents.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from ..images.perceptual import split_variants
from ..recipe import DedupConfig
from ..records import Sample
from ..stage import apply_with_drops, drop
from .exact import representative_order
from .hamming_index import (
    AUTO_HASHES,
    STORED_PER_SAMPLE,
    Band,
    band_plan,
    blocked_pairs,
    checks_agree,
    close_pairs,
    components,
    flip_masks,
    found_on_earlier_band,
    low_detail,
    pair_limit,
)

__all__ = ["DedupNearImages", "DropFrequentImages"]

STAGE = "near_dup"


# --- Beam: DedupNearImages ---------------------------------------------------------------------

_STORED, _PROBE, _PROBE_DOWN = 0, 1, 2
# What a searched hash is: a pHash, a variant, a mirrored turn (a pHash joins it only within
# ``k - STRICT_MARGIN``), a variant of a low-detail image, or the pHash of one (a variant and a
# pHash join within ``k - LOW_DETAIL_MARGIN`` when either is).  ``hamming_index.pair_limit`` and
# ``variant_groups`` are the rule.  False and True, as tests write pHashes and variants, equal the
# first two.
_PHASH, _VARIANT, _TURN_VARIANT, _LOW_DETAIL_PHASH, _LOW_DETAIL_VARIANT = 0, 1, 2, 3, 4
_VARIANT_KINDS = (_VARIANT, _TURN_VARIANT, _LOW_DETAIL_VARIANT)


def _is_variant(kind) -> bool:
    return kind in _VARIANT_KINDS


def _limit(k: int, one, other) -> int:
    """The distance within which searched hashes of these kinds join (one of them a pHash)."""
    if not (_is_variant(one) or _is_variant(other)):
        return k
    kinds = (one, other)
    low = _LOW_DETAIL_PHASH in kinds or _LOW_DETAIL_VARIANT in kinds
    return pair_limit(k, _TURN_VARIANT in kinds, low)


def _hash_entry(s: Sample):
    """(hash, (member, variant hashes, check hashes)) of a sample with a pHash; a member is
    (id, order key); the check hashes are the pHash's then each variant's (``phash_checks``),
    or none."""
    if s.phash is not None:
        variants = tuple(s.phash_variants or ())
        checks = tuple(s.phash_checks or ())
        yield (
            int(s.phash, 16),
            ((s.id, representative_order(s)), variants, checks if len(checks) == 1 + len(variants) else ()),
        )


def _edge(a: tuple, b: tuple) -> tuple:
    """An edge between two members (id, order key), smaller id first."""
    return tuple(sorted((a, b), key=lambda m: m[0]))


def _copy_edges(item):
    """Samples sharing one exact hash: each is joined to the one with the smallest id (linear
    in the copies, so a logo repeated 10^5 times costs no pairwise work)."""
    _, entries = item
    anchor = min((member for member, _, _ in entries), key=lambda m: m[0])
    for member, _, _ in entries:
        if member[0] != anchor[0]:
            yield _edge(anchor, member)


def _searched(item):
    """(hash, member, what it is, check hashes) of what the search compares for one exact hash:
    the copy with the smallest id (its copies are joined to it), under its pHash and under each
    variant hash any of the copies carries (``Sample.phash_variants``: mirrored, cropped,
    rotated), with the distinct check hashes the copies give it (``Sample.phash_checks``; a pair
    passes when any agrees).  As in ``variant_groups``, where a pHash that joins one copy joins
    them all: the pHash is of low detail only when every copy is, and a variant hash that copies
    carry as different kinds (plain, a mirrored turn, of a low-detail image) is searched once
    per kind, each with the check hashes of the copies that give it that kind."""
    value, entries = item
    anchor = min((member for member, _, _ in entries), key=lambda m: m[0])
    low = all(low_detail(vs) for _, vs, _ in entries)
    yield (
        value,
        anchor,
        _LOW_DETAIL_PHASH if low else _PHASH,
        tuple(sorted({int(cs[0], 16) for _, _, cs in entries if cs})),
    )
    checks: Dict[Tuple[int, int], set] = {}
    for _, vs, cs in entries:
        plain, _ = split_variants(vs)
        copy_low = low_detail(vs)
        for n, v in enumerate(vs):
            kind = _LOW_DETAIL_VARIANT if copy_low else _TURN_VARIANT if n >= len(plain) else _VARIANT
            found = checks.setdefault((int(v, 16), kind), set())
            if cs:
                found.add(int(cs[1 + n], 16))
    for variant, kind in sorted(checks):
        if variant != value:
            yield variant, anchor, kind, tuple(sorted(checks[variant, kind]))


def _index_entries(item, plan: Sequence[Band], masks: Sequence[Sequence[Tuple[int, int]]]):
    """((band index, band value), (role, hash, member, is a variant)): every hash stored under
    each of its band values; a pHash also probing the values within each band's radius.  A flip
    mask whose top bit is clear in the pHash's value leads to a larger value (``_PROBE``: pairs
    with pHashes and variants), one whose top bit is set to a smaller value (``_PROBE_DOWN``:
    pairs with variants only), so a pair of pHashes is probed from one side and a pHash and a
    variant from the pHash's side.  Variants never probe: each costs one key per band."""
    value, member, variant, check = item
    for band in plan:
        own = (value >> band.shift) & band.mask
        yield (band.index, own), (_STORED, value, member, variant, check)
        if _is_variant(variant):
            continue
        for top_bit, mask in masks[band.index]:
            yield (
                (band.index, own ^ mask),
                (_PROBE if not own & top_bit else _PROBE_DOWN, value, member, variant, check),
            )


def _bucket_edges(item, k: int, plan: Sequence[Band], check_distance: Optional[int] = None):
    """Edges confirmed within one bucket: stored hashes with each other (exact band match) and
    probing pHashes with stored hashes, by true distance, vectorised; a pair is kept only when
    this band is the first within radius, so each edge leaves exactly one bucket.  Two variant
    hashes make no edge (a crop of one image near a crop of another says little: the relation
    is a pHash within ``k`` of the other's pHash or of one of its variants), nor do two hashes
    of one sample; a pair with a mirrored turn or a low-detail image only within ``_limit``, and
    one at ``CHECK_FROM`` bits or more only when its check hashes agree (``checks_agree``).
    pHashes here are distinct (copies were collapsed before); a variant hash may equal another
    sample's pHash or variant."""
    (band_index, _), entries = item
    stored, up, down = [], [], []
    for role, value, member, variant, check in entries:
        (stored if role == _STORED else up if role == _PROBE else down).append((value, member, variant, check))
    if not stored:
        return
    stored_values = np.array([v for v, _, _, _ in stored], dtype=np.uint64)
    pairs = [(stored, stored_values, *close_pairs(stored_values, k))]
    for probing in (up, down):
        if probing:
            probe_values = np.array([v for v, _, _, _ in probing], dtype=np.uint64)
            pairs.append((probing, probe_values, *blocked_pairs(probe_values, stored_values, k, upper=False)))
    for left, left_values, i, j in pairs:
        xor = left_values[i] ^ stored_values[j]
        later = ~found_on_earlier_band(xor, plan, band_index)
        distances = np.bitwise_count(xor[later]).tolist()
        for a, b, distance in zip(i[later].tolist(), j[later].tolist(), distances):
            _, one, one_variant, one_check = left[a]
            _, other, other_variant, other_check = stored[b]
            if left is down and not _is_variant(other_variant):
                continue  # a pair of pHashes is the up-probe's
            if _is_variant(one_variant) and _is_variant(other_variant) or one[0] == other[0]:
                continue
            if distance <= _limit(k, one_variant, other_variant) and checks_agree(
                one_check, other_check, distance, check_distance
            ):
                yield _edge(one, other)


def group_representatives(edges: List[tuple]) -> Dict[str, str]:
    """id -> its group's representative id, for every id in an edge.

    The representative is the member first by (order key, id), so it does not depend on the order
    the edges arrive in.  Ids are numbered with a dict, the groups are scipy's compiled connected
    components (``hamming_index.components``), and one pass picks each group's best member.
    """
    index: Dict[str, int] = {}
    orders: List[tuple] = []
    ends = np.empty((len(edges), 2), dtype=np.int64)
    for row, pair in enumerate(edges):
        for side, (member_id, order) in enumerate(pair):
            number = index.setdefault(member_id, len(index))
            if number == len(orders):
                orders.append(order)
            ends[row, side] = number
    ids = list(index)
    labels = components(len(ids), ends).tolist()
    best: Dict[int, int] = {}
    for number, label in enumerate(labels):
        held = best.get(label)
        if held is None or (orders[number], ids[number]) < (orders[held], ids[held]):
            best[label] = number
    return {member_id: ids[best[label]] for member_id, label in zip(ids, labels)}


class _DropNonRepresentatives(beam.DoFn):
    def __init__(self, stage: str):
        self.stage = stage

    def process(self, s: Sample, representatives: Dict[str, str]):
        rep = representatives.get(s.id, s.id)
        if rep == s.id:
            yield s.without_variants()  # no later stage reads them
        else:
            yield drop(s, "near_duplicate", self.stage, duplicate_of=rep)


class DedupNearImages(beam.PTransform):
    """One sample per near-duplicate group (pHash within ``dedup.near_max_distance`` bits,
    transitively).

    samples -> (kept, dropped).  Two samples are joined when one's pHash is within
    ``near_max_distance`` of the other's pHash or of one of its ``phash_variants`` (the hashes
    of its mirrored, cropped and rotated copies that the image stage computes,
    ``perceptual.phash_and_variants``; of its mirrored turns within ``near_max_distance -
    STRICT_MARGIN``, of any variant when either image is of low detail within
    ``near_max_distance - LOW_DETAIL_MARGIN``) and, from ``CHECK_FROM`` bits on, their check
    hashes (``phash_checks``: the next frequencies of the same picture and geometry) are within
    ``dedup.near_check_distance``, as ``hamming_index.variant_groups`` does in memory.  Each
    searched hash carries its check hash (8 bytes more a key), so the check needs no join.

    Samples are first grouped by exact pHash: copies are joined to the copy with the smallest
    id, which alone goes on, under its pHash and under every variant hash of the copies (a
    variant hash is stored, never probes, and an edge needs a pHash at one end at least; a
    pHash probes its band values either way, so a sample costs the shuffle of a pHash that
    probes both ways plus one key per band for each variant: at k=5, 3 bands, 67 keys and 3 per
    variant, ~166 with the image stage's 33; at the shipped k=6, 3 bands the first of radius 2,
    298 and 3 per variant, ~397).  Each distinct hash is then keyed by its ``bands`` band values
    (stored) and by the values within each band's radius (probes), all through one GroupByKey; in
    each bucket probing and stored hashes are confirmed by true distance, each edge in exactly one
    bucket (see the module docstring).  ``dedup.near_bands`` None picks the plan of
    ``auto_bands`` for 2**20 samples and their stored variants (``STORED_PER_SAMPLE``); a probe
    key costs one shuffled element, so a Beam run may prefer fewer probes (more bands) than the
    in-memory search when buckets stay small.

    The confirmed edges (two ids and their order keys each, never samples) are gathered on one
    worker with ``ToList`` and joined into components (scipy's compiled connected components); the resulting id ->
    representative dict reaches every worker as a side input.  This is the scaling limit: the edge
    list and the dict must fit one worker's memory, fine up to ~10^8 edges, while samples
    themselves are never gathered.  The representative is the best by ``representative_order``
    (highest similarity, then input order), ties broken by id, so the result does not depend on
    bundle order or worker count.  Ids must be unique; samples without a pHash pass, samples
    without variants (read from an older record) are searched by their pHash alone.
    """

    def __init__(self, cfg: DedupConfig, stage: str = STAGE):
        super().__init__()
        # validates both; the plan for 2**20 samples and their variants (``STORED_PER_SAMPLE``)
        self.plan = band_plan(cfg.near_max_distance, cfg.near_bands, AUTO_HASHES * STORED_PER_SAMPLE)
        self.max_distance, self.check_distance, self.stage = cfg.near_max_distance, cfg.near_check_distance, stage

    def expand(self, samples):
        k, plan = self.max_distance, self.plan
        masks = [[(1 << top, mask) for top, group in flip_masks(band) for mask in group] for band in plan]
        copies = samples | "Hash keys" >> beam.FlatMap(_hash_entry) | "Group identical hashes" >> beam.GroupByKey()
        copy_edges = copies | "Join copies" >> beam.FlatMap(_copy_edges)
        near_edges = (
            copies
            | "One per hash, with its variants" >> beam.FlatMap(_searched)
            | "Stored and probe keys" >> beam.FlatMap(_index_entries, plan, masks)
            | "Group by band value" >> beam.GroupByKey()
            | "Confirm pairs" >> beam.FlatMap(_bucket_edges, k, plan, self.check_distance)
        )
        representatives = (
            (copy_edges, near_edges)
            | "Edges" >> beam.Flatten()
            | "All edges" >> beam.combiners.ToList()
            | "Components" >> beam.Map(group_representatives)
        )
        return apply_with_drops(
            samples,
            "Drop near duplicates",
            _DropNonRepresentatives(self.stage),
            beam.pvalue.AsSingleton(representatives),
        )


# --- Beam: DropFrequentImages ------------------------------------------------------------------


class DistinctCount(beam.CombineFn):
    """Number of distinct inputs, counted up to ``cap`` (the set kept never exceeds ``cap``)."""

    def __init__(self, cap: int):
        self.cap = cap

    def _capped(self, values: set) -> set:
        return values if len(values) <= self.cap else set(sorted(values)[: self.cap])

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
    """MMC4: drop, everywhere, images whose exact pHash occurs in more than
    ``dedup.max_image_documents`` distinct documents (logos, buttons, ads).

    Keyed by exact pHash rather than near-duplicate group, so it is one CombinePerKey (distinct
    doc ids per hash, the set capped at ``max_image_documents + 1``) and a side input of the
    frequent hashes, which are few.  Run it before ``DedupNearImages``, which would otherwise have
    reduced a logo's copies to one.  Samples without a pHash or doc id pass.
    """

    def __init__(self, cfg: DedupConfig, stage: str = STAGE):
        super().__init__()
        if cfg.max_image_documents is None:
            raise ValueError("dedup.max_image_documents is not set")
        self.max_documents, self.stage = cfg.max_image_documents, stage

    def expand(self, samples):
        n = self.max_documents
        frequent = (
            samples
            | "Hash, document" >> beam.FlatMap(_phash_document)
            | "Documents per hash" >> beam.CombinePerKey(DistinctCount(n + 1))
            | "More than N" >> beam.Filter(lambda kv: kv[1] > n)
        )
        return apply_with_drops(
            samples, "Drop frequent images", _DropFrequent(n, self.stage), beam.pvalue.AsDict(frequent)
        )
