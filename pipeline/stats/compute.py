"""Dataset statistics of a finished build, computed from its manifest.json and per-row index.

People judge a corpus by looking at it: where rows were lost, how well captions match images,
what sizes and languages came through, which sites failed.  Everything here reads
``manifest.json`` and ``index/*.parquet`` and never the tars, and it aggregates with Arrow's
streaming engine (acero: scan with column projection -> filter -> project -> hash aggregate), so
memory grows with the number of groups (reasons, histogram bins, domains, documents), not with
the number of rows: the same calls serve the 300-row sample and billions of LAION rows.

Two things the index does not hold are read from a handful of tar members, and every caller says
so: the images of the sample grid (``sample_items``) and, for MMC4, the sentences of a few
documents (``document_sample``: sentences per document, sentence lengths, and where images land
among the sentences, i.e. ``matched_text_index``).  Both stream only the first members of a few
shards.

Results are small: pyarrow Tables, plain dicts and ``Histogram``s.  ``flamingo_corpus.stats.report`` draws
them, for the notebooks under ``notebooks/`` and for ``flamingo-corpus stats``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import posixpath
import random
import tarfile
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.acero as ac
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..output.index import INDEX_DIR, INDEX_SCHEMA
from ..output.manifest import MANIFEST, UNITS, unit_totals
from ..output.verify import SHARD_NAME, unsafe_path

# The order the stages drop rows in (pipeline/laion/pipeline.py, pipeline/mmc4.pipeline.py), for the
# funnel.  ``safety`` runs at several points (URL, download, image, NSFW); it is listed at its
# first.  A stage not named here goes just before ``shard``.
STAGE_ORDER = (
    "read",
    "document",
    "metadata",
    "safety",
    "download",
    "image",
    "clip",
    "decontaminate",
    "dedup",
    "near_dup",
    "sem_dedup",
    "align",
    "shard",
)
NO_LANGUAGE = "(none)"
NO_HOST = "(no host)"
# scheme://[user@]host[:port]/... -> host (an IPv6 host keeps its brackets).  RE2 syntax (Arrow's).
_URL_WITH_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]/?#]*\]|[^/:?#\[]+)"
_HOST = _URL_WITH_HOST + r".*$"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
# The index columns statistics read: a build's index files must all have them, of INDEX_SCHEMA's types.
INDEX_COLUMNS = (
    "kind",
    "stage",
    "status",
    "reason",
    "source_index",
    "row",
    "url",
    "caption",
    "language",
    "original_width",
    "original_height",
    "bytes",
    "similarity",
    "duplicate_of",
)

f = pc.field


class StatsError(RuntimeError):
    """The directory is not a finished build, or a damaged one: no such directory, manifest.json
    missing, not JSON or of the wrong shape, an index file that is not parquet or lacks columns,
    a shard that is not a tar, a file that is a link leading outside the build."""


def filesystem(path: str) -> Tuple[pafs.FileSystem, str]:
    """(Arrow filesystem, path inside it) for a local path or a URL (gs://, s3://, hdfs:// natively;
    other schemes through fsspec, which Arrow wraps)."""
    if "://" not in path:
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), inner


class Build:
    """A finished build opened for statistics: its manifest and a dataset over its index.

    ``kind`` is what one input row is ("row" for LAION, "document" for MMC4); ``item_kind`` is the
    kind whose rows carry images, URLs and similarities ("row" for LAION, "image" for MMC4).
    """

    def __init__(self, path: str):
        self.path = str(path)
        self.fs, self.root = filesystem(self.path)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.local and self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            raise StatsError(f"{self.path}: no such directory")
        self._refuse_outside(MANIFEST)
        try:
            with self.fs.open_input_stream(posixpath.join(self.root, MANIFEST)) as fh:
                manifest = json.loads(fh.read())
        except (OSError, ValueError) as e:
            raise StatsError(f"{self.path}: no readable {MANIFEST}, is this a finished build? ({e})") from e
        self.manifest = checked_manifest(self.path, manifest)
        self._refuse_outside(INDEX_DIR)
        try:
            self.index = ds.dataset(posixpath.join(self.root, INDEX_DIR), format="parquet", filesystem=self.fs)
        except (OSError, pa.ArrowException) as e:
            raise StatsError(f"{self.path}: no readable {INDEX_DIR}/ ({e})") from e
        self._check_index_files()
        self.unit = self.manifest.get("unit", "rows")
        self.kind = {u: k for k, u in UNITS.items()}.get(self.unit, "row")
        self.item_kind = "image" if self.kind == "document" else "row"

    def __repr__(self) -> str:
        return f"Build({self.path!r}, {self.unit})"

    @property
    def name(self) -> str:
        return (self.manifest.get("recipe") or {}).get("name") or posixpath.basename(self.root.rstrip("/"))

    @property
    def recipe(self) -> dict:
        return self.manifest.get("recipe") or {}

    @property
    def is_mmc4(self) -> bool:
        return self.kind == "document"

    def aggregate(
        self,
        columns: Sequence[str],
        project: Dict[str, pc.Expression],
        keys: Sequence[str],
        aggregates: Sequence[Tuple[Optional[str], str]] = ((None, "count_all"),),
        where: Optional[pc.Expression] = None,
        then: Sequence[ac.Declaration] = (),
    ) -> pa.Table:
        """One streaming pass over the index: read ``columns``, keep rows matching ``where``,
        compute ``project`` (name -> expression), group by ``keys`` and aggregate.

        ``aggregates`` are (projected column or None, function) pairs, e.g. (None, "count_all") ->
        column ``n``, ("similarity", "min_max") -> ``similarity_min_max``.  ``then`` appends
        further acero nodes (a second aggregate over the first one's groups).
        """
        nodes = [ac.Declaration("scan", ac.ScanNodeOptions(self.index, columns=list(columns), filter=where))]
        if where is not None:  # the scan's filter only prunes; the filter node does the filtering
            nodes.append(ac.Declaration("filter", ac.FilterNodeOptions(where)))
        nodes.append(ac.Declaration("project", ac.ProjectNodeOptions(list(project.values()), list(project))))
        prefix = "hash_" if keys else ""
        specs = [
            ([] if col is None else col, prefix + fn, None, "n" if col is None else f"{col}_{fn}")
            for col, fn in aggregates
        ]
        nodes.append(ac.Declaration("aggregate", ac.AggregateNodeOptions(specs, keys=list(keys))))
        return ac.Declaration.from_sequence(nodes + list(then)).to_table(use_threads=True)

    @cached_property
    def counts(self) -> pa.Table:
        """Index rows per (kind, stage, status, reason), computed once: the funnel, the headline
        and the download reasons are read from it."""
        cols = ["kind", "stage", "status", "reason"]
        t = self.aggregate(cols, {c: f(c) for c in cols}, cols)
        return t.sort_by([(c, "ascending") for c in cols])

    @property
    def kinds(self) -> List[str]:
        present = set(self.counts.column("kind").to_pylist()) | {self.kind}
        return [k for k in UNITS if k in present]

    def open_shard(self, name: str):
        self._refuse_outside(name)
        return self.fs.open_input_stream(posixpath.join(self.root, name))

    def _refuse_outside(self, rel: str) -> None:
        """A StatsError when ``rel`` is a symbolic link or leads outside the build's folder
        (local builds): nothing outside the output is read."""
        why = unsafe_path(self.root, rel) if self.local else None
        if why:
            raise StatsError(f"{self.path}: {rel}: {why}")

    def _check_index_files(self) -> None:
        """Every index file is a parquet file inside the build with the columns statistics read,
        of the contract's types (a StatsError otherwise), so that no figure fails half-way."""
        files = self.index.files
        if not files:
            raise StatsError(f"{self.path}: {INDEX_DIR}/ holds no parquet files, is this a finished build?")
        for path in files:
            rel = posixpath.relpath(path, self.root) if self.local else path
            self._refuse_outside(rel)
            try:
                with self.fs.open_input_file(path) as fh:
                    schema = pq.ParquetFile(fh).schema_arrow
            except (OSError, pa.ArrowException) as e:
                raise StatsError(f"{self.path}: {rel} is not a readable parquet file ({e})") from e
            for name in INDEX_COLUMNS:
                want = INDEX_SCHEMA.field(name).type
                i = schema.get_field_index(name)
                if i < 0:
                    raise StatsError(f"{self.path}: {rel} has no column {name!r}, is this a flamingo-corpus index?")
                if not schema.field(i).type.equals(want):
                    raise StatsError(f"{self.path}: {rel}: column {name!r} is {schema.field(i).type}, not {want}")


def _count_or_none(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def checked_manifest(path: str, manifest) -> dict:
    """``manifest`` when it has the shape statistics read (a StatsError naming what is wrong
    otherwise): an object; ``unit`` rows or documents; ``recipe`` an object, its name text and
    its similarity thresholds numbers; ``shards`` a list of {name: a shard name, count and bytes
    counts >= 0}.  Fields statistics do not read are not checked (``flamingo-corpus verify``
    checks them all)."""

    def bad(what: str) -> StatsError:
        return StatsError(f"{path}: {MANIFEST}: {what}, is this a finished build?")

    if not isinstance(manifest, dict):
        raise bad(f"a JSON {type(manifest).__name__}, not an object")
    if manifest.get("unit", "rows") not in UNITS.values():
        raise bad(f"unit is {manifest.get('unit')!r}, not rows or documents")
    recipe = manifest.get("recipe")
    if recipe is not None:
        if not isinstance(recipe, dict):
            raise bad("recipe is not an object")
        if not isinstance(recipe.get("name", ""), (str, type(None))):
            raise bad("recipe.name is not text")
        for section, key in (("clip", "min_similarity"), ("mmc4", "min_image_similarity")):
            part = recipe.get(section)
            if part is not None and not isinstance(part, dict):
                raise bad(f"recipe.{section} is not an object")
            value = (part or {}).get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise bad(f"recipe.{section}.{key} is not a number")
    shards = manifest.get("shards")
    if shards is not None:
        if not isinstance(shards, list):
            raise bad("shards is not a list")
        for i, s in enumerate(shards):
            if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not SHARD_NAME.fullmatch(s["name"]):
                raise bad(f"shards[{i}] is not an entry with a shard name (000000.tar)")
            if not _count_or_none(s.get("count")) or not _count_or_none(s.get("bytes")):
                raise bad(f"shards[{i}] ({s['name']}): count and bytes must be counts >= 0")
    return manifest


def open_build(path) -> Build:
    """``Build(path)``; a Build is passed through, so every function takes either."""
    return path if isinstance(path, Build) else Build(str(path))


# --- counts, headline, funnel -------------------------------------------------------------


def stage_rank(stage: Optional[str]) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER) - 1


def outcomes(build, kind: Optional[str] = None) -> pa.Table:
    """(stage, status, reason, count) of one kind, in pipeline order, largest drops first."""
    b = open_build(build)
    kind = kind or b.kind
    rows = [r for r in b.counts.to_pylist() if r["kind"] == kind]
    rows.sort(key=lambda r: (r["status"] == "kept", stage_rank(r["stage"]), -r["n"], r["reason"] or ""))
    return pa.table(
        {
            "stage": [r["stage"] for r in rows],
            "status": [r["status"] for r in rows],
            "reason": [r["reason"] for r in rows],
            "count": pa.array([r["n"] for r in rows], pa.int64()),
        }
    )


def headline(build) -> Dict[str, float]:
    """The figures a person reads first: per unit (rows; documents and images) in, downloaded,
    kept (and its percentage), dropped; shards and their bytes."""
    b = open_build(build)
    out: Dict[str, float] = {}
    counts = b.counts.to_pylist()
    for kind in b.kinds:
        unit = UNITS[kind]
        totals = unit_totals(kind, ((r["stage"], r["status"], r["n"]) for r in counts if r["kind"] == kind))
        total, kept = totals["accounted"], totals["kept"]
        out[f"{unit} in"] = total
        if "downloaded" in totals:
            out[f"{unit} downloaded"] = totals["downloaded"]
        out[f"{unit} kept"] = kept
        out[f"{unit} kept %"] = round(100.0 * kept / total, 1) if total else 0.0
        out[f"{unit} dropped"] = totals["dropped"]
    listed = b.manifest.get("shards") or []
    out["shards"] = len(listed)
    out["shard bytes"] = sum(s.get("bytes") or 0 for s in listed)
    return out


def windows(build) -> Optional[pa.Table]:
    """MMC4 with OpenFlamingo windows: documents in and kept, windows written, and the images
    inside a window (shipped) and outside every window written, by reason; None without windows."""
    from ..mmc4.windows import OUTSIDE

    b = open_build(build)
    counts = b.counts.to_pylist()
    if not any(r["kind"] == "window" for r in counts):
        return None

    def total(kind: str, status: Optional[str] = None) -> int:
        return sum(r["n"] for r in counts if r["kind"] == kind and (status is None or r["status"] == status))

    rows = [
        ("documents in", total("document")),
        ("documents kept", total("document", "kept")),
        ("windows written", total("window", "kept")),
        ("images inside a window (shipped)", total("image", "kept")),
    ]
    outside = [
        (f"images outside every window: {r['stage']}/{r['reason']}", r["n"])
        for r in counts
        if r["kind"] == "image" and r["status"] == "dropped" and f"{r['stage']}/{r['reason']}" in OUTSIDE
    ]
    rows += sorted(outside, key=lambda item: -item[1])
    return pa.table({"what": [w for w, _ in rows], "count": [n for _, n in rows]})


def funnel(build, kind: Optional[str] = None) -> pa.Table:
    """The filter funnel: (step, stage, reason, count, remaining) from the rows in, through every
    drop reason in pipeline order, to the rows kept.  ``remaining`` is what is left after the step;
    the drops and the kept add up to the rows in."""
    b = open_build(build)
    kind = kind or b.kind
    rows = outcomes(b, kind).to_pylist()
    total = sum(r["count"] for r in rows)
    steps = [(f"{UNITS[kind]} in", None, None, total, total)]
    remaining = total
    for r in rows:
        if r["status"] == "kept":
            continue
        remaining -= r["count"]
        steps.append((f"{r['stage']}/{r['reason']}", r["stage"], r["reason"], r["count"], remaining))
    kept = sum(r["count"] for r in rows if r["status"] == "kept")
    steps.append(("kept", None, None, kept, kept))
    names = ("step", "stage", "reason", "count", "remaining")
    return pa.table(
        {
            n: pa.array([s[i] for s in steps], pa.int64() if n in ("count", "remaining") else pa.string())
            for i, n in enumerate(names)
        }
    )


# --- histograms --------------------------------------------------------------------------


@dataclass
class Histogram:
    """Counts per bin of one or more series ("kept", "dropped", "width", ...).

    ``edges`` has one more entry than each series' counts; with ``log`` the edges are spaced
    evenly in log2 (draw a log x axis).  Values above a cap land in the last bin.  An empty
    histogram (no values) has no edges.
    """

    what: str
    edges: np.ndarray
    counts: Dict[str, np.ndarray] = field(default_factory=dict)
    log: bool = False

    @property
    def empty(self) -> bool:
        return len(self.edges) == 0 or not any(c.sum() for c in self.counts.values())

    def total(self, series: Optional[str] = None) -> int:
        if series is not None:
            return int(self.counts[series].sum()) if series in self.counts else 0
        return int(sum(c.sum() for c in self.counts.values()))

    def as_table(self) -> pa.Table:
        cols = {"from": pa.array(self.edges[:-1], pa.float64()), "to": pa.array(self.edges[1:], pa.float64())}
        cols.update({k: pa.array(v, pa.int64()) for k, v in self.counts.items()})
        return pa.table(cols) if len(self.edges) else pa.table({"from": pa.array([], pa.float64())})


def _value_range(b: Build, columns, where, values: Sequence[pc.Expression]) -> Optional[Tuple[float, float]]:
    project = {f"v{i}": v for i, v in enumerate(values)}
    t = b.aggregate(columns, project, [], [(k, "min_max") for k in project], where=where)
    lo, hi = math.inf, -math.inf
    for k in project:
        mm = t.column(f"{k}_min_max")[0].as_py() or {}
        if mm.get("min") is not None:
            lo, hi = min(lo, mm["min"]), max(hi, mm["max"])
    return None if lo == math.inf else (float(lo), float(hi))


def _edges(lo: float, hi: float, bins: int, integer: bool) -> np.ndarray:
    if integer:  # whole-number values: bins of a whole width, centred on the values
        width = max(1, math.ceil((hi - lo + 1) / bins))
        n = max(1, math.ceil((hi - lo + 1) / width))
        return lo - 0.5 + width * np.arange(n + 1, dtype=np.float64)
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, bins + 1)


