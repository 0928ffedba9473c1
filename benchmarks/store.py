"""The image store's costs and gains, on loopback URLs (prints figures; nothing here is a test).

- ``throughput``: a LAION build (the sample recipe, CLIP off) with the store against the build
  before it (``--baseline REV``: that commit, checked out in a git worktree and imported from
  there), on the same URL list and machine, alternating runs; rows/s and the median ratio; bytes
  written to the store per row.
- ``rebuild``: the same build again from a full store (``--store``, nothing downloaded): its
  time against the first build's, and whether the loopback server saw a request.
- ``memory``: peak RSS of every process of builds of ``--rows`` and ``--rows-big`` rows on
  ``--workers`` worker processes (the largest process of each, and the ratio), and the bytes
  that went through the runner's shuffles per row (every GroupByKey's encoded input, counted in
  the runner process where the local runner buffers it; side inputs apart).

Every run is a fresh child process; the parent samples it and its workers with
``throughput.TreeMonitor``.  Pictures are ``tests/loopback_build.smooth_photo`` JPEGs
(320x240), one per row, generated once into ``--workdir``, or with ``--pictures scenes``
throughput.py's synthetic scenes (512x512 to 1024x768), whose resize does the work real images need.

    .venv/bin/python benchmarks/store.py --what throughput,rebuild --rows 4000 --repeat 3 --baseline HEAD~1
    .venv/bin/python benchmarks/store.py --what memory --rows 8000 --rows-big 64000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from _common import REPO, load, machine
from throughput import TreeMonitor, beam_args, median, serve, write_metadata

sys.path.insert(0, str(REPO))  # tests/loopback_build.py: the pictures


def make_pictures(root: Path, rows: int) -> list:
    """``rows`` distinct JPEGs under ``root/img`` (reused when there), as (path, caption) items."""
    from tests.loopback_build import jpeg_bytes, smooth_photo

    (root / "img").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(rows):
        rel = f"img/{i:07d}.jpg"
        if not (root / rel).exists():
            (root / rel).write_bytes(jpeg_bytes(smooth_photo(i)))
        items.append((rel, f"a smooth picture number {i} of the store benchmark"))
    return items


def baseline_path(rev: str, tmp: Path) -> Path:
    """A folder to put on PYTHONPATH that imports ``flamingo_corpus`` as it was at ``rev``."""
    tree = tmp / f"baseline-{rev.replace('/', '_')}"
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO, check=True, capture_output=True
        )
    pkg = tmp / "baseline-pkg" / "flamingo_corpus"
    if not pkg.exists():
        pkg.mkdir(parents=True)
        for entry in (tree / "pipeline").iterdir():
            (pkg / entry.name).symlink_to(entry)
        (pkg / "filters").symlink_to(tree / "filters")
    return pkg.parent


# -- one run, in a child process -------------------------------------------------------------------


def child(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import dataclasses

    from apache_beam.runners.portability.fn_api_runner import execution

    counted = {"shuffle": 0, "side": 0}

    def counting(cls, what):
        original = cls.append

        def append(self, data):
            counted[what] += len(data)
            return original(self, data)

        cls.append = append

    counting(execution.GroupingBuffer, "shuffle")
    counting(execution.WindowGroupingBuffer, "side")
    from flamingo_corpus.runners.grouping import CompactGroupingBuffer  # what local builds group with

    counting(CompactGroupingBuffer, "shuffle")

    from flamingo_corpus.build import run_build
    from flamingo_corpus.recipe import load_recipe

    r = dataclasses.replace
    recipe = load_recipe(REPO / "manifests" / "sample-laion.yaml")
    recipe = r(
        recipe,
        input=r(recipe.input, path=spec["input"]),
        sample_web=r(recipe.sample_web, enabled=False),
        shard=r(recipe.shard, samples_per_shard=1000),
        clip=r(recipe.clip, enabled=False),
    )
    if hasattr(recipe.store, "host_spread"):
        # One loopback host: no per-host limits, and the host spread over every fetch lane, as for
        # any one-host input (docs/politeness.md); otherwise its rows would be one lane, one worker.
        per_host = r(recipe.download.per_host, max_concurrent=0, max_requests_per_s=0)
        recipe = r(
            recipe,
            download=r(recipe.download, per_host=per_host),
            store=r(recipe.store, host_spread=recipe.store.lanes),
        )
    kwargs = {"store": spec["store"]} if spec.get("store") else {}
    start = time.monotonic()
    result = run_build(recipe, spec["out"], spec["beam_args"], overwrite=True, **kwargs)
    seconds = time.monotonic() - start
    out = {"seconds": seconds, "rows": result.accounted, "kept": result.kept, **counted}
    out["store"] = getattr(result, "store", None)
    Path(result_path).write_text(json.dumps(out))


def run(spec: dict, work: Path, pythonpath: Optional[Path] = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path), str(result_path)], cwd=REPO, env=env)
    with TreeMonitor(proc.pid) as monitor:
        rc = proc.wait()
    if rc != 0 or not result_path.exists():
        raise RuntimeError(f"run failed with exit status {rc}")
    result = json.loads(result_path.read_text())
    result["processes"] = monitor.by_role()
    result["peak_mib"] = max((rss for procs in result["processes"].values() for rss, _ in procs), default=0.0)
    shutil.rmtree(spec["out"], ignore_errors=True)
    return result


def line(label: str, r: dict) -> str:
    procs = "; ".join(
        f"{role} " + ", ".join(f"{rss:.0f} MiB" for rss, cpu in ps if cpu >= 0.05)
        for role, ps in sorted(r["processes"].items())
    )
    return (
        f"  {label:34s} {r['rows'] / r['seconds']:7.1f} rows/s "
        f"({r['rows']} rows, {r['kept']} kept, {r['seconds']:.1f} s); "
        f"shuffles {r['shuffle'] / r['rows']:,.0f} B/row, side inputs {r['side'] / r['rows']:,.0f} B/row; "
        f"peak RSS {procs}"
    )


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", default="throughput,rebuild,memory")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--rows-big", type=int, default=32000, help="memory: the bigger build")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--baseline", help="the commit to compare with (the build before the store): throughput, and memory at --rows"
    )
    ap.add_argument(
        "--pictures",
        choices=("smooth", "scenes", "photos"),
        default="smooth",
        help="smooth: 320x240 smooth photos, quick to make (64,000 for the memory runs); scenes: "
        "throughput.py's synthetic scenes of 512x512 to 1024x768, as the other benchmarks serve; photos: "
        "crops of real photographs (benchmarks/photos.py), as a crawl downloads them",
    )
    ap.add_argument(
        "--latency", type=float, default=0.0, help="seconds the server waits before each answer (its /slow/ path)"
    )
    ap.add_argument("--workdir", help="keep the pictures here and reuse them")
    args = ap.parse_args()
    what = set(args.what.split(","))
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fc-store-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    biggest = max(args.rows, args.rows_big if "memory" in what else 0)
    print(f"machine: {machine()}")
    print(f"{load()}; generating {biggest} pictures ...", flush=True)
    web = tmp / {"smooth": "web", "scenes": "web-scenes", "photos": "web-photos"}[args.pictures]
    if args.pictures == "smooth":
        items = make_pictures(web, biggest)
    elif args.pictures == "photos":
        from photos import web_photos

        items = [(path, f"a photograph, number {i}") for i, path in enumerate(web_photos(web, biggest))]
    else:  # throughput.py's synthetic scenes, 512x512 to 1024x768: the resize does real work
        from throughput import make_web

        items = make_web(web, biggest)
    if args.latency:  # every request answered after --latency seconds (the web's /slow/ behaviour)
        items = [(f"slow/{args.latency:g}/{path}", caption) for path, caption in items]
    beam = beam_args("multi_processing", args.workers)
    with serve(web) as (url, _):
        meta = tmp / f"rows-{args.rows}.parquet"
        write_metadata(meta, url, items[: args.rows])
        base = {"input": str(meta), "beam_args": beam, "out": str(tmp / "out"), "workers": args.workers}
        if "throughput" in what:
            old = baseline_path(args.baseline, tmp) if args.baseline else None
            print(f"throughput, {args.rows} rows, multi_processing x {args.workers}, CLIP off; {load()}", flush=True)
            ours, theirs = [], []
            for i in range(args.repeat):
                if old:
                    theirs.append(run(base, tmp / "run", old))
                    print(line(f"before the store ({args.baseline}), run {i + 1}", theirs[-1]), flush=True)
                store = tmp / "store-throughput"
                shutil.rmtree(store, ignore_errors=True)
                ours.append(run({**base, "store": str(store)}, tmp / "run"))
                written = ours[-1]["store"]["bytes_written"]
                print(
                    line(f"with the store, run {i + 1}", ours[-1]) + f"; store {written / args.rows:,.0f} B/row",
                    flush=True,
                )
            if theirs:
                ratios = [(o["rows"] / o["seconds"]) / (t["rows"] / t["seconds"]) for o, t in zip(ours, theirs)]
                print(
                    f"  with / before the store, median of {len(ratios)} alternating pairs: "
                    f"{median(ratios):.3f}x rows/s "
                    f"({', '.join(f'{x:.3f}' for x in ratios)})",
                    flush=True,
                )
        if "rebuild" in what:  # pairs: a first build into an empty store, then a rebuild from it
            print(f"rebuild, {args.rows} rows, latency {args.latency:g} s; {load()}", flush=True)
            firsts, agains = [], []
            for k in range(args.repeat):
                store = tmp / "store-rebuild"
                shutil.rmtree(store, ignore_errors=True)
                firsts.append(run({**base, "store": str(store)}, tmp / "run"))
                agains.append(run({**base, "store": str(store)}, tmp / "run"))
                for label, r in (("first build, empty store", firsts[-1]), ("rebuild from the full store", agains[-1])):
                    print(line(f"{label}, run {k + 1}", r) + f"; {r['store']['rows_fetched']} rows fetched", flush=True)
            ratios = [f["seconds"] / a["seconds"] for f, a in zip(firsts, agains)]
            first_s, again_s = median([r["seconds"] for r in firsts]), median([r["seconds"] for r in agains])
            print(
                f"  rebuild speed-up, median of {len(ratios)} pairs: {median(ratios):.1f}x "
                f"({', '.join(f'{x:.1f}' for x in ratios)}; "
                f"first median {first_s:.1f} s, rebuild median {again_s:.1f} s)",
                flush=True,
            )
        if "memory" in what:
            if args.baseline:  # the build before the store, at the smaller size, for comparison
                meta_n = tmp / f"rows-{args.rows}.parquet"
                write_metadata(meta_n, url, items[: args.rows])
                r = run({**base, "input": str(meta_n)}, tmp / "run", baseline_path(args.baseline, tmp))
                print(line(f"memory before the store ({args.baseline}), {args.rows} rows", r), flush=True)
            peaks = {}
            for n in (args.rows, args.rows_big):
                meta_n = tmp / f"rows-{n}.parquet"
                write_metadata(meta_n, url, items[:n])
                store = tmp / "store-memory"
                shutil.rmtree(store, ignore_errors=True)
                r = run({**base, "input": str(meta_n), "store": str(store)}, tmp / "run")
                peaks[n] = r["peak_mib"]
                print(line(f"memory, {n} rows", r) + f"; largest process {r['peak_mib']:.0f} MiB", flush=True)
            small, big = peaks[args.rows], peaks[args.rows_big]
            print(
                f"  peak RSS of the largest process, {args.rows_big} / {args.rows} rows: {big / small:.2f}x", flush=True
            )
    print(load())


if __name__ == "__main__":
    main()
