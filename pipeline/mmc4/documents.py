"""The MMC4 document stages: read documents, split them into images and sentences for the shared
download/image/CLIP stages, and put them back together aligned.

A document travels as a Sample whose ``document`` is the JSON object; each of its images as a
Sample with ``doc_id`` and ``position`` (index in the input ``image_info``); each sentence as a
Sample with a caption and no URL.  After CLIP, ``AssembleDocuments`` groups the three by document
id and builds the output document (docs/output.md, the MMC4 sample).
"""

from __future__ import annotations

import base64
import hashlib
from typing import List, Optional, Tuple

import apache_beam as beam
import numpy as np

from ..filters import document as doc_filter
from ..filters import text as text_filter
from ..filters import url as url_filter
from ..images.perceptual import hamming
from ..inputs import input_units
from ..recipe import Mmc4Config
from ..records import KEPT, IndexRow, Sample
from ..stage import KeepOnePerKey, apply_with_drops, drop, input_order
from ..store.blocks import STORED_KEY
from . import align, windows
from . import files as mmc4
from .image_details import image_check_detail

__all__ = ["ReadMmc4Documents", "FilterDocuments", "SplitDocuments", "AssembleDocuments"]

READ, DOCUMENT, IMAGE, ALIGN = "read", "document", "metadata", "align"
SIMILARITY_DECIMALS = 4  # as the CLIP stage: identical scores whatever the batching
# Fields of an input image_info entry that the output recomputes or adds.
RECOMPUTED = ("matched_text_index", "matched_sim", "image_base64")


def _text(value) -> Optional[str]:
    """A document's ``url`` when it is text: the field is provenance only, but a number or a list
    there must not reach the URL functions or the index's string column."""
    return value if isinstance(value, str) else None


class _ReadShard(beam.DoFn):
    def process(self, item):
        source_index, path, name = item
        try:
            for line, doc, error in mmc4.checked_documents(path):
                doc_id = mmc4.document_id(name, line)
                s = Sample(
                    id=doc_id,
                    source_index=source_index,
                    row=line,
                    doc_id=doc_id,
                    url=_text(doc.get("url")) if isinstance(doc, dict) else None,
                    document=doc,
                )
                if error:
                    yield drop(s.replace(document=None), mmc4.reason_token(error), READ, detail=error[:200])
                else:
                    yield s
        except Exception as e:  # an unreadable shard is reported, the rest of the build goes on
            doc_id = mmc4.document_id(name, 0)
            yield drop(
                Sample(id=doc_id, source_index=source_index, row=0, url=None, doc_id=doc_id),
                "unreadable_input",
                READ,
                detail=f"{path}: {e}"[:300],
            )


class ReadMmc4Documents(beam.PTransform):
    """MMC4 jsonl / jsonl.zip shards -> (document Samples, drops of lines that are no document)."""

    def __init__(self, paths: List[str]):
        super().__init__()
        self.paths = paths

    def expand(self, pbegin):
        files = pbegin | "Input shards" >> beam.Create(input_units(self.paths)) | "Spread shards" >> beam.Reshuffle()
        docs, dropped = apply_with_drops(files, "Read documents", _ReadShard())
        return docs | "Spread documents" >> beam.Reshuffle(), dropped


def text_key(doc: dict) -> str:
    """Exact-duplicate key of a document: its normalised URL and normalised text."""
    text = "\n".join(text_filter.normalize_caption(t) for t in doc["text_list"])
    url = _text(doc.get("url")) or ""
    try:
        url = url_filter.normalize_url(url)
    except ValueError:
        pass
    return hashlib.sha256(f"{url}\n{text}".encode()).hexdigest()


class _CheckDocument(beam.DoFn):
    def __init__(self, cfg: Mmc4Config):
        self.cfg = cfg

    def process(self, s: Sample):
        doc = s.document
        for reason in (
            doc_filter.url_duplicate(doc.get("could_have_url_duplicate"), self.cfg.drop_url_duplicates),
            doc_filter.sentence_count(len(doc["text_list"]), self.cfg.min_sentences, self.cfg.max_sentences),
        ):
            if reason:
                yield drop(s, reason, DOCUMENT)
                return
        yield s