def _histogram(
    b: Build,
    what: str,
    columns: Sequence[str],
    where: pc.Expression,
    series: Optional[Dict[Optional[str], Tuple[pc.Expression, Optional[pc.Expression]]]] = None,
    *,
    value: Optional[pc.Expression] = None,
    by: Optional[str] = None,
    bins: int = 40,
    log: bool = False,
    integer: bool = False,
    cap: Optional[float] = None,
    value_range: Optional[Tuple[float, float]] = None,
) -> Histogram:
    """A histogram over the index in two streaming passes (the range, then the bins).

    Either ``value`` split into series by the column ``by`` (e.g. status -> kept, dropped), or
    ``series``: label -> (value expression, extra filter), sharing one range.  With ``log`` the
    bins are taken over log2 of the (positive) values.
    """
    if series is None:
        series = {None: (value, None)}
    exprs = {}
    for label, (v, extra) in series.items():
        cond = v.is_valid() if extra is None else (v.is_valid() & extra)
        if log:
            cond = cond & (v > 0)
            v = pc.log2(v.cast(pa.float64()))
        exprs[label] = (v, where & cond)
    if value_range is None:
        ranges = [r for v, w in exprs.values() if (r := _value_range(b, columns, w, [v])) is not None]
        if not ranges:
            return Histogram(what, np.array([]), {}, log)
        value_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    lo, hi = value_range
    if cap is not None:
        hi = min(hi, math.log2(cap) if log else cap)
        lo = min(lo, hi)
    edges = _edges(lo, hi, bins, integer and not log)
    n_bins = len(edges) - 1
    width = (edges[-1] - edges[0]) / n_bins
    counts: Dict[Any, np.ndarray] = {}  # keyed by series label (None: the one unnamed series)
    for label, (v, w) in exprs.items():
        raw = pc.floor(pc.divide(pc.subtract(v.cast(pa.float64()), pa.scalar(float(edges[0]))), pa.scalar(width)))
        clamped = pc.min_element_wise(pc.max_element_wise(raw, pa.scalar(0.0)), pa.scalar(float(n_bins - 1)))
        bin_ = clamped.cast(pa.int64())
        project = {"bin": bin_}
        if by is not None:
            project["series"] = f(by).cast(pa.string())
        t = b.aggregate(columns, project, list(project), where=w)
        for r in t.to_pylist():
            name = r.get("series") if by is not None else label
            counts.setdefault(name, np.zeros(n_bins, dtype=np.int64))[r["bin"]] += r["n"]
    if log:
        edges = np.exp2(edges)
    order = {"kept": 0, "dropped": 1}
    counts = dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], 2), str(kv[0]))))
    return Histogram(what, edges, counts, log)


