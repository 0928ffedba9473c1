"""Throughput of the LAION and MMC4 paths on local URLs served from loopback, against img2dataset.

Generates N synthetic JPEGs (512x512 to 1024x768, so the resize does real work) and serves them
from the embedded loopback web server, run as its own process (``python -m flamingo_corpus.sample.web``)
so that it never shares a Python interpreter, and its lock, with the tool being measured.  Then,
one after the other on the same machine and URL list:

- our LAION build with CLIP off, on each DirectRunner mode asked for (``--modes``): ``in_memory``
  (one process; download threads and the stages share it), ``multi_processing`` (``--workers``
  worker processes; the runner process between them does the shuffles) and ``multi_threading``;
- with ``--img2dataset``: img2dataset on the same list, with the same resize mode, size, JPEG
  quality, minimum side, maximum aspect ratio, timeout and retries, ``--workers`` processes of the
  recipe's ``download.threads`` threads each: the same cores and the same threads per process;
- with ``--lean``: our build again with its optional work switched off (language ID, URL and
  image dedup), labelled as such: img2dataset does neither, so this is the like-for-like line;
- with ``--repeat K``: ``K`` runs each of our fastest mode and img2dataset (and the lean build),
  alternating, and the median of the per-pair ratios: other work on a shared machine comes and
  goes, and alternating spreads it over both tools;
- with ``--marginal``: our fastest mode and img2dataset again on the first half of the rows; the
  marginal rate (N - N/2) / (t(N) - t(N/2)) leaves out the fixed costs of both (start-up, imports,
  worker processes), which weigh differently on the two tools;
- with ``--clip``: our build with the tiny CLIP on (CPU);
- the MMC4 build on documents of 2-6 of those images each (``--corpus mmc4|both``).

Every run is a fresh Python process (``--child``), so one run's imports, caches and threads do not
help or hinder the next.  The parent samples that process and its descendants (psutil): peak RSS
per process (the in-memory worker, the Beam runner and its workers, img2dataset's processes) and
CPU seconds; the child reports its own wall time around the tool call (imports excluded; Beam's
start-up, the shuffles and the index included), its CPU seconds from the tool's import to its end
(its own and its waited-for children's, which the Beam workers and img2dataset's processes are)
and ``ru_maxrss``.
The loopback server's CPU is counted apart: it serves the same requests for both tools.

Figures: rows/s; rows/s per core (the cores both tools were given: the machine's, both runs use
all of them); rows per CPU-second (what the work costs, less sensitive to other load on a shared
machine); and the ratios ours / img2dataset.  The load average is printed before and after.

    .venv/bin/python benchmarks/throughput.py --rows 10000 --img2dataset --lean --repeat 3 \
        [--marginal] [--modes in_memory,multi_processing] [--workers 2] [--corpus laion|mmc4|both] [--clip]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, load, machine, peak_rss_mib

SIZES = [(640, 480), (800, 600), (480, 640), (1024, 768), (512, 512)]
MODES = ("in_memory", "multi_processing", "multi_threading")


# -- inputs ---------------------------------------------------------------------------------------


def make_web(root: Path, rows: int, seed: int = 7) -> list:
    """``rows`` synthetic JPEGs under ``root/img`` and their captions; reused when ``root`` holds
    them already (``--workdir``), as generating them takes longer than a build."""
    from flamingo_corpus.sample import synthetic

    listing = root / "items.json"
    if listing.exists():
        saved = json.loads(listing.read_text())
        if saved["rows"] == rows and saved["seed"] == seed:
            return [tuple(i) for i in saved["items"]]
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        scene = synthetic.random_scene(rng)
        w, h = rng.choice(SIZES)
        rel = f"img/{i:07d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        synthetic.render(scene, w, h).save(root / rel, quality=90)
        out.append((rel, synthetic.caption(scene, rng)))
    listing.write_text(json.dumps({"rows": rows, "seed": seed, "items": out}))
    return out


def write_metadata(path: Path, base_url: str, items: list) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"URL": [f"{base_url}/{rel}" for rel, _ in items], "TEXT": [cap for _, cap in items]}),
        path,
        row_group_size=500,
    )


def write_documents(path: Path, base_url: str, items: list, seed: int = 11) -> int:
    """MMC4-shaped documents over the generated images: each image's caption is one sentence."""
    rng = random.Random(seed)
    docs, i = [], 0
    while i < len(items):
        group = items[i : i + rng.randint(2, 6)]
        i += len(group)
        text = [cap for _, cap in group] + ["Some other sentence of the page."] * rng.randint(1, 4)
        rng.shuffle(text)
        sim = [
            [round(0.3 if text[j] == cap else rng.uniform(0.0, 0.2), 4) for j in range(len(text))] for _, cap in group
        ]
        info = [
            {
                "image_name": rel.rsplit("/", 1)[1],
                "raw_url": f"{base_url}/{rel}",
                "matched_text_index": 0,
                "matched_sim": 0.0,
            }
            for rel, _ in group
        ]
        docs.append(
            {
                "url": f"http://example.com/doc/{len(docs)}",
                "text_list": text,
                "image_info": info,
                "similarity_matrix": sim,
            }
        )
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    return len(docs)