class FilterDocuments(beam.PTransform):
    """Document rules that need no image: the URL-duplicate flag, sentence counts, exact duplicates."""

    def __init__(self, cfg: Mmc4Config):
        super().__init__()
        self.cfg = cfg

    def expand(self, docs):
        kept, dropped = apply_with_drops(docs, "Check document", _CheckDocument(self.cfg))
        if not self.cfg.dedup_documents:
            return kept, dropped
        unique, dups = kept | "One document per URL and text" >> KeepOnePerKey(
            lambda s: text_key(s.document), input_order, "duplicate_document", DOCUMENT
        )
        return unique, (dropped, dups) | "Document drops" >> beam.Flatten()


def image_checks(url: Optional[str], cfg: Mmc4Config):
    yield url_filter.url_scheme(url, ("http", "https"))
    if cfg.image_extensions:
        yield url_filter.url_extension(url, cfg.image_extensions)
    if cfg.url_words:
        yield url_filter.url_words(url, cfg.url_words)


class _Explode(beam.DoFn):
    SENTENCES = "sentences"

    def __init__(self, cfg: Mmc4Config, release_matrix: bool = False):
        self.cfg = cfg
        # mmc4.windows trim, aligned with the release's matrix: what the first window can hold is
        # known before any download, and images that cannot be kept in it are not downloaded.
        self.prune = release_matrix and cfg.windows.enabled and cfg.windows.mode == "trim"
        self.counter: Optional[windows.TokenCounter] = None

    def setup(self):
        if self.prune:
            self.counter = windows.TokenCounter.for_config(self.cfg.windows)

    def _first_window(self, doc: dict) -> Optional[Tuple[int, int]]:
        assert self.counter is not None
        return windows.first_window_bound(doc["text_list"], self.counter, self.cfg.windows.max_tokens)

    def process(self, s: Sample):
        doc = s.document
        bound = self._first_window(doc) if self.prune else None
        threshold = self.cfg.loader_threshold if self.cfg.loader_threshold is not None else -np.inf
        for pos, info in enumerate(doc["image_info"]):
            url = info.get("raw_url") if isinstance(info, dict) else None
            image = Sample(
                id=f"{s.doc_id}#{pos}",
                source_index=s.source_index,
                row=s.row,
                url=url if isinstance(url, str) else None,
                doc_id=s.doc_id,
                position=pos,
                meta={"image_name": info.get("image_name") if isinstance(info, dict) else None},
            )
            reason = next((r for r in image_checks(image.url, self.cfg) if r), None)
            detail = image_check_detail(reason, image.url, self.cfg) if reason else None
            if not reason and self.prune:
                reason = windows.first_window_reason(doc["similarity_matrix"][pos], bound, threshold)
                detail = "past the first window: not downloaded (mmc4.windows.mode: trim)" if reason else None
            yield drop(image, reason, IMAGE, detail=detail) if reason else image
        for j, sentence in enumerate(doc["text_list"]):
            yield beam.pvalue.TaggedOutput(
                self.SENTENCES,
                Sample(
                    id=f"{s.doc_id}@{j}",
                    source_index=s.source_index,
                    row=s.row,
                    url=None,
                    caption=sentence,
                    doc_id=s.doc_id,
                    position=j,
                ),
            )


class SplitDocuments(beam.PTransform):
    """Documents -> (image Samples that pass mmc4's URL rules, sentence Samples, image drops).

    ``release_matrix``: the build aligns with the documents' own similarity matrices (CLIP off);
    with ``mmc4.windows`` in trim mode, images that cannot be kept in the first window are then
    dropped here, before they are downloaded (``metadata/past_first_window``).
    """

    def __init__(self, cfg: Mmc4Config, release_matrix: bool = False):
        super().__init__()
        self.cfg = cfg
        self.release_matrix = release_matrix

    def expand(self, docs):
        out = docs | "Images and sentences" >> beam.ParDo(_Explode(self.cfg, self.release_matrix)).with_outputs(
            "dropped", _Explode.SENTENCES, main="images"
        )
        return out.images, out[_Explode.SENTENCES], out.dropped