def _of_kind(b: Build, kind: Optional[str]) -> Tuple[str, pc.Expression]:
    kind = kind or b.item_kind
    return kind, f("kind") == kind


def similarity_histogram(build, kind: Optional[str] = None, bins: int = 40) -> Histogram:
    """CLIP similarity of image and caption (MMC4: of an image and its matched sentence for kept
    images, its best sentence for images dropped at alignment), kept vs dropped.  Rows dropped
    before CLIP have no similarity and are not counted."""
    b = open_build(build)
    _, where = _of_kind(b, kind)
    return _histogram(
        b, "CLIP similarity", ["kind", "status", "similarity"], where, value=f("similarity"), by="status", bins=bins
    )


def similarity_threshold(build) -> Optional[float]:
    """The recipe's similarity floor: clip.min_similarity (LAION), mmc4.min_image_similarity (MMC4)."""
    b = open_build(build)
    if b.is_mmc4:
        return (b.recipe.get("mmc4") or {}).get("min_image_similarity")
    return (b.recipe.get("clip") or {}).get("min_similarity")


def image_sides(build, kind: Optional[str] = None, bins: int = 30) -> Histogram:
    """Original width and height of the images whose header was read (log-spaced bins), those
    the image checks dropped (too_small, bad_aspect_ratio, ...) included."""
    b = open_build(build)
    _, where = _of_kind(b, kind)
    cols = ["kind", "original_width", "original_height"]
    return _histogram(
        b,
        "original side (px)",
        cols,
        where,
        {"width": (f("original_width"), None), "height": (f("original_height"), None)},
        bins=bins,
        log=True,
    )