@contextlib.contextmanager
def serve(root: Path):
    """The loopback web server in its own process: yields (base URL, psutil.Process)."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "flamingo_corpus.sample.web", str(root), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        found = re.search(r"at (http://\S+)", line)
        if not found:
            raise RuntimeError(f"the loopback server did not start: {line!r}")
        yield found.group(1), psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- one measured run, in a child process ---------------------------------------------------------


def recipe_for(spec: dict):
    """The recipe a run uses: a sample recipe pointed at the generated input, without its own
    web server, with the run's switches applied."""
    from flamingo_corpus.recipe import load_recipe

    recipe = load_recipe(REPO / "manifests" / spec["recipe"])
    if spec.get("as_is"):  # the bundled sample build, its own input and web server included
        return recipe
    r = dataclasses.replace
    recipe = r(
        recipe,
        input=r(recipe.input, path=spec["input"]),
        sample_web=r(recipe.sample_web, enabled=False),
        shard=r(recipe.shard, samples_per_shard=spec["per_shard"]),
        clip=r(recipe.clip, enabled=spec.get("clip", False)),
    )
    if spec.get("lean"):  # the optional work img2dataset does not do: language ID, URL and image dedup
        recipe = r(
            recipe,
            filters=r(recipe.filters, dedup_urls=False, language=r(recipe.filters.language, enabled=False)),
            dedup=r(recipe.dedup, exact=False),
        )
    return recipe


def _run_ours(spec: dict) -> dict:
    from flamingo_corpus.build import run_build

    recipe = recipe_for(spec)
    if recipe.clip.enabled:  # the tiny CLIP is built once and cached: not part of a build's time
        from flamingo_corpus.clip.model import resolve_pretrained

        resolve_pretrained(recipe.clip)
    start = time.monotonic()
    result = run_build(recipe, spec["out"], spec["beam_args"], overwrite=True)
    seconds = time.monotonic() - start
    out = {"seconds": seconds, "kept": result.kept, "units": result.accounted}
    if recipe.input.corpus == "mmc4":
        out["images"] = result.accounted_of("image")
    return out


def _run_img2dataset(spec: dict) -> dict:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import pyarrow.parquet as pq
    from img2dataset import download

    recipe = recipe_for(spec)
    image, dl = recipe.image, recipe.download
    start = time.monotonic()
    download(
        url_list=spec["input"],
        input_format="parquet",
        url_col="URL",
        caption_col="TEXT",
        output_format="webdataset",
        output_folder=spec["out"],
        image_size=image.image_size,
        resize_mode=image.resize_mode,
        resize_only_if_bigger=image.resize_only_if_bigger,
        encode_format=image.encode_format,
        encode_quality=image.encode_quality,
        min_image_size=image.min_side,
        max_aspect_ratio=image.max_aspect_ratio or math.inf,
        processes_count=spec["processes"],
        thread_count=dl.threads,
        number_sample_per_shard=spec["per_shard"],
        timeout=dl.timeout_s,
        retries=dl.retries,
        enable_wandb=False,
        disallowed_header_directives=[],
    )
    seconds = time.monotonic() - start
    stats = [json.loads(p.read_text()) for p in Path(spec["out"]).glob("*_stats.json")]
    return {
        "seconds": seconds,
        "units": pq.ParquetFile(spec["input"]).metadata.num_rows,
        "kept": sum(s.get("successes", 0) for s in stats),
    }


