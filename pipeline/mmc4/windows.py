"""OpenFlamingo windows: an aligned MMC4 document cut into pieces the training loop sees whole.

OpenFlamingo's interleaved loader (``preprocess_interleaved``, open_flamingo/train/data.py) builds
one text from a document: the sentences joined by spaces, ``<|endofchunk|><image>`` before each
sentence an image it keeps is assigned to (the first ``<|endofchunk|>`` removed, the spaces
around the markers too), ``<|endofchunk|>`` and the end-of-text token at the end.  It tokenizes
that and keeps the first ``max_tokens`` (256) tokens: an image whose ``<image>`` token falls past
them is never seen, a document left with no ``<image>`` is rejected, and at most
``max_num_images`` (6) images are used.

This module cuts a document into **windows**: runs of consecutive sentences whose loader text,
with the markers of their images, fits ``max_tokens`` whole (end-of-chunk and end-of-text tokens
included), holding at most ``max_images`` images the loader keeps.  Each window is written as an
OpenFlamingo document of its own (:func:`window_document`): the loader sees all of it, so no
image is shipped that training cannot see, and no ``<image>`` is ever the last token (a window
that fits ends with ``<|endofchunk|>`` and the end-of-text token).

Tokens are counted as the language model counts them (:class:`TokenCounter`): with a Hugging
Face ``tokenizers`` file (the tokenizer.json of MPT's or LLaMA's tokenizer) and the two special
tokens the loader adds, or, without one, by a documented estimate with a safety margin
(:data:`ESTIMATE_BYTES_PER_TOKEN`).

Everything here is pure: the Beam stages (documents.py) and the tests call the same functions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:
    from ..recipe import WindowsConfig

__all__ = [
    "EOC",
    "IMAGE",
    "ESTIMATE_BYTES_PER_TOKEN",
    "TokenizerError",
    "TokenCounter",
    "Window",
    "loader_text",
    "cut_windows",
    "window_verdict",
    "window_document",
    "first_window_bound",
    "could_show_in_first_window",
    "Windowed",
    "window_aligned",
    "check_windows",
    "OUTSIDE",
    "summary_lines",
]

EOC = "<|endofchunk|>"  # OpenFlamingo's end-of-chunk token (an added special token)
IMAGE = "<image>"  # OpenFlamingo's image token (an added special token)
LOADER_TOKENS = (EOC, IMAGE)
# Without a tokenizer file, tokens are estimated: a run of letters counts one token per this many
# UTF-8 bytes (rounded up), every digit and every other symbol one token, whitespace nothing,
# each special token one, plus a beginning- and an end-of-text token.  Measured on the windows of
# the 107 real mmc4 documents of the shared folder, CLIP's byte-pair tokenizer (49k merges,
# close to MPT's and LLaMA's; LLaMA too splits numbers into digits) counts 63% of the estimate
# at the median and 83% at the most: windows come out shorter than max_tokens, not cut.
ESTIMATE_BYTES_PER_TOKEN = 3.5
_PIECE = re.compile(r"[^\W\d_]+|\S")  # a run of letters, or one other non-space character
# Tokens a text-only first window may exceed max_tokens by and still bound where a first window
# with images can end (first_window_bound): a marker adds at least one token, and the space it
# removes can, rarely, save one.
BOUND_SLACK = 4

_SPECIAL = re.compile("(" + "|".join(re.escape(t) for t in LOADER_TOKENS) + ")")


class TokenizerError(UserError, ValueError):
    """mmc4.windows.tokenizer names a file that is not a tokenizers tokenizer.json."""


class TokenCounter:
    """The number of tokens OpenFlamingo's loader gets from a text.

    With ``tokenizer`` (a ``tokenizers.Tokenizer``), ``<|endofchunk|>`` and ``<image>`` are added
    as special tokens, as OpenFlamingo adds them, and a text counts ``len(encode(text).ids)``
    (the tokenizer's own beginning-of-text token included where its post-processor adds one, as
    LLaMA's does) plus one for the end-of-text token the loader appends.  Without one, the count
    is an estimate (``estimated`` is true): each special token one, a run of letters one per
    ``ESTIMATE_BYTES_PER_TOKEN`` UTF-8 bytes rounded up, each digit or other symbol one, plus
    two (beginning and end of text).
    """

    def __init__(self, tokenizer=None, source: Optional[str] = None):
        self.tokenizer = tokenizer
        self.source = source
        if tokenizer is not None:
            tokenizer.add_special_tokens(list(LOADER_TOKENS))

    @property
    def estimated(self) -> bool:
        return self.tokenizer is None

    @classmethod
    def from_file(cls, path: str) -> "TokenCounter":
        """Load a tokenizer.json from a local path or any Beam filesystem URL; a file that is
        missing or does not load raises :class:`TokenizerError` naming it."""
        from apache_beam.io.filesystems import FileSystems

        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - an install without the dependency
            raise TokenizerError(f"mmc4.windows.tokenizer needs the tokenizers package: {e}") from e
        try:
            with FileSystems.open(path) as f:
                text = f.read().decode("utf-8")
        except Exception as e:  # noqa: BLE001 - any filesystem's not-found or permission error
            raise TokenizerError(f"mmc4.windows.tokenizer: cannot read {path}: {_first_line(e)}") from e
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
            raise TokenizerError(
                f"mmc4.windows.tokenizer: {path} is not a Hugging Face tokenizer.json: {_first_line(e)}"
            ) from e
        return cls(tokenizer, source=path)

    @classmethod
    def for_config(cls, cfg: "WindowsConfig") -> "TokenCounter":
        return cls.from_file(cfg.tokenizer) if cfg.tokenizer else cls()

    def count(self, text: str) -> int:
        """Tokens of the loader's text ``text`` (:func:`loader_text`), end-of-text token included."""
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text).ids) + 1
        n = 2
        for part in _SPECIAL.split(text):
            if part in LOADER_TOKENS:
                n += 1
            else:
                for piece in _PIECE.findall(part):
                    n += math.ceil(len(piece.encode("utf-8")) / ESTIMATE_BYTES_PER_TOKEN) if piece[0].isalpha() else 1
        return n

    def describe(self) -> str:
        if self.estimated:
            return "estimated (no mmc4.windows.tokenizer; see pipeline/mmc4/windows.py)"
        return f"counted with {self.source}"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def loader_text(sentences: Sequence[str], image_sentences) -> str:
    """The text OpenFlamingo's loader tokenizes for these sentences, with an image before each
    sentence in ``image_sentences`` (indices into ``sentences``), without the end-of-text token.

    Restated from the loader's description: ``<|endofchunk|><image>`` before each such sentence,
    the sentences joined by one space, the first ``<|endofchunk|>`` removed, the spaces before
    ``<|endofchunk|>`` and on both sides of ``<image>`` removed, ``<|endofchunk|>`` appended.
    """
    marked = set(image_sentences)
    text = " ".join(f"{EOC}{IMAGE}{s}" if j in marked else s for j, s in enumerate(sentences))
    text = text.replace(EOC, "", 1)
    text = text.replace(f" {EOC}", EOC).replace(f"{IMAGE} ", IMAGE).replace(f" {IMAGE}", IMAGE)
    return f"{text}{EOC}"


