"""Caption filters."""

from __future__ import annotations

import re
import unicodedata
from typing import Optional

_SPACE = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """NFC, collapsed whitespace, stripped: the form length limits and text dedup look at."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def match_key(text: str) -> str:
    """The form captions are compared in against evaluation captions: NFKC (full-width and
    ligature forms fold to plain ones), lower case, punctuation (Unicode category P*) removed,
    whitespace collapsed.  "A Dog, running." and "a dog running" give the same key."""
    folded = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(c for c in folded if not unicodedata.category(c).startswith("P"))
    return _SPACE.sub(" ", kept).strip()


def caption_length(caption: Optional[str], min_chars: int, max_chars: int, min_words: int = 1) -> Optional[str]:
    if caption is None or not isinstance(caption, str) or not caption.strip():
        return "no_caption"
    text = normalize_caption(caption)
    if len(text) < min_chars or len(text.split(" ")) < min_words:
        return "caption_too_short"
    if len(text) > max_chars:
        return "caption_too_long"
    return None
