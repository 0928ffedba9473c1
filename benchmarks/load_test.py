"""Download load test: the download stage against the loopback fault web, at N and 10N rows.

Serves ``--images`` synthetic JPEGs from the embedded fault web (``pipeline/sample/web.py``, in
this process), then for each row count runs the real download DoFn (``flamingo_corpus.download.stage._Download``:
setup, bundles of ``--bundle`` rows, finish_bundle, teardown, as a Beam worker runs it) in a fresh
Python subprocess, over rows that mix good images (81 %) with faults: 404, 503 (retried), connection
resets and truncated bodies (retried), redirect chains, gzip bodies, HTML served as an image,
``X-Robots-Tag: noai``, a 10 GB Content-Length, bodies longer than their Content-Length and
answers slower than the timeout.  Prints, per run: rows/s, HTTP requests/s as the server counted
them (retries and redirect hops included), outcomes by reason, and the worker's peak RSS
(``ru_maxrss``) before the first row and at the end.

Bounded in count and time: rows are generated on the fly (never held in a list), at most
``--max-rows`` per run, and a run stops feeding rows after ``--max-seconds`` (it then only finishes
what is in flight, which the fetch deadline bounds).

    .venv/bin/python benchmarks/load_test.py --rows 2000 --scale 10 --threads 16
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, load, machine, peak_rss_mib

# (share of rows in percent, path on the fault web); {k} is one of the served images.
MIX = [
    (81, "/img/{k}.jpg"),
    (3, "/redirect/2/img/{k}.jpg"),
    (2, "/gzip/img/{k}.jpg"),
    (3, "/status/404/img/{k}.jpg"),
    (2, "/status/503/img/{k}.jpg?retry_after=0"),
    (2, "/reset/1000000/img/{k}.jpg"),
    (2, "/truncated/1000000/img/{k}.jpg"),
    (1, "/as-html/img/{k}.jpg"),
    (1, "/noai/img/{k}.jpg"),
    (1, "/huge/img/{k}.jpg"),
    (1, "/extra/img/{k}.jpg"),
    (1, "/slow/5/img/{k}.jpg"),  # longer than the timeout: holds a thread for both tries
]
SIZES = [(320, 240), (400, 300), (512, 384), (640, 480)]


def make_images(root: Path, count: int, seed: int = 5) -> None:
    from flamingo_corpus.sample import synthetic

    rng = random.Random(seed)
    (root / "img").mkdir(parents=True)
    for k in range(count):
        synthetic.render(synthetic.random_scene(rng), *rng.choice(SIZES)).save(root / "img" / f"{k}.jpg", quality=90)


# -- the worker (a fresh process per run) ---------------------------------------------------------


def rows(base: str, count: int, images: int, seed: int = 11):
    """``count`` Samples, made one at a time, following MIX in a fixed shuffled order."""
    from flamingo_corpus.records import Sample

    pattern = [path for share, path in MIX for _ in range(share)]
    random.Random(seed).shuffle(pattern)
    for i in range(count):
        url = base + pattern[i % len(pattern)].format(k=i % images)
        yield Sample(id=f"load:{i}", source_index=0, row=i, url=url, caption=f"row {i}")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(args) -> None:
    """Run the download DoFn over the rows; print one JSON line of figures."""
    import apache_beam as beam
    from apache_beam.utils.windowed_value import WindowedValue

    from flamingo_corpus.download.stage import _Download
    from flamingo_corpus.recipe import DownloadConfig

    cfg = DownloadConfig(
        threads=args.threads,
        timeout_s=args.timeout,
        deadline_s=args.deadline,
        retries=1,
        backoff_s=0.05,
        max_backoff_s=0.5,
        max_bytes=args.max_bytes,
        allow_private=True,
    )
    outcomes: collections.Counter[str] = collections.Counter()
    body_bytes = 0

    def consume(out) -> None:
        nonlocal body_bytes
        dropped = isinstance(out, beam.pvalue.TaggedOutput)
        if dropped:
            out = out.value
        if isinstance(out, WindowedValue):  # what finish_bundle emits
            out = out.value
        if dropped:
            outcomes[out.reason] += 1
        else:
            outcomes["ok"] += 1
            body_bytes += len(out.image_bytes)  # counted, then dropped: the next stage's job

    dofn = _Download(cfg)
    dofn.setup()
    baseline = peak_rss_mib()
    started, cpu_started = time.monotonic(), cpu_seconds()
    fed, stopped_early = 0, False
    samples = rows(args.url, args.count, args.images)
    while not stopped_early and fed < args.count:
        dofn.start_bundle()
        for s in samples:
            fed += 1
            for out in dofn.process(s):
                consume(out)
            if fed % args.bundle == 0:
                break
            if time.monotonic() - started > args.max_seconds:
                stopped_early = True
                break
        for out in dofn.finish_bundle():
            consume(out)
    seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu_started
    dofn.teardown()
    print(
        json.dumps(
            {
                "rows": fed,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "outcomes": dict(outcomes),
                "body_bytes": body_bytes,
                "rss_before_mib": baseline,
                "rss_peak_mib": peak_rss_mib(),
                "stopped_early": stopped_early,
            }
        )
    )


# -- the driver -----------------------------------------------------------------------------------


def run(args, web, count: int) -> dict:
    before = sum(web.counts().values())
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--url",
        web.url,
        "--count",
        str(count),
        "--images",
        str(args.images),
        "--threads",
        str(args.threads),
        "--bundle",
        str(args.bundle),
        "--timeout",
        str(args.timeout),
        "--deadline",
        str(args.deadline),
        "--max-bytes",
        str(args.max_bytes),
        "--max-seconds",
        str(args.max_seconds),
    ]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=args.max_seconds + 10 * args.deadline + 120
    )
    if done.returncode:
        sys.exit(f"the worker failed:\n{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["requests"] = sum(web.counts().values()) - before
    return figures


def report(count: int, f: dict) -> None:
    failures = {reason: n for reason, n in f["outcomes"].items() if reason != "ok"}
    early = " (stopped at the time limit)" if f["stopped_early"] else ""
    print(
        f"{count:>7} rows requested, {f['rows']} fed{early}: "
        f"{f['seconds']:.1f} s, {f['rows'] / f['seconds']:.0f} rows/s, {f['requests'] / f['seconds']:.0f} requests/s "
        f"({f['requests']} requests), {f['outcomes'].get('ok', 0)} images ({f['body_bytes'] / 2**20:.0f} MiB)"
    )
    print(
        f"        worker CPU: {f['cpu_seconds']:.1f} CPU-s, {f['rows'] / f['cpu_seconds']:.0f} rows per CPU-second "
        f"({f['cpu_seconds'] / f['rows'] * 1e3:.2f} ms a row; the server's CPU is not counted)"
    )
    by_count = sorted(failures.items(), key=lambda item: -item[1])
    print(f"        failures by reason: {', '.join(f'{reason} {n}' for reason, n in by_count)}")
    print(
        f"        worker peak RSS: {f['rss_before_mib']:.0f} MiB after setup, {f['rss_peak_mib']:.0f} MiB at the end "
        f"(+{f['rss_peak_mib'] - f['rss_before_mib']:.0f} MiB for the rows)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", type=int, default=2000, help="rows of the small run (the large one has --scale times more)"
    )
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--images", type=int, default=300, help="distinct images served")
    ap.add_argument("--threads", type=int, default=16, help="requests in flight (DownloadConfig.threads)")
    ap.add_argument("--bundle", type=int, default=1000, help="rows per bundle")
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--deadline", type=float, default=5.0)
    ap.add_argument("--max-bytes", type=int, default=5_000_000)
    ap.add_argument("--max-rows", type=int, default=100_000, help="cap on the rows of one run")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="a run stops feeding rows after this")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    from flamingo_corpus.sample.web import SampleWeb

    tmp = Path(tempfile.mkdtemp(prefix="fc-load-"))
    try:
        print(f"machine: {machine()}; {load()}")
        make_images(tmp, args.images)
        counts = [min(args.rows, args.max_rows), min(args.rows * args.scale, args.max_rows)]
        print(
            f"{args.images} JPEGs ({sum(p.stat().st_size for p in (tmp / 'img').iterdir()) / 2**20:.1f} MiB) on the "
            f"loopback fault web; {args.threads} threads, timeout {args.timeout} s, deadline {args.deadline} s, "
            f"1 retry; one fresh worker process per run",
            flush=True,
        )
        with SampleWeb(tmp) as web:
            for count in counts:
                report(count, run(args, web, count))
        print(f"after: {load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
