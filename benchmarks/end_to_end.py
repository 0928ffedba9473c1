"""End to end: rows/s and documents/s of whole builds, with CLIP, and peak memory per worker.

Two kinds of build, each in a fresh Python process, on each DirectRunner mode asked for:

- the bundled sample builds exactly as ``make sample`` runs them (``manifests/sample-laion.yaml``,
  ``manifests/sample-mmc4.yaml``: their own inputs, their own loopback web on port 8741 with its
  broken and slow URLs, the tiny CLIP on the CPU).  They are small (about 300 rows and 30
  documents) and wait on URLs that are slow on purpose, so their rate says more about start-up
  and timeouts than about throughput;
- the same two recipes on ``--rows`` generated images (``benchmarks/throughput.py``'s loopback
  web, in its own process): the LAION recipe over one row per image, the MMC4 recipe over
  documents of 2-6 of those images each, CLIP on.

Per run: units/s (rows, documents; images/s for MMC4), kept, wall seconds around ``run_build``
(Beam's start-up, every stage, the index and the manifest), CPU seconds of the run's processes,
and peak RSS per process, sampled with psutil every 0.2 s: the worker (``in_memory``: the one
process), or the Beam runner ("main") and each worker process (``multi_processing``).  Also the
largest ``ru_maxrss`` of the run (exact, not sampled).  Load average before and after.

    .venv/bin/python benchmarks/end_to_end.py [--rows 4000] [--modes in_memory,multi_processing]
        [--skip-samples] [--skip-generated]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import throughput as T  # the loopback web and the measured child run (T.measure runs throughput.py --child)
from _common import load, machine


def show(label: str, r: dict, unit: str) -> None:
    line = f"  {label:44s} {T.describe(r, unit)}"
    if "images" in r:
        line += f"; {r['images'] / r['seconds']:.1f} images/s"
    print(line + f"; largest ru_maxrss {max(r['maxrss_self_mib'], r['maxrss_children_mib']):.0f} MiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000, help="generated images for the larger builds")
    ap.add_argument("--modes", default="in_memory,multi_processing", help="DirectRunner modes, comma-separated")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="multi_processing worker processes")
    ap.add_argument("--skip-samples", action="store_true", help="leave out the bundled sample builds")
    ap.add_argument("--skip-generated", action="store_true", help="leave out the builds on generated images")
    ap.add_argument("--workdir", help="keep the generated images here and reuse them")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - set(T.MODES):
        ap.error(f"unknown modes {sorted(set(modes) - set(T.MODES))}")

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fc-e2e-"))
    try:
        print(f"machine: {machine(torch=True)}")
        print(load(), flush=True)
        if not args.skip_samples:
            print("Bundled sample builds, as `make sample` runs them (CLIP on, tiny CLIP on the CPU):", flush=True)
            for mode in modes:
                for recipe, unit in (("sample-laion.yaml", "rows"), ("sample-mmc4.yaml", "documents")):
                    r = T.measure(
                        {
                            "tool": "ours",
                            "recipe": recipe,
                            "as_is": True,
                            "out": str(tmp / "out"),
                            "beam_args": T.beam_args(mode, args.workers),
                        },
                        tmp / "run",
                    )
                    show(f"{recipe}, {mode}:", r, unit)
            print(f"  {load()}", flush=True)
        if not args.skip_generated:
            print(f"generating {args.rows} images ...", flush=True)
            items = T.make_web(tmp / "web", args.rows)
            with T.serve(tmp / "web") as (url, server):
                T.write_metadata(tmp / "metadata.parquet", url, items)
                n_docs = T.write_documents(tmp / "docs.jsonl", url, items)
                print(
                    f"Sample recipes on {args.rows} generated loopback images ({n_docs} MMC4 documents), CLIP on:",
                    flush=True,
                )
                for mode in modes:
                    for recipe, data, unit, per in (
                        ("sample-laion.yaml", "metadata.parquet", "rows", 1000),
                        ("sample-mmc4.yaml", "docs.jsonl", "documents", 500),
                    ):
                        r = T.measure(
                            {
                                "tool": "ours",
                                "recipe": recipe,
                                "input": str(tmp / data),
                                "clip": True,
                                "per_shard": per,
                                "out": str(tmp / "out"),
                                "beam_args": T.beam_args(mode, args.workers),
                            },
                            tmp / "run",
                            server,
                        )
                        show(f"{recipe}, {mode}:", r, unit)
            print(f"  {load()}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