def aspect_ratios(build, kind: Optional[str] = None, bins: int = 30) -> Histogram:
    """Original width / height of the images whose header was read, kept vs dropped (log-spaced bins:
    1 is square, 2 is twice as wide as high, 0.5 twice as high as wide)."""
    b = open_build(build)
    _, where = _of_kind(b, kind)
    ratio = pc.divide(f("original_width").cast(pa.float64()), f("original_height").cast(pa.float64()))
    return _histogram(
        b,
        "aspect ratio (width / height)",
        ["kind", "status", "original_width", "original_height"],
        where & (f("original_height") > 0),
        value=ratio,
        by="status",
        bins=bins,
        log=True,
    )


def encoded_bytes(build, kind: Optional[str] = None, bins: int = 30) -> Histogram:
    """Bytes of the images as written into the tars (kept rows; log-spaced bins)."""
    b = open_build(build)
    _, where = _of_kind(b, kind)
    return _histogram(
        b,
        "encoded image bytes",
        ["kind", "status", "bytes"],
        where & (f("status") == "kept"),
        value=f("bytes"),
        by="status",
        bins=bins,
        log=True,
    )


def caption_lengths(
    build, kind: Optional[str] = None, bins: int = 40, max_words: int = 100
) -> Tuple[Histogram, Histogram]:
    """(words, characters) per caption, kept vs dropped.  Words are split at Unicode whitespace; captions
    longer than ``max_words`` words land in the last bin.  Empty for MMC4 (sentences are not in the
    index: see ``document_sample``)."""
    b = open_build(build)
    _, where = _of_kind(b, kind)
    cols = ["kind", "status", "caption"]
    n_words = pc.list_value_length(pc.utf8_split_whitespace(f("caption")))
    words = _histogram(
        b, "words per caption", cols, where, value=n_words, by="status", bins=bins, integer=True, cap=max_words
    )
    chars = _histogram(
        b,
        "characters per caption",
        cols,
        where & (pc.utf8_length(f("caption")) > 0),
        value=pc.utf8_length(f("caption")),
        by="status",
        bins=bins,
        log=True,
    )
    return words, chars


