"""Threshold filters on the scores LAION ships with its metadata."""

from __future__ import annotations

from typing import Optional


def _above(value, limit: Optional[float]) -> bool:
    return limit is not None and value is not None and value == value and float(value) > limit


def punsafe(value: Optional[float], max_punsafe: Optional[float]) -> Optional[str]:
    """LAION's punsafe: probability the image is NSFW (missing column or null value passes)."""
    return "unsafe" if _above(value, max_punsafe) else None


def pwatermark(value: Optional[float], max_pwatermark: Optional[float]) -> Optional[str]:
    """LAION's pwatermark: probability the image carries a watermark."""
    return "watermark" if _above(value, max_pwatermark) else None


def metadata_similarity(value: Optional[float], min_similarity: Optional[float]) -> Optional[str]:
    """The input's precomputed CLIP similarity (LAION ships ViT-B/32 scores)."""
    if min_similarity is None or value is None or value != value:
        return None
    return "low_metadata_similarity" if float(value) < min_similarity else None


def nsfw(score: Optional[float], max_nsfw: Optional[float]) -> Optional[str]:
    """The NSFW head's score of the image (pipeline/safety/nsfw.py)."""
    return "nsfw" if _above(score, max_nsfw) else None
