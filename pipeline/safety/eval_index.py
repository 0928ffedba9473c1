"""The evaluation-set index: what a build must keep out of its training data.

``flamingo-corpus index-eval`` walks folders of evaluation images (COCO, Flickr30K, VQAv2, OK-VQA,
TextVQA, VizWiz, Hateful Memes: whatever the user has on disk) and reads caption files, and
writes one parquet file.  A build whose recipe names it (``decontamination.index``) drops every
training image within the recipe's distance of an eval image and every caption equal to an eval
caption (pipeline/safety/decontaminate.py).

The file holds two kinds of rows:

    kind="image"    eval_set, item (path relative to the eval folder), phash (16 hex digits),
                    variant ("" for the picture itself, else the copy it stands for:
                    "mirrored", "crop-left5%-top10%", "mirrored rotated-3deg", ...;
                    ``perceptual.INDEX_VARIANTS``),
                    embedding (list<float32> on the picture's own row, null when no CLIP model
                    was asked for)
    kind="caption"  eval_set, item (the image the caption describes, or "line N"), caption
                    (normalised with ``filters.text.match_key``)

Its schema metadata records the format version, the version of the perceptual hash
(``perceptual.VERSION``; an index without one holds version 1 hashes), the version of the set of
copy variants (``perceptual.VARIANTS_VERSION``; format 1 had none) and, when there are embeddings,
the CLIP model and weights they were made with and their dimension: embeddings of different models
do not compare, and the build refuses such an index instead of silently matching nothing.  An
index of another hash or variant version is refused too, with a one-line message that says to
rebuild it: it would miss the mirrored, cropped and rotated copies the current one catches, or
match the build's hashes a bit or two off.

Each picture is stored with the pHashes of its variants (``perceptual.index_hashes``: mirrored,
cropped, rotated with the corners cut, each also mirrored), so a web copy that was cropped or
mirrored lands within ``decontamination.phash_distance`` of one of them while the build hashes
each training image once.  The search over the variants is multi-index hashing
(``dedup/hamming_index.py``): candidates share a band value within the band's radius, and are
confirmed by the true distance.

Eval images are hashed and embedded the way the build treats a training image (the image stage's
decode and ``perceptual.phash``; with a recipe, its resize and encode before CLIP), so the same
picture found on the web lands on the same hash and a near-identical embedding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from ..dedup.hamming_index import Check, SortedBand, band_plan, low_detail, nearest_within
from ..filters.text import match_key
from ..images import perceptual
from ..output.atomic import atomic_write, same_path
from ..recipe import ClipConfig, ImageConfig, Recipe, RecipeError

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: a "variant" column, several hashes per picture; 3: a "check" column
METADATA_KEY = b"flamingo_corpus.eval_index"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
CAPTION_EXTENSIONS = (".json", ".jsonl", ".txt")
IMAGE, CAPTION = "image", "caption"

SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("eval_set", pa.string()),
        ("item", pa.string()),
        ("phash", pa.string()),
        ("variant", pa.string()),
        ("check", pa.string()),  # the check hash of the row's pHash (perceptual.index_hashes)
        ("embedding", pa.list_(pa.float32())),
        ("caption", pa.string()),
    ]
)

# A variant must be this many bits closer than ``decontamination.phash_distance`` to count,
# mirrored variants ``MIRRORED_MARGIN``, the others ``VARIANT_MARGIN``.  A pHash has 32 bits set
# (the median threshold), so distances are even and at the shipped distance 6 a margin of 1 (or 2)
# means within 4: ~100x fewer chance hits between random 32-bit-set hashes (C(32, j)^2 lie at
# distance 2j), fewer on photos, whose hashes cluster.  Mirrored variants are where unrelated
# photos land most: crops of a low-detail photograph (a retina, a sky) on either side of its
# middle are near mirror images of each other.  Over ten draws of the copy benchmark (seeds 0-4,
# 20 and 40 copies a kind, 380-438 unrelated photos each; docs/benchmarks.md, "Copy detection"):
# one margin of 1 for every variant (before) found 0.958 of the copies pooled (0.932-0.973 a
# draw, random crops 0.75 on two), with 14 false positives in 4,032 (0.35%); a margin on the
# mirrored variants alone finds 0.970 (0.960-0.984, every kind at least 0.80 on every draw) with
# 18 (0.45%): on seeds 0-2 the plain variants' margin kept no unrelated photo out, on seed 3 two
# (low-detail crops of a rocket's sky and of a page of text, within 6 of a crop variant).  Both
# exceed 0.5% on seeds 3 and 4: pHash confuses low-detail crops, which a margin cannot fix.
VARIANT_MARGIN = 0
MIRRORED_MARGIN = 1


def variant_margin(variant: str) -> int:
    """Bits a match of an index row of this variant ("" for the picture itself) must be closer
    than ``phash_distance``."""
    if not variant:
        return 0
    return MIRRORED_MARGIN if variant.startswith("mirrored") else VARIANT_MARGIN


# A training image of low detail (``hamming_index.low_detail`` on the build variants it carries,
# ``Sample.phash_variants``: 3 or more of its 33 came out equal) counts against an index variant
# only within ``phash_distance - LOW_DETAIL_MARGIN`` (at the shipped 6 within 2: distances are
# even), against the picture's own row within ``phash_distance``; near-dup holds such pairs to
# ``near_max_distance - STRICT_MARGIN`` alike.  Cutting or turning the moon, a retina, the sky of
# a photo, a clock face or a cell barely moves its hash, and crops of them came within 4-6 bits
# of crop variants (plain ones mostly) of unrelated evaluation pictures, where a margin on every
# variant would cost the recall of every copy.  Over ten draws of the copy benchmark (seeds 0-4,
# 20 and 40 copies a kind) the false positives went from 18 of 4,032 to 8 (0.45% -> 0.20%),
# overall recall 0.971 -> 0.968 (40 a kind) and 0.969 -> 0.965 (20); on the held-out seeds 5 and
# 6 from 6 of 1,634 to 2, for 0.000-0.005 of recall a draw.  Within 4 (a margin of 2) kept out 2
# of the 10; within 0 (6) 2 more, for 0.009-0.011 of pooled recall (seed 0 at 20 a kind: 0.948);
# holding the picture's own row to it as well kept out none more and cost recall.  The copies it
# loses are low-detail ones: 23 of the 8,400 planted over the 14 draws (477 of them of low
# detail).  docs/benchmarks.md, "Copy detection".
LOW_DETAIL_MARGIN = 4
LOW_DETAIL = "low-detail"  # in the evidence of a match the stricter distance applied to


def low_detail_margin(variant: str) -> int:
    """``variant_margin`` for a training image of low detail: the variants' at least
    ``LOW_DETAIL_MARGIN``, the picture's own row's unchanged."""
    return max(variant_margin(variant), LOW_DETAIL_MARGIN) if variant else variant_margin(variant)


# Cells (training samples x eval images) compared at once: bounds the memory of one comparison
# (uint64 XOR or float32 product) to some tens of MB whatever the size of the eval index.
CHUNK_CELLS = 1 << 22


class EvalIndexError(RecipeError):
    """An eval index that cannot be built or used (unreadable, newer format, other CLIP model)."""


# ---------------------------------------------------------------------------------------------
# CLIP identity


def clip_identity(cfg: ClipConfig) -> Dict[str, str]:
    """What makes two sets of embeddings comparable: the model name and the weights.  Weights given
    as a local checkpoint are named by file name, so two paths to one checkpoint agree (and the
    tiny ``synthetic-world`` model is named by its checkpoint, whose name holds its settings hash)."""
    from ..clip.model import resolve_pretrained

    pretrained = resolve_pretrained(cfg) or ""
    weights = (
        posixpath.basename(pretrained.replace(os.sep, "/"))
        if ("/" in pretrained or os.sep in pretrained)
        else pretrained
    )
    return {"clip_model": cfg.model, "clip_pretrained": cfg.pretrained or "", "clip_weights": weights}


# ---------------------------------------------------------------------------------------------
# The file: header, writer, reader


@dataclass(frozen=True)
class IndexHeader:
    path: str
    format_version: int
    clip_model: Optional[str] = None
    clip_pretrained: Optional[str] = None
    clip_weights: Optional[str] = None
    embedding_dim: Optional[int] = None
    phash_version: int = 1  # indexes written before the version was recorded hold version 1 hashes
    variants_version: int = 0  # format 1 stored the picture's own hash only
    num_rows: int = 0

    @property
    def has_embeddings(self) -> bool:
        return bool(self.embedding_dim)

    def check_clip(self, cfg: ClipConfig) -> None:
        """Raise EvalIndexError when the index's embeddings were made with another CLIP model."""
        if not self.has_embeddings:
            return
        ours = clip_identity(cfg)
        if (ours["clip_model"], ours["clip_weights"]) != (self.clip_model, self.clip_weights):
            raise EvalIndexError(
                f"eval index {self.path} holds embeddings of CLIP {self.clip_model} ({self.clip_pretrained}), "
                f"the recipe embeds with {cfg.model} ({cfg.pretrained}): they do not compare. Rebuild the index "
                f"with `flamingo-corpus index-eval ... --recipe` and this recipe, or set "
                f"decontamination.min_cosine to null to match by perceptual hash and caption only"
            )

    def check_hashing(self) -> None:
        """Raise EvalIndexError when the index's hashes are not what this build compares with."""
        if (self.phash_version, self.variants_version) != (perceptual.VERSION, perceptual.VARIANTS_VERSION):
            raise EvalIndexError(
                f"eval index {self.path} holds pHash version {self.phash_version} with copy variants version "
                f"{self.variants_version}; this flamingo-corpus compares pHash version {perceptual.VERSION} "
                f"with variants version {perceptual.VARIANTS_VERSION} (mirrored, cropped and rotated copies): "
                f"rebuild it with `flamingo-corpus index-eval` (CHANGELOG.md)"
            )


