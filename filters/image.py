"""Filters on image geometry."""

from __future__ import annotations

from typing import Optional


def min_side(width: int, height: int, minimum: int) -> Optional[str]:
    return "too_small" if min(width, height) < minimum else None


def aspect_ratio(width: int, height: int, max_ratio: Optional[float]) -> Optional[str]:
    """Long side over short side; mmc4 kept [0.5, 2], i.e. a ratio of at most 2."""
    if max_ratio is None:
        return None
    if min(width, height) <= 0:
        return "bad_aspect_ratio"
    return "bad_aspect_ratio" if max(width, height) / min(width, height) > max_ratio else None


def similarity(value: Optional[float], minimum: Optional[float]) -> Optional[str]:
    """CLIP image-text cosine similarity below the recipe's threshold."""
    if minimum is None:
        return None
    if value is None or value != value:  # NaN (e.g. a zero embedding) must not pass a minimum
        return "no_similarity"
    return "low_similarity" if value < minimum else None


def encoded_size(n_bytes: int, minimum: int) -> Optional[str]:
    """OpenFlamingo's MMC4 loader silently skips images under 11,000 bytes (``len(raw) // 1000 <= 10``)."""
    return "too_few_bytes" if n_bytes < minimum else None