def child(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    run = _run_img2dataset if spec["tool"] == "img2dataset" else _run_ours
    before = os.times()
    out = run(spec)
    after = os.times()
    out["cpu"] = sum(
        getattr(after, f) - getattr(before, f) for f in ("user", "system", "children_user", "children_system")
    )
    out["maxrss_self_mib"] = peak_rss_mib()
    out["maxrss_children_mib"] = peak_rss_mib(resource.RUSAGE_CHILDREN)
    Path(result_path).write_text(json.dumps(out))


def _role(proc, main_pid: int) -> str:
    if proc.pid == main_pid:
        return "main"
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone or not ours to read
        return "other"
    # a local build's workers run flamingo_corpus.runners.local_worker; other Beam workers, Beam's own module
    if "flamingo_corpus.runners.local_worker" in cmd or "sdk_worker_main" in cmd:
        return "beam worker"
    if "resource_tracker" in cmd:
        return "other"
    if "multiprocessing" in cmd:
        return "worker process"
    return "other"  # the shell Beam starts its workers through, and the like


class TreeMonitor:
    """Samples a process and its descendants every ``interval`` s: peak RSS and CPU per process."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak: dict = {}  # pid -> (role, peak RSS bytes, last cpu seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except Exception:  # noqa: BLE001 - the root has exited
            return
        for p in procs:
            try:
                rss = p.memory_info().rss
                t = p.cpu_times()
                role = self.peak.get(p.pid, (None,))[0] or _role(p, self.root.pid)
            except Exception:  # noqa: BLE001 - exited between listing and reading
                continue
            old = self.peak.get(p.pid, (role, 0, 0.0))
            self.peak[p.pid] = (role, max(old[1], rss), t.user + t.system)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def by_role(self) -> dict:
        """{role: [(peak RSS MiB, CPU s), ...]} over the processes seen, largest first."""
        out: dict = {}
        for role, rss, cpu in self.peak.values():
            if role != "other":
                out.setdefault(role, []).append((rss / 2**20, cpu))
        return {k: sorted(v, reverse=True) for k, v in out.items()}


def measure(spec: dict, work: Path, server=None) -> dict:
    """Run ``spec`` in a fresh child process; its result plus the monitor's per-process figures."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    server_cpu = sum(server.cpu_times()[:2]) if server is not None else 0.0
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(spec_path), str(result_path)],
        cwd=REPO,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    with TreeMonitor(proc.pid) as monitor:
        rc = proc.wait()
    if rc != 0 or not result_path.exists():
        raise RuntimeError(f"run {spec['tool']} failed with exit status {rc}")
    result = json.loads(result_path.read_text())
    result["processes"] = monitor.by_role()
    result["server_cpu"] = (sum(server.cpu_times()[:2]) - server_cpu) if server is not None else None
    result["load"] = (load_before, os.getloadavg()[0])
    shutil.rmtree(spec["out"], ignore_errors=True)
    return result


def describe(r: dict, unit: str = "rows") -> str:
    per_cpu = r["units"] / r["cpu"] if r["cpu"] else float("nan")
    mem = "; ".join(
        f"{role} " + ", ".join(f"{rss:.0f} MiB/{cpu:.1f} CPU-s" for rss, cpu in procs if cpu >= 0.05)
        for role, procs in sorted(r["processes"].items())
    )
    return (
        f"{r['units'] / r['seconds']:7.1f} {unit}/s, {r['units'] / r['seconds'] / os.cpu_count():6.1f} per core, "
        f"{per_cpu:6.1f} {unit}/CPU-s ({r['kept']} kept of {r['units']}, {r['seconds']:.1f} s, "
        f"{r['cpu']:.1f} CPU-s, server {r['server_cpu'] or 0:.1f} CPU-s, "
        f"load {r['load'][0]:.1f} -> {r['load'][1]:.1f}; "
        f"per process: peak RSS/CPU {mem})"
    )


