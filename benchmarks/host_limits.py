"""What the per-host limits cost: a LAION build over a long-tail web of ~1,000 loopback hosts with
30 ms of latency per request, limits on against limits off (runs alternating), and img2dataset on
the same list.

The web (sample/hosts_web.py, in a process of its own) gives each host an address in 127/8; the
URLs name the addresses (IP literals), so img2dataset, which resolves through the system, reaches
the same hosts, and the per-host gate keys on the same thing.  Rows per host follow a long tail:
a few hosts with ``--big`` rows each, the others on a power law down to 1 to 5 rows (``--tail``;
``--tail 0``: all of them 1 to 5); the rows are shuffled (as LAION's
are).  Each run is a child process; its wall time, its CPU time (the Beam workers' or
img2dataset's processes included) and what the server counted (the peak of requests in flight at
one host, the most requests one host got in one second) are printed.

Limits on: the recipe's defaults (16 at once, 100 per second per host), the rows routed to fetch
lanes by host (download/lanes.py: one worker fetches a host, with its whole limits).  Limits off:
``max_concurrent: 0, max_requests_per_s: 0``.

    .venv/bin/python benchmarks/host_limits.py [--hosts 1000] [--big 2000,1500,1000] [--tail 1.1] [--repeat 2]
        [--workers 2] [--latency 0.03] [--img2dataset] [--rate 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, load, machine


def _images(n: int = 16) -> list:
    import io

    import numpy as np
    from PIL import Image

    out = []
    for seed in range(n):
        small = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _row_counts(hosts: int, big: list, tail: float, seed: int = 5) -> list:
    """Rows per host: the ``big`` hosts, then the others.  ``tail`` 0: each of the others 1 to 5
    rows (a web of a few giants and dust).  ``tail`` s > 0: the host of rank r (from 1, the
    busiest) gets ``big[0] / r**s`` rows, and 1 to 5 where that is fewer: a power law, as the
    rows per host of web crawls follow, with hosts of hundreds and tens between the giants and the
    dust (the busiest host's share of the rows is printed)."""
    rng = random.Random(seed)
    counts = list(big)
    for rank in range(len(big) + 1, hosts + 1):
        dust = rng.choice((1, 1, 1, 2, 2, 3, 4, 5))
        counts.append(max(dust, round(big[0] / rank**tail)) if tail else dust)
    return counts


def _child(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    before = os.times()
    start = time.monotonic()
    if spec["tool"] == "img2dataset":
        import throughput

        out = throughput._run_img2dataset({**spec, "recipe": "sample-laion.yaml", "lean": True})
    else:
        from flamingo_corpus.build import run_build
        from flamingo_corpus.recipe import load_recipe
        from flamingo_corpus.store.fetch import FetchBlocks

        r = dataclasses.replace
        recipe = load_recipe(REPO / "manifests" / "sample-laion.yaml")
        off = {"max_concurrent": 0, "max_requests_per_s": 0}
        limits = off if spec["limits"] is None else spec["limits"]  # on: the recipe's, or --rate
        recipe = r(
            recipe,
            input=r(recipe.input, path=spec["input"]),
            sample_web=r(recipe.sample_web, enabled=False),
            shard=r(recipe.shard, samples_per_shard=spec["per_shard"]),
            clip=r(recipe.clip, enabled=False),
            filters=r(recipe.filters, dedup_urls=False, language=r(recipe.filters.language, enabled=False)),
            dedup=r(recipe.dedup, exact=False),
            download=r(
                recipe.download,
                per_host=r(recipe.download.per_host, **limits),
                threads=spec.get("threads") or recipe.download.threads,
            ),
        )
        # the build's own shares (the sub-lanes of a host a worker holds, download/lanes.py), or a
        # share a run asks for ("share": 0.5: every worker holds half of every host's limits)
        FetchBlocks.default_share = spec.get("share")
        beam = ["--direct_running_mode=multi_processing", f"--direct_num_workers={spec['workers']}"]
        result = run_build(recipe, spec["out"], beam, overwrite=True)
        out = {"units": result.accounted, "kept": result.kept}
    out["seconds"] = time.monotonic() - start
    after = os.times()
    out["cpu"] = sum(
        getattr(after, f) - getattr(before, f) for f in ("user", "system", "children_user", "children_system")
    )
    Path(result_path).write_text(json.dumps(out))


def _measure(spec: dict, work: Path, web) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    web.reset()
    rc = subprocess.call(
        [sys.executable, __file__, "--child", str(spec_path), str(result_path)],
        cwd=REPO,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if rc != 0 or not result_path.exists():
        raise RuntimeError(f"run {spec['tool']} failed with exit status {rc}")
    result = json.loads(result_path.read_text())
    stats = web.snapshot()
    result["peak_concurrent"] = max(s.peak_concurrent for s in stats.values())
    result["peak_1s"] = max(s.max_in_window(1.0) for s in stats.values())
    result["requests"] = sum(s.requests for s in stats.values())
    # when the busiest host was fetched, from the run's first request to its last
    start = min(min(s.times) for s in stats.values() if s.times)
    busiest = max(stats.values(), key=lambda s: s.requests)
    result["busiest"] = [busiest.requests, min(busiest.times) - start, max(busiest.times) - start]
    result["span"] = max(max(s.times) for s in stats.values() if s.times) - start
    shutil.rmtree(spec["out"], ignore_errors=True)
    return result


def _describe(label: str, r: dict) -> str:
    return (
        f"  {label:<22} {r['units'] / r['seconds']:7.1f} rows/s, {r['units'] / r['cpu']:6.1f} rows/CPU-s "
        f"({r['kept']} kept of {r['units']}, {r['seconds']:.1f} s, {r['cpu']:.1f} CPU-s; server: "
        f"{r['requests']} requests, at most {r['peak_concurrent']} at once and {r['peak_1s']} in one second "
        f"at one host; the busiest host's {r['busiest'][0]} from {r['busiest'][1]:.1f} s to {r['busiest'][2]:.1f} s "
        f"of {r['span']:.1f} s of requests)"
    )


class _Web:
    """The host web in its own process, restarted for each run (fresh figures)."""

    def __init__(self, hosts, images):
        self.hosts, self.images = hosts, images
        self.proc = None
        self.port = 0  # the first run's port, kept: the input names it

    def reset(self):
        from flamingo_corpus.sample.hosts_web import HostWebProcess

        self.close()
        self.proc = HostWebProcess(self.hosts, self.images, self.port).__enter__()
        self.port = self.proc.port

    def snapshot(self):
        self.proc.__exit__(None, None, None)
        stats, self.proc = self.proc.final_stats, None
        return stats

    def close(self):
        if self.proc is not None:
            self.proc.__exit__(None, None, None)
            self.proc = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--big", default="2000,1500,1000", help="rows of the few busy hosts")
    parser.add_argument(
        "--tail", type=float, default=1.1, help="the other hosts' rows: big[0] / rank**TAIL, at least 1-5 (0: 1-5)"
    )
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--img2dataset", action="store_true")
    parser.add_argument("--rate", type=float, help="limits on: this many requests/s per host, not the recipe's")
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    import pyarrow as pa
    import pyarrow.parquet as pq

    from flamingo_corpus.sample.hosts_web import Host, HostWeb

    big = [int(x) for x in args.big.split(",") if x]
    counts = _row_counts(args.hosts, big, args.tail)
    hosts = [Host(f"h{i}.test", "slow", latency_s=args.latency) for i in range(args.hosts)]
    addresses = {h.name: h.address for h in HostWeb(hosts, [b"x"]).hosts.values()}
    hosts = [dataclasses.replace(h, address=addresses[h.name]) for h in hosts]
    web = _Web(hosts, _images())
    print(f"host_limits: {machine()}; shared machine, {load()}")
    print(
        f"  web: {args.hosts} hosts, {args.latency * 1000:.0f} ms per request; rows per host: "
        f"{', '.join(str(c) for c in counts[: len(big)])} (busy), "
        + (f"then {counts[0]} / rank^{args.tail:g} and at least 1-5 " if args.tail else "1-5 ")
        + f"(the other {args.hosts - len(big)}: {sum(1 for c in counts if c >= 100)} hosts with 100 "
        f"or more, {sum(1 for c in counts if c <= 5)} with 1-5); {sum(counts)} rows, the busiest host "
        f"{100 * counts[0] / sum(counts):.1f}% of them"
    )
    results: dict = {"limits on": [], "limits off": [], "img2dataset": []}
    with tempfile.TemporaryDirectory(prefix="host-limits-") as tmp_name:
        tmp = Path(tmp_name)
        web.reset()
        port = web.proc.port
        rows = [f"http://{addresses[f'h{i}.test']}:{port}/{i}-{j}.jpg" for i, n in enumerate(counts) for j in range(n)]
        random.Random(9).shuffle(rows)
        pq.write_table(
            pa.table({"URL": rows, "TEXT": [f"picture number {i} of the web" for i in range(len(rows))]}),
            tmp / "rows.parquet",
        )
        base = {"input": str(tmp / "rows.parquet"), "per_shard": 1000, "workers": args.workers}
        try:
            for i in range(args.repeat):
                order = [True, False] if i % 2 == 0 else [False, True]
                for on in order:
                    # the web keeps its port across restarts: the same URLs
                    limits = ({"max_requests_per_s": args.rate} if args.rate else {}) if on else None
                    r = _measure({**base, "tool": "ours", "limits": limits, "out": str(tmp / "out")}, tmp / "run", web)
                    label = "limits on" if on else "limits off"
                    results[label].append(r)
                    print(_describe(f"{label} (run {i + 1})", r), flush=True)
                if args.img2dataset:
                    spec = {**base, "tool": "img2dataset", "processes": args.workers, "out": str(tmp / "i2d")}
                    r = _measure(spec, tmp / "run", web)
                    results["img2dataset"].append(r)
                    print(_describe(f"img2dataset (run {i + 1})", r), flush=True)
        finally:
            web.close()

    def best(label):
        runs = results[label]
        return max(r["units"] / r["seconds"] for r in runs) if runs else None

    on, off = best("limits on"), best("limits off")
    print(
        f"  best of {args.repeat}: limits on {on:.1f} rows/s, off {off:.1f} rows/s: "
        f"the limits cost {100 * (1 - on / off):.1f}%"
    )
    if results["img2dataset"]:
        theirs = results["img2dataset"]
        ours_cpu = max(r["units"] / r["cpu"] for r in results["limits on"])
        their_cpu = max(r["units"] / r["cpu"] for r in theirs)
        print(
            f"  img2dataset best {best('img2dataset'):.1f} rows/s, {their_cpu:.1f} rows/CPU-s; ours with limits "
            f"{ours_cpu:.1f} rows/CPU-s ({ours_cpu / their_cpu:.2f}x per CPU-second)"
        )
    print(f"  {load()}")


if __name__ == "__main__":
    main()
