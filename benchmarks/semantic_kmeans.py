"""Time the semantic-dedup k-means fit (``semantic.spherical_kmeans``) against the method before it
(scipy's ``kmeans2`` with k-means++), and compare what each clustering decides.

The embeddings are synthetic but shaped like CLIP image embeddings: unit vectors that share a
common direction (mean cosine between unrelated rows about 0.4), around 2,000 topics of Zipf-like
sizes (cosine about 0.7 inside a topic), with 5% near-copies of other rows (cosine 0.96-0.995)
and 1% exact copies.  For each setting it prints seconds (median and range of ``--repeat`` runs),
iterations, the objective (mean cosine of a row with its nearest centroid) and a checksum of the
centroid bits; with ``--compare`` it also runs the old method once (211 s at 100 clusters in the
issue's measurement; ``--old-up-to`` bounds the cluster count it runs at) and reports its
objective and how many of the semantic-dedup decisions (``dedup.semantic_max_similarity`` 0.95 by
default) differ, the planted near-copies found by each, on the same rows.

    python benchmarks/semantic_kmeans.py [--rows 100000] [--dims 512 768] [--clusters 100 1000]
        [--repeat 3] [--compare]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

import numpy as np
from _common import load, machine, peak_rss_mib

from flamingo_corpus.dedup.semantic import semantic_duplicates, spherical_kmeans


def clip_like(n: int, dims: int, seed: int = 0, topics: int = 2000):
    """(embeddings float32, planted): ``planted`` maps a near-copy's row to the row it copies."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    common = unit(rng.normal(size=dims))
    centres = unit(0.8 * common + unit(rng.normal(size=(topics, dims))))
    weights = 1.0 / np.arange(1, topics + 1) ** 0.8
    topic = rng.choice(topics, size=n, p=weights / weights.sum())
    spread = rng.uniform(0.6, 1.0, size=topics)[topic][:, None]
    rows = unit(centres[topic] + spread * unit(rng.normal(size=(n, dims))))
    planted = {}
    copies = rng.choice(n, size=n // 16, replace=False)
    for target, source in zip(copies[: n // 20], rng.integers(0, n, size=n // 20)):
        if source != target:
            rows[target] = unit(rows[source] + rng.uniform(0.03, 0.09) * unit(rng.normal(size=dims)))
            planted[int(target)] = int(source)
    for target, source in zip(copies[n // 20 :], rng.integers(0, n, size=n - n // 20)):
        if source != target and int(source) not in planted:
            rows[target] = rows[source]
            planted[int(target)] = int(source)
    return rows.astype(np.float32), planted


def old_fit(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The method before: scipy ``kmeans2`` (k-means++ start, 10 iterations) in float64."""
    from scipy.cluster.vq import kmeans2

    centroids, _ = kmeans2(np.asarray(embeddings, dtype=np.float64), k, minit="++", seed=seed)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return (centroids / np.where(norms == 0, 1, norms)).astype(np.float32)


def objective(rows: np.ndarray, centroids: np.ndarray) -> float:
    """Mean cosine of each row with its nearest centroid (unit rows and centroids)."""
    total = 0.0
    for start in range(0, len(rows), 8192):
        total += float((rows[start : start + 8192] @ centroids.T).max(axis=1).sum())
    return total / len(rows)


def checksum(centroids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(centroids).tobytes()).hexdigest()[:12]


def decisions(rows: np.ndarray, centroids: np.ndarray, threshold: float) -> dict:
    members = [(str(i), rows[i], (i,)) for i in range(len(rows))]
    return semantic_duplicates(members, centroids, threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--clusters", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="also run the old method once and compare decisions")
    parser.add_argument("--old-up-to", type=int, default=100, help="largest cluster count the old method runs at")
    parser.add_argument("--threshold", type=float, default=0.95, help="dedup.semantic_max_similarity")
    args = parser.parse_args()
    print(f"machine: {machine()}, numpy {np.__version__}, {load()}", flush=True)
    for dims in args.dims:
        rows, planted = clip_like(args.rows, dims)
        print(f"{args.rows} rows x {dims} dims, {len(planted)} planted copies", flush=True)
        for k in args.clusters:
            times, cpu, sums = [], [], set()
            for _ in range(args.repeat):
                start, start_cpu = time.perf_counter(), time.process_time()
                centroids, stats = spherical_kmeans(rows, k)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
                sums.add(checksum(centroids))
            print(
                f"  k={k:>5} new: {statistics.median(times):7.2f} s (min {min(times):.2f}, max {max(times):.2f}, "
                f"{len(times)} runs; CPU {statistics.median(cpu):.2f} s, {min(cpu):.2f}-{max(cpu):.2f}), "
                f"{stats['iterations']} iterations, rows re-scored {stats['rescored']:,}, "
                f"objective {objective(rows, centroids):.5f}, centroid bits {'/'.join(sorted(sums))}, "
                f"peak RSS {peak_rss_mib():.0f} MiB, {load()}",
                flush=True,
            )
            if args.compare and k <= args.old_up_to:
                start = time.perf_counter()
                old = old_fit(rows, k)
                seconds = time.perf_counter() - start
                print(f"  k={k:>5} old: {seconds:7.2f} s, objective {objective(rows, old):.5f}", flush=True)
                new_d, old_d = decisions(rows, centroids, args.threshold), decisions(rows, old, args.threshold)
                found_new = sum(str(t) in new_d for t in planted)
                found_old = sum(str(t) in old_d for t in planted)
                both = len(new_d.keys() & old_d.keys())
                print(
                    f"          dropped: new {len(new_d):,}, old {len(old_d):,}, both {both:,}, "
                    f"same kept id {sum(new_d[i] == old_d.get(i) for i in new_d):,}; planted copies found: "
                    f"new {found_new:,}, old {found_old:,} of {len(planted):,}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