def _header_from_schema(path: str, schema: pa.Schema, num_rows: int) -> IndexHeader:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None or set(SCHEMA.names) - set(schema.names) - {"variant"}:  # format 1 had no variant
        raise EvalIndexError(f"{path} is not an eval index (made by `flamingo-corpus index-eval`)")
    meta = json.loads(raw)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise EvalIndexError(
            f"{path}: eval index format {meta['format_version']} is newer than this "
            f"flamingo-corpus reads ({FORMAT_VERSION}); upgrade flamingo-corpus"
        )
    fields = {f.name for f in dataclasses.fields(IndexHeader)} - {"path", "num_rows"}
    header = IndexHeader(path=path, num_rows=num_rows, **{k: v for k, v in meta.items() if k in fields})
    header.check_hashing()
    return header


def read_header(path: str) -> IndexHeader:
    """The index's metadata from the parquet footer alone (cheap: used when the pipeline is built)."""
    try:
        with FileSystems.open(path) as f:
            pf = pq.ParquetFile(f)
            return _header_from_schema(path, pf.schema_arrow, pf.metadata.num_rows)
    except EvalIndexError:
        raise
    except Exception as e:  # missing file, not parquet, ...
        raise EvalIndexError(f"cannot read eval index {path}: {e}") from e


