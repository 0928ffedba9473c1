"""Time ``near_duplicate_groups`` (banding + vectorised confirm) on random 64-bit pHashes.

Each size has 1% planted near copies (0..k random bit flips of an existing hash).  A run whose
banding would compare more than ``--max-pairs`` candidate pairs is skipped and the count printed,
so the whole benchmark stays within a few minutes on 2 cores.

    python benchmarks/near_dup_lsh.py [--sizes 10000 100000 1000000] [--ks 5 10]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from pipeline.near_dup import banded_candidate_pairs, near_duplicate_groups


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def planted_hashes(n: int, k: int, seed: int = 0) -> dict:
    """``n`` hashes as hex: 99% uniform random, 1% copies of those with 0..k bits flipped."""
    rng = np.random.default_rng(seed)
    copies = n // 100
    values = rng.integers(0, 2 ** 64, size=n - copies, dtype=np.uint64)
    planted = values[rng.integers(0, len(values), size=copies)].copy()
    for row, flips in enumerate(rng.integers(0, k + 1, size=copies)):
        for bit in rng.choice(64, size=flips, replace=False):
            planted[row] ^= np.uint64(1) << np.uint64(bit)
    return {i: f"{int(v):016x}" for i, v in enumerate(np.concatenate([values, planted]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--max-pairs", type=float, default=3e9, help="skip runs comparing more candidate pairs")
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, numpy {np.__version__}")
    print(f"{'n':>9} {'k':>3} {'candidate pairs':>16} {'groups':>8} {'seconds':>8}")
    for k in args.ks:
        for n in args.sizes:
            hashes = planted_hashes(n, k)
            pairs = banded_candidate_pairs(np.unique(np.array([int(h, 16) for h in hashes.values()],
                                                              dtype=np.uint64)), k)
            if pairs > args.max_pairs:
                print(f"{n:>9} {k:>3} {pairs:>16,} {'skipped (over --max-pairs)':>17}", flush=True)
                continue
            start = time.perf_counter()
            groups = near_duplicate_groups(hashes, k)
            seconds = time.perf_counter() - start
            print(f"{n:>9} {k:>3} {pairs:>16,} {len(groups):>8} {seconds:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
