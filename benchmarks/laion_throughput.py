"""Throughput of the LAION path on a local URL list served from loopback.

Generates N synthetic JPEGs (640x480 and other sizes, so the resize does real work), serves them
from the embedded loopback web server, and runs the LAION build on them with CLIP off and on; with
--img2dataset it also runs img2dataset on the same URL list with the same resize and encode
settings, one after the other on the same machine.  Prints rows/s and the machine it ran on.

    .venv/bin/python benchmarks/laion_throughput.py --rows 2000
"""
from __future__ import annotations

import argparse
import dataclasses
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DirectRunner worker processes")
    ap.add_argument("--img2dataset", action="store_true", help="also run img2dataset on the same list")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fc-bench-"))
    try:
        print(f"machine: {machine()}")
        print(f"generating {args.rows} images ...", flush=True)
        items = make_web(tmp / "web", args.rows)
        recipe = load_recipe(REPO / "manifests" / "sample-laion.yaml")
        with SampleWeb(tmp / "web") as web:
            write_metadata(tmp / "metadata.parquet", web.url, items)
            recipe = dataclasses.replace(
                recipe, input=dataclasses.replace(recipe.input, path=str(tmp / "metadata.parquet")),
                sample_web=dataclasses.replace(recipe.sample_web, enabled=False),
                shard=dataclasses.replace(recipe.shard, samples_per_shard=1000, chunk_rows=1000))
            beam_args = [f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
            print(f"LAION path on {args.rows} loopback URLs, {args.workers} worker processes, "
                  f"resize {recipe.image.resize_mode} {recipe.image.image_size}, jpg q{recipe.image.encode_quality}:")
            base = run_ours(recipe, tmp / "out-noclip", False, beam_args)
            run_ours(recipe, tmp / "out-clip", True, beam_args)
            if args.img2dataset:
                theirs = run_img2dataset(tmp / "metadata.parquet", tmp / "out-img2dataset", recipe, args.workers)
                print(f"  ratio (ours without CLIP / img2dataset): {base / theirs:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
