"""Caption filters."""
from __future__ import annotations

import re
import unicodedata
from typing import Optional

_SPACE = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """NFC, collapsed whitespace, stripped: the form length limits and text dedup look at."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def caption_length(caption: Optional[str], min_chars: int, max_chars: int, min_words: int = 1) -> Optional[str]:
    if caption is None or not isinstance(caption, str) or not caption.strip():
        return "no_caption"
    text = normalize_caption(caption)
    if len(text) < min_chars or len(text.split(" ")) < min_words:
        return "caption_too_short"
    if len(text) > max_chars:
        return "caption_too_long"
    return None
