"""Download and process images block by block, through the image store (store/blocks.py).

The samples that reach the fetch are grouped by store block, and the blocks by fetch lane
(download/lanes.py: the rows of one host are in at most ``store.host_spread`` lanes, a block holds
rows of one lane; two shuffles of small records, no image has been fetched yet).  A worker takes a
lane's blocks one after the other; for each block the
worker reads the store's block, if there is one, and takes from it every row whose id and URL are
the ones it has to fetch; it fetches the others (all of them when the block is missing or
damaged, the rows stored as transient failures too with ``--retry-failed``), processes them, and
writes the block again, whole, with what it fetched.  A block is written as soon as its last
row is done, so a killed build loses at most the blocks its workers had in hand.

Each worker keeps ``threads`` requests running, as the download stage does, across block
boundaries: the next block's rows start while the slowest URLs of the previous one finish (at
most ``OPEN_BLOCKS`` blocks open at a time, up to ``MAX_OPEN_BLOCKS`` while every queued row's
host is paced).  Rows are not started in queue order but as their hosts allow (download/hosts.py,
``download.per_host``): the rows wait in one queue per host, and the scheduler goes over the hosts
and starts rows of each one that has a free slot, its turn in the pacing and no pause; a row whose
host was cut off (NXDOMAIN, a run of connection failures, a Retry-After past ``max_pause_s``) is
dropped as ``host_unavailable`` without a request.  The gate and the DNS cache are the worker
process's (``shared_gate``, ``shared_resolver``), so its DoFn instances share the limits; the
worker's share of a host's limits is the host's sub-lanes it holds rows of over the spread, so
the workers' shares add up to the host's limits.

Downloads run on ``threads`` download threads that only fetch: a row is started (its host's slot
and its turn in the pacing taken) only when a download thread is free to make its request at once,
so what a host sees is what the gate counts, not a queue of rows waiting for a thread.  Decoding,
resizing, re-encoding and hashing run on a second pool, a thread per core (Pillow releases the
interpreter lock while it decodes, resizes and encodes, so a worker process uses more than one
core).  Memory holds about ``OPEN_BLOCKS`` blocks of processed images and ``2 * threads`` rows in
flight (fetching, or fetched and waiting for an image thread).

What leaves is, per row, the sample with its processed image (and where it is in the store) or
its drop: ``download`` or ``image`` as the stages would have dropped it, or ``safety`` when the
downloaded bytes are on the removal list (checked after the store, so a new removal list needs
no new download).  The run's figures (blocks and rows taken from the store or fetched, rows
retried and recovered, damaged blocks, bytes written) are added up and written to the report
file of the ``StoreSpec``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import json
import logging
import math
import os
import posixpath
import queue
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from ..download.dns import shared_resolver
from ..download.fetch import Fetcher, FetchResult
from ..download.hosts import DEAD, GO, HostLimits, merge_figures, shared_gate, worker_id
from ..download.lanes import Lanes
from ..download.stage import WorkerShuttingDown, fetch_policy
from ..images.process import ImageRejected, process_image
from ..output.atomic import atomic_write
from ..progress import Progress
from ..recipe import DownloadConfig, ImageConfig
from ..records import Sample
from ..stage import DROPPED_TAG, drop, input_order
from .blocks import DamagedBlock, StoreSpec, parse_block_path, read_block, retryable, write_block

__all__ = ["FetchBlocks", "STORE_FIGURES"]

log = logging.getLogger(__name__)

# Longest wait of an idle scheduler before it looks at its hosts again (another DoFn instance of
# the process may free a slot it waits for).
_POLL_S = 0.05
HOSTS_FILE = "hosts.json"  # under the output's _build/: this run's per-host figures

# The figures of one run's use of the store (summed over the blocks; _build/store.json).
STORE_FIGURES = (
    "blocks",
    "blocks_from_store",
    "blocks_written",
    "blocks_damaged",
    "rows_from_store",
    "rows_fetched",
    "rows_retried",
    "rows_recovered",
    "bytes_written",
)


@dataclass
class _Block:
    path: str
    source_index: int
    number: int
    samples: List[Sample]
    stored: Dict[str, dict]
    rows: Dict[str, dict] = field(default_factory=dict)  # id -> the row to emit (stored or fetched)
    waiting: int = 0  # rows still being fetched
    fetched: int = 0
    retried: int = 0
    recovered: int = 0
    damaged: bool = False


def _row(s: Sample, attempts: int, run: str) -> dict:
    return {
        "id": s.id,
        "row": s.row,
        "position": s.position,
        "doc_id": s.doc_id,
        "url": s.url,
        "caption": s.caption,
        "status": "dropped",
        "stage": None,
        "reason": None,
        "detail": None,
        "retryable": False,
        "attempts": attempts,
        "run": run,
        "http_status": None,
        "content_type": None,
        "download_bytes": None,
        "download_sha256": None,
        "original_width": None,
        "original_height": None,
        "width": None,
        "height": None,
        "image_format": None,
        "sha256": None,
        "phash": None,
        "phash_variants": None,
        "phash_checks": None,
        "image": None,
    }


def fetched_row(s: Sample, r, image_cfg: ImageConfig, attempts: int, run: str) -> dict:
    """The store row of one fetch: the processed image, or the download or image drop."""
    row = _row(s, attempts, run)
    row.update(http_status=r.status, content_type=r.content_type if r.ok else None)
    if not r.ok:
        row.update(stage="download", reason=r.reason, detail=r.detail, retryable=retryable("download", r.reason))
        return row
    row.update(download_bytes=len(r.data), download_sha256=hashlib.sha256(r.data).hexdigest())
    try:
        p = process_image(r.data, image_cfg)
    except ImageRejected as e:
        if e.size is not None:
            row.update(original_width=e.size[0], original_height=e.size[1])
        row.update(stage="image", reason=e.reason, detail=e.detail)
        return row
    except Exception as e:  # noqa: BLE001 - an image that breaks the decoder must not break the build
        row.update(stage="image", reason="decode_error", detail=f"{type(e).__name__}: {e}"[:200])
        return row
    row.update(
        status="ok",
        original_width=p.original_width,
        original_height=p.original_height,
        width=p.width,
        height=p.height,
        image_format=p.format,
        sha256=p.sha256,
        phash=p.phash,
        phash_variants=list(p.phash_variants),
        phash_checks=list(p.phash_checks),
        image=p.data,
    )
    return row


def outcome(s: Sample, row: dict, path: str) -> tuple:
    """(the sample as downloaded, the sample as processed or as its drop leaves, drop or None,
    sha256 of the downloaded bytes): what ``_Settle`` turns into a sample or a drop."""
    downloaded = s.replace(
        http_status=row["http_status"],
        content_type=row["content_type"],
        attempts=row["attempts"],
        image_len=row["download_bytes"],
    )
    if row["status"] == "ok":
        final = downloaded.replace(
            image_bytes=row["image"],
            image_len=None,
            image_format=row["image_format"],
            original_width=row["original_width"],
            original_height=row["original_height"],
            width=row["width"],
            height=row["height"],
            sha256=row["sha256"],
            phash=row["phash"],
            phash_variants=tuple(row["phash_variants"] or ()),
            phash_checks=tuple(row.get("phash_checks") or ()),
            stored_images=((path, s.id, s.row),),
        )
        return downloaded, final, None, row["download_sha256"]
    final = downloaded.replace(original_width=row["original_width"], original_height=row["original_height"])
    return downloaded, final, (row["stage"], row["reason"], row["detail"]), row["download_sha256"]


# Blocks a worker keeps open at once: while a block waits for its last rows (a slow or paced host),
# the next ones' rows start.  Up to MAX_OPEN_BLOCKS while every queued row's host is paced and
# threads are free (a busy host's lane must not stall the worker).  Memory holds their processed
# images: that many blocks' worth at most.
OPEN_BLOCKS = 4
MAX_OPEN_BLOCKS = 16


class _FetchBlock(beam.DoFn):
    """(store block, its samples) -> per row ``outcome(...)``; the block's figures on ``FIGURES``."""

    FIGURES = "store_figures"
    HOSTS = "host_figures"

    def __init__(self, download: DownloadConfig, image: ImageConfig, spec: StoreSpec, share: Optional[float] = None):
        self.download, self.image, self.spec, self.share = download, image, spec, share

    def setup(self):
        per_host = self.download.per_host
        self._routing = self.spec.routing
        self._gate = shared_gate(HostLimits.from_config(per_host), self.share or 1.0 / self._routing.spread)
        resolver = shared_resolver(per_host.dns_ttl_s, per_host.dns_negative_ttl_s)
        self._fetcher = Fetcher(fetch_policy(self.download), resolver=resolver, gate=self._gate)
        self._pool = cf.ThreadPoolExecutor(self.download.threads, thread_name_prefix="download")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._images = cf.ThreadPoolExecutor(max(1, min(self.download.threads, cores)), thread_name_prefix="image")
        self._progress = Progress("download")

    def start_bundle(self):
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._open: Dict[str, _Block] = {}
        # rows waiting for their fetch, per host in the order the hosts came (a dict keeps it)
        self._queues: Dict[Optional[str], Deque[Tuple[_Block, Sample, int]]] = {}
        self._in_flight = 0  # rows started and not settled (fetching, or fetched and being processed)
        self._fetching = 0  # of them, rows on a download thread
        # rows queued or in flight per host and sub-lane: the host's share is the sub-lanes held
        self._held: Dict[Optional[str], collections.Counter] = collections.defaultdict(collections.Counter)

    def process(self, item):
        """A fetch lane's blocks, one after the other (the next one starts while the slowest
        fetches of the last one end)."""
        _lane, blocks = item
        for (source_index, number), samples in sorted(blocks, key=lambda b: b[0]):
            self._start(source_index, number, sorted(samples, key=input_order))
            yield from self._pump(max_open=OPEN_BLOCKS - 1, more=MAX_OPEN_BLOCKS - 1)

    def finish_bundle(self):
        for out in self._pump(max_open=0):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, -1, [GlobalWindow()]))
            else:
                yield WindowedValue(out, -1, [GlobalWindow()])
        hosts = self._gate.drain_figures()
        if hosts:
            figures = {"worker": worker_id(), "hosts": hosts}
            yield beam.pvalue.TaggedOutput(self.HOSTS, WindowedValue(figures, -1, [GlobalWindow()]))

    def teardown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._images.shutdown(wait=False, cancel_futures=True)
        self._fetcher.close()

    def _start(self, source_index: int, number: int, samples: List[Sample]) -> None:
        spec = self.spec
        path = spec.block_path(source_index, number)
        try:
            stored_rows = read_block(path, spec.digest) or []
            damaged = False
        except DamagedBlock as e:
            log.warning("store block %s is damaged (%s): fetching its rows again", e.path, e.why)
            Metrics.counter("store", "blocks_damaged").inc()
            stored_rows, damaged = [], True
        b = _Block(path, source_index, number, samples, {r["id"]: r for r in stored_rows}, damaged=damaged)
        for s in samples:
            old = b.stored.get(s.id)
            if old is not None and old["url"] != s.url:  # the input changed under this id: not this row's
                old = None
            if old is not None and not (spec.retry_failed and old["retryable"]):
                b.rows[s.id] = old
                continue
            b.retried += int(old is not None)
            b.waiting += 1
            host, sub = self._routing.host_and_sub(s.url, s.id)
            self._held[host][sub] += 1
            self._queues.setdefault(host, collections.deque()).append(
                (b, s, (old["attempts"] or 0) if old is not None else 0)
            )
        self._open[path] = b

    def _pump(self, max_open: int, more: int = 0):
        """Keep ``2 * threads`` fetches in flight as the hosts allow, finish what is done, emit the
        complete blocks; return once at most ``max_open`` blocks are unfinished, or at most
        ``more`` while the queued rows' hosts are all paced and threads are free (so that the
        next block's hosts can use them)."""
        limit = 2 * self.download.threads
        while True:
            wake = self._start_ready(limit)
            # Download threads free after every queued row that could start did: the queued rows'
            # hosts are all paced or at their concurrency (or none is queued), so the next block's
            # rows may use them.
            free = self._room(limit)
            ready = 0
            while True:
                try:
                    self._finish(*self._done.get_nowait())
                except queue.Empty:
                    break
                ready += 1
            for path in [p for p, b in self._open.items() if b.waiting == 0]:
                yield from self._close(self._open.pop(path))
            if len(self._open) <= max_open:
                return
            if free and len(self._open) <= more:
                return
            if ready:
                continue
            # Nothing was done: wait for a fetch to end, or for the first waiting host's turn.
            timeout = None if self._in_flight and wake == math.inf else _POLL_S
            if wake != math.inf:
                timeout = min(_POLL_S, max(0.0, wake - time.monotonic()))
            try:
                self._finish(*self._done.get(timeout=timeout))
            except queue.Empty:
                pass

    def _start_ready(self, limit: int) -> float:
        """Start queued rows whose hosts take a request now, host after host in the order they
        came, and drop the rows of hosts cut off; the earliest time a waiting host may take one.
        A host that is paced or at its concurrency is passed over at the cost of one look, however
        many rows it has queued, so that it never holds up the other hosts' rows."""
        wake = math.inf
        now = time.monotonic()
        for host in list(self._queues):
            if not self._room(limit):
                break
            rows = self._queues[host]
            while rows and self._room(limit):
                verdict, info = self._gate.try_start(host, now, share=self._share(host))
                if verdict == GO:
                    b, s, before = rows.popleft()
                    self._pool.submit(self._fetch, s, host).add_done_callback(
                        lambda f, b=b, s=s, before=before, done=self._done: done.put((b, s, before, f, None))
                    )
                    self._in_flight += 1
                    self._fetching += 1
                elif verdict == DEAD and host is not None:
                    while rows:
                        b, s, before = rows.popleft()
                        self._gate.cut_off_row(host)
                        r = _cut_off(s.url or "", str(info))
                        self._settle(b, s, before, r, fetched_row(s, r, self.image, before + 1, self.spec.run))
                else:
                    wake = min(wake, float(info))
                    break
            if not rows:
                del self._queues[host]
        return wake

    def _room(self, limit: int) -> bool:
        """Whether another row may start: a download thread free, and fewer than ``limit`` rows
        started and not settled."""
        return self._fetching < self.download.threads and self._in_flight < limit

    def _finish(self, b: _Block, s: Sample, before: int, fetch: cf.Future, image: Optional[cf.Future]) -> None:
        """A row's fetch ended (``image`` None): hand a download to an image thread, settle a
        failure; or its image was processed: settle it."""
        if fetch.cancelled() or (image is not None and image.cancelled()):
            # teardown cancelled the fetches: the worker is being shut down
            raise WorkerShuttingDown("worker shutting down: the bundle's fetches were cancelled")
        if image is None:
            self._fetching -= 1
            r = fetch.result()
            if r.ok:
                self._images.submit(fetched_row, s, r, self.image, before + 1, self.spec.run).add_done_callback(
                    lambda g, b=b, s=s, before=before, f=fetch, done=self._done: done.put((b, s, before, f, g))
                )
                return
            row = fetched_row(s, r, self.image, before + 1, self.spec.run)  # a drop: nothing to decode
        else:
            r, row = fetch.result(), image.result()
        self._in_flight -= 1
        self._settle(b, s, before, r, row)

    def _fetch(self, s: Sample, host: Optional[str]) -> FetchResult:
        """On a download thread: fetch a row and give its host's slot back.  The image is
        processed on an image thread (``_finish``): a download thread only waits on the network,
        so a row started by the scheduler is requested at once."""
        try:
            return self._fetcher.fetch(s.url)
        finally:
            self._gate.finish(host)

    def _share(self, host: Optional[str]) -> float:
        """This worker's share of ``host``'s limits: the host's sub-lanes it holds rows of, over
        the spread (download/lanes.py); or the share it was given."""
        if self.share is not None:
            return self.share
        return min(1.0, max(1, len(self._held.get(host) or ())) / self._routing.spread)

    def _settle(self, b: _Block, s: Sample, before: int, r: FetchResult, row: dict) -> None:
        host, sub = self._routing.host_and_sub(s.url, s.id)
        held = self._held.get(host)
        if held is not None and held[sub] > 0:
            held[sub] -= 1
            if not held[sub]:
                del held[sub]
            if not held:
                del self._held[host]
        self._progress.add(1, ok=int(r.ok))
        b.rows[s.id] = row
        b.fetched += 1
        b.waiting -= 1
        if before and r.ok and b.stored.get(s.id, {}).get("retryable"):
            b.recovered += 1

    def _close(self, b: _Block):
        written = 0
        if b.fetched or b.damaged:
            name, number = parse_block_path(b.path)
            written = write_block(b.path, {**b.stored, **b.rows}.values(), self.spec.digest, name, number)
        for s in b.samples:
            yield outcome(s, b.rows[s.id], b.path)
        figures = {
            "blocks": 1,
            "blocks_from_store": int(not b.fetched and not b.damaged and bool(b.stored)),
            "blocks_written": int(written > 0),
            "blocks_damaged": int(b.damaged),
            "rows_from_store": len(b.samples) - b.fetched,
            "rows_fetched": b.fetched,
            "rows_retried": b.retried,
            "rows_recovered": b.recovered,
            "bytes_written": written,
        }
        for k, v in figures.items():
            if v:
                Metrics.counter("store", k).inc(v)
        yield beam.pvalue.TaggedOutput(self.FIGURES, figures)


