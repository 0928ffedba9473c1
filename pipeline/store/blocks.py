"""The image store's format: one parquet file per input block, written whole or not at all.

A build fetches every row in blocks of ``store.block_rows`` consecutive rows of one input file
(LAION rows, MMC4 document lines; an MMC4 block holds the images of its documents).  As a block
leaves the download and image stages, every row of it that was fetched is written to the store:
the processed image bytes and what the later stages need (sizes, hashes, caption, provenance), or
the drop with its stage, reason and detail; in both cases the attempts made over every run and the
run that fetched it.  Layout, on any Beam filesystem (local disk, gs://, s3://, hdfs://)::

    STORE/<digest>/store.json                      the recipe sections the digest covers
    STORE/<digest>/blocks/<input name>/<block>.parquet

``<digest>`` is the first 16 hex digits of the sha256 of the sections that decide the stored
bytes: ``download`` (but ``threads`` and ``per_host``), ``image`` and ``store.block_rows``.  A
recipe that differs only after the image stage (CLIP, NSFW, dedup, decontamination, removal lists,
shards) finds the same blocks; one whose download or image settings differ gets a folder of its own, and the build
says which settings differ from the store's other folders.  The metadata filters decide which
rows are fetched, not what a fetch gives: a stored row is taken when its id and URL are the ones
this run fetches, so a filter change fetches only the rows that were never fetched.

A block file is parquet (readable with pyarrow, DuckDB, Spark) with the columns of ``SCHEMA``,
``image`` a binary column; page checksums are written and verified on every read, the key-value
metadata names the format version, the digest, the input file and the block, and every stored
image's sha256 is checked when it is read back.  A block that does not parse, fails a checksum,
belongs to another digest or holds an image that does not match its sha256 is damaged: the build
warns, naming it, and fetches its rows again.  Blocks are written under a temporary name and
renamed (``output.atomic``), so a kill leaves the previous block or none, never half of one.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import posixpath
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from ..download.fetch import TRANSIENT
from ..download.lanes import Lanes
from ..images import perceptual, process
from ..inputs import source_names
from ..output.atomic import TMP_MARK, atomic_write
from ..output.index import WORK_DIR
from ..recipe import Recipe
from ..records import Sample

log = logging.getLogger(__name__)

__all__ = [
    "STORE_VERSION",
    "SCHEMA",
    "StoreSpec",
    "DamagedBlock",
    "StoreDamaged",
    "store_sections",
    "store_digest",
    "retryable",
    "write_block",
    "read_block",
    "read_images",
    "attach_images",
    "stored_refs",
    "with_images",
    "open_store",
    "list_blocks",
    "block_files",
    "parse_block_path",
    "make_spec",
    "default_spec",
    "default_root",
    "report_path",
    "new_run_id",
]

STORE_VERSION = 3  # 2: the phash_variants column (near-dup's mirrored, cropped, rotated copies); 3: phash_checks
STORE_FILE = "store.json"
DEFAULT_DIR = "store"  # under the output's _build/
REPORT_FILE = "store.json"  # under the output's _build/: this run's store figures
BLOCKS_DIR = "blocks"
DIGEST_CHARS = 16
ROW_GROUP_ROWS = 64  # rows per parquet row group: the shard writer reads only the groups it needs
BLOCK_SUFFIX = ".parquet"
# Fetch outcomes worth another try in a later run (--retry-failed): the fetcher's own transient
# reasons (after its retries), time limits, HTTP 408, 425, 429 and 5xx, and rows of a host that was
# cut off (host_unavailable: dead or asking for too long a pause).  404, 410, not an image,
# too small, noai and the like are permanent: another run would get the same answer.
RETRYABLE = frozenset(TRANSIENT) | {
    "dns_timeout",
    "deadline",
    "http_408",
    "http_425",
    "http_429",
    "host_unavailable",
}

SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # the row's id, as in the index
        ("row", pa.int64()),  # row (LAION) or line (MMC4) in the input file
        ("position", pa.int64()),  # MMC4: the image's position in its document
        ("doc_id", pa.string()),  # MMC4: its document
        ("url", pa.string()),
        ("caption", pa.string()),  # LAION: the caption of the run that fetched it
        ("status", pa.string()),  # "ok" (an image is stored) or "dropped"
        ("stage", pa.string()),  # the drop's stage: "download" or "image"
        ("reason", pa.string()),  # the drop's reason token
        ("detail", pa.string()),
        ("retryable", pa.bool_()),  # a transient failure: --retry-failed fetches it again
        ("attempts", pa.int32()),  # fetches of this URL over every run
        ("run", pa.string()),  # the run that fetched what is stored
        ("http_status", pa.int32()),
        ("content_type", pa.string()),
        ("download_bytes", pa.int64()),  # bytes as downloaded (decoded when gzip-encoded)
        ("download_sha256", pa.string()),  # their sha256: what removal lists name
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image_format", pa.string()),  # "jpg" or "png"
        ("sha256", pa.string()),  # sha256 of the stored image
        ("phash", pa.string()),
        ("phash_variants", pa.list_(pa.string())),  # pHashes of its copy variants (perceptual.py)
        ("phash_checks", pa.list_(pa.string())),  # check hashes of the pHash and the variants (perceptual.py)
        ("image", pa.binary()),  # the processed image, as the shards hold it
    ]
)
_COMPRESSION = {name: ("NONE" if name == "image" else "ZSTD") for name in SCHEMA.names}
_META_KEY = b"flamingo_corpus.store"


class DamagedBlock(Exception):
    """A store block that cannot be used: unreadable, cut short, failing a checksum, of another
    digest, or holding an image that does not match its sha256."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


