"""Time the near-duplicate search (multi-index hashing + vectorised confirm) up to 10M pHashes.

Each size is uniform random 64-bit hashes plus planted near-duplicate clusters (``planted``):
1% of the hashes are cluster centres, each with 1-4 members 0..k random bit flips away (some exact
copies), so there are real pairs, chains and copies besides the random pairs a large uniform
population has.  For each k it runs the band count the search chooses for that many distinct
hashes (``auto_bands(k, n)``), ``--bands`` adds other band counts and, at the sizes up to
``--old-up-to``, the plain banding of ``k + 1`` bands (radius 0).  Timed: ``np.unique`` of the
hashes, ``multi_index_edges`` and the connected components (``hamming_index.components``), on the
uint64 array (parsing 10M hex strings is not the search).  It prints the band plan, band values
looked up, candidate pairs compared, pairs found, groups, wall and CPU seconds and the peak memory
of the process, and checks that every planted pair (centre, member within k) is among the pairs
found (the search is exact; tests compare it with brute force).

A run whose modeled work (``modeled_cost`` times n, in candidate comparisons) exceeds
``--max-work`` is skipped and its estimate printed, unless ``--force``.  Peak memory is the
process's: run one size per process to read it per size.

    python benchmarks/near_dup_lsh.py [--sizes 10000 100000 1000000] [--ks 5 10] [--bands 3 4]
    python benchmarks/near_dup_lsh.py --sizes 10000000 --ks 10 --max-work 1e12
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Optional, Tuple

import numpy as np
from _common import load, machine, peak_rss_mib

from flamingo_corpus.dedup.hamming_index import (
    UnionFind,
    auto_bands,
    band_plan,
    components,
    modeled_cost,
    multi_index_edges,
)
from flamingo_corpus.dedup.near import group_representatives


def planted(n: int, k: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` uint64 hashes: uniform random, with ``n // 100`` cluster centres among them each
    given 1-4 members 0..k random bit flips away; and the (centre, member) pairs planted, as
    values, distinct pairs only."""
    rng = np.random.default_rng(seed)
    centres = n // 100
    sizes = rng.integers(1, 5, size=centres)
    members = min(int(sizes.sum()), n - centres)
    values = rng.integers(0, 2**64, size=n - members, dtype=np.uint64)
    centre = np.repeat(values[:centres], sizes)[:members]
    flips = rng.integers(0, k + 1, size=members)
    # flips distinct bits per member: the first ``flips`` of a random permutation of the 64 bits
    order = np.argsort(rng.random((members, 64)), axis=1)
    chosen = np.arange(64)[None, :] < flips[:, None]
    masks = np.bitwise_or.reduce(np.where(chosen, np.uint64(1) << order.astype(np.uint64), np.uint64(0)), axis=1)
    member = centre ^ masks
    pairs = np.stack([centre, member], axis=1)[centre != member]
    return np.concatenate([values, member]), pairs


def plan_text(k: int, m: int) -> str:
    """Band widths/radii, repeats counted, e.g. '22/1 21/1x2' for 3 bands at k=5."""
    parts = [f"{b.width}/{b.radius}" for b in band_plan(k, m)]
    runs = [(part, len(list(group))) for part, group in itertools.groupby(parts)]
    return " ".join(part if count == 1 else f"{part}x{count}" for part, count in runs)


def union_find_representatives(edges: list) -> dict:
    """The Beam stage's grouping before: pure-Python union-find over the ids (for comparison)."""
    uf, orders = UnionFind(), {}
    for (id_a, order_a), (id_b, order_b) in edges:
        orders[id_a], orders[id_b] = order_a, order_b
        uf.union(id_a, id_b)
    reps = {}
    for group in uf.groups():
        best = min(group, key=lambda i: (orders[i], i))
        reps.update({member: best for member in group})
    return reps


