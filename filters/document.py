"""MMC4 document filters: counts of images and sentences, mmc4-core's similarity rule, what
OpenFlamingo's loader would keep, and v1.1's URL-duplicate flag.

The per-image URL rules of mmc4 (extensions, blocklisted words) are in :mod:`filters.url`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..mmc4.align import loader_view


def image_count(n: int, min_images: int, max_images: int) -> Optional[str]:
    """mmc4-core kept documents with 2 to 15 images."""
    if n < min_images:
        return "too_few_images"
    if n > max_images:
        return "too_many_images"
    return None


def sentence_count(n: int, min_sentences: int, max_sentences: int) -> Optional[str]:
    """mmc4-core kept documents with 4 to 40 sentences."""
    if n < min_sentences:
        return "too_few_sentences"
    if n > max_sentences:
        return "too_many_sentences"
    return None


def core_rule(matched_sims: Sequence[float], min_fraction: float = 0.75, min_sim: float = 0.25) -> Optional[str]:
    """mmc4-core: at least 75% of the images' matched similarities are above 0.25.

    A document without images has no evidence of alignment and fails.
    """
    if not matched_sims:
        return "fails_core_rule"
    above = sum(1 for s in matched_sims if s > min_sim)
    return None if above / len(matched_sims) >= min_fraction else "fails_core_rule"


def loader_rejects(sim: np.ndarray, threshold: float = 0.24, max_images: int = 6) -> Optional[str]:
    """A document of which OpenFlamingo's loader would keep no image is wasted training throughput."""
    return None if loader_view(sim, threshold, max_images) else "no_image_passes_loader"


def url_duplicate(flag: Optional[int], drop: bool) -> Optional[str]:
    """mmc4 v1.1 flags documents whose URL may appear twice (``could_have_url_duplicate``, 0/1)."""
    return "could_have_url_duplicate" if drop and flag else None