def write_index(
    path: str, images: Sequence[dict], captions: Sequence[dict], clip: Optional[Dict[str, str]] = None
) -> int:
    """Write the index: ``images`` as dicts eval_set, item, phash, variant ("" or absent for the
    picture itself), check (the pHash's check hash, or absent), embedding (array or None);
    ``captions`` as dicts eval_set, item, caption (raw: normalised here; empty keys left out).
    Rows are sorted, so the same inputs give the same file and "first" means the same everywhere.
    Returns the number of rows."""
    dims = {len(im["embedding"]) for im in images if im.get("embedding") is not None}
    if len(dims) > 1:
        raise EvalIndexError(f"embeddings of several dimensions {sorted(dims)}")
    rows = [
        {
            "kind": IMAGE,
            "eval_set": im["eval_set"],
            "item": im["item"],
            "phash": im["phash"],
            "variant": im.get("variant") or "",
            "check": im.get("check"),
            "embedding": None if im.get("embedding") is None else np.asarray(im["embedding"], np.float32),
            "caption": None,
        }
        for im in sorted(images, key=_row_order)
    ]
    keyed = {(c["eval_set"], c["item"], match_key(c["caption"])) for c in captions}
    rows += [
        {
            "kind": CAPTION,
            "eval_set": s,
            "item": i,
            "phash": None,
            "variant": None,
            "check": None,
            "embedding": None,
            "caption": k,
        }
        for s, i, k in sorted(keyed)
        if k
    ]
    meta = {
        "format_version": FORMAT_VERSION,
        "phash_version": perceptual.VERSION,
        "variants_version": perceptual.VARIANTS_VERSION,
        "embedding_dim": dims.pop() if dims else None,
    }
    if meta["embedding_dim"]:
        if not clip:
            raise EvalIndexError("embeddings without the CLIP model that made them (see clip_identity)")
        meta.update(clip)
    table = pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)}))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(path, sink.getvalue().to_pybytes())  # a kill half-way leaves no partial index
    return len(rows)


_VARIANT_RANK = {v.name: i for i, v in enumerate(perceptual.INDEX_VARIANTS)}