class StoreDamaged(RuntimeError):
    """A block the shard writer reads back is damaged (it was sound when this run fetched it)."""


def store_sections(recipe: Recipe) -> dict:
    """What decides the stored bytes: the download section (but ``threads`` and ``per_host``, which
    only set how fast and how politely), the image section, the block size, and the versions of the
    stored perceptual hashes and of the image stage's pixels (a new pHash, variant definition or
    resize gets a folder of its own, and the build names the change)."""
    download = {k: v for k, v in recipe.to_dict()["download"].items() if k not in ("threads", "per_host")}
    hashes = {"phash": perceptual.VERSION, "variants": perceptual.BUILD_VARIANTS_VERSION}
    return {
        "download": download,
        "image": recipe.to_dict()["image"],
        "store": recipe.to_dict()["store"],
        "hashes": hashes,
        "pixels": process.PIXELS_VERSION,
    }


def store_digest(sections: dict) -> str:
    blob = json.dumps({"version": STORE_VERSION, **sections}, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def retryable(stage: Optional[str], reason: Optional[str]) -> bool:
    """True for a download failure another run may not meet: timeouts, 429, 5xx, resets, DNS timeouts."""
    if stage != "download" or not reason:
        return False
    return reason in RETRYABLE or (reason.startswith("http_5") and len(reason) == 8)


@dataclass(frozen=True)
class StoreSpec:
    """Where a build's store is and how it is keyed: what the workers need, pickled with the DoFns.

    ``names`` are the input files' names in row ids, by source index; ``run`` names this run in
    the rows it fetches; ``retry_failed`` fetches again the rows stored as transient failures;
    ``report`` is where the run's store figures go (``_build/store.jsonl``)."""

    root: str
    digest: str
    block_rows: int
    names: Tuple[str, ...]
    run: str
    retry_failed: bool = False
    report: Optional[str] = None
    lanes: int = 1
    host_spread: int = 1

    @property
    def dir(self) -> str:
        return posixpath.join(self.root, self.digest[:DIGEST_CHARS])

    @property
    def routing(self) -> Lanes:
        """How rows are cut into blocks and routed to fetch lanes (download/lanes.py)."""
        return Lanes(self.lanes, self.host_spread, self.block_rows)

    def block_path(self, source_index: int, block: int) -> str:
        return posixpath.join(
            self.dir, BLOCKS_DIR, quote(self.names[source_index], safe=""), f"{block:09d}{BLOCK_SUFFIX}"
        )


def new_run_id() -> str:
    """A name for this run in the rows it fetches: UTC time and a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def default_root(output_dir: str) -> str:
    """The store of a build that names none: ``<output>/_build/store`` (gone with ``_build/`` once
    the build is complete; ``--store`` names one that outlives builds)."""
    return posixpath.join(output_dir, WORK_DIR, DEFAULT_DIR)


def make_spec(
    recipe: Recipe,
    inputs: Sequence[str],
    root: str,
    *,
    run: Optional[str] = None,
    retry_failed: bool = False,
    report: Optional[str] = None,
) -> Tuple[StoreSpec, List[str]]:
    """The StoreSpec of a build of ``recipe`` over ``inputs`` with its store at ``root`` (made
    ready: ``open_store``), and what differs from the store's other digests when this one is new."""
    digest, changed = open_store(root, store_sections(recipe))
    spec = StoreSpec(
        root.rstrip("/"),
        digest,
        recipe.store.block_rows,
        tuple(source_names(list(inputs))),
        run or new_run_id(),
        retry_failed,
        report,
        recipe.store.lanes,
        recipe.store.host_spread,
    )
    return spec, changed


def default_spec(recipe: Recipe, inputs: Sequence[str], output_dir: str) -> StoreSpec:
    """The spec of a build that names no store: ``default_root``, figures in ``_build/``."""
    return make_spec(recipe, inputs, default_root(output_dir), report=report_path(output_dir))[0]


def report_path(output_dir: str) -> str:
    return posixpath.join(output_dir, WORK_DIR, REPORT_FILE)


def parse_block_path(path: str) -> Tuple[str, int]:
    """(input name, block number) of a block file's path."""
    folder, name = posixpath.split(path)
    return unquote(posixpath.basename(folder)), int(name[: -len(BLOCK_SUFFIX)])


# -- writing and reading blocks -------------------------------------------------------------------


def _sort_key(row: dict) -> tuple:
    return (row["row"], row["position"] if row["position"] is not None else -1, row["id"])


def write_block(path: str, rows: Iterable[dict], digest: str, name: str, block: int) -> int:
    """Write the rows of one block to ``path`` whole or not at all; returns the file's bytes."""
    ordered = sorted(rows, key=_sort_key)
    table = pa.Table.from_pylist(ordered, schema=SCHEMA)
    meta = {"version": STORE_VERSION, "digest": digest, "input": name, "block": block, "rows": len(ordered)}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        row_group_size=ROW_GROUP_ROWS,
        compression=_COMPRESSION,
        write_page_checksum=True,
        use_dictionary=False,
    )
    data = buf.getvalue()
    atomic_write(path, data)
    return len(data)


