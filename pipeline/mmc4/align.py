"""Aligning the images of an MMC4 document into its sentences.

``similarity_matrix[i][j]`` is the CLIP similarity of image ``i`` and sentence ``j``.  mmc4 assigns
images to sentences one to one, maximising the total similarity, and puts the images left over
(more images than sentences) with their most similar sentence; OpenFlamingo's loader recomputes
the same one-to-one assignment and leaves the left-over images out.  mmc4 v1.0 stored wrong
``matched_text_index`` values for part of its documents, so the assignment is recomputed from the
matrix (:func:`realign_document`).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

LEFTOVER_CHOICES = ("argmax", "drop")

Pair = Tuple[int, int, float]  # (image index, sentence index, similarity)


def assign(sim: np.ndarray, leftover: str = "argmax", min_sim: Optional[float] = None) -> List[Pair]:
    """Images assigned to sentences, as ``(image, sentence, similarity)`` sorted by image.

    Images whose best similarity is below ``min_sim`` are removed first (mmc4 used 0.15).  The rest
    are assigned one to one, maximising the total similarity, by
    ``scipy.optimize.linear_sum_assignment(-sim)``.  scipy solves a rectangular matrix directly;
    mmc4's scripts instead pad it to a square with a constant dummy cost and solve that.  The two
    agree: every complete assignment of the padded square uses exactly ``|images - sentences|``
    dummy cells, so the constant adds the same amount to all of them and the best one restricted
    to the real cells is the best rectangular assignment, whatever the constant.

    Images left unassigned (more images than sentences) go to their most similar sentence with
    ``leftover="argmax"`` (mmc4) or are left out with ``leftover="drop"`` (the OpenFlamingo loader).

    Ties are broken deterministically: the solver returns the same assignment for the same matrix,
    and it is the very call the OpenFlamingo loader makes, so ties resolve the way the loader
    resolves them; an argmax tie goes to the first sentence.
    """
    if leftover not in LEFTOVER_CHOICES:
        raise ValueError(f"leftover must be one of {LEFTOVER_CHOICES}, not {leftover!r}")
    sim = np.asarray(sim, dtype=float)
    if sim.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D (images x sentences), not of shape {sim.shape}")
    if sim.size == 0:
        return []
    candidates = np.arange(sim.shape[0])
    if min_sim is not None:
        candidates = candidates[sim.max(axis=1) >= min_sim]
    rows, columns = linear_sum_assignment(-sim[candidates])
    matched = {int(candidates[r]): int(c) for r, c in zip(rows, columns)}
    if leftover == "argmax":
        for image in candidates:
            matched.setdefault(int(image), int(np.argmax(sim[image])))
    return [(i, j, float(sim[i, j])) for i, j in sorted(matched.items())]


def similarity(doc: dict) -> np.ndarray:
    """The document's similarity matrix as an (images x sentences) array, also when it has no images."""
    return np.asarray(doc["similarity_matrix"], dtype=float).reshape(len(doc["image_info"]), len(doc["text_list"]))


def realign_document(doc: dict, leftover: str = "argmax") -> Tuple[dict, bool]:
    """A copy of the document with every image's ``matched_text_index`` and ``matched_sim``
    recomputed from ``similarity_matrix``, and whether anything changed.

    No image is removed for a low similarity.  With ``leftover="argmax"`` every image keeps its
    entry; with ``leftover="drop"`` images left over by the one-to-one assignment are removed
    (their ``image_info`` entry and matrix row), so every image that stays has a sentence.  A change
    is a different index, a similarity off by more than 1e-6, or a removed image.  The input
    document is not modified; fields other than those are shared with it.
    """
    pairs = assign(similarity(doc), leftover=leftover)
    images = [_matched(doc["image_info"][i], j, s) for i, j, s in pairs]
    kept = [i for i, _, _ in pairs]
    changed = len(pairs) < len(doc["image_info"]) or any(
        _differs(doc["image_info"][i], new) for i, new in zip(kept, images)
    )
    rows = [doc["similarity_matrix"][i] for i in kept]
    return {**doc, "image_info": images, "similarity_matrix": rows}, changed


def _matched(image: dict, sentence: int, sim: float) -> dict:
    return {**image, "matched_text_index": sentence, "matched_sim": sim}


def _differs(old: dict, new: dict) -> bool:
    if old.get("matched_text_index") != new["matched_text_index"]:
        return True
    old_sim = old.get("matched_sim")
    return not isinstance(old_sim, (int, float)) or abs(old_sim - new["matched_sim"]) > 1e-6


def sort_by_sentence(doc: dict) -> dict:
    """A copy with ``image_info`` and the matrix rows ordered by ``matched_text_index`` (stable).

    OpenFlamingo's loader pairs the k-th ``<image>`` token of the text with the k-th image of
    ``image_info``, so images must come in the order of the sentences they belong to.
    """
    order = sorted(range(len(doc["image_info"])), key=lambda i: doc["image_info"][i]["matched_text_index"])
    return {
        **doc,
        "image_info": [doc["image_info"][i] for i in order],
        "similarity_matrix": [doc["similarity_matrix"][i] for i in order],
    }


def loader_view(sim: np.ndarray, threshold: float = 0.24, max_images: int = 6) -> List[Tuple[int, int]]:
    """The ``(image, sentence)`` pairs OpenFlamingo's MMC4 loader keeps from this matrix.

    The loader (open_flamingo/train/data.py, ``preprocess_interleaved``) runs
    ``linear_sum_assignment(-sim)``, keeps the pairs whose similarity is at least ``threshold`` in
    image order, and then the first ``max_images`` of them.  ``sim`` holds the rows of the images
    the loader could decode (its 10 KB minimum is the caller's concern).
    """
    kept = [(i, j) for i, j, s in assign(sim, leftover="drop") if s >= threshold]
    return kept[:max_images]
