"""The download stage: many requests in flight per worker, every failure a recorded reason.

Each worker keeps up to ``threads`` requests running on its own thread pool, streaming: new URLs
are submitted as elements arrive and finished downloads leave as soon as they are done, in the
order they finish, so a slow server holds one thread, not a whole batch nor the downloads queued
behind it.  At most ``2 * threads`` downloads are in flight (running or queued): memory stays
bounded by that many images of at most ``max_bytes`` each, however many rows the worker sees.
What is still in flight when a bundle ends is waited for in ``finish_bundle``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from ..progress import Progress
from ..recipe import DownloadConfig
from ..records import Sample
from ..stage import apply_with_drops, drop
from .fetch import Fetcher, FetchPolicy

__all__ = ["DownloadImages"]

STAGE = "download"
log = logging.getLogger(__name__)


def fetch_policy(cfg: DownloadConfig) -> FetchPolicy:
    return FetchPolicy(
        timeout_s=cfg.timeout_s,
        deadline_s=cfg.deadline_s,
        retries=cfg.retries,
        backoff_s=cfg.backoff_s,
        max_backoff_s=cfg.max_backoff_s,
        max_bytes=cfg.max_bytes,
        user_agent=cfg.user_agent,
        allow_private=cfg.allow_private,
        max_redirects=cfg.max_redirects,
        disallowed_robots=tuple(cfg.disallowed_robots),
    )


def outcome(s: Sample, r):
    """A FetchResult as what the stage emits: the sample with its bytes, or its drop."""
    if r.ok:
        return s.replace(image_bytes=r.data, content_type=r.content_type, http_status=r.status)
    return drop(s.replace(http_status=r.status), r.reason, STAGE, detail=r.detail)


class WorkerShuttingDown(Exception):
    """A bundle stopped because its worker is being shut down (a stopped build): the runner
    discards the bundle, and the log leaves this out (logs.SHUTDOWN)."""


class _Download(beam.DoFn):
    """Each finished fetch puts its (sample, future) on the bundle's ``queue.SimpleQueue`` (a
    done-callback), where the bundle thread picks it up: ``concurrent.futures.wait`` over the
    whole in-flight set, and asking each future whether it is done, cost that thread about 20 us
    an element (benchmarks: 56 against 27 us of CPU an element for the loop alone)."""

    def __init__(self, cfg: DownloadConfig):
        self.cfg = cfg

    def setup(self):
        self._fetcher = Fetcher(fetch_policy(self.cfg))
        self._pool = cf.ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="download")
        self._progress = Progress("download")

    def start_bundle(self):
        # One queue per bundle: a fetch still running when a bundle failed lands in that bundle's queue.
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._in_flight = 0

    def process(self, s: Sample):
        done = self._done
        self._pool.submit(self._fetcher.fetch, s.url).add_done_callback(lambda f: done.put((s, f)))
        self._in_flight += 1
        # Keep about two pools' worth in flight: past that, wait for any one to finish (not the
        # oldest, which may be the slow one), then emit everything that is done.
        if self._in_flight > 2 * self.cfg.threads:
            yield self._finish(*done.get())
        while True:
            try:
                finished = done.get_nowait()
            except queue.Empty:
                return
            yield self._finish(*finished)

    def finish_bundle(self):
        while self._in_flight:
            out = self._finish(*self._done.get())
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, -1, [GlobalWindow()]))
            else:
                yield WindowedValue(out, -1, [GlobalWindow()])

    def _finish(self, s: Sample, future: cf.Future):
        self._in_flight -= 1
        if future.cancelled():  # teardown cancelled the fetches: the worker is being shut down
            raise WorkerShuttingDown("worker shutting down: the bundle's fetches were cancelled")
        r = future.result()
        self._progress.add(1, ok=int(r.ok))
        return outcome(s, r)

    def teardown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._fetcher.close()


class DownloadImages(beam.PTransform):
    """Fetch each sample's URL, ``threads`` requests in flight per worker."""

    def __init__(self, cfg: DownloadConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        return apply_with_drops(samples, "Fetch URLs", _Download(self.cfg))
