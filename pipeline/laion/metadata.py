"""Filters on metadata, before anything is downloaded: they are the cheapest drops of all."""

from __future__ import annotations

import apache_beam as beam

from ..filters import language as language_filter
from ..filters import safety, text
from ..filters import url as url_filter
from ..recipe import MetadataFilterConfig
from ..records import Sample
from ..stage import KeepOnePerKey, apply_with_drops, drop, input_order

__all__ = ["FilterMetadata"]

STAGE = "metadata"


def metadata_checks(s: Sample, cfg: MetadataFilterConfig):
    """The pure filters in order; the first that fails names the drop reason."""
    yield url_filter.url_scheme(s.url, cfg.url_schemes)
    yield text.caption_length(s.caption, cfg.min_caption_chars, cfg.max_caption_chars, cfg.min_caption_words)
    yield safety.punsafe(s.meta.get("punsafe"), cfg.max_punsafe)
    yield safety.pwatermark(s.meta.get("pwatermark"), cfg.max_pwatermark)
    yield safety.metadata_similarity(s.meta.get("similarity"), cfg.min_metadata_similarity)


class _FilterMetadata(beam.DoFn):
    def __init__(self, cfg: MetadataFilterConfig):
        self.cfg = cfg
        self._lid = None

    def setup(self):
        if self.cfg.language.enabled:
            self._lid = language_filter.LanguageIdentifier(self.cfg.language.model_path)

    def process(self, s: Sample):
        for reason in metadata_checks(s, self.cfg):
            if reason:
                yield drop(s, reason, STAGE)
                return
        if self._lid is not None:
            lang, score = self._lid.identify(text.normalize_caption(s.caption))
            s = s.replace(language=lang, language_score=score)
            reason = language_filter.language(lang, score, self.cfg.language.allowed, self.cfg.language.min_score)
            if reason:
                yield drop(s, reason, STAGE, detail=f"{lang} {score:.2f}")
                return
        yield s


class FilterMetadata(beam.PTransform):
    """Caption length, URL scheme, punsafe/pwatermark, language, then one row per exact URL."""

    def __init__(self, cfg: MetadataFilterConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        kept, dropped = apply_with_drops(samples, "Check metadata", _FilterMetadata(self.cfg))
        if not self.cfg.dedup_urls:
            return kept, dropped
        unique, dups = kept | "One row per URL" >> KeepOnePerKey(
            lambda s: url_filter.normalize_url(s.url), input_order, "duplicate_url", STAGE
        )
        return unique, (dropped, dups) | "Metadata drops" >> beam.Flatten()