def beam_args(mode: str, workers: int) -> list:
    if mode == "in_memory":
        return ["--direct_running_mode=in_memory"]
    return [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]


# -- main -----------------------------------------------------------------------------------------


def laion(args, tmp: Path, url: str, server, items: list) -> None:
    metadata = tmp / "metadata.parquet"
    write_metadata(metadata, url, items)
    base = {"recipe": "sample-laion.yaml", "input": str(metadata), "per_shard": 1000, "out": str(tmp / "out")}
    recipe = recipe_for(base)
    print(
        f"LAION path on {args.rows} loopback URLs: resize {recipe.image.resize_mode} {recipe.image.image_size}, "
        f"jpg q{recipe.image.encode_quality}, {recipe.download.threads} download threads per process, "
        f"{os.cpu_count()} cores; {load()}",
        flush=True,
    )
    ours = {}
    for mode in args.modes:
        label = mode if mode == "in_memory" else f"{mode}, {args.workers} workers"
        ours[mode] = measure({**base, "tool": "ours", "beam_args": beam_args(mode, args.workers)}, tmp / "run", server)
        print(f"  ours, CLIP off, {label + ':':32s} {describe(ours[mode])}", flush=True)
    best = max(ours, key=lambda m: ours[m]["units"] / ours[m]["seconds"])
    print(f"  fastest mode here: {best}", flush=True)
    per = math.ceil(args.rows / (2 * args.workers))  # two input shards per img2dataset process: no idle tail
    runs = {"ours": [ours[best]], "lean": [], "img2dataset": []}
    for i in range(args.repeat if args.img2dataset else 1):
        # Alternating the tools spreads the load of other work on a shared machine over both.
        if i > 0:
            runs["ours"].append(
                measure({**base, "tool": "ours", "beam_args": beam_args(best, args.workers)}, tmp / "run", server)
            )
            print(f"  ours, CLIP off, {best}, run {i + 1}: {describe(runs['ours'][-1])}", flush=True)
        if args.lean:
            runs["lean"].append(
                measure(
                    {**base, "tool": "ours", "lean": True, "beam_args": beam_args(best, args.workers)},
                    tmp / "run",
                    server,
                )
            )
            print(
                f"  ours LEAN (no language ID, no URL or image dedup), {best}, run {i + 1}: "
                f"{describe(runs['lean'][-1])}",
                flush=True,
            )
        if args.img2dataset:
            runs["img2dataset"].append(
                measure(
                    {**base, "tool": "img2dataset", "processes": args.workers, "per_shard": per}, tmp / "run", server
                )
            )
            print(
                f"  img2dataset, {args.workers} processes x {recipe.download.threads} threads, {per} rows per "
                f"shard, run {i + 1}: {describe(runs['img2dataset'][-1])}",
                flush=True,
            )
    if args.img2dataset:
        theirs = runs["img2dataset"]
        for name in ("ours", "lean"):
            if not runs[name]:
                continue
            speed = [rate(o) / rate(t) for o, t in zip(runs[name], theirs)]
            cost = [(o["units"] / o["cpu"]) / (t["units"] / t["cpu"]) for o, t in zip(runs[name], theirs)]
            label = f"ours ({best})" if name == "ours" else f"ours LEAN ({best})"
            print(
                f"  ratio {label} / img2dataset, median of {len(speed)} alternating runs: {median(speed):.2f}x "
                f"rows/s on the same {os.cpu_count()} cores (= per core; runs: "
                f"{', '.join(f'{x:.2f}' for x in speed)}), {median(cost):.2f}x rows per CPU-second "
                f"({', '.join(f'{x:.2f}' for x in cost)})",
                flush=True,
            )
        if args.marginal:
            marginal(args, tmp, url, server, items, base, best, runs["ours"][-1], theirs[-1])
    if args.clip:
        r = measure(
            {**base, "tool": "ours", "clip": True, "beam_args": beam_args(best, args.workers)}, tmp / "run", server
        )
        print(f"  ours, CLIP on (tiny CLIP, CPU), {best}: {describe(r)}", flush=True)
    print(f"  {load()}", flush=True)


def rate(r: dict) -> float:
    return r["units"] / r["seconds"]