@dataclass(frozen=True)
class Window:
    """Sentences ``start`` to ``end`` (exclusive) of a document, its images (positions in the
    document's aligned image list) whose sentence is in that range, ``shown`` those of them the
    loader keeps (similarity at or above its threshold), and the window's ``tokens``."""

    start: int
    end: int
    images: Tuple[int, ...]
    shown: Tuple[int, ...]
    tokens: int


def cut_windows(
    sentences: Sequence[str],
    image_sentences: Sequence[int],
    shown: Sequence[bool],
    counter: TokenCounter,
    max_tokens: int,
    max_images: int,
) -> Tuple[List[Window], List[int]]:
    """Cut a document into windows; returns ``(windows, long_sentences)``.

    ``image_sentences[i]`` is the sentence image ``i`` is assigned to, ``shown[i]`` whether the
    loader keeps it (its marker is in the text; only those count towards ``max_images``).
    Windows are made greedily from the first sentence: each takes as many consecutive sentences
    as fit ``max_tokens`` (the loader text of the window, markers and end tokens included) with at
    most ``max_images`` shown images.  A sentence that does not fit a window by itself, with an
    image marker (:func:`is_long`), is in no window: it is listed in ``long_sentences`` and the
    windows break around it.  Every window is returned, also those without an image: what is
    written is :func:`window_verdict`'s decision.
    """
    n = len(sentences)
    for j in image_sentences:
        if not 0 <= j < n:
            raise ValueError(f"an image is assigned to sentence {j}; the document has {n} sentences")
    by_sentence: Dict[int, List[int]] = {}
    for i, j in enumerate(image_sentences):
        by_sentence.setdefault(j, []).append(i)
    marked = {j for j, images in by_sentence.items() if any(shown[i] for i in images)}
    shown_in = [sum(1 for i in by_sentence.get(j, ()) if shown[i]) for j in range(n)]

    def tokens(a: int, b: int) -> int:
        return counter.count(loader_text(sentences[a:b], [j - a for j in range(a, b) if j in marked]))

    long_sentences = [j for j in range(n) if is_long(sentences[j], counter, max_tokens)]
    long = set(long_sentences)
    windows: List[Window] = []
    a = 0
    while a < n:
        if a in long:
            a += 1
            continue
        b, images = a + 1, shown_in[a]
        while b < n and b not in long and images + shown_in[b] <= max_images and tokens(a, b + 1) <= max_tokens:
            images += shown_in[b]
            b += 1
        in_window = tuple(i for j in range(a, b) for i in by_sentence.get(j, ()))
        windows.append(Window(a, b, in_window, tuple(i for i in in_window if shown[i]), tokens(a, b)))
        a = b
    return windows, long_sentences