def _row_order(row: dict) -> tuple:
    """Image rows by eval set, item, then variant in ``INDEX_VARIANTS`` order (the picture first)."""
    variant = row.get("variant") or ""
    return row["eval_set"], row["item"], _VARIANT_RANK.get(variant, len(_VARIANT_RANK)), variant


@dataclass(frozen=True)
class Match:
    """The eval item a training sample matched, and the evidence."""

    eval_set: str
    item: str
    # "phash_distance=2", "mirrored phash_distance=3", "crop-left5% low-detail phash_distance=2"
    # (LOW_DETAIL_MARGIN held), "cosine=0.9731" or "caption"
    evidence: str

    @property
    def detail(self) -> str:
        ref = f"{self.eval_set}:{self.item}"
        return f"caption {ref}" if self.evidence == CAPTION else f"{ref} {self.evidence}"


@dataclass
class EvalIndex:
    """The index in memory, ready to match batches of training samples.  Image rows (one per
    picture and variant) are in (eval_set, item, variant) order, so the first of equally close
    eval images is the same on every run."""

    header: IndexHeader
    sets: Sequence[str]  # per image row (``Coded`` when read from a file)
    items: Sequence[str]
    phashes: np.ndarray  # uint64, per image row
    variants: Sequence[str] = field(default_factory=list)  # per image row: "" for the picture itself
    checks: Optional[np.ndarray] = None  # uint64 check hash per image row (perceptual.index_hashes), if any
    embeddings: Optional[np.ndarray] = None  # float32 (rows with an embedding, dim)
    embedding_rows: Optional[np.ndarray] = None  # image row of each embedding row
    captions: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # match key -> (eval_set, item)

    @property
    def num_images(self) -> int:
        return len(self.items)

    def variant(self, row: int) -> str:
        return self.variants[row] if len(self.variants) else ""

    def _tables(self, distance: int):
        """The band plan for ``distance`` and one sorted band table per band (built once)."""
        cache = self.__dict__.setdefault("_band_tables", {})
        if distance not in cache:
            plan = band_plan(distance)
            cache[distance] = (plan, [SortedBand(self.phashes, band) for band in plan])
        if "_penalty" not in self.__dict__:
            variants = self.variants if isinstance(self.variants, Coded) else Coded.of(list(self.variants))
            self.__dict__["_penalty"] = variants.flags(variant_margin)
            self.__dict__["_low_detail_penalty"] = variants.flags(low_detail_margin)
        return cache[distance]

    def match(
        self,
        phashes: Sequence[Optional[str]],
        embeddings: Sequence[Optional[np.ndarray]] = (),
        captions: Sequence[Optional[str]] = (),
        *,
        phash_distance: int = 6,
        min_cosine: Optional[float] = None,
        check_captions: bool = True,
        build_variants: Sequence[Optional[Sequence[str]]] = (),
        checks: Sequence[Optional[str]] = (),
        check_distance: Optional[int] = None,
    ) -> List[Optional[Match]]:
        """The match of each training sample, or None.  A perceptual-hash match wins over an
        embedding match, which wins over a caption match; within a kind the closest eval image
        (then the first in index order) is named.  ``build_variants``: each sample's build
        variant hashes (``Sample.phash_variants``), which tell whether it is of low detail
        (``LOW_DETAIL_MARGIN``); None, or none given: matched as an image that is not.
        ``checks``: each sample's check hash (``Sample.phash_checks[0]``); a row at
        ``hamming_index.CHECK_FROM`` bits or more counts only when its check hash is within
        ``check_distance`` of the sample's (``decontamination.check_distance``); a sample without one, an index
        without them, or ``check_distance`` None: on the pHash alone."""
        n = len(phashes)
        out: List[Optional[Match]] = [None] * n
        low = [v is not None and low_detail(v) for v in build_variants] if len(build_variants) else [False] * n
        own = list(checks) if len(checks) else [None] * n
        for i, m in zip(*self._by_phash(phashes, phash_distance, low, own, check_distance)):
            out[i] = m
        if min_cosine is not None and self.embeddings is not None and len(embeddings):
            # only samples the hashes left unmatched: the product is the expensive part
            pending = [e if out[i] is None else None for i, e in enumerate(embeddings)]
            for i, m in zip(*self._by_embedding(pending, min_cosine)):
                out[i] = m
        if check_captions and self.captions and len(captions):
            for i, caption in enumerate(captions):
                hit = self.captions.get(match_key(caption)) if caption else None
                if hit and out[i] is None:
                    out[i] = Match(hit[0], hit[1], CAPTION)
        return out

    def _by_phash(self, phashes, distance, low, checks, check_distance):
        """(sample positions, matches) of the samples whose pHash matches; ``low[i]``: sample i
        is of low detail; ``checks[i]``: its check hash or None."""
        plan, tables = self._tables(distance)
        with_variants = len(self.variants) == self.num_images
        found: List[int] = []
        matches: List[Match] = []
        for strict in (False, True):  # the two kinds of image meet the rows with different margins
            rows = [i for i, h in enumerate(phashes) if h and low[i] == strict]
            if not rows or not self.num_images:
                continue
            query = np.array([int(phashes[i], 16) for i in rows], dtype=np.uint64)
            penalty = self.__dict__["_low_detail_penalty" if strict else "_penalty"] if with_variants else None
            check = None
            if check_distance is not None and self.checks is not None:
                has = np.array([checks[i] is not None for i in rows], dtype=bool)
                own = np.array([int(checks[i], 16) if checks[i] is not None else 0 for i in rows], dtype=np.uint64)
                check = Check(own, has, self.checks, check_distance)
            best, dist = nearest_within(query, plan, tables, distance, penalty, check)
            hits = np.flatnonzero(dist <= distance)  # the true distance: a variant's margin is not in it
            for k in hits.tolist():
                variant = self.variant(best[k])
                evidence = f"{variant} {LOW_DETAIL if strict and variant else ''} phash_distance={int(dist[k])}"
                found.append(rows[k])
                matches.append(Match(self.sets[best[k]], self.items[best[k]], " ".join(evidence.split())))
        return found, matches

    def _by_embedding(self, embeddings, min_cosine):
        from ..clip.stage import SIMILARITY_DECIMALS

        rows = [i for i, e in enumerate(embeddings) if e is not None]
        if not rows or not len(self.embeddings):
            return [], []
        query = np.stack([np.asarray(embeddings[i], np.float32) for i in rows])
        if query.shape[1] != self.embeddings.shape[1]:
            raise EvalIndexError(
                f"training embeddings have {query.shape[1]} dimensions, the eval index "
                f"{self.header.path} {self.embeddings.shape[1]}"
            )
        # Rounded as the CLIP stage rounds similarities: float32 products differ in the last bits
        # with the batch's shape, the decision and the reported value must not.
        best, neg = _nearest(
            len(query),
            len(self.embeddings),
            lambda a, b: -np.round(query @ self.embeddings[a:b].T, SIMILARITY_DECIMALS),
        )
        hits = np.flatnonzero(-neg >= min_cosine)
        return [rows[k] for k in hits], [
            Match(self.sets[j], self.items[j], f"cosine={-neg[k]:.4f}")
            for k, j in ((k, int(self.embedding_rows[best[k]])) for k in hits)
        ]


