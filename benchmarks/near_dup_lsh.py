"""Time ``near_duplicate_groups`` (multi-index hashing + vectorised confirm) on random pHashes.

Each size is uniform random 64-bit hashes plus 1% planted near copies (0..k random bit flips of
an existing hash).  For each k it runs the automatic band count (``auto_bands``) and, at the
sizes up to ``--old-up-to``, the old plain banding (``k + 1`` bands, radius 0) for comparison;
``--bands`` adds other band counts.  It prints the band plan, band values looked up, candidate
pairs compared, groups found and seconds (hex parsing and union-find included).

A run whose modeled work (``modeled_cost`` times n, in candidate comparisons) exceeds
``--max-work`` is skipped and its estimate printed, unless ``--force``: plain banding at k=10 and
1M hashes (~10^11 candidates) would take about an hour on 2 cores.

    python benchmarks/near_dup_lsh.py [--sizes 10000 100000 1000000] [--ks 5 10] [--bands 3 4]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from _common import load, machine, peak_rss_mib

from flamingo_corpus.dedup.hamming_index import (
    UnionFind,
    auto_bands,
    band_plan,
    modeled_cost,
    near_duplicate_groups,
)
from flamingo_corpus.dedup.near import group_representatives


def planted_hashes(n: int, k: int, seed: int = 0) -> dict:
    """``n`` hashes as hex: 99% uniform random, 1% copies of those with 0..k bits flipped."""
    rng = np.random.default_rng(seed)
    copies = n // 100
    values = rng.integers(0, 2**64, size=n - copies, dtype=np.uint64)
    planted = values[rng.integers(0, len(values), size=copies)].copy()
    for row, flips in enumerate(rng.integers(0, k + 1, size=copies)):
        for bit in rng.choice(64, size=flips, replace=False):
            planted[row] ^= np.uint64(1) << np.uint64(bit)
    return {i: f"{int(v):016x}" for i, v in enumerate(np.concatenate([values, planted]))}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--bands", type=int, nargs="*", default=[], help="band counts to run besides auto and old")
    parser.add_argument("--old-up-to", type=int, default=100_000, help="largest size the old k+1 bands run at")
    parser.add_argument(
        "--max-work", type=float, default=2e10, help="skip runs whose modeled work (comparisons + lookups) is larger"
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
        f"{'n':>9} {'k':>3} {'m':>3} {'bands (width/radius)':<18} {'lookups':>13} {'candidates':>15} "
        f"{'groups':>7} {'seconds':>8}  peak RSS MiB",
        flush=True,
    )
    for k in args.ks:
        for n in args.sizes:
            hashes = planted_hashes(n, k)
            runs = [auto_bands(k)] + [m for m in args.bands if m != auto_bands(k)]
            if n <= args.old_up_to and k + 1 not in runs:
                runs.append(k + 1)
            for m in runs:
                head = f"{n:>9} {k:>3} {m:>3} {plan_text(k, m):<18}"
                work = modeled_cost(k, m, n) * n
                if work > args.max_work and not args.force:
                    print(f"{head} skipped (modeled work {work:.2g} > --max-work)", flush=True)
                    continue
                stats = {}
                start = time.perf_counter()
                groups = near_duplicate_groups(hashes, k, bands=m, stats=stats)
                seconds = time.perf_counter() - start
                print(
                    f"{head} {stats['probes']:>13,} {stats['candidates']:>15,} {len(groups):>7} "
                    f"{seconds:>8.2f}  {peak_rss_mib():.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