def is_long(sentence: str, counter: TokenCounter, max_tokens: int) -> bool:
    """A sentence that, with an image before it, does not fit a window of ``max_tokens`` alone.
    Decided with a marker whether or not an image lands on it, so that where windows break is
    known before any image is downloaded (:func:`first_window_bound`)."""
    return counter.count(loader_text([sentence], [0])) > max_tokens


def window_verdict(window: Window, single_image: bool, number: int = 0, trim: bool = False) -> Optional[str]:
    """Why a window is not written (a drop reason), or None: trim writes the first window only
    (``number`` 0); the loader rejects a window without an image it keeps, and drops one with a
    single image half the time (kept when ``single_image``)."""
    if trim and number > 0:
        return "past_first_window"
    if not window.shown:
        return "window_without_image"
    if len(window.shown) == 1 and not single_image:
        return "single_image_window"
    return None


def window_document(document: dict, window: Window, number: int, count: int, tokens_estimated: bool) -> dict:
    """The OpenFlamingo document of one window of an aligned ``document`` (DESIGN.md section 6:
    ``image_info`` and the similarity matrix rows sorted by sentence): its sentences, its images
    with ``matched_text_index`` counted from the window's first sentence, and the rows and columns
    of the similarity matrix that belong to it.  ``window`` records where it came from: the input
    document (``doc_id``), its number among the document's windows, the first sentence and the
    tokens."""
    a, b = window.start, window.end
    info = document["image_info"]
    images = sorted(window.images, key=lambda i: (info[i]["matched_text_index"], i))
    out = {k: v for k, v in document.items() if k not in ("image_info", "similarity_matrix", "text_list", "id")}
    out.update(
        id=f"{document['id']}/w{number}",
        doc_id=document["id"],
        text_list=list(document["text_list"][a:b]),
        image_info=[{**info[i], "matched_text_index": info[i]["matched_text_index"] - a} for i in images],
        similarity_matrix=[list(document["similarity_matrix"][i][a:b]) for i in images],
        window={
            "index": number,
            "windows": count,
            "first_sentence": a,
            "sentences": b - a,
            "tokens": window.tokens,
            "tokens_estimated": tokens_estimated,
        },
    )
    return out


@dataclass
class Windowed:
    """What :func:`window_aligned` made of a document: every window cut, with why it is not
    written (None: written) and its OpenFlamingo document when written; and the images that are
    in no written window, with why (position in the document's ``image_info`` -> reason)."""

    windows: List[Tuple[Window, Optional[str], Optional[dict]]]
    image_reasons: Dict[int, str]

    @property
    def written(self) -> List[Tuple[int, Window, dict]]:
        return [(k, w, doc) for k, (w, reason, doc) in enumerate(self.windows) if doc is not None]


def window_aligned(
    document: dict,
    counter: TokenCounter,
    *,
    mode: str = "split",
    max_tokens: int = 256,
    max_images: int = 6,
    single_image: bool = False,
    threshold: Optional[float] = 0.24,
) -> Windowed:
    """Cut an aligned document (``id``, ``text_list``, ``image_info`` with ``matched_text_index``,
    sorted by it, and ``similarity_matrix`` rows in the same order) into windows.

    An image the loader keeps is one whose similarity with its sentence is at least ``threshold``
    (every image when None).  An image whose ``matched_text_index`` is not a sentence of the
    document is in no window (``no_such_sentence``), nor one on a long sentence
    (``long_sentence``); a window that is not written (:func:`window_verdict`; with
    ``mode="trim"`` every window but the first: ``past_first_window``) takes its images with it,
    for the same reason.
    """
    if mode not in ("split", "trim"):
        raise ValueError(f"mode must be split or trim, not {mode!r}")
    sentences = document["text_list"]
    info = document["image_info"]
    reasons: Dict[int, str] = {}
    valid = []
    for p, image in enumerate(info):
        reason = sentence_reason(image.get("matched_text_index"), len(sentences))
        if reason:
            reasons[p] = reason
        else:
            valid.append(p)
    sentence_of = [info[p]["matched_text_index"] for p in valid]
    shown = [
        threshold is None or document["similarity_matrix"][p][info[p]["matched_text_index"]] >= threshold for p in valid
    ]
    cut, long_sentences = cut_windows(sentences, sentence_of, shown, counter, max_tokens, max_images)
    long = set(long_sentences)
    for k, p in enumerate(valid):
        reason = sentence_reason(sentence_of[k], len(sentences), long)
        if reason:
            reasons[p] = reason
    windows: List[Tuple[Window, Optional[str], Optional[dict]]] = []
    for number, w in enumerate(cut):
        w = Window(w.start, w.end, tuple(valid[i] for i in w.images), tuple(valid[i] for i in w.shown), w.tokens)
        reason = window_verdict(w, single_image, number, trim=mode == "trim")
        doc = None if reason else window_document(document, w, number, len(cut), counter.estimated)
        windows.append((w, reason, doc))
        for p in w.images:
            if reason:
                reasons[p] = reason
    return Windowed(windows, reasons)


