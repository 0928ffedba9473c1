"""Shuffle bytes, side inputs and the largest key of a LAION-2B build, on paper.

Encodes the records each GroupByKey of the shipped LAION recipe (manifests/laion2b-en.yaml:
URL dedup, the image store's block grouping, exact dedup and the shard numbering) carries, with
Beam's own coder for them (FastPrimitivesCoder; a Sample pickles as its field values), from the
rows of the bundled LAION sample with LAION-2B-en's ids (its parquet file names) and ViT-B/32
embeddings, and scales them to ``--rows``.  Then the near-duplicate stage (dedup.near, off in
the shipped recipe): how many edges its ``ToList`` gathers on one worker at ``--dup-share``
duplicates, and how much memory that and its representatives side input take.

The pass fractions are assumptions, printed with the figures: change them with the flags.

    python benchmarks/shuffle_scale.py [--rows 2300000000] [--dup-share 0.3]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from apache_beam.coders import coders

from flamingo_corpus.records import Sample

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "sample" / "laion" / "metadata.parquet"
CODER = coders.FastPrimitivesCoder()
ROWS_PER_FILE = 18_000_000  # LAION-2B-en: 128 parquet files of ~18 M rows
ROWS_PER_STORE_BLOCK = 10_000  # the image store's block (store/blocks.py) and the shipped samples_per_shard


def _file_name(i: int) -> str:
    return f"part-{i:05d}-{uuid.UUID(int=i + 1)}-c000.snappy.parquet"  # the release's naming


def _encoded(value) -> int:
    return len(CODER.encode(value))


def measure(n: int = 300) -> dict:
    """Mean encoded bytes of one record of each shuffle, over the sample's rows."""
    table = pq.read_table(SAMPLE).to_pylist()[:n]
    rng = np.random.default_rng(0)
    sizes: dict = {k: [] for k in ("url_dedup", "store_block", "exact_key", "shard_block", "near_hash", "edge")}
    for i, r in enumerate(table):
        source, row = i % 128, 9_000_000 + i
        sid = f"{_file_name(source)}:{row}"
        meta = {k: r[k] for k in ("WIDTH", "HEIGHT", "similarity", "punsafe", "pwatermark")}
        s = Sample(sid, source, row, r["URL"], r["TEXT"], meta, language="en", language_score=0.93)
        sizes["url_dedup"].append(_encoded((r["URL"].lower(), s)))
        sizes["store_block"].append(_encoded(((source, row // ROWS_PER_STORE_BLOCK), s)))
        emb = rng.standard_normal(512).astype(np.float32)
        scored = s.replace(
            original_width=r["WIDTH"],
            original_height=r["HEIGHT"],
            width=256,
            height=256,
            image_format="jpg",
            sha256=f"{rng.integers(1 << 63):064x}",
            phash=f"{rng.integers(1 << 63):016x}",
            image_embedding=emb / np.linalg.norm(emb),
            text_embedding=emb[::-1] / np.linalg.norm(emb),
            similarity=0.31,
            attempts=1,
            content_type="image/jpeg",
            http_status=200,
            image_len=24_000,
            stored_images=((f"{source:06d}-{row // ROWS_PER_STORE_BLOCK:012d}", sid, row % ROWS_PER_STORE_BLOCK),),
        )
        block = f"{source:06d}-{row // ROWS_PER_STORE_BLOCK:012d}"
        order = (-0.31, source, row)
        sizes["exact_key"].append(_encoded((scored.sha256, (order, sid, block))))
        sizes["shard_block"].append(_encoded((block, scored)))
        sizes["near_hash"].append(_encoded((int(scored.phash, 16), (sid, order))))
        sizes["edge"].append(_encoded(((sid, order), (f"{_file_name(source + 1)}:{row + 7}", order))))
    return {k: float(np.mean(v)) for k, v in sizes.items()}


def python_bytes_per_edge() -> int:
    """Memory of one edge in the ToList's Python list (tuples, two ids, two order keys)."""
    import tracemalloc

    tracemalloc.start()
    edges = [
        (
            (f"{_file_name(i % 128)}:{i}", (-0.3 - i * 1e-9, i % 128, i)),
            (f"{_file_name(i % 127)}:{i + 1}", (-0.29, 3, i)),
        )
        for i in range(20_000)
    ]
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return used // len(edges)


def _tb(b: float) -> str:
    return f"{b / 1e12:,.2f} TB" if b >= 1e12 else f"{b / 1e9:,.1f} GB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=2.3e9)
    ap.add_argument("--metadata-pass", type=float, default=0.9, help="share of rows the metadata filters keep")
    ap.add_argument("--download-pass", type=float, default=0.6, help="share downloaded and decoded")
    ap.add_argument("--clip-pass", type=float, default=0.9, help="share over the CLIP threshold")
    ap.add_argument("--dup-share", type=float, default=0.3, help="share of images that duplicate another")
    ap.add_argument("--exact-share", type=float, default=0.1, help="share of images that are exact copies")
    ap.add_argument("--worker-gb", type=float, default=234, help="memory of the biggest worker (a3-highgpu-1g)")
    args = ap.parse_args(argv)
    size = measure()
    n = args.rows
    after_meta = n * args.metadata_pass
    images = after_meta * args.download_pass
    kept = images * args.clip_pass
    blocks = n / ROWS_PER_STORE_BLOCK
    stages = [
        ("Keep one per URL (GroupByKey url)", after_meta, size["url_dedup"]),
        ("Group store block (GroupByKey block)", after_meta, size["store_block"]),
        ("Group dedup key (GroupByKey sha256)", kept, size["exact_key"]),
        ("Group block (GroupByKey block: samples)", kept, size["shard_block"]),
    ]
    print(f"rows {n:,.0f}; metadata pass {args.metadata_pass}, download pass {args.download_pass}, ", end="")
    print(f"clip pass {args.clip_pass} (assumed); record sizes from {SAMPLE.name}, Beam's FastPrimitivesCoder")
    print(f"\n{'shuffle':<44}{'records':>10}{'bytes/rec':>11}{'total':>12}")
    total = 0.0
    for name, count, b in stages:
        total += count * b
        print(f"{name:<44}{count / 1e9:>9.2f}G{b:>11,.0f}{_tb(count * b):>12}")
    print(f"{'shipped recipe, all shuffles':<44}{'':>21}{_tb(total):>12}")
    largest_block = ROWS_PER_STORE_BLOCK * size["shard_block"]
    print(f"\nlargest key: one block, {ROWS_PER_STORE_BLOCK:,} rows, {largest_block / 1e6:,.0f} MB")
    print(f"side input 'shard layout': {blocks:,.0f} blocks, ~{blocks * 60 / 1e6:,.0f} MB")
    dups = kept * args.exact_share
    print(f"side input 'exact duplicates' (AsMultiMap): {dups / 1e9:.2f} G entries, ~{_tb(dups * size['exact_key'])}")

    per_edge_py = python_bytes_per_edge()
    near_images = images
    edges_min = near_images * args.dup_share  # a spanning forest: one edge per duplicate
    print(f"\nnear dedup (dedup.near: true) at {args.dup_share:.0%} duplicates of {near_images / 1e9:.2f} G images:")
    hashes = near_images * size["near_hash"]
    print(f"  'Group identical hashes': {near_images / 1e9:.2f} G x {size['near_hash']:.0f} B = {_tb(hashes)}")
    for label, edges in (("one edge per duplicate", edges_min), ("x3: near groups with every pair", 3 * edges_min)):
        print(
            f"  edges ({label}): {edges / 1e9:.2f} G; ToList on ONE worker: {_tb(edges * size['edge'])} encoded, "
            f"{_tb(edges * per_edge_py)} as Python objects ({per_edge_py} B/edge)"
        )
    ids = min(near_images, 2 * edges_min)
    rep_bytes = ids * 230  # a dict entry: two ~75-char str ids and the slot
    print(f"  representatives side input: {ids / 1e9:.2f} G ids, ~{_tb(rep_bytes)} in every worker")
    fits = edges_min * per_edge_py + rep_bytes < args.worker_gb * 1e9
    print(f"  fits a {args.worker_gb:.0f} GB worker: {'yes' if fits else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
