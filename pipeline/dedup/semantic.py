"""Semantic near-duplicates (SemDeDup, Abbas et al. 2023): images whose CLIP embeddings are
near-identical although their pixels are not (crops, re-renders, the same product shot twice).

    embeddings -> k-means centroids (fitted on a deterministic subset) -> nearest centroid
      -> per cluster: rank members, drop each one whose cosine with a better-ranked member is
         above the threshold -> join the decisions back to the samples by id

Clustering is what makes it scale: pairs are compared only inside a cluster, so the cost is
``sum(cluster size ** 2)`` instead of ``n ** 2``.  As in SemDeDup, a member is a duplicate when
any better-ranked member of its cluster is too similar (whether or not that one is kept itself);
``duplicate_of`` follows such chains to the kept member, so it always names a sample in the tars.

Beam shape: the fit subset is a ``Top.Of`` over a stable hash of the ids (the same subset on every
run and runner), k-means runs once on it (``spherical_kmeans``: Lloyd's iterations from rows drawn
with a fixed seed, on embeddings rounded to multiples of 2**-15 so that every sum is exact and
every nearest-centroid decision is exact: the same centroid bits on any CPU, BLAS or thread
count); centroids reach the workers as a side input and members are assigned in batches, by the
same exact rule; clusters are formed with a GroupByKey of (id,
embedding, rank key) only, never the image bytes; the decisions, which can be many (SemDeDup
removed half of LAION-440M), are joined back with a CoGroupByKey rather than a side input.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Iterable, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
import scipy.sparse

from ..recipe import DedupConfig
from ..records import Sample
from ..stage import apply_with_drops, drop
from .exact import representative_order

__all__ = [
    "DedupSemantic",
    "FitCentroids",
    "assign",
    "stable_hash",
    "fit_centroids",
    "nearest_centroid",
    "nearest_centroids",
    "quantize_rows",
    "spherical_kmeans",
    "cluster_duplicates",
    "semantic_duplicates",
]

STAGE = "sem_dedup"
REASON = "semantic_duplicate"
# Elements of one similarity block (float32: 64 MiB), so a big cluster stays bounded in memory.
_BLOCK_ELEMENTS = 1 << 24
_KMEANS_SEED = 0
# Lloyd's iterations at most on the warm sample and again on all rows (each pass stops earlier
# when no row changes cluster); scipy's kmeans2, used before, ran 10.
_KMEANS_ITERATIONS = 10
# The share of the rows the first iterations run on (``spherical_kmeans``).
_WARM_FRACTION = 0.25
# Embedding components are rounded to multiples of 2**-15 for the fit (see ``quantize_rows``).
_FRACTION_BITS = 15
_ONE = float(1 << _FRACTION_BITS)
# Scores (float32) computed at once by ``assign``: 16 MiB.
_SCORES_BLOCK = 1 << 22


# --- pure functions ---------------------------------------------------------------------------


def stable_hash(text: str) -> int:
    """A 64-bit hash of a string that is the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def quantize_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length and rounded to multiples of ``2**-15`` (float32).

    Every step is exact or a single correctly rounded IEEE operation on each element (a row's
    largest magnitude, sums of squares of small integers, one division, one ``rint``), so the
    result is the same bits on every CPU, BLAS and thread count.  A zero row stays zero.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"expected a 2-d array of embeddings, got shape {rows.shape}")
    out = np.empty(rows.shape, dtype=np.float32)
    step = max(1, _SCORES_BLOCK // max(rows.shape[1], 1) // 4)
    for start in range(0, len(rows), step):
        data = rows[start : start + step].astype(np.float64)
        scale = np.max(np.abs(data), axis=1, keepdims=True)
        whole = np.rint(data / np.where(scale == 0, 1, scale) * _ONE)  # integers, |.| <= 2**15
        norm = np.sqrt(np.sum(whole * whole, axis=1, keepdims=True))  # an exact sum: < 2**53
        out[start : start + step] = np.rint(whole * _ONE / np.where(norm == 0, 1, norm)) / _ONE
    return out


def _scores_bound(dims: int) -> float:
    """Largest possible error of a float32 dot product of two quantized rows, whatever the
    summation order or FMA use: Higham's gamma_n times the product of the norms (a quantized row
    is off unit length by at most sqrt(dims) * 2**-16)."""
    unit = 2.0**-24
    gamma = dims * unit / (1 - dims * unit)
    norm = 1 + np.sqrt(dims) / (2 * _ONE)
    return float(gamma * norm * norm)


def assign(rows: np.ndarray, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nearest centroid, a lower bound on its cosine, an upper bound on the cosine of the next
    nearest) of each quantized row; the nearest is exact, as if computed with infinite precision
    (ties: the lowest index).

    The rows and centroids are multiples of ``2**-15`` (``quantize_rows``), so their float64 dot
    products are exact.  The fast path is a float32 matrix product, a block of rows at a time; a
    row whose best and second-best float32 scores are within twice the product's worst-case
    rounding error is re-scored in float64, exactly.  The labels therefore do not depend on the
    CPU type, BLAS or thread count: float32 only decides where it cannot be wrong.
    """
    n, k = len(rows), len(centroids)
    labels = np.zeros(n, dtype=np.int64)
    best = np.zeros(n, dtype=np.float64)
    second = np.full(n, -np.inf, dtype=np.float64)
    if n == 0 or k == 0:
        return labels, best, second
    error = _scores_bound(rows.shape[1])
    wide = centroids.astype(np.float64)
    step = max(1, _SCORES_BLOCK // k)
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = np.arange(stop - start)
        scores = rows[start:stop] @ centroids.T
        top = np.argmax(scores, axis=1)
        picked = scores[block, top].astype(np.float64)
        if k > 1:
            scores[block, top] = -np.inf
            other = scores.max(axis=1).astype(np.float64)
            unsure = np.flatnonzero(picked - other <= 2 * error)
            second[start:stop] = other + error
        else:
            unsure = np.empty(0, np.int64)
        if len(unsure):
            exact = rows[start + unsure].astype(np.float64) @ wide.T
            top[unsure] = np.argmax(exact, axis=1)
            if k > 1:
                chosen = exact[np.arange(len(unsure)), top[unsure]].copy()
                exact[np.arange(len(unsure)), top[unsure]] = -np.inf
                second[start + unsure] = exact.max(axis=1)
                exact[np.arange(len(unsure)), top[unsure]] = chosen
        labels[start:stop] = top
        best[start:stop] = picked - error
        if len(unsure):
            best[start + unsure] = exact.max(axis=1) if k == 1 else exact[np.arange(len(unsure)), top[unsure]]
    return labels, best, second


def _initial_rows(rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` distinct rows chosen at random (PCG64, the same draw everywhere), in input order."""
    flat = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first = np.unique(flat, return_index=True)
    first.sort()
    if len(first) <= k:
        return first
    return np.sort(first[np.random.default_rng(seed).choice(len(first), size=k, replace=False)])


def _cluster_sums(rows: np.ndarray, labels: np.ndarray, k: int, sign: float = 1.0) -> np.ndarray:
    """Sum (times ``sign``) of the rows of each cluster, float64: exact, in any order (multiples
    of 2**-15 below 2**38), so a sparse product may add them."""
    one_hot = scipy.sparse.csr_matrix(
        (np.full(len(labels), sign), (labels, np.arange(len(labels)))), shape=(k, len(labels))
    )
    return np.asarray(one_hot @ rows.astype(np.float64))


def _lloyd(rows: np.ndarray, centroids: np.ndarray, iterations: int, prune: bool, stats: dict):
    """Lloyd's iterations from ``centroids``: (centroids, labels).  See ``spherical_kmeans``."""
    n, k = len(rows), len(centroids)
    labels, best, second = assign(rows, centroids)
    stats["rescored"] += n
    sums = _cluster_sums(rows, labels, k)
    stretch = 1 + 2 * np.sqrt(rows.shape[1]) / _ONE  # a row's norm, and slack for the drift's rounding
    for _ in range(iterations):
        moved = np.flatnonzero(sums.any(axis=1))
        new = centroids.copy()
        new[moved] = quantize_rows(sums[moved])
        drift = np.linalg.norm(new.astype(np.float64) - centroids, axis=1) * stretch + 1e-12
        centroids = new
        stats["iterations"] += 1
        if prune and k > 1:
            # the others' largest drift: the largest, or for the rows of that centroid the next
            first, runner_up = np.argsort(drift)[::-1][:2]
            best -= drift[labels]
            second += np.where(labels == first, drift[runner_up], drift[first])
            redo = np.flatnonzero(best <= second)
        else:
            redo = np.arange(n)
        stats["rescored"] += len(redo)
        new_labels, best[redo], second[redo] = assign(rows[redo], centroids)
        moving = new_labels != labels[redo]
        changed = redo[moving]
        stats["changed"] = len(changed)
        if not len(changed):
            break
        sums += _cluster_sums(rows[changed], new_labels[moving], k) + _cluster_sums(
            rows[changed], labels[changed], k, -1.0
        )
        labels[redo] = new_labels
    return centroids, labels


def spherical_kmeans(
    embeddings: np.ndarray,
    n_clusters: int,
    seed: int = _KMEANS_SEED,
    iterations: int = _KMEANS_ITERATIONS,
    prune: bool = True,
    warm_fraction: float = _WARM_FRACTION,
) -> Tuple[np.ndarray, dict]:
    """Spherical k-means (Lloyd's iterations on cosine) of the rows: (centroids, stats).

    Starts from ``n_clusters`` distinct rows drawn with ``seed``.  An iteration moves each
    centroid to the normalised sum of its rows and assigns every row to its nearest centroid
    (``assign``: exact); iterations stop when no row changes cluster or after ``iterations``
    moves.  They run first on a ``warm_fraction`` of the rows (drawn with ``seed``; at least 40
    rows a cluster), then from there on all rows: most of the moving is done on the sample, at a
    fraction of the cost.  A cluster left empty keeps its centroid.  All arithmetic that decides
    anything is exact (rows and centroids are ``quantize_rows`` output, sums of them are exact in
    float64), so every run on any machine gives the same bits.

    ``prune`` (Hamerly's bounds) re-scores only the rows whose assignment could have changed: a
    row keeps a lower bound on its cosine with its own centroid and an upper bound on every other
    one, loosened by how far the centroids moved; while the first is above the second, the row
    cannot move.  The bounds only choose which rows to re-score, so the result is the same bits
    as without pruning.  stats: ``iterations`` (centroid moves, both passes), ``objective`` (mean
    cosine of a row with its centroid, at the end), ``rescored`` (row scorings), ``changed``
    (rows that moved on the last iteration).
    """
    rows = quantize_rows(embeddings)
    n = len(rows)
    stats = {"iterations": 0, "objective": 0.0, "rescored": 0, "changed": 0}
    if n == 0:
        return np.zeros((0, rows.shape[1]), np.float32), stats
    k = min(n_clusters, n)
    warm = min(n, max(int(n * warm_fraction), 40 * k))
    sample = rows[np.sort(np.random.default_rng(seed).permutation(n)[:warm])] if warm < n else rows
    centroids = sample[_initial_rows(sample, k, seed)]
    if warm < n:
        centroids, _ = _lloyd(sample, centroids, iterations, prune, stats)
    centroids, labels = _lloyd(rows, centroids, iterations, prune, stats)
    stats["objective"] = float(np.einsum("ij,ij->i", rows, centroids[labels], dtype=np.float64).mean())
    return centroids, stats


def fit_centroids(embeddings: np.ndarray, n_clusters: int, seed: int = _KMEANS_SEED) -> np.ndarray:
    """k-means centroids (unit length, so nearest = highest cosine) of the rows of ``embeddings``:
    ``spherical_kmeans``, the same bits on every run, machine and worker count.

    Fewer rows than clusters gives one centroid per distinct row.  The caller passes rows in a
    fixed order, so with the fixed seed the centroids are the same on every run.
    """
    if len(embeddings) == 0:
        return np.zeros((0, 0), np.float32)
    centroids, _ = spherical_kmeans(embeddings, n_clusters, seed)
    return centroids


def nearest_centroids(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the centroid with the highest cosine for each row (ties: the lowest index),
    decided exactly on the quantized rows (``assign``): the same on every machine."""
    if len(centroids) == 0 or len(embeddings) == 0:
        return np.zeros(len(embeddings), dtype=np.int64)
    return assign(quantize_rows(embeddings), np.asarray(centroids, dtype=np.float32))[0]


def nearest_centroid(embedding: np.ndarray, centroids: np.ndarray) -> int:
    """Index of the centroid with the highest cosine (ties: the lowest index)."""
    return int(nearest_centroids(np.asarray(embedding)[None, :], centroids)[0])


def cluster_duplicates(ids: Sequence[str], embeddings: np.ndarray, max_similarity: float) -> Dict[str, str]:
    """id -> kept id, for the members of one cluster that are duplicates.

    ``ids``/``embeddings`` are in rank order (best first).  Member j is a duplicate when its cosine
    with some better-ranked member i < j exceeds ``max_similarity``; it points at the most similar
    such i, and through i's own pointer at the kept member the chain ends on.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    n = len(ids)
    nearest = np.full(n, -1, dtype=np.int64)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(1, n, rows):
        stop = min(start + rows, n)
        sims = emb[start:stop] @ emb[:stop].T  # block x (all earlier and the block itself)
        sims[np.arange(stop - start)[:, None] <= np.arange(stop)[None, :] - start] = -np.inf  # keep i < j only
        best = np.argmax(sims, axis=1)
        hit = sims[np.arange(stop - start), best] > max_similarity
        nearest[start:stop][hit] = best[hit]
    kept_of: Dict[int, int] = {}
    out = {}
    for j in range(n):  # i < j, so i's kept member is known when j is reached
        i = nearest[j]
        if i < 0:
            kept_of[j] = j
        else:
            kept_of[j] = kept_of[i]
            out[ids[j]] = ids[kept_of[j]]
    return out


def semantic_duplicates(
    members: Iterable[Tuple[str, np.ndarray, tuple]], centroids: np.ndarray, max_similarity: float
) -> Dict[str, str]:
    """The whole stage in memory (for tests and small runs): id -> kept id of every duplicate."""
    members = list(members)
    clusters: Dict[int, list] = {}
    if members:
        labels = nearest_centroids(np.stack([m[1] for m in members]), centroids)
        for label, member in zip(labels.tolist(), members):
            clusters.setdefault(label, []).append(member)
    out = {}
    for cluster in clusters.values():
        out.update(_decide_cluster(cluster, max_similarity))
    return out


def _decide_cluster(members: List[tuple], max_similarity: float) -> Dict[str, str]:
    members = sorted(members, key=lambda m: (m[2], m[0]))
    return cluster_duplicates([m[0] for m in members], np.stack([m[1] for m in members]), max_similarity)


# --- Beam -------------------------------------------------------------------------------------


def _member(s: Sample):
    """(id, embedding, rank key) of a sample with an image embedding."""
    if s.image_embedding is not None:
        yield s.id, np.asarray(s.image_embedding, dtype=np.float32), representative_order(s)


def _fit(subset: List[tuple], n_clusters: int) -> np.ndarray:
    subset = sorted(subset, key=lambda m: m[0])
    return fit_centroids(np.stack([m[1] for m in subset]) if subset else np.zeros((0, 0)), n_clusters)


def _assign(batch: List[tuple], centroids: np.ndarray):
    """(cluster, member) of each member of a batch: one matrix product per batch; the labels do
    not depend on how the members were batched."""
    labels = nearest_centroids(np.stack([m[1] for m in batch]), centroids)
    return list(zip(labels.tolist(), batch))


def _cluster_decisions(item, max_similarity: float):
    _, members = item
    yield from _decide_cluster(list(members), max_similarity).items()


class _Decide(beam.DoFn):
    def __init__(self, stage: str):
        self.stage = stage

    def process(self, item):
        _, joined = item
        kept_as = list(joined["kept_as"])
        for s in joined["sample"]:
            if kept_as:
                yield drop(s, REASON, self.stage, duplicate_of=kept_as[0])
            else:
                yield s


class FitCentroids(beam.PTransform):
    """members (id, embedding, rank key) -> one element, the k-means centroids: fitted on the
    ``fit_rows`` members first by a stable hash of their ids, sorted by id, so the same on every
    run, runner and worker count."""

    def __init__(self, n_clusters: int, fit_rows: int):
        super().__init__()
        self.n_clusters, self.fit_rows = n_clusters, fit_rows

    def expand(self, members):
        return (
            members
            | "Fit subset" >> beam.combiners.Top.Of(self.fit_rows, key=lambda m: stable_hash(m[0]), reverse=True)
            | "Fit k-means" >> beam.Map(_fit, self.n_clusters)
        )


class DedupSemantic(beam.PTransform):
    """Drop images whose CLIP image embedding has cosine above ``dedup.semantic_max_similarity``
    with a better-ranked image (higher CLIP similarity, then input order) of the same k-means
    cluster (``dedup.semantic_clusters`` of them, fitted on ``dedup.semantic_fit_rows``).

    samples -> (kept, dropped).  Samples without an image embedding (CLIP off, MMC4 sentences)
    pass untouched.  Ids must be unique.
    """

    def __init__(self, cfg: DedupConfig, stage: str = STAGE):
        super().__init__()
        if cfg.semantic_clusters < 1 or cfg.semantic_fit_rows < cfg.semantic_clusters:
            raise ValueError("need 1 <= dedup.semantic_clusters <= dedup.semantic_fit_rows")
        self.n_clusters, self.max_similarity = cfg.semantic_clusters, cfg.semantic_max_similarity
        self.fit_rows, self.stage = cfg.semantic_fit_rows, stage

    def expand(self, samples):
        members = samples | "Embeddings" >> beam.FlatMap(_member)
        centroids = members | "Fit" >> FitCentroids(self.n_clusters, self.fit_rows)
        kept_as = (
            members
            | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=4096)
            | "Nearest centroid" >> beam.FlatMap(_assign, beam.pvalue.AsSingleton(centroids))
            | "Group by cluster" >> beam.GroupByKey()
            | "Duplicates in cluster" >> beam.FlatMap(_cluster_decisions, self.max_similarity)
        )
        by_id = samples | "Key by id" >> beam.Map(lambda s: (s.id, s))
        joined = {"sample": by_id, "kept_as": kept_as} | "Join decisions" >> beam.CoGroupByKey()
        return apply_with_drops(joined, "Drop semantic duplicates", _Decide(self.stage))