def _cut_off(url: str, why: str) -> FetchResult:
    """The result of a row not requested because its host was cut off."""
    return FetchResult(
        ok=False,
        data=None,
        content_type=None,
        status=None,
        reason="host_unavailable",
        detail=why,
        attempts=0,
        final_url=url,
        elapsed_s=0.0,
    )


class _Settle(beam.DoFn):
    """``outcome(...)`` -> the sample, or its drop: download failures first, then the removal
    list on the downloaded bytes, then image failures (the order of the stages before the store)."""

    def process(self, item, blocklist=None):
        downloaded, final, failure, download_sha = item
        if failure is not None and failure[0] == "download":
            yield drop(final, failure[1], "download", detail=failure[2])
            return
        if blocklist is not None and download_sha is not None:
            rule = blocklist.check_image(download_sha, None)
            if rule:
                yield drop(downloaded, "blocklisted", "safety", detail=rule)
                return
        if failure is not None:
            yield drop(final, failure[1], failure[0], detail=failure[2])
        else:
            yield final


def _add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in STORE_FIGURES}


def _write_figures(figures: dict, path: str) -> None:
    atomic_write(path, (json.dumps(figures, sort_keys=True) + "\n").encode())


class FetchBlocks(beam.PTransform):
    """Samples to fetch -> (samples with processed images, drops), through the store of ``spec``.
    ``removal`` is the removal list (``read_removal_list``) to screen the downloaded bytes with."""

    # A worker's share of a host's limits (download/hosts.py) when none is given: the sub-lanes
    # of the host it holds over ``store.host_spread`` (download/lanes.py).  A number here (a
    # test's) holds every host to that share instead.
    default_share: Optional[float] = None

    def __init__(
        self,
        download: DownloadConfig,
        image: ImageConfig,
        spec: StoreSpec,
        removal=None,
        share: Optional[float] = None,
    ):
        super().__init__()
        self.download, self.image, self.spec, self.removal = download, image, spec, removal
        self.share = self.default_share if share is None else share

    def expand(self, samples):
        spec = self.spec
        routing = spec.routing
        out = (
            samples
            | "Key by lane and band"
            >> beam.Map(lambda s: ((s.source_index, routing.band(s.row), routing.lane(s.url, s.id)), s))
            | "Group lane and band" >> beam.GroupByKey()
            | "Cut store blocks" >> beam.FlatMapTuple(lambda key, samples: _blocks(key, samples, routing))
            | "Group fetch lane" >> beam.GroupByKey()
            | "Fetch or take from store"
            >> beam.ParDo(_FetchBlock(self.download, self.image, spec, self.share)).with_outputs(
                _FetchBlock.FIGURES, _FetchBlock.HOSTS, main="rows"
            )
        )
        if spec.report:
            (
                out[_FetchBlock.FIGURES]
                | "Add store figures" >> beam.CombineGlobally(lambda fs: _sum(fs)).without_defaults()
                | "Write store figures" >> beam.Map(_write_figures, spec.report)
            )
            (
                out[_FetchBlock.HOSTS]
                | "Add host figures" >> beam.CombineGlobally(_merge_hosts).without_defaults()
                | "Write host figures" >> beam.Map(_write_figures, hosts_path(spec.report))
            )
        side = {"blocklist": beam.pvalue.AsSingleton(self.removal)} if self.removal is not None else {}
        settled = out.rows | "Settle" >> beam.ParDo(_Settle(), **side).with_outputs(DROPPED_TAG, main="kept")
        return settled.kept, settled[DROPPED_TAG]


def _blocks(key: Tuple[int, int, int], samples, routing: Lanes) -> Iterator[Tuple[int, tuple]]:
    """One lane's samples of a band cut into store blocks, each keyed by the lane:
    ``(lane, ((source index, block number), samples))``."""
    source_index, _band, lane = key
    for number, block in routing.cut(list(samples)):
        yield lane, ((source_index, number), block)


def hosts_path(report: str) -> str:
    """Where the per-host figures go: next to the store figures (``_build/hosts.json``)."""
    return posixpath.join(posixpath.dirname(report), HOSTS_FILE)


def _merge_hosts(figures) -> dict:
    """The per-host figures of the bundles (``HostGate.drain_figures``) added up, the busiest
    hosts kept (``merge_figures``)."""
    total: dict = {}
    for f in figures:
        total = merge_figures(total, f)
    return total


def _sum(figures) -> dict:
    total: dict = {k: 0 for k in STORE_FIGURES}
    for f in figures:
        total = _add(total, f)
    return total
