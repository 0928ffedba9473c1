"""OpenFlamingo's MMC4 loader, restated for the tests from its description (DESIGN.md section 6 and
issue 18), not copied: what it does with one ``<key>.json`` document.

1. Images whose decoded bytes are under 11,000 (``len(raw) // 1000 <= 10``) are skipped.
2. ``linear_sum_assignment(-sim)`` on the rows of the images left; the pairs with similarity at or
   above the threshold (0.24) are kept, in image order, at most ``max_images`` (6) of them.
3. ``<|endofchunk|><image>`` before each kept image's sentence; sentences joined by a space; the
   first ``<|endofchunk|>`` removed; the spaces before ``<|endofchunk|>`` and around ``<image>``
   removed; ``<|endofchunk|>`` and the end-of-text token appended.
4. Tokenized, only the first ``max_tokens`` (256) tokens kept; the k-th ``<image>`` token is
   paired with the k-th kept image.
5. Rejected with no ``<image>`` token left ("Fewer than 1 images in sample"), or with a single one
   that is the last token.  (A single-image document is also dropped at random half the time:
   not a property of the document, so not restated.)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable, List, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

EOC, IMAGE, EOS = "<|endofchunk|>", "<image>", "<|endoftext|>"


@dataclass
class LoaderView:
    accepted: bool
    kept: List[Tuple[int, int]]  # (image position in image_info, sentence) the loader assigns and keeps
    seen: int  # how many of them have their <image> token within max_tokens
    why: str = ""


def loader_view(
    doc: dict,
    tokenize: Callable[[str], List[str]],
    threshold: float = 0.24,
    max_images: int = 6,
    max_tokens: int = 256,
) -> LoaderView:
    """``tokenize(text)`` returns the token strings of ``text`` as the language model's tokenizer
    gives them (its beginning-of-text token included where it adds one); special tokens whole."""
    info = doc["image_info"]
    valid = [
        p
        for p, im in enumerate(info)
        if "image_base64" not in im or len(base64.b64decode(im["image_base64"])) // 1000 > 10
    ]
    sim = np.asarray(doc["similarity_matrix"], dtype=float).reshape(len(info), len(doc["text_list"]))[valid]
    kept: List[Tuple[int, int]] = []
    if len(valid) and sim.shape[1]:
        rows, cols = linear_sum_assignment(-sim)
        kept = [(valid[r], int(c)) for r, c in zip(rows, cols) if sim[r, c] >= threshold][:max_images]
    if not kept:
        return LoaderView(False, [], 0, "no image")
    sentences = list(doc["text_list"])
    for _, j in kept:
        sentences[j] = f"{EOC}{IMAGE}{sentences[j]}"
    text = " ".join(sentences).replace(EOC, "", 1)
    text = text.replace(f" {EOC}", EOC).replace(f"{IMAGE} ", IMAGE).replace(f" {IMAGE}", IMAGE)
    tokens = (tokenize(f"{text}{EOC}") + [EOS])[:max_tokens]
    seen = min(tokens.count(IMAGE), len(kept))
    if seen < 1:
        return LoaderView(False, kept, 0, "Fewer than 1 images in sample")
    if seen == 1 and tokens[-1] == IMAGE:
        return LoaderView(False, kept, 1, "Only one image at the end of sample")
    return LoaderView(True, kept, seen)


def hf_tokenize(tokenizer) -> Callable[[str], List[str]]:
    """A ``tokenizers.Tokenizer`` (with the two special tokens added) as ``tokenize``."""
    return lambda text: tokenizer.encode(text).tokens


def clip_tokenize() -> Callable[[str], List[str]]:
    """CLIP's byte-pair tokenizer (open_clip ships its 49k merges), the issue's reference for the
    language models' tokenizers, with the special tokens kept whole and a beginning-of-text token."""
    import re

    from open_clip.tokenizer import SimpleTokenizer

    clip = SimpleTokenizer()
    special = re.compile(f"({re.escape(EOC)}|{re.escape(IMAGE)})")

    def tokenize(text: str) -> List[str]:
        out = ["<s>"]
        for part in special.split(text):
            if part in (EOC, IMAGE):
                out.append(part)
            elif part:
                out += [str(t) for t in clip.encode(part)]
        return out

    return tokenize


BUNDLED = (
    __import__("pathlib").Path(__file__).resolve().parent.parent
    / "pipeline"
    / "assets"
    / "sample"
    / "mmc4"
    / "docs.jsonl"
)


def train_tokenizer(path, vocab_size: int = 8000) -> str:
    """A small byte-level BPE tokenizer (GPT-2 / MPT style) trained with the ``tokenizers`` library
    on the sentences of the bundled real mmc4 documents, saved as a tokenizer.json at ``path``:
    the kind of file a user names in ``mmc4.windows.tokenizer``.  Trained on 30 documents, it
    splits text more finely than a language model's tokenizer (about 3.7 bytes a token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from flamingo_corpus.mmc4.files import checked_documents

    sentences = [s for _, doc, _ in checked_documents(str(BUNDLED)) if doc for s in doc["text_list"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[EOS]
    )
    tokenizer.train_from_iterator(sentences, trainer)
    tokenizer.save(str(path))
    return str(path)
