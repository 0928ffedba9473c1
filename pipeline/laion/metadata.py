"""Filters on metadata, before anything is downloaded: they are the cheapest drops of all."""

from __future__ import annotations

import apache_beam as beam

from ..filters import language as language_filter
from ..filters import safety, text
from ..filters import url as url_filter
from ..recipe import MetadataFilterConfig
from ..records import Sample
from ..stage import KeepOnePerKey, apply_with_drops, drop, input_order

__all__ = ["FilterMetadata", "metadata_detail"]

STAGE = "metadata"


def metadata_checks(s: Sample, cfg: MetadataFilterConfig):
    """The pure filters in order; the first that fails names the drop reason."""
    yield url_filter.url_scheme(s.url, cfg.url_schemes)
    yield text.caption_length(s.caption, cfg.min_caption_chars, cfg.max_caption_chars, cfg.min_caption_words)
    yield safety.punsafe(s.meta.get("punsafe"), cfg.max_punsafe)
    yield safety.pwatermark(s.meta.get("pwatermark"), cfg.max_pwatermark)
    yield safety.metadata_similarity(s.meta.get("similarity"), cfg.min_metadata_similarity)


def _num(value) -> str:
    return f"{float(value):.4g}"


def metadata_detail(reason: str, s: Sample, cfg: MetadataFilterConfig, lang: str = "", score: float = 0.0) -> str:
    """What a metadata drop's ``reason`` saw in ``s`` and the rule of ``cfg`` (section ``filters``)
    that decided it: "3 characters, filters.min_caption_chars is 5"."""
    caption = s.caption or ""
    about_url = url_filter.url_rule_detail(reason, s.url, "the URL", "row", cfg.url_schemes, "filters.url_schemes")
    if about_url is not None:
        return about_url
    if reason == "no_caption":
        return f"the caption is {s.caption!r}: every row needs one"
    if reason in ("caption_too_short", "caption_too_long"):
        caption = text.normalize_caption(caption)
        chars, words = len(caption), len(caption.split(" "))
        if reason == "caption_too_long":
            return f"{chars} characters, filters.max_caption_chars is {cfg.max_caption_chars}"
        if chars < cfg.min_caption_chars:
            return f"{chars} characters, filters.min_caption_chars is {cfg.min_caption_chars}"
        return f"{words} word{'s' if words != 1 else ''}, filters.min_caption_words is {cfg.min_caption_words}"
    if reason == "unsafe":
        return f"punsafe {_num(s.meta['punsafe'])} > filters.max_punsafe {_num(cfg.max_punsafe)}"
    if reason == "watermark":
        return f"pwatermark {_num(s.meta['pwatermark'])} > filters.max_pwatermark {_num(cfg.max_pwatermark)}"
    if reason == "low_metadata_similarity":
        return (
            f"similarity {_num(s.meta['similarity'])} < filters.min_metadata_similarity "
            f"{_num(cfg.min_metadata_similarity)}"
        )
    if reason == "wrong_language":
        allowed = ", ".join(cfg.language.allowed)
        return f"language {lang} (score {score:.2f}) is not one of filters.language.allowed {allowed}"
    if reason == "uncertain_language":
        return f"language {lang} scored {score:.2f} < filters.language.min_score {_num(cfg.language.min_score)}"
    return reason  # a reason this module does not emit: never empty


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
                yield drop(s, reason, STAGE, detail=metadata_detail(reason, s, self.cfg))
                return
        if self._lid is not None:
            lang, score = self._lid.identify(text.normalize_caption(s.caption))
            s = s.replace(language=lang, language_score=score)
            reason = language_filter.language(lang, score, self.cfg.language.allowed, self.cfg.language.min_score)
            if reason:
                yield drop(s, reason, STAGE, detail=metadata_detail(reason, s, self.cfg, lang, score))
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
            lambda s: url_filter.normalize_url(s.url), input_order, "duplicate_url", STAGE, "URL"
        )
        return unique, (dropped, dups) | "Metadata drops" >> beam.Flatten()