def _open(data: bytes) -> pq.ParquetFile:
    # ParquetFile over a buffer, not pq.read_table: after a failed page checksum the dataset
    # reader leaves a thread that aborts the interpreter at exit (pyarrow 25).
    return pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True, pre_buffer=False)


def _meta(pf: pq.ParquetFile) -> dict:
    raw = (pf.schema_arrow.metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}


def _read(path: str) -> Optional[bytes]:
    try:
        with FileSystems.open(path) as f:
            return f.read()
    except Exception:  # noqa: BLE001 - missing (or vanished since it was listed): no block
        if FileSystems.exists(path):
            raise
        return None


def _open_file(path: str):
    """The block at ``path`` open for reading (any Beam filesystem; seekable), or None when there
    is none."""
    try:
        return FileSystems.open(path)
    except Exception:  # noqa: BLE001 - missing (or vanished since it was listed): no block
        if FileSystems.exists(path):
            raise
        return None


def read_block(path: str, digest: str) -> Optional[List[dict]]:
    """Every row of the block at ``path``, checked; None when there is no block.  Raises
    DamagedBlock naming what is wrong."""
    data = _read(path)
    if data is None:
        return None
    try:
        pf = _open(data)
        meta = _meta(pf)
        table = pf.read(use_threads=False)
    except Exception as e:  # noqa: BLE001 - cut short, flipped bytes, not parquet: all "damaged"
        raise DamagedBlock(path, f"unreadable ({type(e).__name__}: {str(e)[:200]})") from None
    if meta.get("version") != STORE_VERSION or table.schema.names != SCHEMA.names:
        raise DamagedBlock(path, f"not a version {STORE_VERSION} store block")
    if meta.get("digest") != digest:
        raise DamagedBlock(path, f"written under another recipe digest ({str(meta.get('digest'))[:DIGEST_CHARS]})")
    if meta.get("rows") != table.num_rows:
        raise DamagedBlock(path, f"{table.num_rows} rows, its metadata says {meta.get('rows')}")
    rows = table.to_pylist()
    for r in rows:
        if r["status"] == "ok" and (r["image"] is None or hashlib.sha256(r["image"]).hexdigest() != r["sha256"]):
            raise DamagedBlock(path, f"the image of {r['id']} does not match its sha256")
    return rows