def _nearest(n_query: int, n_eval: int, cost: Callable[[int, int], np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(index, cost) of the cheapest eval row for each query row; ``cost(a, b)`` gives the
    (n_query, b - a) costs of eval rows a..b.  The eval side is walked in chunks, so each eval
    row is read once per batch and memory stays at CHUNK_CELLS; ties go to the first eval row."""
    best_j = best_c = None
    step = max(1, CHUNK_CELLS // n_query)
    for a in range(0, n_eval, step):
        c = cost(a, min(a + step, n_eval))
        j = c.argmin(axis=1)
        v = c[np.arange(n_query), j]
        if best_c is None:
            best_j, best_c = j + a, v
        else:
            better = v < best_c  # strictly: an earlier chunk keeps a tie
            best_j, best_c = np.where(better, j + a, best_j), np.where(better, v, best_c)
    return best_j, best_c


class Coded(Sequence[str]):
    """A column of strings as small integer codes into its distinct values: an item name repeats
    once per variant (~190 times), and a COCO-sized index has millions of rows, so three Python
    lists (8 bytes a row each, on top of the strings) were most of its memory."""

    def __init__(self, codes: np.ndarray, names: List[str]):
        self.codes, self.names = codes, names

    @classmethod
    def of(cls, values: Sequence[str]) -> "Coded":
        names = sorted(set(values))
        rank = {n: i for i, n in enumerate(names)}
        return cls(np.array([rank[v] for v in values], dtype=np.int32), names)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self.names[c] for c in self.codes[row].tolist()]
        return self.names[self.codes[row]]

    def __iter__(self):
        names = self.names
        return (names[c] for c in self.codes.tolist())

    def __contains__(self, value) -> bool:
        return value in self.names and bool((self.codes == self.names.index(value)).any())

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, Coded)) else NotImplemented

    def flags(self, predicate: Callable[[str], bool], dtype=np.int8) -> np.ndarray:
        """``predicate`` of each row's string, as an array, computed once per distinct string."""
        return np.array([predicate(n) for n in self.names], dtype=dtype)[self.codes]


def _coded_column(column: pa.ChunkedArray) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """(codes, distinct strings, the rank of each distinct string in sorted order) of a string
    column, nulls read as ""."""
    encoded = pc.fill_null(column.combine_chunks(), "").dictionary_encode()
    names = encoded.dictionary.to_pylist()
    rank = np.empty(len(names), dtype=np.int64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32), names, rank


_NIBBLE = np.zeros(256, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _hex_column(column: pa.ChunkedArray) -> np.ndarray:
    """A column of 16-hex-digit strings as uint64, parsed in numpy (a Python int per row cost a
    second and ~100 MB of short-lived objects a million rows): digit pairs to bytes, 8 bytes
    read as one big-endian integer."""
    digits = np.array(column.combine_chunks().to_pylist(), dtype="S16")
    nibbles = _NIBBLE[digits.view(np.uint8).reshape(len(digits), 16)]
    packed = np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2])
    return packed.view(">u8").ravel().astype(np.uint64)


def load_index(path: str) -> EvalIndex:
    """Read the whole index (small lookup data) from any Beam filesystem (local, gs://, s3://)."""
    try:
        with FileSystems.open(path) as f:
            data = f.read()
        # ParquetFile.read, not read_table: read_table's dataset scanner can leave background
        # threads running past its return, which abort the process at exit (see verify.py).
        table = pq.ParquetFile(pa.BufferReader(data)).read()
    except Exception as e:
        raise EvalIndexError(f"cannot read eval index {path}: {e}") from e
    header = _header_from_schema(path, table.schema, table.num_rows)
    kinds = table.column("kind").to_pylist()
    images = table.filter(pa.array([k == IMAGE for k in kinds]))
    caps = table.filter(pa.array([k == CAPTION for k in kinds]))
    # Rows in _row_order (eval set, item, variant rank, variant), sorted on the codes' ranks
    # with numpy: a Python sort key per row took most of the load of a million-row index.
    (set_codes, set_names, set_rank), (item_codes, item_names, item_rank), (var_codes, var_names, var_rank) = (
        _coded_column(images.column(c)) for c in ("eval_set", "item", "variant")
    )
    grid_rank = np.array([_VARIANT_RANK.get(v, len(_VARIANT_RANK)) for v in var_names], dtype=np.int64)
    order = np.lexsort((var_rank[var_codes], grid_rank[var_codes], item_rank[item_codes], set_rank[set_codes]))
    images = images.take(pa.array(order, pa.int64()))
    sets = Coded(set_codes[order], set_names)
    items = Coded(item_codes[order], item_names)
    variants = Coded(var_codes[order], var_names)
    phashes = _hex_column(images.column("phash"))
    checks = None
    if "check" in images.column_names and images.num_rows and images.column("check").null_count == 0:
        checks = _hex_column(images.column("check"))
    embeddings = embedding_rows = None
    if header.has_embeddings:
        column = images.column("embedding").combine_chunks()
        has = ~column.is_null().to_numpy(zero_copy_only=False)
        values = column.filter(pa.array(has)).flatten().to_numpy(zero_copy_only=False)
        embedding_rows = np.flatnonzero(has)
        embeddings = values.astype(np.float32).reshape(len(embedding_rows), header.embedding_dim)
    captions: Dict[str, Tuple[str, str]] = {}
    for s, i, c in sorted(
        zip(caps.column("eval_set").to_pylist(), caps.column("item").to_pylist(), caps.column("caption").to_pylist())
    ):
        captions.setdefault(c, (s, i))
    return EvalIndex(header, sets, items, phashes, variants, checks, embeddings, embedding_rows, captions)


# ---------------------------------------------------------------------------------------------
# Caption files


def _open_text(path: str) -> str:
    import fsspec

    with fsspec.open(path, "rb") as f:
        return f.read().decode("utf-8-sig")


def _as_captions(value) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


_ITEM_FIELDS = ("image", "file_name", "filename", "image_id", "img", "id")


def _item_of(obj: dict, fallback: str) -> str:
    for name in _ITEM_FIELDS:
        if obj.get(name) not in (None, ""):
            return str(obj[name])
    return fallback


def read_captions(path: str) -> List[Tuple[str, str]]:
    """(item, caption) pairs of a caption file, by format:

    - COCO annotations json: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}
      (item: the image's file name, or its id);
    - Karpathy split json: {"images": [{"filepath"?, "filename", "sentences": [{"raw"}]}]};
    - a json list, or .jsonl lines, of objects with a "caption" (a string or a list of strings);
      item: their image / file_name / filename / image_id field, else "line N";
    - .txt: one caption a line (item "line N").
    """
    text = _open_text(path)
    name = path.lower()
    if name.endswith(".txt"):
        return [(f"line {n}", line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if name.endswith(".jsonl"):
        out = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalIndexError(f"{path}:{n}: not JSON ({e})") from e
            if isinstance(obj, dict):
                out += [(_item_of(obj, f"line {n}"), c) for c in _as_captions(obj.get("caption"))]
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EvalIndexError(f"{path}: not JSON ({e}); caption files are .json, .jsonl or .txt") from e
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        names = {im.get("id"): im.get("file_name") for im in data.get("images") or [] if isinstance(im, dict)}
        return [
            (str(names.get(a.get("image_id")) or a.get("image_id")), c)
            for a in data["annotations"]
            if isinstance(a, dict)
            for c in _as_captions(a.get("caption"))
        ]
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        out = []
        for im in data["images"]:
            if not isinstance(im, dict):
                continue
            item = posixpath.join(im.get("filepath") or "", im.get("filename") or str(im.get("imgid", "")))
            for sent in im.get("sentences") or []:
                if isinstance(sent, dict) and (sent.get("raw") or sent.get("tokens")):
                    out.append((item, sent.get("raw") or " ".join(sent["tokens"])))
        return out
    if isinstance(data, list):
        return [
            (_item_of(obj, f"entry {n}"), c)
            for n, obj in enumerate(data, start=1)
            if isinstance(obj, dict)
            for c in _as_captions(obj.get("caption"))
        ]
    raise EvalIndexError(
        f"{path}: not a caption file this reads (COCO annotations, Karpathy split, "
        f"json/jsonl objects with a 'caption', or .txt)"
    )


# ---------------------------------------------------------------------------------------------
# Image folders


def list_images(folder: str) -> List[Tuple[str, str]]:
    """(item, full path) of every image under ``folder`` (local or any fsspec URL), sorted."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(folder)
    if not fs.isdir(root):
        raise EvalIndexError(f"{folder} is not a folder")
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    out = []
    for p in sorted(fs.find(root)):
        if p.lower().endswith(IMAGE_EXTENSIONS):
            full = p if protocol in ("file", "local") else f"{protocol}://{p}"
            out.append((posixpath.relpath(p, root), full))
    return out


def _read_bytes(path: str) -> bytes:
    import fsspec

    with fsspec.open(path, "rb") as f:
        return f.read()


def _relaxed(cfg: ImageConfig) -> ImageConfig:
    # An eval image is indexed whatever its size: the build's size filters decide on web copies.
    return dataclasses.replace(cfg, min_side=0, max_aspect_ratio=None, min_encoded_bytes=0)


def prepare_image(path: str, cfg: ImageConfig) -> Tuple[List[Tuple[str, str, str]], bytes]:
    """((variant, phash, check) of the picture and its copy variants, the bytes the build would embed) of
    one eval image, through the image stage: the picture's own hash is the one a training image
    with these bytes gets (``perceptual.index_hashes``)."""
    from ..images.process import decode, process_image

    data = _read_bytes(path)
    relaxed = _relaxed(cfg)
    processed = process_image(data, relaxed)
    hashes = perceptual.index_hashes(decode(data, relaxed)[0])
    assert hashes[0][:2] == ("", processed.phash)
    return hashes, processed.data


def _try_prepare(path: str, cfg: ImageConfig):
    try:
        return prepare_image(path, cfg)
    except Exception as e:  # undecodable, truncated, unreadable: reported and counted, not fatal
        return e


@dataclass
class SetSummary:
    images: int = 0
    hashes: int = 0  # the pictures' own and their variants' (duplicates left out)
    unreadable: int = 0
    captions: int = 0


@dataclass
class IndexSummary:
    output: str
    sets: Dict[str, SetSummary]
    rows: int
    clip: Optional[Dict[str, str]]
    embedding_dim: Optional[int]

    def __str__(self) -> str:
        lines = [f"eval index {self.output}: {self.rows:,} rows"]
        for name, s in sorted(self.sets.items()):
            lines.append(
                f"  {name:<24}{s.images:>9,} images{s.hashes:>10,} hashes{s.unreadable:>7,} unreadable"
                f"{s.captions:>9,} captions"
            )
        lines.append(
            f"  embeddings: CLIP {self.clip['clip_model']} ({self.clip['clip_pretrained']}), {self.embedding_dim} dims"
            if self.clip
            else "  embeddings: none (perceptual hashes only)"
        )
        return "\n".join(lines)


def _batches(xs: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


def build_index(
    folders: Sequence[Tuple[str, str]],
    caption_files: Sequence[Tuple[str, str]],
    output: str,
    recipe: Optional[Recipe] = None,
    *,
    on_unreadable: Callable[[str, str], None] = lambda path, why: None,
    progress: bool = True,
) -> IndexSummary:
    """Index ``folders`` ((eval set, folder)) and ``caption_files`` ((eval set, file)) into ``output``.
    With a recipe whose CLIP is enabled, images get embeddings of that model (after the recipe's
    image stage, as training images are embedded); an unreadable image is reported through
    ``on_unreadable`` and counted, not fatal."""
    from tqdm import tqdm

    names = [n for n, _ in folders]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise EvalIndexError(f"several image folders are named {', '.join(dup)}: name them with NAME=DIR")
    # Everything that can fail fast does, before hours of hashing and embedding.
    for _, path in caption_files:
        if same_path(path, output):
            raise EvalIndexError(f"the output {output} is the caption file {path}: write the index elsewhere")
    listed = {name: list_images(folder) for name, folder in folders}
    for name, files in listed.items():
        if any(same_path(full, output) for _, full in files):
            raise EvalIndexError(f"the output {output} is one of the images of {name}: write the index elsewhere")
    sets: Dict[str, SetSummary] = {name: SetSummary() for name in listed}
    captions = []
    for name, path in caption_files:
        found = read_captions(path)
        sets.setdefault(name, SetSummary()).captions += len(found)
        captions += [{"eval_set": name, "item": item, "caption": c} for item, c in found]
    image_cfg = recipe.image if recipe else ImageConfig()
    use_clip = recipe is not None and recipe.clip.enabled
    model = None
    if use_clip:
        from ..clip.model import check_clip, load_clip

        check_clip(recipe.clip)
        model = load_clip(recipe.clip)
    batch = recipe.clip.batch_size if use_clip else 256
    images: List[dict] = []
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for name, entries in listed.items():
            summary = sets[name]
            with tqdm(total=len(entries), desc=f"index {name}", unit="img", disable=not progress) as bar:
                for chunk in _batches(entries, batch):
                    done = list(pool.map(lambda entry: _try_prepare(entry[1], image_cfg), chunk))
                    good = []
                    for (item, path), r in zip(chunk, done):
                        if isinstance(r, Exception):
                            summary.unreadable += 1
                            on_unreadable(path, f"{type(r).__name__}: {r}"[:200])
                        else:
                            good.append((item, *r))
                    emb = model.embed_encoded([data for _, _, data in good]) if model and good else [None] * len(good)
                    images += [
                        {
                            "eval_set": name,
                            "item": item,
                            "variant": variant,
                            "phash": ph,
                            "check": check,
                            "embedding": e if not variant else None,
                        }
                        for (item, hashes, _), e in zip(good, emb)
                        for variant, ph, check in hashes
                    ]
                    summary.images += len(good)
                    summary.hashes += sum(len(hashes) for _, hashes, _ in good)
                    bar.update(len(chunk))
    clip = clip_identity(recipe.clip) if use_clip and images else None
    rows = write_index(output, images, captions, clip)
    dim = next(len(im["embedding"]) for im in images if im["embedding"] is not None) if clip else None
    return IndexSummary(output, sets, rows, clip, dim)


def parse_named(arg: str) -> Tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare path is named after its base name (``.../coco/`` ->
    "coco"; a caption file by its stem)."""
    name, sep, path = arg.partition("=")
    if sep and name and "/" not in name and "\\" not in name and not os.path.exists(arg):
        return name, path
    base = posixpath.basename(arg.rstrip("/").replace(os.sep, "/")) or arg
    if base.lower().endswith(CAPTION_EXTENSIONS) and not os.path.isdir(arg):
        base = base.rsplit(".", 1)[0]
    return base, arg


__all__ = [
    "EvalIndex",
    "EvalIndexError",
    "IndexHeader",
    "Match",
    "build_index",
    "load_index",
    "read_header",
    "read_captions",
    "write_index",
    "clip_identity",
    "parse_named",
]
