"""Steady state against img2dataset: real photographs from a many-host loopback web with latency,
whole-run and steady-state rates, alternating runs, medians.

The web is host_limits.py's (sample/hosts_web.py in a process of its own, every host its own
127/8 address, the URLs naming the addresses so that img2dataset reaches the same hosts, the
rows per host a long tail, shuffled), serving real photographs (photos.py: crops of the photos
that scikit-image and matplotlib ship, JPEG with some progressive, greyscale and EXIF-rotated,
some PNG) with ``--latency`` per request and ``--connect-latency`` per new connection, HTTP/1.1
keep-alive.  Each run is a fresh child process (host_limits.py's), the web restarted for it.

For each run:

- whole run: rows / the child's wall time around the tool (imports, Beam's start-up, the
  shuffles and the index included; img2dataset's start-up and its shard writing included);
- steady state: timed at the server, from the arrival times of every request: the requests
  between the 5th and the 95th percentile of the arrival times over the time between them (the
  first and last 5% of requests left out: start-up and the tail are not in it);
- CPU-seconds per row: the child's CPU and its waited-for children's (the Beam workers,
  img2dataset's processes), the server's not (it serves both tools alike).

Runs alternate (ours, img2dataset, ours, ...; each pair in turn starts with the other tool) on
the same cores and the same URL list; the ratios are per pair, and the medians are printed.  Ours
runs the recipe's per-host limits (``download.per_host``: 16 at once, 100 requests per second per
host), the shares the build gives each worker (the host's sub-lanes it holds); ``--limits off``
runs it without them (img2dataset has none: like for like), ``--limits both`` both.

    .venv/bin/python benchmarks/steady_state.py [--hosts 1000] [--big 300,200,100] [--pairs 3]
        [--workers 2] [--latency 0.03] [--connect-latency 0.05] [--photos 400] [--limits on|off|both]
        [--threads N] [--workdir DIR] [--baseline DIR] [--no-img2dataset]

``--baseline DIR`` adds a run of ours from another commit's package (alternating like the rest),
so that a change is measured against the code before it; with ``--no-img2dataset`` the ratios are
against that baseline.
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

import host_limits
from _common import REPO, load, machine
from photos import web_photos
from throughput import TreeMonitor, median


def steady_rate(times: list, cut: float = 0.05) -> tuple:
    """(requests per second between the ``cut`` and ``1 - cut`` quantiles of the arrival times,
    the seconds between them)."""
    times = sorted(times)
    lo, hi = int(cut * (len(times) - 1)), int((1 - cut) * (len(times) - 1))
    span = times[hi] - times[lo]
    return ((hi - lo) / span if span > 0 else float("nan")), span


def _quantiles(times: list, cut: float = 0.05) -> tuple:
    times = sorted(times)
    return times[int(cut * (len(times) - 1))], times[int((1 - cut) * (len(times) - 1))]


class CpuTrace(TreeMonitor):
    """throughput.py's monitor of a process tree, keeping the tree's CPU seconds over time: how
    many cores the tool used between two moments (the steady state's)."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(pid, interval)
        self.trace: list = []  # (time.monotonic(), CPU seconds of every process seen so far)

    def _sample(self) -> None:
        super()._sample()
        self.trace.append((time.monotonic(), sum(cpu for _role, _rss, cpu in self.peak.values())))

    def cores_between(self, t0: float, t1: float) -> float:
        def at(t):
            return next((cpu for when, cpu in self.trace if when >= t), self.trace[-1][1] if self.trace else 0.0)

        return (at(t1) - at(t0)) / (t1 - t0) if t1 > t0 else float("nan")


def measure(spec: dict, work: Path, web, pythonpath: str = "") -> dict:
    """One run in a fresh child (host_limits.py's), the web restarted for it; the child's figures
    and the server's (every request's arrival time).  ``pythonpath``: where the child imports
    ``flamingo_corpus`` from first (another commit's package, ``--baseline``)."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    web.reset()
    load_before = os.getloadavg()[0]
    started = time.monotonic()  # the machine's clock, as the server's request times (Linux)
    proc = subprocess.Popen(
        [sys.executable, host_limits.__file__, "--child", str(spec_path), str(result_path)],
        cwd=REPO,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **({"PYTHONPATH": pythonpath} if pythonpath else {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with CpuTrace(proc.pid) as trace:
        rc = proc.wait()
    ended = time.monotonic()
    stats = web.snapshot()
    if rc != 0 or not result_path.exists():
        raise RuntimeError(f"run {spec['tool']} failed with exit status {rc}")
    r = json.loads(result_path.read_text())
    times = [t for s in stats.values() for t in s.times]
    r["requests"] = len(times)
    r["connections"] = sum(s.connections for s in stats.values())
    r["steady"], r["steady_span"] = steady_rate(times)
    r["steady_cores"] = trace.cores_between(*_quantiles(times))
    r["server_span"] = max(times) - min(times) if times else 0.0
    # before the first request (start-up, imports, the shuffles before the fetch) and after the last
    r["head"] = (min(times) - started) if times else 0.0
    r["tail"] = (ended - max(times)) if times else 0.0
    r["load"] = (load_before, os.getloadavg()[0])
    shutil.rmtree(spec["out"], ignore_errors=True)
    return r


def describe(label: str, r: dict) -> str:
    return (
        f"  {label:<24} whole run {r['units'] / r['seconds']:6.1f} rows/s, steady {r['steady']:6.1f} rows/s, "
        f"{r['cpu'] / r['units'] * 1000:5.1f} CPU-ms/row ({r['kept']} kept of {r['units']}, {r['seconds']:.1f} s, "
        f"{r['cpu']:.1f} CPU-s, {r['steady_cores']:.2f} cores in the steady state; server: "
        f"{r['requests']} requests on {r['connections']} connections over "
        f"{r['server_span']:.1f} s, 5-95% in {r['steady_span']:.1f} s, {r['head']:.1f} s before the first and "
        f"{r['tail']:.1f} s after the last; load {r['load'][0]:.1f} -> {r['load'][1]:.1f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--big", default="300,200,100", help="rows of the few busy hosts (the others: 1-5)")
    ap.add_argument("--latency", type=float, default=0.03, help="seconds added to every request")
    ap.add_argument("--connect-latency", type=float, default=0.05, help="seconds added to every new connection")
    ap.add_argument("--photos", type=int, default=400, help="different photographs served")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="our worker processes and img2dataset's processes")
    ap.add_argument("--threads", type=int, help="our download threads per worker (default: the recipe's)")
    ap.add_argument("--limits", choices=("on", "off", "both"), default="on")
    ap.add_argument("--workdir", help="keep the photographs here and reuse them")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run ours from the flamingo_corpus package under DIR (another commit's, e.g. a git worktree's "
        "pipeline/ linked as DIR/flamingo_corpus), alternating with the others: a change measured against the code "
        "before it on the same web",
    )
    ap.add_argument("--no-img2dataset", action="store_true", help="ours only (with --baseline: an A/B of two commits)")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from flamingo_corpus.sample.hosts_web import Host, HostWeb

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fc-steady-"))
    images = [(work / p).read_bytes() for p in web_photos(work, args.photos)]
    big = [int(x) for x in args.big.split(",") if x]
    counts = host_limits._row_counts(args.hosts, big, tail=0)
    hosts = [
        Host(f"h{i}.test", "slow", latency_s=args.latency, connect_latency_s=args.connect_latency)
        for i in range(args.hosts)
    ]
    addresses = {h.name: h.address for h in HostWeb(hosts, [b"x"]).hosts.values()}
    hosts = [dataclasses.replace(h, address=addresses[h.name]) for h in hosts]
    web = host_limits._Web(hosts, images)
    sizes = sorted(len(b) for b in images)
    print(f"steady_state: {machine()}; shared machine, {load()}")
    print(
        f"  web: {args.hosts} hosts, {args.latency * 1000:.0f} ms per request, {args.connect_latency * 1000:.0f} ms "
        f"per new connection, keep-alive; rows per host {args.big} (busy), 1-5 (the others); {sum(counts)} rows; "
        f"{len(images)} photographs, mean {sum(sizes) / len(sizes) / 1e3:.0f} kB, median "
        f"{sizes[len(sizes) // 2] / 1e3:.0f} kB"
    )
    print(
        f"  {args.workers} processes x {args.threads or 'the recipe download.threads'} threads (ours), "
        f"{args.workers} x the recipe's download.threads (img2dataset)"
    )
    ours_labels = {"on": ["ours"], "off": ["ours, limits off"], "both": ["ours", "ours, limits off"]}[args.limits]
    if args.baseline:
        ours_labels.append("baseline")
    theirs_labels = [] if args.no_img2dataset else ["img2dataset"]
    results: dict = {label: [] for label in [*ours_labels, *theirs_labels]}
    tmp = Path(tempfile.mkdtemp(prefix="fc-steady-run-"))
    try:
        web.reset()
        port = web.proc.port
        rows = [f"http://{addresses[f'h{i}.test']}:{port}/{i}-{j}.jpg" for i, n in enumerate(counts) for j in range(n)]
        random.Random(9).shuffle(rows)
        pq.write_table(
            pa.table({"URL": rows, "TEXT": [f"a photograph, number {i}" for i in range(len(rows))]}),
            tmp / "rows.parquet",
        )
        base = {"input": str(tmp / "rows.parquet"), "per_shard": 1000, "workers": args.workers}
        for i in range(args.pairs):
            order = [*ours_labels, *theirs_labels]
            if i % 2:
                order.reverse()
            for label in order:
                if label == "img2dataset":
                    spec = {**base, "tool": "img2dataset", "processes": args.workers, "out": str(tmp / "i2d")}
                else:
                    spec = {
                        **base,
                        "tool": "ours",
                        "limits": None if label == "ours, limits off" else {},  # host_limits: the recipe's, or off
                        "share": None,
                        "threads": args.threads,
                        "out": str(tmp / "out"),
                    }
                r = measure(spec, tmp / "run", web, args.baseline if label == "baseline" else "")
                results[label].append(r)
                print(describe(f"{label} (pair {i + 1})", r), flush=True)
    finally:
        web.close()
        shutil.rmtree(tmp, ignore_errors=True)

    # ratios against img2dataset, or with --no-img2dataset against --baseline (none without either)
    reference = "img2dataset" if theirs_labels else "baseline"
    theirs = results.get(reference, [])
    compared = [label for label in ours_labels if label != reference] if theirs else []
    for label in compared:
        ours = results[label]
        whole = [(a["units"] / a["seconds"]) / (b["units"] / b["seconds"]) for a, b in zip(ours, theirs)]
        steady = [a["steady"] / b["steady"] for a, b in zip(ours, theirs)]
        cost = [(b["cpu"] / b["units"]) / (a["cpu"] / a["units"]) for a, b in zip(ours, theirs)]
        # the steady rate per core the tool had then: what load from others does not move
        per_core = [(a["steady"] / a["steady_cores"]) / (b["steady"] / b["steady_cores"]) for a, b in zip(ours, theirs)]
        print(f"  {label} / {reference}, per pair and median of {len(ours)}:")
        figures = [("whole run", whole), ("steady state", steady), ("per CPU-second", cost)]
        figures.append(("steady per core", per_core))
        for name, xs in figures:
            print(f"    {name:<15} {median(xs):.2f}x  ({', '.join(f'{x:.2f}' for x in xs)})")
    for label, runs in results.items():
        print(
            f"  {label}: median whole run {median([r['units'] / r['seconds'] for r in runs]):.1f} rows/s, steady "
            f"{median([r['steady'] for r in runs]):.1f} rows/s, "
            f"{median([r['cpu'] / r['units'] for r in runs]) * 1000:.1f} CPU-ms/row, "
            f"{median([r['steady_cores'] for r in runs]):.2f} cores in the steady state, "
            f"{median([r['steady'] / r['steady_cores'] for r in runs]):.1f} steady rows per core-second"
        )
    print(f"  {load()}")


if __name__ == "__main__":
    main()