def read_images(path: str, ids: Sequence[str], rows: Sequence[int], digest: str) -> Dict[str, bytes]:
    """{id: image bytes} of ``ids`` (which are in input rows ``rows``) from the block at
    ``path``, reading only the row groups that hold those rows; each image checked against its
    sha256.  Raises StoreDamaged naming the block when it is missing or damaged."""

    def damaged(why: str) -> StoreDamaged:
        return StoreDamaged(
            f"store block {path} {why}; run the same command again: the build resumes and fetches that block again"
        )

    f = _open_file(path)
    if f is None:
        raise damaged("is missing")
    wanted = set(ids)
    low, high = min(rows), max(rows)
    out: Dict[str, bytes] = {}
    try:
        with f:
            # Read through the open file, not the whole file's bytes: parquet reads the footer and
            # then only the column chunks of the row groups asked for.  A shard's rows are a few
            # of each of the blocks it draws on (a block holds one fetch lane's rows), so reading
            # every block whole made a shard read every image of those blocks, ten times what it
            # needs at 1,000-row blocks, and the worker held a block's bytes while it read.
            pf = pq.ParquetFile(f, page_checksum_verification=True, pre_buffer=False)
            if _meta(pf).get("digest") != digest:
                raise damaged("was written under another recipe digest")
            column = pf.schema_arrow.get_field_index("row")
            groups = []
            for g in range(pf.num_row_groups):
                stats = pf.metadata.row_group(g).column(column).statistics
                if stats is None or not stats.has_min_max or (stats.min <= high and stats.max >= low):
                    groups.append(g)
            table = pf.read_row_groups(groups, columns=["id", "sha256", "image"], use_threads=False)
    except StoreDamaged:
        raise
    except Exception as e:  # noqa: BLE001
        raise damaged(f"is unreadable ({type(e).__name__}: {str(e)[:200]})") from None
    for rid, sha, image in zip(*(table.column(c).to_pylist() for c in ("id", "sha256", "image"))):
        if rid in wanted and image is not None:
            if hashlib.sha256(image).hexdigest() != sha:
                raise damaged(f"holds an image of {rid} that does not match its sha256")
            out[rid] = image
    missing = wanted - set(out)
    if missing:
        raise damaged(f"has no image for {sorted(missing)[0]}")
    return out


STORED_KEY = "_stored"  # in an MMC4 image_info entry until the shard writer puts image_base64 there

Ref = Tuple[str, str, int]  # (store block path, row id, input row)


def stored_refs(s: Sample) -> List[Ref]:
    """(store block, id, row) of every image ``s`` references: a LAION row's own, or those of an
    MMC4 document's ``image_info`` entries (each carries its reference, whatever reorders, cuts
    into windows or copies the entries)."""
    if s.document is not None:
        return [tuple(e[STORED_KEY]) for e in s.document.get("image_info") or () if STORED_KEY in e]
    return [tuple(r) for r in s.stored_images]


def attach_images(s: Sample, image_of: Callable[[Ref], bytes]) -> Sample:
    """``s`` with the image bytes it references put back, ``image_of(ref)`` giving them: a LAION
    row's ``image_bytes``, each MMC4 ``image_info`` entry's ``image_base64``."""
    if s.document is not None:
        info = []
        for entry in s.document["image_info"]:
            if STORED_KEY in entry:
                image = image_of(tuple(entry[STORED_KEY]))
                entry = {k: v for k, v in entry.items() if k != STORED_KEY}
                entry["image_base64"] = base64.b64encode(image).decode("ascii")
            info.append(entry)
        return s.replace(document={**s.document, "image_info": info})
    if not s.stored_images:
        return s
    return s.replace(image_bytes=image_of(tuple(s.stored_images[0])))


