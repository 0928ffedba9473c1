"""Download and process images block by block, through the image store (store/blocks.py).

The samples that reach the fetch are grouped by store block (``block_rows`` consecutive rows of
one input file: a shuffle of small records, no image has been fetched yet).  For each block the
worker reads the store's block, if there is one, and takes from it every row whose id and URL are
the ones it has to fetch; it fetches the others (all of them when the block is missing or
damaged, the rows stored as transient failures too with ``--retry-failed``), processes them, and
writes the block again, whole, with what it fetched.  A block is written as soon as its last
row is done, so a killed build loses at most the blocks its workers had in hand.

Each worker keeps ``threads`` requests running, as the download stage does, across block
boundaries: the next block's rows start while the slowest URLs of the previous one finish (at
most two blocks open at a time).  Downloads run on the thread pool; decoding and re-encoding run
on the bundle's thread, one image at a time, so memory holds about two blocks of processed images
and ``threads`` downloads.

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
import queue
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from ..download.fetch import Fetcher
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
            stored_images=((path, s.id, s.row),),
        )
        return downloaded, final, None, row["download_sha256"]
    final = downloaded.replace(original_width=row["original_width"], original_height=row["original_height"])
    return downloaded, final, (row["stage"], row["reason"], row["detail"]), row["download_sha256"]


class _FetchBlock(beam.DoFn):
    """(store block, its samples) -> per row ``outcome(...)``; the block's figures on ``FIGURES``."""

    FIGURES = "store_figures"

    def __init__(self, download: DownloadConfig, image: ImageConfig, spec: StoreSpec):
        self.download, self.image, self.spec = download, image, spec

    def setup(self):
        self._fetcher = Fetcher(fetch_policy(self.download))
        self._pool = cf.ThreadPoolExecutor(self.download.threads, thread_name_prefix="download")
        self._progress = Progress("download")

    def start_bundle(self):
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._open: Dict[str, _Block] = {}
        self._queue: Deque[Tuple[_Block, Sample, int]] = collections.deque()
        self._in_flight = 0

    def process(self, item):
        (source_index, number), samples = item
        self._start(source_index, number, sorted(samples, key=input_order))
        yield from self._pump(max_open=1)

    def finish_bundle(self):
        for out in self._pump(max_open=0):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, -1, [GlobalWindow()]))
            else:
                yield WindowedValue(out, -1, [GlobalWindow()])

    def teardown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
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
            self._queue.append((b, s, (old["attempts"] or 0) if old is not None else 0))
        self._open[path] = b

    def _pump(self, max_open: int):
        """Keep ``2 * threads`` fetches in flight, finish what is done, emit the complete blocks;
        return once at most ``max_open`` blocks are unfinished."""
        limit = 2 * self.download.threads
        while True:
            while self._queue and self._in_flight < limit:
                b, s, before = self._queue.popleft()
                self._pool.submit(self._fetcher.fetch, s.url).add_done_callback(
                    lambda f, b=b, s=s, before=before, done=self._done: done.put((b, s, before, f))
                )
                self._in_flight += 1
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
            if not ready:  # nothing was done: wait for one (then top the pool up again)
                self._finish(*self._done.get())

    def _finish(self, b: _Block, s: Sample, before: int, future: cf.Future) -> None:
        self._in_flight -= 1
        if future.cancelled():  # teardown cancelled the fetches: the worker is being shut down
            raise WorkerShuttingDown("worker shutting down: the bundle's fetches were cancelled")
        r = future.result()
        self._progress.add(1, ok=int(r.ok))
        row = fetched_row(s, r, self.image, before + 1, self.spec.run)
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

    def __init__(self, download: DownloadConfig, image: ImageConfig, spec: StoreSpec, removal=None):
        super().__init__()
        self.download, self.image, self.spec, self.removal = download, image, spec, removal

    def expand(self, samples):
        spec = self.spec
        out = (
            samples
            | "Key by store block" >> beam.Map(lambda s: ((s.source_index, spec.block_of(s)), s))
            | "Group store block" >> beam.GroupByKey()
            | "Fetch or take from store"
            >> beam.ParDo(_FetchBlock(self.download, self.image, spec)).with_outputs(_FetchBlock.FIGURES, main="rows")
        )
        if spec.report:
            (
                out[_FetchBlock.FIGURES]
                | "Add store figures" >> beam.CombineGlobally(lambda fs: _sum(fs)).without_defaults()
                | "Write store figures" >> beam.Map(_write_figures, spec.report)
            )
        side = {"blocklist": beam.pvalue.AsSingleton(self.removal)} if self.removal is not None else {}
        settled = out.rows | "Settle" >> beam.ParDo(_Settle(), **side).with_outputs(DROPPED_TAG, main="kept")
        return settled.kept, settled[DROPPED_TAG]


def _sum(figures) -> dict:
    total: dict = {k: 0 for k in STORE_FIGURES}
    for f in figures:
        total = _add(total, f)
    return total
