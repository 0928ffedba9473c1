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

from ..filters.removal_list import Blocklist
from ..recipe import SafetyConfig
from ..records import Sample
from ..stage import apply_with_drops, drop

__all__ = ["ApplyBlocklist", "read_removal_list", "load_blocklist"]

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
            assert s.image_bytes is not None  # set by the download stage
            rule = blocklist.check_image(hashlib.sha256(s.image_bytes).hexdigest(), None)
        else:
            rule = blocklist.check_image(s.sha256, s.phash)
        if rule:
            yield drop(s, "blocklisted", STAGE, detail=rule)
        else:
            yield s


class ApplyBlocklist(beam.PTransform):
    """Drop samples whose URL (``what="url"``), downloaded bytes (``"download"``) or encoded image
    and phash (``"image"``) are on the list; ``removal`` is the list as ``read_removal_list``
    gives it, shared by the screens of one pipeline."""

    def __init__(self, removal, what: str):
        super().__init__()
        if what not in WHAT:
            raise ValueError(f"what must be one of {WHAT}, not {what!r}")
        self.removal, self.what = removal, what

    def expand(self, samples):
        return apply_with_drops(
            samples, f"Screen {self.what}s", _Screen(self.what), blocklist=beam.pvalue.AsSingleton(self.removal)
        )


def read_removal_list(p: beam.Pipeline, safety: SafetyConfig) -> beam.PCollection:
    """The recipe's removal list (``safety.blocklist``) as a one-element PCollection, read and
    parsed once, by one step of the pipeline.  The list is also parsed here, where the pipeline is
    built, so that a bad list is an error before anything runs."""
    if not safety.blocklist:
        raise ValueError("safety.blocklist is not set")
    load_blocklist(safety.blocklist, safety.blocklist_phash_distance)
    return (
        p
        | "Removal list path" >> beam.Create([safety.blocklist])
        | "Read removal list" >> beam.Map(load_blocklist, safety.blocklist_phash_distance)
    )
