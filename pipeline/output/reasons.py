"""Every (stage, reason) a build can write to the index: the tokens of the ``stage`` and ``reason``
columns of a dropped row, each with what it means.

The tokens are part of the output contract (docs/output.md): people count and filter by them, so
a token is never renamed silently. docs/output.md's drop table is generated from ``REASONS``
(``python -m flamingo_corpus.reference``), and tests/unit/test_reference.py checks that every token
the code can emit is listed here, statically and on the sample builds' indexes. A new drop
reason is added here in the same change that emits it.

The download tokens and their meanings are ``download.fetch.REASONS``, the fetcher's own list.
"""

from __future__ import annotations

import re
from typing import Dict, NamedTuple, Optional, Tuple

from ..download.fetch import REASONS as FETCH_REASONS

__all__ = ["KINDS", "STAGES", "REASONS", "Reason", "lookup", "is_known"]

# The index's ``kind`` column: what one index row stands for.
KINDS = {
    "row": "a LAION input row",
    "document": "an MMC4 document",
    "image": "an MMC4 image (one per entry of a document's image_info)",
    "window": "an OpenFlamingo window cut from an MMC4 document (mmc4.windows): one tar sample each",
}

# Every stage that drops, in the order a sample meets them; kept rows have stage "shard".
STAGES = {
    "read": "reading the input files (LAION parquet row groups, MMC4 jsonl lines)",
    "metadata": "filters on the metadata, before download (LAION rows; MMC4 image URLs)",
    "document": "MMC4 document rules (before and after alignment)",
    "download": "fetching the image (flamingo_corpus.download.fetch)",
    "image": "decoding, checking, resizing and re-encoding the image",
    "safety": "removal lists (safety.blocklist) and the NSFW head (safety.nsfw_head)",
    "clip": "the CLIP image-caption similarity threshold (LAION)",
    "decontaminate": "overlap with evaluation sets (decontamination.index)",
    "dedup": "exact duplicates by encoded-image sha256 (dedup.exact)",
    "near_dup": "near duplicates across the build (dedup.near) and MMC4's frequent images",
    "sem_dedup": "semantic duplicates by CLIP image embedding (dedup.semantic)",
    "align": "MMC4 image-to-sentence alignment",
}


class Reason(NamedTuple):
    """One drop: ``stage`` and ``token`` as the index holds them, the index ``kinds`` it can end
    (``row``, ``document``, ``image``), and what it means. A token with ``<...>`` is a pattern:
    ``http_<code>`` stands for ``http_404``, ``http_503``, ..."""

    stage: str
    token: str
    kinds: Tuple[str, ...]
    meaning: str


ROW, DOC, IMG = ("row",), ("document",), ("image",)
ROW_IMG = ("row", "image")
IMG_WIN = ("image", "window")
ROW_DOC = ("row", "document")

_READ = [
    Reason("read", "missing_column", ROW, "the parquet file has no URL or caption column (every row of the file)"),
    Reason("read", "bad_column_type", ROW, "the URL or caption column is not text (every row of the file)"),
    Reason("read", "url_not_utf8", ROW, "the URL holds bytes that are not UTF-8"),
    Reason("read", "caption_not_utf8", ROW, "the caption holds bytes that are not UTF-8"),
    Reason("read", "unreadable_row_group", ROW, "the row group cannot be read (each of its rows)"),
    Reason(
        "read",
        "unreadable_input",
        ROW_DOC,
        "the file cannot be read at all: one index row `<file>:*` (LAION) or `<file>:0` (MMC4), "
        "counted as one input row",
    ),
    Reason("read", "bad_json", DOC, "the line is not JSON"),
    Reason("read", "bad_unicode", DOC, "a string of the document holds a lone surrogate (not valid Unicode)"),
    Reason("read", "not_an_object", DOC, "the line is JSON but not an object"),
    Reason("read", "missing_field", DOC, "one of url, text_list, image_info, similarity_matrix is missing"),
    Reason("read", "bad_text_list", DOC, "text_list is not a non-empty list of strings"),
    Reason("read", "bad_image_info", DOC, "image_info is not a list of objects"),
    Reason("read", "bad_matrix_shape", DOC, "similarity_matrix is not images x sentences finite numbers"),
    Reason("read", "zip_without_jsonl", DOC, "a .zip input holds no .jsonl (one row `<file>:0`)"),
    Reason("read", "zip_with_several_jsonl", DOC, "a .zip input holds more than one .jsonl (one row `<file>:0`)"),
    Reason("read", "bad_zip", DOC, "a .zip input is not a zip archive (one row `<file>:0`)"),
]