class _Assemble(beam.DoFn):
    def __init__(self, cfg: Mmc4Config):
        self.cfg = cfg
        self.counter: Optional[windows.TokenCounter] = None

    def setup(self):
        if self.cfg.windows.enabled:
            self.counter = windows.TokenCounter.for_config(self.cfg.windows)

    def process(self, item):
        _, parts = item
        if not parts["docs"]:  # the document was dropped earlier; its images are accounted for there
            return
        doc_sample = parts["docs"][0]
        images = sorted(parts["images"], key=lambda s: s.position)
        sentences = sorted(parts["sentences"], key=lambda s: s.position)
        sim = self._similarity(doc_sample.document, images, sentences)
        kept, image_drops = self._weak_and_duplicate(images, sim)
        pairs = align.assign(sim[kept], leftover=self.cfg.leftover) if kept else []
        assigned = {kept[i]: (j, v) for i, j, v in pairs}
        image_drops += [drop(images[i], "unassigned", ALIGN) for i in kept if i not in assigned]
        order = sorted(assigned, key=lambda i: (assigned[i][0], i))  # by sentence: the loader pairs in order
        reason = self._document_reason(sim[order], [assigned[i][1] for i in order])
        if reason:
            yield drop(doc_sample.replace(document=None), reason, DOCUMENT)
            for i in order:
                yield drop(images[i].replace(similarity=assigned[i][1]), "document_dropped", DOCUMENT, detail=reason)
        else:
            document = self._document(doc_sample, images, order, assigned, sim)
            if self.cfg.windows.enabled:
                yield from self._windows(
                    doc_sample, document, [images[i].replace(similarity=assigned[i][1]) for i in order]
                )
            else:
                yield document
        yield from image_drops

    def _windows(self, doc_sample: Sample, document: Sample, aligned: List[Sample]):
        """The aligned document cut into OpenFlamingo windows (windows.py): a Sample per window
        written (kind ``window``: ``position`` its number, ``document`` its JSON), the index rows
        of the document (with the first window) and of each image (with its window) as the
        windows' children; windows not written and images in none are drops."""
        cfg = self.cfg.windows
        assert self.counter is not None
        cut = windows.window_aligned(
            document.document,
            self.counter,
            mode=cfg.mode,
            max_tokens=cfg.max_tokens,
            max_images=cfg.max_images,
            single_image=cfg.single_image,
            threshold=self.cfg.loader_threshold,
        )
        for p, reason in sorted(cut.image_reasons.items()):
            yield drop(aligned[p], reason, ALIGN)
        written = cut.written
        if not written:
            yield drop(doc_sample.replace(document=None), "no_window", DOCUMENT)
        doc_row = IndexRow.from_sample(doc_sample.replace(document=None), KEPT, stage="shard")
        for number, (window, reason, out) in enumerate(cut.windows):
            sample = doc_sample.replace(id=f"{doc_sample.id}/w{number}", position=number, document=out or {})
            if reason:
                yield drop(sample, reason, ALIGN)
                continue
            children = [doc_row] if number == written[0][0] else []
            children += [document.children[p] for p in sorted(window.images)]
            yield sample.replace(children=children)

    @staticmethod
    def _similarity(source: dict, images: List[Sample], sentences: List[Sample]) -> np.ndarray:
        """images x sentences: from CLIP embeddings, or the input's own matrix when CLIP is off."""
        n_sentences = len(source["text_list"])
        if not images:
            return np.zeros((0, n_sentences))
        if images[0].image_embedding is None:  # clip.enabled: false -> mmc4's released ViT-L/14 scores
            return np.asarray(source["similarity_matrix"], dtype=np.float64)[[s.position for s in images]]
        return np.round(
            np.stack([s.image_embedding for s in images]).astype(np.float64)
            @ np.stack([t.text_embedding for t in sentences]).astype(np.float64).T,
            SIMILARITY_DECIMALS,
        )

    def _weak_and_duplicate(self, images: List[Sample], sim: np.ndarray):
        """Images below the best-sentence floor, and perceptual repeats within the document."""
        drops, kept = [], []
        best = sim.max(axis=1) if sim.size else np.full(len(images), -1.0)
        for i in sorted(range(len(images)), key=lambda i: (-best[i], i)):
            floor = self.cfg.min_image_similarity
            if floor is not None and best[i] < floor:
                drops.append(drop(images[i].replace(similarity=float(best[i])), "low_similarity", ALIGN))
                continue
            twin = next(
                (k for k in kept if hamming(images[k].phash, images[i].phash) <= self.cfg.phash_max_distance), None
            )
            if twin is not None:
                drops.append(drop(images[i], "duplicate_in_document", ALIGN, duplicate_of=images[twin].id))
                continue
            kept.append(i)
        return sorted(kept), drops

    def _document_reason(self, sim: np.ndarray, matched: List[float]) -> Optional[str]:
        cfg = self.cfg
        reason = doc_filter.image_count(len(matched), cfg.min_images, cfg.max_images)
        if not reason and cfg.core_rule:
            reason = doc_filter.core_rule(matched, cfg.core_min_fraction, cfg.core_min_similarity)
        if not reason and cfg.loader_threshold is not None:
            reason = doc_filter.loader_rejects(sim, cfg.loader_threshold, cfg.loader_max_images)
        return reason

    def _document(self, doc_sample: Sample, images, order, assigned, sim) -> Sample:
        source = doc_sample.document
        image_info = []
        for i in order:
            s = images[i]
            original = source["image_info"][s.position]
            entry = {k: v for k, v in original.items() if k not in RECOMPUTED}
            entry.update(
                matched_text_index=assigned[i][0],
                matched_sim=assigned[i][1],
                **_image_or_reference(s),
                width=s.width,
                height=s.height,
                sha256=s.sha256,
                phash=s.phash,
            )
            image_info.append(entry)
        out = {k: v for k, v in source.items() if k not in ("image_info", "similarity_matrix")}
        out.update(image_info=image_info, similarity_matrix=sim[order].tolist(), id=doc_sample.id)
        children = [
            IndexRow.from_sample(images[i].replace(similarity=assigned[i][1]), KEPT, stage="shard") for i in order
        ]
        return doc_sample.replace(document=out, children=children)


def _image_or_reference(s: Sample) -> dict:
    """An image_info entry's picture: ``image_base64`` when the sample holds its bytes, else where
    the image store holds them (the shard writer puts ``image_base64`` in their place)."""
    if s.image_bytes is None and s.stored_images:
        return {STORED_KEY: list(s.stored_images[0])}
    return {"image_base64": base64.b64encode(s.image_bytes).decode("ascii")}


class AssembleDocuments(beam.PTransform):
    """(documents, embedded images, embedded sentences) -> aligned documents, and the drops."""

    def __init__(self, cfg: Mmc4Config):
        super().__init__()
        self.cfg = cfg

    def expand(self, inputs):
        docs, images, sentences = inputs
        by_doc = {
            "docs": docs | "Document by id" >> beam.Map(lambda s: (s.doc_id, s)),
            "images": images | "Image by document" >> beam.Map(lambda s: (s.doc_id, s)),
            "sentences": sentences | "Sentence by document" >> beam.Map(lambda s: (s.doc_id, s)),
        }
        grouped = by_doc | "Group by document" >> beam.CoGroupByKey()
        return apply_with_drops(grouped, "Align images to sentences", _Assemble(self.cfg))
