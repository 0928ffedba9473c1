"""The download stage: many requests in flight per worker, every failure a recorded reason."""
from __future__ import annotations

import logging

import apache_beam as beam

from .fetch import Fetcher, FetchPolicy
from .progress import Progress
from .recipe import DownloadConfig
from .records import Sample
from .stage import apply_with_drops, drop

STAGE = "download"
log = logging.getLogger(__name__)


def fetch_policy(cfg: DownloadConfig) -> FetchPolicy:
    return FetchPolicy(
        timeout_s=cfg.timeout_s, deadline_s=cfg.deadline_s, retries=cfg.retries, backoff_s=cfg.backoff_s,
        max_backoff_s=cfg.max_backoff_s, max_bytes=cfg.max_bytes, user_agent=cfg.user_agent,
        allow_private=cfg.allow_private, max_redirects=cfg.max_redirects,
        disallowed_robots=tuple(cfg.disallowed_robots),
    )


class _DownloadBatch(beam.DoFn):
    """A batch of samples -> their images, fetched by the worker's thread pool."""

    def __init__(self, cfg: DownloadConfig):
        self.cfg = cfg
        self._fetcher = None
        self._progress = None

    def setup(self):
        self._fetcher = Fetcher(fetch_policy(self.cfg))
        self._progress = Progress("download", log)

    def teardown(self):
        if self._fetcher is not None:
            self._fetcher.close()

    def process(self, batch):
        results = self._fetcher.fetch_many([s.url for s in batch], self.cfg.threads)
        ok = 0
        for s, r in zip(batch, results):
            if r.ok:
                ok += 1
                yield s.replace(image_bytes=r.data, content_type=r.content_type, http_status=r.status)
            else:
                yield drop(s.replace(http_status=r.status), r.reason, STAGE, detail=r.detail)
        self._progress.add(len(batch), ok=ok)


class DownloadImages(beam.PTransform):
    """Fetch each sample's URL; the thread pool keeps ``threads`` requests in flight per worker."""

    def __init__(self, cfg: DownloadConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        batches = samples | "Batch for the thread pool" >> beam.BatchElements(
            min_batch_size=1, max_batch_size=self.cfg.batch_size)
        return apply_with_drops(batches, "Fetch images", _DownloadBatch(self.cfg))
