"""The records that flow between pipeline stages.

One ``Sample`` travels through the stages and gains fields as it goes (download adds
``image_bytes``, the image stage replaces them with the encoded image and adds hashes, CLIP adds
embeddings and similarity).  A stage that rejects a sample turns it into an ``IndexRow`` with a
drop reason, so every input row ends up in the per-row index exactly once.

LAION rows and MMC4 images both travel as ``Sample``: an MMC4 image carries its document id and
its position in ``doc_id`` / ``position``, a LAION row leaves them empty; an MMC4 sentence is a
Sample with a caption and no URL, and an assembled MMC4 document is a Sample whose ``document``
holds the output JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Sample:
    id: str  # stable, deterministic id of the input row: "<source>:<row>" (LAION) or doc id + image pos
    source_index: int  # index of the input file in the sorted input list
    row: int  # row number within that input file
    url: Optional[str]
    caption: Optional[str] = None
    meta: dict = field(default_factory=dict)  # the original metadata columns (WIDTH, HEIGHT, punsafe, ...)
    doc_id: Optional[str] = None  # MMC4: the document this image belongs to
    position: Optional[int] = None  # MMC4: index of the image in the document's image_info
    language: Optional[str] = None
    language_score: Optional[float] = None
    # download
    image_bytes: Optional[bytes] = None
    attempts: Optional[int] = None  # fetches of the URL over every run that used the image store
    content_type: Optional[str] = None
    http_status: Optional[int] = None
    # image stage
    original_width: Optional[int] = None
    original_height: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    image_format: Optional[str] = None  # extension of the encoded bytes: "jpg" or "png"
    sha256: Optional[str] = None
    phash: Optional[str] = None  # 64-bit perceptual hash, 16 hex digits
    phash_variants: tuple = ()  # pHashes of its mirrored, cropped, rotated copies (near-dup probes them)
    phash_checks: tuple = ()  # check hashes of the pHash and of each variant (perceptual.hashes_with_checks)
    # clip
    image_embedding: Optional[Any] = None  # np.ndarray float32, L2-normalised
    text_embedding: Optional[Any] = None
    similarity: Optional[float] = None
    nsfw: Optional[float] = None  # the NSFW head's score (safety.nsfw_head), when it ran
    # the image store: once a processed image is in the store, the sample carries where it is
    # (block file, row id) and its size instead of its bytes, so no shuffle moves images
    image_len: Optional[int] = None  # len(image_bytes) when they were released
    stored_images: tuple = ()  # ((store block, id, row), ...): its image (LAION), its images (MMC4 document)
    # MMC4: the assembled output document, and the index rows of the images kept inside it
    document: Optional[dict] = None
    children: list = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.document is not None and self.position is not None:
            return "window"  # MMC4 with mmc4.windows: one window of a document (position: its number)
        if self.document is not None or (self.doc_id is not None and self.position is None):
            return "document"
        return "image" if self.doc_id is not None else "row"

    def replace(self, **changes) -> "Sample":
        return dataclasses.replace(self, **changes)

    def without_variants(self) -> "Sample":
        """The sample without its variant hashes and their check hashes (``phash_variants``,
        ``phash_checks``, ~1 KB), for a stage after which none reads them, so that no later
        shuffle carries them."""
        return self.replace(phash_variants=(), phash_checks=()) if self.phash_variants or self.phash_checks else self

    def __reduce__(self):
        # Pickled as its field values in order, without the field names: Beam's shuffles encode
        # records with pickle, and the names were about half the bytes of a small Sample.
        return (_sample, tuple(getattr(self, name) for name in _SAMPLE_FIELDS))


# The statuses a row can end with.
KEPT = "kept"
DROPPED = "dropped"


@dataclass
class IndexRow:
    """One row of the per-row parquet index: what happened to one input row."""

    id: str
    source_index: int
    row: int
    status: str
    kind: str = "row"  # "row" (LAION), "document", "image" or "window" (MMC4)
    reason: Optional[str] = None  # drop reason, a short stable token: "http_404", "too_small", ...
    detail: Optional[str] = None  # free text for humans: the exception message, the duplicate's id, ...
    stage: Optional[str] = None  # the stage that decided
    key: Optional[str] = None  # the sample's key in the tars (kept rows only)
    shard: Optional[str] = None
    url: Optional[str] = None
    caption: Optional[str] = None
    doc_id: Optional[str] = None
    position: Optional[int] = None
    language: Optional[str] = None
    original_width: Optional[int] = None
    original_height: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    bytes: Optional[int] = None
    similarity: Optional[float] = None
    sha256: Optional[str] = None
    phash: Optional[str] = None
    duplicate_of: Optional[str] = None
    nsfw: Optional[float] = None
    attempts: Optional[int] = None  # fetches of the URL over every run that used the image store (>1: retried)

    @classmethod
    def from_sample(
        cls,
        s: Sample,
        status: str,
        reason: Optional[str] = None,
        *,
        stage: Optional[str] = None,
        detail: Optional[str] = None,
        **extra,
    ) -> "IndexRow":
        return cls(
            id=s.id,
            source_index=s.source_index,
            row=s.row,
            status=status,
            kind=s.kind,
            reason=reason,
            detail=detail,
            stage=stage,
            url=s.url,
            caption=s.caption,
            doc_id=s.doc_id,
            position=s.position,
            language=s.language,
            original_width=s.original_width,
            original_height=s.original_height,
            width=s.width,
            height=s.height,
            bytes=len(s.image_bytes) if s.image_bytes is not None else s.image_len,
            similarity=s.similarity,
            sha256=s.sha256,
            phash=s.phash,
            nsfw=s.nsfw,
            attempts=s.attempts,
            **extra,
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __reduce__(self):
        return (_index_row, tuple(getattr(self, name) for name in _INDEX_FIELDS))


_SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(Sample))
_INDEX_FIELDS = tuple(f.name for f in dataclasses.fields(IndexRow))


def _sample(*values) -> Sample:
    return Sample(*values)


def _index_row(*values) -> IndexRow:
    return IndexRow(*values)


def dropped(s: Sample, reason: str, stage: str, detail: Optional[str] = None, **extra) -> IndexRow:
    return IndexRow.from_sample(s, DROPPED, reason, stage=stage, detail=detail, **extra)