def with_images(samples: Sequence[Sample]) -> Iterator[Sample]:
    """The samples in order, each with its stored images attached (samples that reference none
    pass as they are).  The images are read from the store block by block: each block once, only
    the row groups holding the rows these samples need, and let go after the last sample that
    needs it, so memory holds about one block's images, not a shard's."""
    refs = [stored_refs(s) for s in samples]
    last_use: Dict[str, int] = {}
    wanted: Dict[str, Tuple[List[str], List[int]]] = {}
    for i, rs in enumerate(refs):
        for path, rid, row in rs:
            last_use[path] = i
            ids, rows = wanted.setdefault(path, ([], []))
            ids.append(rid)
            rows.append(row)
    loaded: Dict[str, Dict[str, bytes]] = {}

    def image_of(ref: Ref) -> bytes:
        path, rid, _ = ref
        if path not in loaded:
            loaded[path] = read_images(path, *wanted[path], _digest_of_path(path))
        return loaded[path][rid]

    for i, (s, rs) in enumerate(zip(samples, refs)):
        yield attach_images(s, image_of) if rs else s
        for path, _, _ in rs:
            if last_use[path] == i:
                loaded.pop(path, None)


def _digest_of_path(path: str) -> str:
    """The full digest a block path's folder stands for, from its store.json."""
    folder = posixpath.dirname(posixpath.dirname(posixpath.dirname(path)))
    return _read_store_file(folder).get("digest", "")


_STORE_FILES: Dict[str, dict] = {}


def _read_store_file(folder: str) -> dict:
    if folder not in _STORE_FILES:
        data = _read(posixpath.join(folder, STORE_FILE))
        try:
            _STORE_FILES[folder] = json.loads(data) if data else {}
        except ValueError:
            _STORE_FILES[folder] = {}
    return _STORE_FILES[folder]


# -- the store as a whole -------------------------------------------------------------------------


def _flatten(d: dict, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differences(ours: dict, theirs: dict) -> List[str]:
    """``section.key old -> new`` for every setting that differs between two sections dicts."""
    a, b = _flatten(theirs), _flatten(ours)
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def store_folders(root: str) -> List[Tuple[str, dict]]:
    """(folder, its store.json) of every recipe digest in the store at ``root``."""
    found = []
    for r in FileSystems.match([posixpath.join(root, "*", STORE_FILE)]):
        for m in r.metadata_list:
            folder = posixpath.dirname(m.path)
            data = _read(m.path)
            try:
                found.append((folder, json.loads(data) if data else {}))
            except ValueError:
                found.append((folder, {}))
    return sorted(found)


def open_store(root: str, sections: dict) -> Tuple[str, List[str]]:
    """Make ``root`` ready for a build whose store sections are ``sections``: (digest, what
    differs from the nearest other digest there, when this digest is new to the store and
    others are there; else [])."""
    digest = store_digest(sections)
    folder = posixpath.join(root, digest[:DIGEST_CHARS])
    path = posixpath.join(folder, STORE_FILE)
    changed: List[str] = []
    if _read(path) is None:
        others = [meta for f, meta in store_folders(root) if meta.get("sections")]
        if others:
            changed = min((differences(sections, m["sections"]) for m in others), key=len)
        if "://" not in folder and not FileSystems.exists(folder):
            FileSystems.mkdirs(folder)
        atomic_write(
            path,
            (
                json.dumps({"version": STORE_VERSION, "digest": digest, "sections": sections}, indent=2, sort_keys=True)
                + "\n"
            ).encode(),
        )
    _STORE_FILES[folder] = {"version": STORE_VERSION, "digest": digest, "sections": sections}
    return digest, changed


def block_files(folder: str) -> List[str]:
    """The block files of one digest folder (not the temporary files of writes in progress)."""
    pattern = posixpath.join(folder, BLOCKS_DIR, "*", "*" + BLOCK_SUFFIX)
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list if TMP_MARK not in m.path)


def list_blocks(root: str) -> Dict[str, List[str]]:
    """{digest folder: its block files} of the store at ``root``."""
    return {folder: block_files(folder) for folder, _ in store_folders(root)}


def block_summary(rows: Iterable[dict]) -> dict:
    """Counts of one block's rows: stored images, drops per stage/reason, retryable ones, attempts."""
    out: dict = {"rows": 0, "images": 0, "image_bytes": 0, "retryable": 0, "retried": 0, "drops": {}}
    for r in rows:
        out["rows"] += 1
        if r["status"] == "ok":
            out["images"] += 1
            out["image_bytes"] += len(r["image"] or b"")
        else:
            key = f"{r['stage']}/{r['reason']}"
            out["drops"][key] = out["drops"].get(key, 0) + 1
            out["retryable"] += int(bool(r["retryable"]))
        out["retried"] += int((r["attempts"] or 0) > 1)
    return out