_METADATA = [
    Reason("metadata", "no_url", ROW_IMG, "the URL is empty or missing"),
    Reason("metadata", "bad_url", ROW_IMG, "the URL cannot be parsed or has no host"),
    Reason("metadata", "bad_scheme", ROW_IMG, "the URL's scheme is not in filters.url_schemes (MMC4: http, https)"),
    Reason("metadata", "no_caption", ROW, "the caption is empty or missing"),
    Reason("metadata", "caption_too_short", ROW, "fewer than filters.min_caption_chars or min_caption_words"),
    Reason("metadata", "caption_too_long", ROW, "more than filters.max_caption_chars"),
    Reason("metadata", "unsafe", ROW, "LAION's punsafe is above filters.max_punsafe"),
    Reason("metadata", "watermark", ROW, "LAION's pwatermark is above filters.max_pwatermark"),
    Reason(
        "metadata", "low_metadata_similarity", ROW, "the input's similarity is below filters.min_metadata_similarity"
    ),
    Reason("metadata", "wrong_language", ROW, "the caption's language is not in filters.language.allowed"),
    Reason(
        "metadata", "uncertain_language", ROW, "the language is allowed but scored under filters.language.min_score"
    ),
    Reason("metadata", "duplicate_url", ROW, "an earlier row has the same normalised URL (filters.dedup_urls)"),
    Reason("metadata", "bad_extension", IMG, "the URL's extension is not in mmc4.image_extensions"),
    Reason("metadata", "url_blocklisted_word", IMG, "the URL contains one of mmc4.url_words (logo, button, ...)"),
    Reason(
        "metadata",
        "past_first_window",
        IMG,
        "mmc4.windows.mode trim, aligning with the release's matrix: no sentence the first window can hold "
        "scores mmc4.loader_threshold with it, so it is not downloaded",
    ),
]

_DOCUMENT = [
    Reason(
        "document",
        "could_have_url_duplicate",
        DOC,
        "mmc4 flags the document's URL as repeated (mmc4.drop_url_duplicates)",
    ),
    Reason("document", "too_few_sentences", DOC, "fewer than mmc4.min_sentences sentences"),
    Reason("document", "too_many_sentences", DOC, "more than mmc4.max_sentences sentences"),
    Reason(
        "document", "duplicate_document", DOC, "an earlier document has the same URL and text (mmc4.dedup_documents)"
    ),
    Reason("document", "too_few_images", DOC, "fewer than mmc4.min_images images survive alignment"),
    Reason("document", "too_many_images", DOC, "more than mmc4.max_images images survive alignment"),
    Reason("document", "fails_core_rule", DOC, "mmc4-core's similarity rule fails (mmc4.core_rule)"),
    Reason(
        "document",
        "no_image_passes_loader",
        DOC,
        "OpenFlamingo's loader would keep none of its images (mmc4.loader_threshold)",
    ),
    Reason(
        "document",
        "no_window",
        DOC,
        "mmc4.windows: no window of the document is written (each lacks an image the loader keeps, or holds "
        "a single one with mmc4.windows.single_image false; trim: its first window)",
    ),
    Reason("document", "document_dropped", IMG, "an aligned image of a document dropped after alignment (detail: why)"),
]

_DOWNLOAD = [Reason("download", token, ROW_IMG, meaning) for token, meaning in FETCH_REASONS.items()]

_IMAGE = [
    Reason("image", "empty_body", ROW_IMG, "no bytes reached the image stage"),
    Reason("image", "not_an_image", ROW_IMG, "the bytes are not an image Pillow can open"),
    Reason("image", "decode_error", ROW_IMG, "the image opens but does not decode"),
    Reason("image", "decompression_bomb", ROW_IMG, "more pixels than image.max_pixels"),
    Reason("image", "too_small", ROW_IMG, "width or height below image.min_side"),
    Reason("image", "bad_aspect_ratio", ROW_IMG, "long side over short side above image.max_aspect_ratio"),
    Reason("image", "too_few_bytes", ROW_IMG, "re-encoded below image.min_encoded_bytes (MMC4: 11,000)"),
]

