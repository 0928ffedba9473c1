"""Screening against removal lists: URLs before anything is downloaded, the downloaded bytes
before they are decoded, the encoded image and its perceptual hash after.

The list (``filters.blocklist``) is read from any Beam filesystem (a gs:// list serves a whole
Dataflow job) by one step of the pipeline and reaches the screening DoFns as a side input: small
lookup data, broadcast to the workers by the runner, never shared through a process.
"""
from __future__ import annotations

import hashlib

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from filters.blocklist import Blocklist

from .records import Sample
from .stage import apply_with_drops, drop

STAGE = "safety"
WHAT = ("url", "download", "image")


def load_blocklist(path: str, phash_distance: int) -> Blocklist:
    with FileSystems.open(path) as f:
        return Blocklist.parse(f.read().decode("utf-8"), phash_distance, source=path)


class _Screen(beam.DoFn):
    def __init__(self, what: str):
        self.what = what

    def process(self, s: Sample, blocklist: Blocklist):
        if self.what == "url":
            rule = blocklist.check_url(s.url)
        elif self.what == "download":  # removal lists hash the bytes as published
            rule = blocklist.check_image(hashlib.sha256(s.image_bytes).hexdigest(), None)
        else:
            rule = blocklist.check_image(s.sha256, s.phash)
        if rule:
            yield drop(s, "blocklisted", STAGE, detail=rule)
        else:
            yield s


class ApplyBlocklist(beam.PTransform):
    """Drop samples whose URL (``what="url"``), downloaded bytes (``"download"``) or encoded image
    and phash (``"image"``) are on the list."""

    def __init__(self, path: str, phash_distance: int, what: str):
        super().__init__()
        if what not in WHAT:
            raise ValueError(f"what must be one of {WHAT}, not {what!r}")
        load_blocklist(path, phash_distance)  # a bad list is an error when the pipeline is built
        self.path, self.phash_distance, self.what = path, phash_distance, what

    def expand(self, samples):
        blocklist = (samples.pipeline
                     | "Removal list path" >> beam.Create([self.path])
                     | "Read removal list" >> beam.Map(load_blocklist, self.phash_distance))
        return apply_with_drops(samples, f"Screen {self.what}s", _Screen(self.what),
                                blocklist=beam.pvalue.AsSingleton(blocklist))