def sentence_reason(sentence, n_sentences: int, long_sentences=frozenset()) -> Optional[str]:
    """Why an image assigned to ``sentence`` is in no window, or None: the index names no sentence
    of the document, or the sentence is too long for a window (:func:`is_long`)."""
    if not isinstance(sentence, int) or isinstance(sentence, bool) or not 0 <= sentence < n_sentences:
        return "no_such_sentence"
    if sentence in long_sentences:
        return "long_sentence"
    return None


def first_window_bound(sentences: Sequence[str], counter: TokenCounter, max_tokens: int) -> Optional[Tuple[int, int]]:
    """The sentences ``(first, last)`` (inclusive) that the first window of a document can hold,
    whichever of its images survive the download, or None when no window can be cut.

    Long sentences (:func:`is_long`) do not depend on the images, so the first window starts at
    the first sentence that is not long.  Image markers only add tokens (one at least: a window the
    loader accepts has one), so the first window ends at or before the last sentence a text-only
    window from there fits, with ``BOUND_SLACK`` tokens to spare for the rare space a marker saves.
    """
    n = len(sentences)
    first = next((j for j in range(n) if not is_long(sentences[j], counter, max_tokens)), None)
    if first is None:
        return None
    last = first
    while (
        last + 1 < n
        and not is_long(sentences[last + 1], counter, max_tokens)
        and counter.count(loader_text(sentences[first : last + 2], [])) <= max_tokens + BOUND_SLACK
    ):
        last += 1
    return first, last


def could_show_in_first_window(sim_row: Sequence[float], bound: Optional[Tuple[int, int]], threshold: float) -> bool:
    """Whether an image with this similarity row (one value per sentence) could be an image the
    loader keeps in the first window: some sentence within ``bound`` scores at least
    ``threshold`` with it."""
    if bound is None:
        return False
    first, last = bound
    row = np.asarray(sim_row, dtype=float)[first : last + 1]
    return bool(row.size) and float(row.max()) >= threshold


def first_window_reason(sim_row: Sequence[float], bound: Optional[Tuple[int, int]], threshold: float) -> Optional[str]:
    """Why trim need not download an image (:func:`could_show_in_first_window`), or None."""
    return None if could_show_in_first_window(sim_row, bound, threshold) else "past_first_window"


def check_windows(cfg: "WindowsConfig") -> Optional[TokenCounter]:
    """Before a build starts: the tokenizer file of ``mmc4.windows`` loads (TokenizerError, one
    line, otherwise).  Returns the counter, or None when windows are off."""
    if not cfg.enabled:
        return None
    return TokenCounter.for_config(cfg)


# The image drops of a build with windows that leave an image outside every window written.
OUTSIDE = (
    "metadata/past_first_window",
    "align/long_sentence",
    "align/window_without_image",
    "align/single_image_window",
    "align/past_first_window",
    "align/no_such_sentence",
)


def summary_lines(cfg: "WindowsConfig", images_kept: int, image_drops: Dict[str, int]) -> List[str]:
    """The build summary's lines about windows: the images inside a window written (every image
    kept: a window holds its images whole), those left outside every window and why, and how
    tokens were counted."""
    outside = {reason: image_drops[reason] for reason in OUTSIDE if image_drops.get(reason)}
    lines = [
        f"  windows        {cfg.mode}, at most {cfg.max_tokens} tokens and {cfg.max_images} images each; tokens "
        + ("estimated (no mmc4.windows.tokenizer)" if not cfg.tokenizer else f"counted with {cfg.tokenizer}"),
        f"  {'in a window':<15}{images_kept:>10,} images, every one within its window's {cfg.max_tokens} tokens",
        f"  {'outside':<15}{sum(outside.values()):>10,} images in no window written (not shipped)",
    ]
    lines += [f"    {reason:<38}{n:>8,}" for reason, n in outside.items()]
    return lines