_LATER = [
    Reason("safety", "blocklisted", ROW_IMG, "on the removal list (safety.blocklist); the detail names the rule"),
    Reason("safety", "nsfw", ROW_IMG, "the NSFW head scores it above safety.max_nsfw (the index's nsfw column)"),
    Reason(
        "near_dup",
        "near_duplicate",
        ROW,
        "its pHash is within dedup.near_max_distance bits of a better-ranked image's (duplicate_of names it)",
    ),
    Reason("near_dup", "frequent_image", IMG, "its pHash is in more than dedup.max_image_documents documents"),
    Reason("clip", "low_similarity", ROW, "CLIP image-caption similarity below clip.min_similarity"),
    Reason("clip", "no_similarity", ROW, "no similarity could be computed while clip.min_similarity is set"),
    Reason(
        "decontaminate",
        "eval_overlap",
        ROW_IMG,
        "the image or caption matches an evaluation item; the detail names it and the evidence",
    ),
    Reason(
        "sem_dedup",
        "semantic_duplicate",
        ROW_IMG,
        "CLIP cosine above dedup.semantic_max_similarity to a better-ranked image in its cluster (duplicate_of)",
    ),
    Reason(
        "dedup",
        "duplicate_image",
        ROW,
        "the same encoded image (sha256) as a kept row: the highest similarity, then the earliest (duplicate_of)",
    ),
    Reason("align", "low_similarity", IMG, "its best sentence is below mmc4.min_image_similarity"),
    Reason(
        "align",
        "duplicate_in_document",
        IMG,
        "within mmc4.phash_max_distance bits of a better image of the same document (duplicate_of)",
    ),
    Reason("align", "unassigned", IMG, "left over after the one-to-one assignment, with mmc4.leftover: drop"),
    Reason(
        "align",
        "long_sentence",
        IMG,
        "mmc4.windows: its sentence, with its image, is longer than mmc4.windows.max_tokens, so it is in no window",
    ),
    Reason(
        "align",
        "window_without_image",
        IMG_WIN,
        "mmc4.windows: the window holds no image the loader keeps (none at mmc4.loader_threshold), so it is not "
        "written (the loader rejects it)",
    ),
    Reason(
        "align",
        "single_image_window",
        IMG_WIN,
        "mmc4.windows: the window holds one image the loader keeps and mmc4.windows.single_image is false",
    ),
    Reason(
        "align",
        "past_first_window",
        IMG_WIN,
        "mmc4.windows.mode trim: the window (or the image's) is not the document's first",
    ),
    Reason(
        "align",
        "no_such_sentence",
        IMG,
        "mmc4.windows: its matched_text_index names no sentence of the document",
    ),
]

_ORDER = {stage: i for i, stage in enumerate(STAGES)}
# In the order of STAGES, and within a stage in the order listed above.
REASONS: Tuple[Reason, ...] = tuple(
    sorted(_READ + _METADATA + _DOCUMENT + _DOWNLOAD + _IMAGE + _LATER, key=lambda r: _ORDER[r.stage])
)

_EXACT: Dict[Tuple[str, str], Reason] = {(r.stage, r.token): r for r in REASONS if "<" not in r.token}
# "http_<code>" -> http_[0-9]+
_PATTERNS = [
    (r.stage, re.compile("[0-9]+".join(re.escape(part) for part in re.split(r"<[^>]+>", r.token))), r)
    for r in REASONS
    if "<" in r.token
]
assert len(_EXACT) + len(_PATTERNS) == len(REASONS), "a (stage, reason) is listed twice"
assert {r.stage for r in REASONS} == set(STAGES), "every stage is described, and only those"


def lookup(stage: str, reason: str) -> Optional[Reason]:
    """The registry's entry for a dropped row's (stage, reason), or None when it is not listed."""
    found = _EXACT.get((stage, reason))
    if found is not None:
        return found
    return next((r for s, pattern, r in _PATTERNS if s == stage and pattern.fullmatch(reason)), None)


def is_known(stage: str, reason: str) -> bool:
    return lookup(stage, reason) is not None