def median(xs: list) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def marginal(args, tmp: Path, url: str, server, items: list, base: dict, best: str, ours: dict, theirs: dict) -> None:
    """Both tools again on the first half of the rows: (N - N/2) / (t(N) - t(N/2)) is the rate
    once started, without the fixed costs (process and Beam start-up, imports, worker spawn).
    A difference of two timings on a shared machine: an estimate, noisier than the totals."""
    half = items[: len(items) // 2]
    metadata = tmp / "metadata-half.parquet"
    write_metadata(metadata, url, half)
    spec = {**base, "input": str(metadata)}
    ours_half = measure({**spec, "tool": "ours", "beam_args": beam_args(best, args.workers)}, tmp / "run", server)
    print(f"  ours, CLIP off, {best}, first {len(half)} rows: {describe(ours_half)}", flush=True)
    per = math.ceil(len(half) / (2 * args.workers))
    theirs_half = measure(
        {**spec, "tool": "img2dataset", "processes": args.workers, "per_shard": per}, tmp / "run", server
    )
    print(f"  img2dataset, first {len(half)} rows: {describe(theirs_half)}", flush=True)
    rates = []
    for name, full, part in (("ours", ours, ours_half), ("img2dataset", theirs, theirs_half)):
        dt = full["seconds"] - part["seconds"]
        rates.append((full["units"] - part["units"]) / dt if dt > 0 else float("nan"))
        print(
            f"  marginal rate {name}: {rates[-1]:.1f} rows/s (rows {part['units']} -> {full['units']}, "
            f"{part['seconds']:.1f} s -> {full['seconds']:.1f} s)",
            flush=True,
        )
    print(f"  ratio of marginal rates ours / img2dataset: {rates[0] / rates[1]:.2f}x", flush=True)


def mmc4(args, tmp: Path, url: str, server, items: list) -> None:
    docs = tmp / "docs.jsonl"
    n_docs = write_documents(docs, url, items)
    base = {"recipe": "sample-mmc4.yaml", "input": str(docs), "per_shard": 500, "out": str(tmp / "out")}
    recipe = recipe_for(base)
    print(
        f"MMC4 path on {n_docs} documents with {args.rows} loopback images: resize {recipe.image.resize_mode} "
        f"{recipe.image.image_size}; {load()}",
        flush=True,
    )
    for mode in args.modes:
        for clip in (False, True) if args.clip else (False,):
            r = measure(
                {**base, "tool": "ours", "clip": clip, "beam_args": beam_args(mode, args.workers)}, tmp / "run", server
            )
            print(
                f"  ours, CLIP {'on ' if clip else 'off'}, {mode}: {describe(r, 'documents')}; "
                f"{r['images'] / r['seconds']:.1f} images/s",
                flush=True,
            )
    print(f"  {load()}", flush=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6000, help="images generated and served")
    ap.add_argument("--corpus", choices=("laion", "mmc4", "both"), default="both")
    ap.add_argument(
        "--modes",
        default="in_memory,multi_processing",
        help=f"DirectRunner modes to run, comma-separated, from {', '.join(MODES)}",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (multi_processing), threads (multi_threading), img2dataset processes",
    )
    ap.add_argument("--img2dataset", action="store_true", help="also run img2dataset on the same list")
    ap.add_argument("--lean", action="store_true", help="also run ours without language ID and dedup")
    ap.add_argument("--clip", action="store_true", help="also run with the tiny CLIP on (CPU)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --img2dataset: runs of ours (fastest mode) and img2dataset, alternating; medians",
    )
    ap.add_argument(
        "--marginal",
        action="store_true",
        help="with --img2dataset: also run both on half the rows, for the rate without fixed costs",
    )
    ap.add_argument("--workdir", help="keep the generated images here and reuse them (default: a temporary folder)")
    args = ap.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}")

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fc-bench-"))
    try:
        print(f"machine: {machine(torch=True)}")
        print(f"{load()}; generating {args.rows} images ...", flush=True)
        items = make_web(tmp / "web", args.rows)
        with serve(tmp / "web") as (url, server):
            if args.corpus in ("laion", "both"):
                laion(args, tmp, url, server, items)
            if args.corpus in ("mmc4", "both"):
                mmc4(args, tmp, url, server, items)
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