def time_grouping(n_edges: int, repeat: int) -> None:
    """Edges as the Beam stage gathers them (two (id, order key) members each) over 1.5 * n_edges
    ids, random: union-find against the compiled connected components, id mapping included."""
    rng = np.random.default_rng(1)
    ends = rng.integers(0, n_edges * 3 // 2, size=(n_edges, 2)).tolist()
    edges = [((f"s:{a:09d}", (-0.3, 0, a)), (f"s:{b:09d}", (-0.3, 0, b))) for a, b in ends]
    for name, fn in (("union-find", union_find_representatives), ("components", group_representatives)):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            reps = fn(edges)
            times.append(time.perf_counter() - start)
        times.sort()
        print(
            f"grouping {n_edges:,} edges, {name}: median {times[len(times) // 2]:.2f} s "
            f"(min {times[0]:.2f}, max {times[-1]:.2f}, {repeat} runs), {len(set(reps.values())):,} groups",
            flush=True,
        )


def search(values: np.ndarray, k: int, m: Optional[int]) -> dict:
    """The in-memory search as ``near_duplicate_groups`` runs it, on uint64 values: distinct
    hashes, their pairs within ``k``, the components; wall and CPU seconds."""
    stats: dict = {}
    wall, cpu = time.perf_counter(), time.process_time()
    distinct, index = np.unique(values, return_inverse=True)
    edges = multi_index_edges(distinct, k, m, stats)
    labels = components(len(distinct), edges)[index]
    groups = int((np.bincount(labels) > 1).sum())
    stats.update(
        seconds=time.perf_counter() - wall, cpu=time.process_time() - cpu, edges=edges, distinct=distinct, groups=groups
    )
    return stats


def planted_found(result: dict, pairs: np.ndarray) -> Tuple[int, int]:
    """(planted pairs among the pairs found, planted pairs): each must be found."""
    distinct, edges = result["distinct"], result["edges"]
    ends = np.sort(np.searchsorted(distinct, pairs), axis=1)
    key = lambda e: e[:, 0].astype(np.int64) * len(distinct) + e[:, 1]  # noqa: E731
    planted_keys = np.unique(key(ends))
    return int(np.isin(planted_keys, key(edges)).sum()), len(planted_keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--bands", type=int, nargs="*", default=[], help="band counts to run besides auto and old")
    parser.add_argument("--old-up-to", type=int, default=100_000, help="largest size the old k+1 bands run at")
    parser.add_argument(
        "--max-work", type=float, default=2e11, help="skip runs whose modeled work (comparisons + lookups) is larger"
    )
    parser.add_argument("--force", action="store_true", help="run even the runs over --max-work")
    parser.add_argument("--edges", type=int, default=0, help="time the grouping of this many edges instead")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}, numpy {np.__version__}, {load()}")
    if args.edges:
        time_grouping(args.edges, args.repeat)
        return
    print(
        f"{'n':>10} {'k':>3} {'m':>3} {'bands (width/radius)':<18} {'lookups':>15} {'candidates':>17} "
        f"{'pairs':>10} {'planted found':>15} {'groups':>9} {'wall s':>8} {'CPU s':>8}  peak RSS MiB",
        flush=True,
    )
    for k in args.ks:
        for n in args.sizes:
            values, pairs = planted(n, k)
            n_distinct = len(np.unique(values))
            auto = auto_bands(k, n_distinct)
            runs = [auto] + [m for m in args.bands if m != auto]
            if n <= args.old_up_to and k + 1 not in runs:
                runs.append(k + 1)
            for m in runs:
                head = f"{n:>10,} {k:>3} {m:>3} {plan_text(k, m):<18}"
                work = modeled_cost(k, m, n_distinct) * n_distinct
                if work > args.max_work and not args.force:
                    print(f"{head} skipped (modeled work {work:.2g} > --max-work)", flush=True)
                    continue
                r = search(values, k, None if m == auto else m)
                found, planted_pairs = planted_found(r, pairs)
                print(
                    f"{head} {r['probes']:>15,} {r['candidates']:>17,} {len(r['edges']):>10,} "
                    f"{found:>7,}/{planted_pairs:<7,} {r['groups']:>9,} {r['seconds']:>8.2f} {r['cpu']:>8.2f}  "
                    f"{peak_rss_mib():.0f}   {load()}",
                    flush=True,
                )
                if found != planted_pairs:
                    raise SystemExit(f"{planted_pairs - found} planted pairs not found")


if __name__ == "__main__":
    main()