# --- languages, duplicates, download errors, shards ---------------------------------------------


def languages(build, kind: Optional[str] = None, top: int = 12) -> pa.Table:
    """(language, kept, dropped, total) of the ``top`` languages by rows, the rest summed in one
    "(other: N)" row; rows without a language are "(none)"."""
    b = open_build(build)
    _, where = _of_kind(b, kind)
    lang = pc.coalesce(f("language"), pa.scalar(NO_LANGUAGE))
    t = b.aggregate(
        ["kind", "status", "language"], {"language": lang, "status": f("status")}, ["language", "status"], where=where
    )
    per: Dict[str, Dict[str, int]] = {}
    for r in t.to_pylist():
        per.setdefault(r["language"], {"kept": 0, "dropped": 0})[r["status"]] = r["n"]
    ranked = sorted(per.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    head, rest = ranked[:top], ranked[top:]
    if rest:
        head.append((f"(other: {len(rest)})", {s: sum(v[s] for _, v in rest) for s in ("kept", "dropped")}))
    return pa.table(
        {
            "language": [k for k, _ in head],
            "kept": pa.array([v["kept"] for _, v in head], pa.int64()),
            "dropped": pa.array([v["dropped"] for _, v in head], pa.int64()),
            "total": pa.array([v["kept"] + v["dropped"] for _, v in head], pa.int64()),
        }
    )


def duplicate_groups(build, kind: Optional[str] = None) -> pa.Table:
    """(stage, reason, group_size, groups, rows_dropped): duplicate groups by size.  A group is one
    kept row and the rows dropped as its copies (``duplicate_of``), so its size is copies + 1.
    The first aggregate holds one entry per group (memory grows with the number of groups)."""
    b = open_build(build)
    _, where = _of_kind(b, kind)
    where = where & f("duplicate_of").is_valid()
    keys = ["stage", "reason", "duplicate_of"]
    by_size = [
        ac.Declaration(
            "project",
            ac.ProjectNodeOptions(
                [f("stage"), f("reason"), pc.add(f("n"), pa.scalar(1, pa.int64())), f("n")],
                ["stage", "reason", "group_size", "copies"],
            ),
        ),
        ac.Declaration(
            "aggregate",
            ac.AggregateNodeOptions(
                [([], "hash_count_all", None, "groups"), ("copies", "hash_sum", None, "rows_dropped")],
                keys=["stage", "reason", "group_size"],
            ),
        ),
    ]
    t = b.aggregate(["kind", *keys], {k: f(k) for k in keys}, keys, where=where, then=by_size)
    return t.select(["stage", "reason", "group_size", "groups", "rows_dropped"]).sort_by(
        [("stage", "ascending"), ("reason", "ascending"), ("group_size", "ascending")]
    )


def download_errors(build, kind: Optional[str] = None) -> pa.Table:
    """(reason, count) of the rows the download stage dropped, largest first."""
    b = open_build(build)
    kind = kind or b.item_kind
    rows = [r for r in outcomes(b, kind).to_pylist() if r["stage"] == "download" and r["status"] == "dropped"]
    return pa.table({"reason": [r["reason"] for r in rows], "count": pa.array([r["count"] for r in rows], pa.int64())})


def retries(build, kind: Optional[str] = None) -> Dict[str, int]:
    """What fetching again did (``attempts``: fetches of a URL over every run that used the image
    store): rows fetched more than once, of them ``recovered`` (past the download stage now) and
    ``still failing`` (dropped by the download stage after their last attempt)."""
    b = open_build(build)
    _, where = _of_kind(b, kind or b.item_kind)
    t = b.aggregate(
        ["kind", "stage", "status", "attempts"],
        {"failing": (f("stage") == "download") & (f("status") == "dropped")},
        ["failing"],
        where=where & (f("attempts") > 1),
    )
    by = {r["failing"]: r["n"] for r in t.to_pylist()}
    return {
        "fetched more than once": by.get(False, 0) + by.get(True, 0),
        "recovered": by.get(False, 0),
        "still failing": by.get(True, 0),
    }


def host_of(url: pc.Expression) -> pc.Expression:
    """The lower-cased host of a URL expression; "(no host)" where there is none."""
    host = pc.utf8_lower(pc.replace_substring_regex(url, pattern=_HOST, replacement=r"\1"))
    return pc.if_else(
        pc.match_substring_regex(pc.coalesce(url, pa.scalar("")), pattern=_URL_WITH_HOST), host, pa.scalar(NO_HOST)
    )


def download_errors_by_domain(build, kind: Optional[str] = None, top: int = 15) -> pa.Table:
    """Download drops per domain (URL host): (domain, total, one column per reason), the ``top``
    domains by total, the rest summed in one "(other: N domains)" row, so the totals add up to
    every download drop."""
    b = open_build(build)
    _, where = _of_kind(b, kind)
    where = where & (f("stage") == "download") & (f("status") == "dropped")
    t = b.aggregate(
        ["kind", "stage", "status", "reason", "url"],
        {"domain": host_of(f("url")), "reason": f("reason")},
        ["domain", "reason"],
        where=where,
    )
    per: Dict[str, Dict[str, int]] = {}
    reason_total: Dict[str, int] = {}
    for r in t.to_pylist():
        per.setdefault(r["domain"], {})[r["reason"]] = r["n"]
        reason_total[r["reason"]] = reason_total.get(r["reason"], 0) + r["n"]
    reasons = sorted(reason_total, key=lambda k: (-reason_total[k], k))
    ranked = sorted(per.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    head, rest = ranked[:top], ranked[top:]
    if rest:
        head.append((f"(other: {len(rest)} domains)", {r: sum(v.get(r, 0) for _, v in rest) for r in reasons}))
    cols = {
        "domain": pa.array([d for d, _ in head], pa.string()),
        "total": pa.array([sum(v.values()) for _, v in head], pa.int64()),
    }
    cols.update({r: pa.array([v.get(r, 0) for _, v in head], pa.int64()) for r in reasons})
    return pa.table(cols)


def politeness(build) -> Tuple[Optional[pa.Table], Dict[str, Any]]:
    """(per host: requests, 429s, 5xx, busiest second, why cut off; the totals) from the
    manifest's ``hosts`` section (download/hosts.py ``politeness_section``): the busiest hosts,
    then the hosts cut off.  (None, {}) for a build that fetched nothing or predates the section."""
    b = open_build(build)
    section = b.manifest.get("hosts")
    if not isinstance(section, dict) or not section.get("busiest") and not section.get("cut_off"):
        return None, {}
    why = {c["host"]: c["why"] for c in section.get("cut_off") or []}
    rows = [dict(r, cut_off=why.pop(r["host"], None)) for r in section.get("busiest") or []]
    rows += [
        {"host": c["host"], "requests": 0, "http_429": 0, "http_5xx": 0, "peak_rps": 0, "cut_off": why[c["host"]]}
        for c in section.get("cut_off") or []
        if c["host"] in why
    ]
    table = pa.table(
        {
            "host": pa.array([r["host"] for r in rows], pa.string()),
            **{k: pa.array([r.get(k, 0) for r in rows], pa.int64()) for k in ("requests", "http_429", "http_5xx")},
            "peak_rps": pa.array([r.get("peak_rps", 0) for r in rows], pa.int64()),
            "cut_off": pa.array([r.get("cut_off") for r in rows], pa.string()),
        }
    )
    totals = {k: v for k, v in section.items() if k not in ("busiest", "cut_off")}
    return table, totals


def shards(build) -> pa.Table:
    """(name, count, bytes) of every shard, from the manifest."""
    b = open_build(build)
    items = sorted(b.manifest.get("shards") or [], key=lambda s: s["name"])
    return pa.table(
        {
            "name": pa.array([s["name"] for s in items], pa.string()),
            "count": pa.array([s.get("count") for s in items], pa.int64()),
            "bytes": pa.array([s.get("bytes") for s in items], pa.int64()),
        }
    )


# --- MMC4 documents ------------------------------------------------------------------------


def images_per_document(build) -> pa.Table:
    """(images, documents_in, documents_kept): how many documents had that many input images
    (documents that reached the image stages: documents dropped while read or filtered before
    their images were split off have no image rows), and how many kept documents hold that many
    kept images.  One entry per document in the first aggregate."""
    b = open_build(build)
    doc_keys = ["source_index", "row"]
    kept = pc.if_else(f("status") == "kept", pa.scalar(1, pa.int64()), pa.scalar(0, pa.int64()))
    per_size = [
        ac.Declaration("project", ac.ProjectNodeOptions([f("n"), f("kept_sum")], ["images_in", "images_kept"])),
        ac.Declaration(
            "aggregate",
            ac.AggregateNodeOptions([([], "hash_count_all", None, "documents")], keys=["images_in", "images_kept"]),
        ),
    ]
    t = b.aggregate(
        ["kind", "status", *doc_keys],
        {"source_index": f("source_index"), "row": f("row"), "kept": kept},
        doc_keys,
        [(None, "count_all"), ("kept", "sum")],
        where=f("kind") == "image",
        then=per_size,
    )
    docs_in: Dict[int, int] = {}
    docs_kept: Dict[int, int] = {}
    for r in t.to_pylist():
        docs_in[r["images_in"]] = docs_in.get(r["images_in"], 0) + r["documents"]
        if r["images_kept"]:
            docs_kept[r["images_kept"]] = docs_kept.get(r["images_kept"], 0) + r["documents"]
    sizes = sorted(set(docs_in) | set(docs_kept))
    return pa.table(
        {
            "images": pa.array(sizes, pa.int64()),
            "documents_in": pa.array([docs_in.get(s, 0) for s in sizes], pa.int64()),
            "documents_kept": pa.array([docs_kept.get(s, 0) for s in sizes], pa.int64()),
        }
    )


@dataclass
class DocumentSample:
    """A few kept MMC4 documents read from the tars, without their images: what the index does
    not hold.  ``documents`` are dicts: key, shard, sentences (the text_list), matched (the
    (matched_text_index, matched_sim) of each image, in output order)."""

    shards: List[str]
    documents: List[dict]

    def __len__(self) -> int:
        return len(self.documents)


def _shard_order(b: Build, seed: int) -> List[str]:
    """The non-empty shards in a seeded random order: samples come from the first few of them."""
    names = sorted(s["name"] for s in b.manifest.get("shards") or [] if s.get("count"))
    random.Random(seed).shuffle(names)
    return names


def _tar_members(b: Build, shard: str) -> Iterator[Tuple[str, str, bytes]]:
    """(key, extension, bytes) of a shard's regular members, streamed from its start: a caller
    that stops early reads only a prefix of the tar.  A shard that cannot be read is a StatsError."""
    try:
        with b.open_shard(shard) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for member in tar:
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    continue
                key, _, ext = posixpath.basename(member.name).partition(".")
                yield key, ext.lower(), f.read()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise StatsError(f"{b.path}: {shard} is not a readable tar ({e})") from e


def _documents(b: Build, per_shard: int, shard_names: Sequence[str]) -> Iterator[Tuple[str, dict]]:
    """The first ``per_shard`` <key>.json documents of each shard in turn (the caller stops)."""
    for shard in shard_names:
        taken = 0
        for key, ext, data in _tar_members(b, shard):
            if taken >= per_shard:
                break
            if ext != "json":
                continue
            taken += 1
            try:
                doc = json.loads(data)
            except ValueError as e:
                raise StatsError(f"{b.path}: {shard}: {key}.json is not JSON ({e})") from e
            if not isinstance(doc, dict):
                raise StatsError(f"{b.path}: {shard}: {key}.json is not a JSON object")
            yield shard, {**doc, "key": key}


def document_sample(build, documents: int = 200, per_shard: int = 50, seed: int = 0) -> DocumentSample:
    """Up to ``documents`` kept MMC4 documents: the first ``per_shard`` of shards taken in a
    seeded random order until there are enough.  Reads those tar members only (the index has no
    sentences); the JSON is parsed and the images let go."""
    b = open_build(build)
    docs: List[dict] = []
    if not b.is_mmc4 or documents <= 0:
        return DocumentSample([], docs)
    for shard, doc in _documents(b, per_shard, _shard_order(b, seed)):
        info = [i for i in doc.get("image_info") or [] if isinstance(i, dict)]
        docs.append(
            {
                "key": doc["key"],
                "shard": shard,
                "sentences": [str(s) for s in doc.get("text_list") or []],
                "matched": [(i.get("matched_text_index"), i.get("matched_sim")) for i in info],
            }
        )
        if len(docs) >= documents:
            break
    return DocumentSample(sorted({d["shard"] for d in docs}), docs)


def _from_values(
    what: str,
    values: Dict[str, Sequence[float]],
    bins: int,
    integer: bool = False,
    value_range: Optional[Tuple[float, float]] = None,
) -> Histogram:
    """A Histogram of values already in memory (the document sample), binned as the index ones."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    nonempty = [a for a in arrays.values() if a.size]
    if not nonempty:
        return Histogram(what, np.array([]), {})
    lo, hi = value_range or (min(a.min() for a in nonempty), max(a.max() for a in nonempty))
    edges = _edges(float(lo), float(hi), bins, integer)
    clipped = {k: np.clip(a, edges[0], edges[-1]) for k, a in arrays.items()}
    return Histogram(what, edges, {k: np.histogram(a, bins=edges)[0].astype(np.int64) for k, a in clipped.items()})


def sentences_per_document(sample: DocumentSample, bins: int = 40) -> Histogram:
    return _from_values(
        "sentences per document", {"documents": [len(d["sentences"]) for d in sample.documents]}, bins, integer=True
    )


def sentence_lengths(sample: DocumentSample, bins: int = 40, max_words: int = 100) -> Histogram:
    words = [min(len(s.split()), max_words) for d in sample.documents for s in d["sentences"]]
    return _from_values("words per sentence", {"sentences": words}, bins, integer=True)


def image_landing(sample: DocumentSample, bins: int = 10) -> Histogram:
    """Where images land in their document: the matched sentence's place in the text, 0 for the
    first sentence and 1 for the last (a one-sentence document counts as 0)."""
    where = [
        (j / (len(d["sentences"]) - 1)) if len(d["sentences"]) > 1 else 0.0
        for d in sample.documents
        for j, _ in d["matched"]
        if isinstance(j, int)
    ]
    return _from_values(
        "matched sentence position (0 = first, 1 = last)", {"images": where}, bins, value_range=(0.0, 1.0)
    )


# --- sample images ------------------------------------------------------------------------


@dataclass
class SampleItem:
    key: str
    shard: str
    image: bytes  # encoded image bytes as stored (jpg / png)
    text: str  # the caption (LAION) or the image's matched sentence (MMC4)
    similarity: Optional[float] = None  # CLIP similarity with that caption or sentence, when scored


def sample_items(build, n: int = 12, per_shard: int = 6, seed: int = 0) -> List[SampleItem]:
    """``n`` kept samples for the image grid: the first ``per_shard`` of shards taken in a seeded
    random order until there are ``n``.  This reads those few tar members and stops: LAION
    <key>.jpg/png and <key>.txt, MMC4 <key>.json (its first image and that image's matched
    sentence)."""
    b = open_build(build)
    items: List[SampleItem] = []
    if n <= 0:
        return items
    if b.is_mmc4:
        for shard, doc in _documents(b, per_shard, _shard_order(b, seed)):
            item = _document_item(shard, doc)
            if item:
                items.append(item)
            if len(items) >= n:
                break
        return items
    for shard in _shard_order(b, seed):
        taken, key_now = 0, None
        group: Dict[str, bytes] = {}
        for key, ext, data in _tar_members(b, shard):
            if key != key_now:  # webdataset writes a sample's members together
                taken += _laion_item(items, shard, key_now, group)
                if taken >= per_shard or len(items) >= n:
                    break
                group, key_now = {}, key
            group[ext] = data
        else:
            _laion_item(items, shard, key_now, group)
        if len(items) >= n:
            break
    return items[:n]


def _laion_item(items: List[SampleItem], shard: str, key: Optional[str], group: dict) -> int:
    image = next((group[e] for e in IMAGE_EXTENSIONS if e in group), None)
    if key is None or image is None:
        return 0
    similarity = None
    try:
        value = json.loads(group["json"]).get("similarity") if "json" in group else None
        similarity = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except (ValueError, AttributeError):  # a json member that does not parse: the grid shows no score
        pass
    items.append(SampleItem(key, shard, image, group.get("txt", b"").decode("utf-8", "replace"), similarity))
    return 1


def _document_item(shard: str, doc: dict) -> Optional[SampleItem]:
    sentences = doc.get("text_list") or []
    for info in doc.get("image_info") or []:
        try:
            image = base64.b64decode(info["image_base64"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            continue
        j = info.get("matched_text_index")
        text = sentences[j] if isinstance(j, int) and 0 <= j < len(sentences) else ""
        sim = info.get("matched_sim")
        sim = float(sim) if isinstance(sim, (int, float)) and not isinstance(sim, bool) else None
        return SampleItem(doc["key"], shard, image, str(text), sim)
    return None
