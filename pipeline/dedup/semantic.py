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
run and runner), k-means runs once on it (scipy's ``kmeans2`` with a fixed seed, k-means++ init);
centroids reach the workers as a side input; clusters are formed with a GroupByKey of (id,
embedding, rank key) only, never the image bytes; the decisions, which can be many (SemDeDup
removed half of LAION-440M), are joined back with a CoGroupByKey rather than a side input.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Iterable, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
from scipy.cluster.vq import kmeans2

from ..recipe import DedupConfig
from ..records import Sample
from ..stage import apply_with_drops, drop
from .exact import representative_order

__all__ = [
    "DedupSemantic",
    "stable_hash",
    "fit_centroids",
    "nearest_centroid",
    "cluster_duplicates",
    "semantic_duplicates",
]

STAGE = "sem_dedup"
REASON = "semantic_duplicate"
# Elements of one similarity block (float32: 64 MiB), so a big cluster stays bounded in memory.
_BLOCK_ELEMENTS = 1 << 24
_KMEANS_SEED = 0


# --- pure functions ---------------------------------------------------------------------------


def stable_hash(text: str) -> int:
    """A 64-bit hash of a string that is the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def fit_centroids(embeddings: np.ndarray, n_clusters: int, seed: int = _KMEANS_SEED) -> np.ndarray:
    """k-means centroids (L2-normalised, so nearest = highest cosine) of the rows of ``embeddings``.

    Fewer rows than clusters gives one centroid per row.  The caller passes rows in a fixed order,
    so with the fixed seed the centroids are the same on every run.
    """
    if len(embeddings) == 0:
        return np.zeros((0, 0), np.float32)
    data = np.asarray(embeddings, dtype=np.float64)
    k = min(n_clusters, len(data))
    if k == len(data):
        centroids = data
    else:
        centroids, _ = kmeans2(data, k, minit="++", seed=seed)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return (centroids / np.where(norms == 0, 1, norms)).astype(np.float32)


def nearest_centroid(embedding: np.ndarray, centroids: np.ndarray) -> int:
    """Index of the centroid with the highest cosine (ties: the lowest index)."""
    return int(np.argmax(centroids @ embedding))


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
    clusters: Dict[int, list] = {}
    for member in members:
        clusters.setdefault(nearest_centroid(member[1], centroids), []).append(member)
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


def _assign(member: tuple, centroids: np.ndarray):
    return nearest_centroid(member[1], centroids), member


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
        centroids = (
            members
            | "Fit subset" >> beam.combiners.Top.Of(self.fit_rows, key=lambda m: stable_hash(m[0]), reverse=True)
            | "Fit k-means" >> beam.Map(_fit, self.n_clusters)
        )
        kept_as = (
            members
            | "Nearest centroid" >> beam.Map(_assign, beam.pvalue.AsSingleton(centroids))
            | "Group by cluster" >> beam.GroupByKey()
            | "Duplicates in cluster" >> beam.FlatMap(_cluster_decisions, self.max_similarity)
        )
        by_id = samples | "Key by id" >> beam.Map(lambda s: (s.id, s))
        joined = {"sample": by_id, "kept_as": kept_as} | "Join decisions" >> beam.CoGroupByKey()
        return apply_with_drops(joined, "Drop semantic duplicates", _Decide(self.stage))
