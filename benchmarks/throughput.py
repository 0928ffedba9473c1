"""Throughput of the LAION and MMC4 paths on local URLs served from loopback.

Generates N synthetic JPEGs (640x480 and other sizes, so the resize does real work), serves them
from the embedded loopback web server, and runs
- the LAION build on them with CLIP off and on (rows/s); with --img2dataset also img2dataset on
  the same URL list with the same resize and encode settings, one after the other;
- the MMC4 build on documents of 2-6 of those images each, with CLIP off (alignment from the
  documents' own similarity matrices) and on (documents/s and images/s).
Prints the figures and the machine it ran on.

    .venv/bin/python benchmarks/throughput.py --rows 2000 [--corpus laion|mmc4|both] [--img2dataset]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import synthetic
from pipeline.build import run_build
from pipeline.recipe import load_recipe
from pipeline.sample_web import SampleWeb

REPO = Path(__file__).resolve().parent.parent
SIZES = [(640, 480), (800, 600), (480, 640), (1024, 768), (512, 512)]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def make_web(root: Path, rows: int, seed: int = 7) -> list:
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        scene = synthetic.random_scene(rng)
        w, h = rng.choice(SIZES)
        rel = f"img/{i:07d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        synthetic.render(scene, w, h).save(root / rel, quality=90)
        out.append((rel, synthetic.caption(scene, rng)))
    return out


def write_metadata(path: Path, base_url: str, items: list) -> None:
    pq.write_table(pa.table({"URL": [f"{base_url}/{rel}" for rel, _ in items],
                             "TEXT": [cap for _, cap in items]}), path, row_group_size=500)


def write_documents(path: Path, base_url: str, items: list, seed: int = 11) -> int:
    """MMC4-shaped documents over the generated images: each image's caption is one sentence."""
    rng = random.Random(seed)
    docs, i = [], 0
    while i < len(items):
        group = items[i:i + rng.randint(2, 6)]
        i += len(group)
        text = [cap for _, cap in group] + ["Some other sentence of the page."] * rng.randint(1, 4)
        rng.shuffle(text)
        sim = [[round(0.3 if text[j] == cap else rng.uniform(0.0, 0.2), 4) for j in range(len(text))]
               for _, cap in group]
        info = [{"image_name": rel.rsplit("/", 1)[1], "raw_url": f"{base_url}/{rel}",
                 "matched_text_index": 0, "matched_sim": 0.0} for rel, _ in group]
        docs.append({"url": f"http://example.com/doc/{len(docs)}", "text_list": text,
                     "image_info": info, "similarity_matrix": sim})
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    return len(docs)


def run_mmc4(recipe, out: Path, clip: bool, beam_args) -> None:
    recipe = dataclasses.replace(recipe, clip=dataclasses.replace(recipe.clip, enabled=clip))
    start = time.monotonic()
    result = run_build(recipe, str(out), beam_args, overwrite=True)
    seconds = time.monotonic() - start
    docs, images = result.accounted_of("document"), result.accounted_of("image")
    print(f"  flamingo-corpus MMC4, CLIP {'on ' if clip else 'off'}: {docs / seconds:7.1f} documents/s, "
          f"{images / seconds:7.1f} images/s ({result.kept} of {docs} documents kept, {seconds:.1f} s)", flush=True)


def run_ours(recipe, out: Path, clip: bool, beam_args) -> float:
    recipe = dataclasses.replace(recipe, clip=dataclasses.replace(recipe.clip, enabled=clip))
    start = time.monotonic()
    result = run_build(recipe, str(out), beam_args, overwrite=True)
    seconds = time.monotonic() - start
    print(f"  flamingo-corpus, CLIP {'on ' if clip else 'off'}: {result.rows_in / seconds:8.1f} rows/s "
          f"({result.kept} kept of {result.rows_in}, {seconds:.1f} s)", flush=True)
    return result.rows_in / seconds


def run_img2dataset(metadata: Path, out: Path, recipe, processes: int) -> float:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    start = time.monotonic()
    download(url_list=str(metadata), input_format="parquet", url_col="URL", caption_col="TEXT",
             output_format="webdataset", output_folder=str(out), image_size=recipe.image.image_size,
             resize_mode=recipe.image.resize_mode, encode_quality=recipe.image.encode_quality,
             processes_count=processes, thread_count=recipe.download.threads,
             number_sample_per_shard=1000, timeout=recipe.download.timeout_s, retries=recipe.download.retries,
             enable_wandb=False, disallowed_header_directives=[])
    seconds = time.monotonic() - start
    rows = pq.ParquetFile(metadata).metadata.num_rows
    print(f"  img2dataset:                {rows / seconds:8.1f} rows/s ({seconds:.1f} s)", flush=True)
    return rows / seconds


def _local(recipe, input_path: Path, per_shard: int):
    """A sample recipe pointed at the generated input, without its own sample web server."""
    return dataclasses.replace(
        recipe, input=dataclasses.replace(recipe.input, path=str(input_path)),
        sample_web=dataclasses.replace(recipe.sample_web, enabled=False),
        shard=dataclasses.replace(recipe.shard, samples_per_shard=per_shard, chunk_rows=per_shard))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000, help="images generated and served")
    ap.add_argument("--corpus", choices=("laion", "mmc4", "both"), default="both")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DirectRunner worker processes")
    ap.add_argument("--img2dataset", action="store_true", help="also run img2dataset on the same list")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fc-bench-"))
    try:
        print(f"machine: {machine()}")
        print(f"generating {args.rows} images ...", flush=True)
        items = make_web(tmp / "web", args.rows)
        beam_args = [f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
        with SampleWeb(tmp / "web") as web:
            if args.corpus in ("laion", "both"):
                write_metadata(tmp / "metadata.parquet", web.url, items)
                recipe = _local(load_recipe(REPO / "manifests" / "sample-laion.yaml"), tmp / "metadata.parquet", 1000)
                print(f"LAION path on {args.rows} loopback URLs, {args.workers} worker processes, "
                      f"resize {recipe.image.resize_mode} {recipe.image.image_size}, jpg q{recipe.image.encode_quality}:")
                base = run_ours(recipe, tmp / "out-noclip", False, beam_args)
                run_ours(recipe, tmp / "out-clip", True, beam_args)
                if args.img2dataset:
                    theirs = run_img2dataset(tmp / "metadata.parquet", tmp / "out-img2dataset", recipe, args.workers)
                    print(f"  ratio (ours without CLIP / img2dataset): {base / theirs:.2f}x")
            if args.corpus in ("mmc4", "both"):
                n_docs = write_documents(tmp / "docs.jsonl", web.url, items)
                recipe = _local(load_recipe(REPO / "manifests" / "sample-mmc4.yaml"), tmp / "docs.jsonl", 500)
                print(f"MMC4 path on {n_docs} documents with {args.rows} loopback images, {args.workers} workers, "
                      f"resize {recipe.image.resize_mode} {recipe.image.image_size}:")
                run_mmc4(recipe, tmp / "out-mmc4-noclip", False, beam_args)
                run_mmc4(recipe, tmp / "out-mmc4-clip", True, beam_args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
