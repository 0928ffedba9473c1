"""``flamingo-corpus verify DIR``: check a build's output against its manifest and the contract.

What is checked (docs/output.md, "What verify checks", is the list for users):

- **Nothing outside DIR is read.**  On a local disk, manifest.json, sizes.json, a shard, ``index/``
  or an index file that is a symbolic link, is not a regular file (folder), or whose real path
  leaves DIR is reported and not read; files are opened without following links.
- **manifest.json** is a JSON object of the contract's shape: ``unit``, ``shards`` (each with a
  shard ``name``, ``count``, ``bytes`` and ``sha256``), ``totals`` and ``drops`` of each unit with
  counts >= 0, and totals that add up (kept + dropped = accounted = rows in; kept = the shards'
  counts; the drops sum to dropped; shards and bytes as listed).  **sizes.json** is
  ``{shard: count}`` equal to the manifest's counts.
- **The tars**: every listed shard is there with its size and sha256 and reads as a tar to its
  end; no tar the manifest does not list, no partial ``.tar.tmp``.  Every member is a regular file
  named ``<key>.<ext>``: ten-digit key, no folder, no absolute or ``..`` name, an extension the
  contract allows (LAION: jpg/png/jpeg, txt, json; MMC4: json), no name twice; a sample's members
  are together, keys are unique across the build, counts are the manifest's.  A LAION sample has
  its UTF-8 txt, its json (an object naming its key) and one image (with the image's magic
  bytes); an MMC4 document is one json object naming its key, with text_list and image_info.
- **The index**: every file a parquet file with the contract's columns and types; every input id
  accounted for exactly once: ids unique per kind (row, document, image, window) and of the contract's
  form, matching their ``row`` (and ``doc_id``, ``position``) columns; LAION rows of each input
  numbered 0..n-1 without a gap; an MMC4 document's images (``<document id>#<n>``) and windows
  (``<document id>/w<n>``, mmc4.windows) numbered 0..k-1 without a gap, each with its document in
  the index, a kept one's document kept, a kept image with the key and shard of a kept sample of
  its document (the document, or one of its windows where windows are the samples); as many ids as
  the manifest accounts for (rows in), kept and dropped per stage and reason as it counts them.
  Every kept row has a key and shard, and the tars hold that key in that shard (with that id in
  its json), and every key in the tars has its kept row; every dropped row has a stage and a
  reason, a (stage, reason) pair the registry (``reasons.py``) lists for its kind.

Problems are collected, not raised: the report names each one (a few examples of each, and how
many more).  A check that fails unexpectedly is reported as a problem too, so a damaged output
never passes and never raises.  Memory grows with the number of index rows (the ids are held to
find duplicates and gaps) and one tar member at a time.

``quick=True`` checks what a look at the listing, manifest.json, sizes.json and the index footers
can: shards present with their listed sizes, no stray or partial tars, index rows adding up to the
manifest's totals.  A build started again on a complete output uses it to say "complete" without
reading every byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from ..inputs import source_names
from .index import INDEX_DIR, INDEX_SCHEMA
from .manifest import MANIFEST, SIZES
from .reasons import lookup
from .shard import KEY_DIGITS, TMP_SUFFIX

__all__ = ["verify", "Report", "unsafe_path", "IMAGE_EXTENSIONS", "EXTENSIONS"]

IMAGE_EXTENSIONS = ("jpg", "png", "jpeg")
# The member extensions the contract allows, per unit.
EXTENSIONS = {"rows": ("jpg", "jpeg", "json", "png", "txt"), "documents": ("json",)}
IMAGE_MAGIC = {"jpg": (b"\xff\xd8",), "jpeg": (b"\xff\xd8",), "png": (b"\x89PNG\r\n\x1a\n",)}
SHARD_NAME = re.compile(r"[0-9]{6,}\.tar")
KEY = re.compile(f"[0-9]{{{KEY_DIGITS}}}")
SHA256 = re.compile(r"[0-9a-f]{64}")
KINDS = {"rows": ("row",), "documents": ("document", "image", "window")}  # the index kinds of each unit
UNIT_OF = {"row": "rows", "document": "documents", "image": "images", "window": "windows"}
# The index columns verify reads (all of INDEX_SCHEMA must be there, with their types).
INDEX_COLUMNS = ("id", "source_index", "row", "status", "kind", "stage", "reason", "key", "shard", "doc_id", "position")
_READ_SCHEMA = pa.schema([INDEX_SCHEMA.field(name) for name in INDEX_COLUMNS])
EXAMPLES = 5  # names given per problem; the rest are counted
CHILD_SEPARATOR = {"image": "#", "window": "/w"}  # <document id><separator><n>: MMC4 images and windows
KEPT_STAGE = "shard"


@dataclass
class Report:
    shards: int = 0
    samples: int = 0
    problems: List[str] = field(default_factory=list)
    found: bool = True  # False: DIR does not exist, and nothing else was checked

    @property
    def ok(self) -> bool:
        return self.found and not self.problems

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def __str__(self) -> str:
        head = f"{self.shards} shards, {self.samples} samples"
        if self.ok:
            return f"OK: {head}"
        return "\n".join([f"FAILED: {head}, {len(self.problems)} problems"] + [f"  - {p}" for p in self.problems])


def _listing(items: Sequence[str], limit: int = EXAMPLES) -> str:
    """The first ``limit`` descriptions, as they are, and how many more."""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _named(items: Sequence[Any], limit: int = EXAMPLES) -> str:
    """The first ``limit`` items (strings are quoted), and how many more."""
    shown = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _what(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )


# --- the output folder: read only what lies inside it ----------------------------------------------


def unsafe_path(root: str, rel: str) -> Optional[str]:
    """Why ``rel`` under the local output folder ``root`` must not be read: a symbolic link, or a
    real path outside ``root``; None when it may be (or does not exist, or ``root`` is a URL)."""
    if "://" in root:
        return None
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be examined ({_short(e)})"
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"a symbolic link (to {target}), not followed"
    real, top = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        return f"its real path {real} is outside the output directory, not read"
    return None


class _Output:
    """An output folder, local or on any Beam filesystem: paths, listings and files opened
    without following links (locally)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"
        self.local = "://" not in root

    def path(self, rel: str = "") -> str:
        if not rel:
            return self.root
        return os.path.join(self.root, rel) if self.local else posixpath.join(self.root, rel)

    def missing(self) -> Optional[str]:
        """Why there is no output folder here, or None."""
        if self.local:
            if not os.path.exists(self.root):
                return "no such directory"
            return None if os.path.isdir(self.root) else "not a directory"
        try:
            if FileSystems.match([posixpath.join(self.root, "*")])[0].metadata_list:
                return None
        except Exception:  # noqa: BLE001 - a bucket that does not answer is no output folder
            pass
        return "no such directory (nothing under it)"

    def unsafe(self, rel: str) -> Optional[str]:
        return unsafe_path(self.root, rel) if self.local else None

    def listing(self, rel: str = "") -> Dict[str, Tuple[int, str]]:
        """{name: (size, what)} of the entries directly in folder ``rel``; ``what`` is "file",
        "link", "folder" or "other" (links are not followed)."""
        if not self.local:
            found = FileSystems.match([posixpath.join(self.path(rel), "*")])[0].metadata_list
            return {posixpath.basename(m.path): (m.size_in_bytes, "file") for m in found}
        out = {}
        with os.scandir(self.path(rel)) as entries:
            for e in entries:
                st = e.stat(follow_symlinks=False)
                mode = st.st_mode
                what = (
                    "link"
                    if stat.S_ISLNK(mode)
                    else "file"
                    if stat.S_ISREG(mode)
                    else "folder"
                    if stat.S_ISDIR(mode)
                    else "other"
                )
                out[e.name] = (st.st_size, what)
        return out

    def open(self, rel: str) -> BinaryIO:
        """The file ``rel`` for reading; locally a regular file only, its last component not
        followed if it is a link (O_NOFOLLOW)."""
        if not self.local:
            return FileSystems.open(self.path(rel), compression_type=CompressionTypes.UNCOMPRESSED)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(self.path(rel), flags)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(f"{rel} is not a regular file")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def _load_json(out: _Output, name: str, report: Report) -> Tuple[bool, Any]:
    """(True, the parsed JSON of ``name``) or (False, None) with the problem reported."""
    why = out.unsafe(name)
    if why:
        report.add(f"{name}: {why}")
        return False, None
    try:
        with out.open(name) as f:
            data = f.read()
    except FileNotFoundError:
        report.add(f"{name}: missing")
        return False, None
    except Exception as e:  # noqa: BLE001 - reported, not raised
        report.add(f"{name}: unreadable ({_short(e)})")
        return False, None
    try:
        return True, json.loads(data)
    except ValueError as e:
        report.add(f"{name}: not JSON ({_short(e)})")
        return False, None


# --- manifest.json and sizes.json -------------------------------------------------------------------


@dataclass
class _Section:
    """The totals and drops of one kind, as far as they are well formed (None where not)."""

    accounted: Optional[int] = None
    kept: Optional[int] = None
    dropped: Optional[int] = None
    n_in: Optional[int] = None
    drops: Optional[Dict[str, int]] = None


@dataclass
class _Manifest:
    unit: str
    kind: str
    shards: List[dict]  # name always valid; count, bytes, sha256 None where not
    sections: Dict[str, _Section]
    sources: Optional[List[str]]  # the input files' names in ids, when the manifest lists inputs
    totals_shards: Optional[int] = None
    totals_bytes: Optional[int] = None
    sample_kind: str = ""  # what one tar sample is: a row, a document, or a window (mmc4.windows)

    @property
    def totals_of_samples(self) -> str:
        """Where the manifest counts the samples the tars hold."""
        return "totals" if self.sample_kind == self.kind else f"{UNIT_OF[self.sample_kind]}.totals"


def _parse_section(sec: dict, prefix: str, unit: str, report: Report) -> _Section:
    where = f"{MANIFEST}: {prefix}"
    out = _Section()
    totals = sec.get("totals")
    if not isinstance(totals, dict):
        report.add(f"{where}totals is {'missing' if totals is None else _what(totals)}, not an object")
        totals = {}
    for k in ("accounted", "kept", "dropped"):
        v = totals.get(k)
        if _is_count(v):
            setattr(out, k, v)
        elif totals:
            report.add(f"{where}totals.{k} is {'missing' if k not in totals else repr(v)}, not a count >= 0")
    n_in = totals.get(f"{unit}_in")
    if _is_count(n_in):
        out.n_in = n_in
    elif n_in is not None:
        report.add(f"{where}totals.{unit}_in is {n_in!r}, not a count >= 0 or null")
    acc, kept, dropped = out.accounted, out.kept, out.dropped
    if acc is not None and kept is not None and dropped is not None and kept + dropped != acc:
        report.add(
            f"{where}totals: kept {out.kept} and dropped {out.dropped} "
            f"do not add up to the {out.accounted} accounted for"
        )
    if out.n_in is not None and out.accounted is not None and out.n_in != out.accounted:
        report.add(f"{where}totals: {out.n_in} {unit} in, {out.accounted} accounted for")
    drops = sec.get("drops")
    if not isinstance(drops, dict):
        report.add(f"{where}drops is {'missing' if drops is None else _what(drops)}, not an object")
        return out
    bad = [k for k, v in drops.items() if "/" not in k or not _is_count(v)]
    if bad:
        report.add(f"{where}drops: entries that are not 'stage/reason': count >= 0: {_named(bad)}")
    out.drops = {k: v for k, v in drops.items() if k not in bad}
    if not bad and out.dropped is not None and sum(out.drops.values()) != out.dropped:
        report.add(f"{where}drops add up to {sum(out.drops.values())}, totals.dropped is {out.dropped}")
    return out


def _parse_manifest(m: Any, report: Report) -> Optional[_Manifest]:
    """The manifest's contract fields, each problem reported; None when its shape leaves nothing
    to check against (not an object, no unit, no shard list)."""
    if not isinstance(m, dict):
        report.add(f"{MANIFEST}: {_what(m)}, not a JSON object")
        return None
    unit = m.get("unit")
    if unit not in KINDS:
        report.add(f"{MANIFEST}: unit is {'missing' if 'unit' not in m else repr(unit)}, not 'rows' or 'documents'")
        return None
    listed = m.get("shards")
    if not isinstance(listed, list):
        report.add(f"{MANIFEST}: shards is {'missing' if listed is None else _what(listed)}, not a list")
        return None
    shards, names = [], set()
    for i, s in enumerate(listed):
        if not isinstance(s, dict):
            report.add(f"{MANIFEST}: shards[{i}] is {_what(s)}, not an object")
            continue
        name = s.get("name")
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            why = "no name" if "name" not in s else f"name {name!r}, not a shard name (000000.tar)"
            report.add(f"{MANIFEST}: shards[{i}] has {why}")
            continue
        if name in names:
            report.add(f"{MANIFEST}: shard {name} is listed twice")
            continue
        names.add(name)
        entry: Dict[str, Any] = {"name": name}
        for k in ("count", "bytes"):
            v = s.get(k)
            entry[k] = v if _is_count(v) else None
            if entry[k] is None:
                report.add(f"{MANIFEST}: shard {name}: {k} is {'missing' if k not in s else repr(v)}, not a count >= 0")
        sha = s.get("sha256")
        entry["sha256"] = sha if isinstance(sha, str) and SHA256.fullmatch(sha) else None
        if entry["sha256"] is None:
            report.add(
                f"{MANIFEST}: shard {name}: sha256 is "
                f"{'missing' if 'sha256' not in s else repr(sha)}, not 64 hex digits"
            )
        shards.append(entry)
    kind = {u: k for k, u in UNIT_OF.items()}[unit]
    sections = {kind: _parse_section(m, "", unit, report)}
    for k in KINDS[unit]:
        u = UNIT_OF[k]
        if k == kind or u not in m:
            continue
        if isinstance(m[u], dict):
            sections[k] = _parse_section(m[u], f"{u}.", u, report)
        else:
            report.add(f"{MANIFEST}: {u} is {_what(m[u])}, not an object")
    sources = None
    inputs = m.get("inputs")
    if isinstance(inputs, list) and all(isinstance(i, dict) and isinstance(i.get("path"), str) for i in inputs):
        sources = source_names([i["path"] for i in inputs]) if inputs else []
    elif inputs is not None:
        report.add(f"{MANIFEST}: inputs is {_what(inputs)}, not a list of {{path, bytes}}")
    totals = m.get("totals")
    if not isinstance(totals, dict):
        totals = {}
    out = _Manifest(unit, kind, shards, sections, sources)
    out.sample_kind = "window" if "window" in sections else kind
    out.totals_shards = totals.get("shards") if _is_count(totals.get("shards")) else None
    out.totals_bytes = totals.get("bytes") if _is_count(totals.get("bytes")) else None
    if totals and (out.totals_shards is None or out.totals_bytes is None):
        report.add(f"{MANIFEST}: totals.shards and totals.bytes must be counts >= 0")
    if len(shards) == len(listed):
        if out.totals_shards is not None and out.totals_shards != len(shards):
            report.add(f"{MANIFEST}: totals.shards is {out.totals_shards}, {len(shards)} shards are listed")
        listed_bytes = [s["bytes"] for s in shards]
        if out.totals_bytes is not None and None not in listed_bytes and sum(listed_bytes) != out.totals_bytes:
            report.add(f"{MANIFEST}: totals.bytes is {out.totals_bytes}, the shards listed hold {sum(listed_bytes)}")
        counts = [s["count"] for s in shards]
        kept = sections[out.sample_kind].kept
        if kept is not None and None not in counts and sum(counts) != kept:
            report.add(
                f"{MANIFEST}: {out.totals_of_samples}.kept is {kept}, the shards' counts add up to {sum(counts)}"
            )
    return out


def _check_sizes(sizes: Any, m: _Manifest, report: Report) -> None:
    if not isinstance(sizes, dict):
        report.add(f"{SIZES}: {_what(sizes)}, not a JSON object {{shard: count}}")
        return
    listed = {s["name"]: s["count"] for s in m.shards}
    for name, n in sorted(sizes.items()):
        if name not in listed:
            report.add(f"{SIZES}: {name} is not a shard the manifest lists")
        elif not _is_count(n):
            report.add(f"{SIZES}: {name}: {n!r} is not a count >= 0")
        elif listed[name] is not None and n != listed[name]:
            report.add(f"{SIZES}: {name} holds {n} samples, the manifest says {listed[name]}")
    for name in sorted(set(listed) - set(sizes)):
        report.add(f"{SIZES}: no entry for {name}")


# --- the tars ------------------------------------------------------------------------------------


class _HashingReader:
    """A read-only file wrapper that counts and hashes what is read through it."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n) if n is not None and n >= 0 else self.f.read()
        self.sha.update(b)
        self.size += len(b)
        return b

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _member_type(m: tarfile.TarInfo) -> str:
    if m.issym():
        return f"a symbolic link (to {m.linkname!r})"
    if m.islnk():
        return f"a hard link (to {m.linkname!r})"
    if m.isdir():
        return "a directory"
    if m.ischr() or m.isblk():
        return "a device"
    if m.isfifo():
        return "a FIFO"
    return f"of tar type {m.type!r}"


@dataclass
class _Tars:
    """What the tars hold: key -> (shard, the id its json names); the shards read to their end."""

    keys: Dict[str, Tuple[str, Optional[str]]] = field(default_factory=dict)
    complete: Set[str] = field(default_factory=set)
    samples: int = 0


class _ShardCheck:
    """One shard read once, as a stream: size and sha256, every member, every sample."""

    def __init__(self, name: str, unit: str, tars: _Tars, report: Report):
        self.name, self.unit, self.tars, self.report = name, unit, tars, report
        self.allowed = EXTENSIONS[unit]
        self.samples: Dict[str, Set[str]] = {}  # key -> its extensions, in tar order
        self.ids: Dict[str, Optional[str]] = {}
        self.names: Set[str] = set()
        self.last: Optional[str] = None
        self.scattered: List[str] = []

    def problem(self, text: str) -> None:
        self.report.add(f"{self.name}: {text}")

    def member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = m.name
        if name in self.names:
            self.problem(f"member {name!r} appears twice")
            return
        self.names.add(name)
        if not m.isreg():
            self.problem(f"member {name!r} is {_member_type(m)}, not a regular file")
            return
        if name.startswith("/") or ".." in name.split("/"):
            self.problem(f"member {name!r} has an absolute name or '..' in it")
            return
        if "/" in name:
            self.problem(f"member {name!r} is in a folder; members are <key>.<ext>")
            return
        key, dot, ext = name.partition(".")
        if not KEY.fullmatch(key):
            self.problem(f"member key {key!r} is not {KEY_DIGITS} digits ({name!r})")
            return
        if not dot or ext not in self.allowed:
            self.problem(
                f"member {name!r}: extension {ext!r} is not one the contract allows ({', '.join(self.allowed)})"
            )
            return
        if key != self.last and key in self.samples and key not in self.scattered:
            self.scattered.append(key)
        self.last = key
        self.samples.setdefault(key, set()).add(ext)
        f = tf.extractfile(m)
        if f is None:  # a regular file always has one; the type check above makes this unreachable
            return
        if ext in IMAGE_EXTENSIONS:
            head = f.read(8)
            if not any(head.startswith(magic) for magic in IMAGE_MAGIC[ext]):
                self.problem(f"{name}: not a {ext} image (it starts {head[:8]!r})")
        elif ext == "txt":
            try:
                f.read().decode("utf-8")
            except UnicodeDecodeError:
                self.problem(f"{name}: the caption is not UTF-8")
        elif ext == "json":
            self._json(key, name, f.read())

    def _json(self, key: str, name: str, data: bytes) -> None:
        try:
            doc = json.loads(data)
        except ValueError as e:
            self.problem(f"{name}: not JSON ({_short(e)})")
            return
        if not isinstance(doc, dict):
            self.problem(f"{name}: {_what(doc)}, not a JSON object")
            return
        if doc.get("key") != key:
            self.problem(f"{name}: its json names key {doc.get('key')!r}")
        if self.unit == "documents" and not (
            isinstance(doc.get("text_list"), list) and isinstance(doc.get("image_info"), list)
        ):
            self.problem(f"{name}: not an MMC4 document (text_list and image_info lists)")
        self.ids[key] = doc.get("id") if isinstance(doc.get("id"), str) else None

    def finish(self, entry: dict, read_whole: bool) -> None:
        for key in self.scattered:
            self.problem(f"the members of sample {key} are not together (webdataset reads them as two samples)")
        for key, exts in self.samples.items():
            if self.unit == "documents":
                continue  # json is the only extension allowed: every key has it
            lacks = [e for e in ("txt", "json") if e not in exts]
            images = sorted(exts & set(IMAGE_EXTENSIONS))
            if not images:
                lacks.append("an image")
            if lacks:
                self.problem(f"sample {key} lacks {', '.join(lacks)} ({sorted(exts)})")
            if len(images) > 1:
                self.problem(f"sample {key} has {len(images)} images ({images})")
        if entry["count"] is not None and len(self.samples) != entry["count"]:
            self.problem(f"{len(self.samples)} samples, manifest says {entry['count']}")
        elsewhere: Dict[str, List[str]] = defaultdict(list)
        for key in self.samples:
            if key in self.tars.keys:
                elsewhere[self.tars.keys[key][0]].append(key)
            else:
                self.tars.keys[key] = (self.name, self.ids.get(key))
        for other, keys in sorted(elsewhere.items()):
            self.problem(f"keys also in {other}: {_named(keys)}")
        self.tars.samples += len(self.samples)
        if read_whole:
            self.tars.complete.add(self.name)


def _check_shard(out: _Output, entry: dict, unit: str, tars: _Tars, report: Report) -> None:
    name = entry["name"]
    try:
        raw = out.open(name)
    except FileNotFoundError:
        report.add(f"{name}: missing")
        return
    except Exception as e:  # noqa: BLE001 - reported, not raised
        report.add(f"{name}: unreadable ({_short(e)})")
        return
    check = _ShardCheck(name, unit, tars, report)
    read_whole = True
    with raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tf:  # type: ignore[call-overload]
                for member in tf:
                    check.member(tf, member)
        except Exception as e:  # noqa: BLE001 - a damaged tar is reported, not raised
            report.add(f"{name}: not a readable tar ({_short(e)})")
            read_whole = False
        try:
            reader.drain()
        except Exception as e:  # noqa: BLE001
            report.add(f"{name}: unreadable ({_short(e)})")
            return
    if entry["bytes"] is not None and reader.size != entry["bytes"]:
        report.add(f"{name}: bytes or sha256 differ from the manifest ({reader.size} bytes, it says {entry['bytes']})")
    elif entry["sha256"] is not None and reader.sha.hexdigest() != entry["sha256"]:
        report.add(
            f"{name}: bytes or sha256 differ from the manifest "
            f"(sha256 {reader.sha.hexdigest()[:12]}..., it says {entry['sha256'][:12]}...)"
        )
    check.finish(entry, read_whole)


def _check_listing(out: _Output, m: _Manifest, report: Report) -> Dict[str, Tuple[int, str]]:
    """The tars on disk against the manifest: none unlisted, none partial, none a link.  Returns
    the listing of the output folder."""
    try:
        entries = out.listing()
    except Exception as e:  # noqa: BLE001
        report.add(f"{out.root}: cannot be listed ({_short(e)})")
        return {}
    listed = {s["name"] for s in m.shards}
    for name, (_, what) in sorted(entries.items()):
        if name.endswith(".tar" + TMP_SUFFIX):
            report.add(f"{name}: a partial shard left by an interrupted write")
        elif name.endswith(".tar") and name not in listed:
            report.add(f"{name}: a tar the manifest does not list")
        elif name in listed and what != "file":
            why = out.unsafe(name) if what == "link" else None
            report.add(f"{name}: {why or 'not a regular file'}")
    return entries


# --- the index -----------------------------------------------------------------------------------


def _index_files(out: _Output, report: Report) -> List[str]:
    """The index's parquet files (paths relative to the output folder) that may be read."""
    why = out.unsafe(INDEX_DIR)
    if why:
        report.add(f"{INDEX_DIR}/: {why}")
        return []
    try:
        entries = out.listing(INDEX_DIR)
    except FileNotFoundError:
        entries = {}
    except NotADirectoryError:
        report.add(f"{INDEX_DIR}: not a folder")
        return []
    except Exception as e:  # noqa: BLE001
        report.add(f"{INDEX_DIR}/: cannot be listed ({_short(e)})")
        return []
    files = []
    for name, (_, what) in sorted(entries.items()):
        rel = posixpath.join(INDEX_DIR, name)
        if name.startswith((".", "_")):  # hidden from parquet dataset readers too
            continue
        if not name.endswith(".parquet"):
            report.add(f"{rel}: not an index file (*.parquet); readers of {INDEX_DIR}/ would fail on it")
        elif what == "link":
            report.add(f"{rel}: {out.unsafe(rel) or 'a link, not followed'}")
        elif what != "file":
            report.add(f"{rel}: not a regular file")
        else:
            files.append(rel)
    if not files:
        report.add("index: no parquet files")
    return files


def _schema_ok(rel: str, schema: pa.Schema, report: Report) -> bool:
    ok = True
    for f in INDEX_SCHEMA:
        i = schema.get_field_index(f.name)
        if i < 0:
            report.add(f"{rel}: no column {f.name!r}")
        elif not schema.field(i).type.equals(f.type):
            report.add(f"{rel}: column {f.name!r} is {schema.field(i).type}, not {f.type}")
        else:
            continue
        ok = ok and f.name not in INDEX_COLUMNS
    return ok


def _index_row_counts(out: _Output, files: List[str], report: Report) -> Optional[int]:
    """The rows of the index from its files' footers, or None when one is unreadable."""
    rows = 0
    for rel in files:
        try:
            with out.open(rel) as f:
                rows += pq.ParquetFile(f).metadata.num_rows
        except Exception as e:  # noqa: BLE001 - reported, not raised
            report.add(f"{rel}: not a readable parquet file ({_short(e)})")
            return None
    return rows


def _read_index(out: _Output, files: List[str], report: Report) -> Tuple[Optional[pa.Table], bool]:
    """(the index's INDEX_COLUMNS, every file read).  ParquetFile.read on this thread, not
    read_table: read_table goes through pyarrow's dataset scanner, whose background threads can
    still be finishing when the command returns, and one alive at interpreter exit aborts the
    process ("terminate called without an active exception", status -6) after a successful
    verify (apache/arrow#34314, #39862)."""
    tables, whole = [], True
    for rel in files:
        try:
            with out.open(rel) as f:
                pf = pq.ParquetFile(f)
                if not _schema_ok(rel, pf.schema_arrow, report):
                    whole = False
                    continue
                tables.append(pf.read(columns=list(INDEX_COLUMNS), use_threads=False).cast(_READ_SCHEMA))
        except Exception as e:  # noqa: BLE001 - reported, not raised
            report.add(f"{rel}: not a readable parquet file ({_short(e)})")
            whole = False
    if not tables:
        return None, False
    return pa.concat_tables(tables).combine_chunks(), whole


def _mask(t: pa.Table, cond) -> pa.Table:
    return t.filter(pc.fill_null(cond, False))


def _array(values) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _ids(t: pa.Table) -> List[str]:
    return t.column("id").to_pylist()


def _not_in(col, values: Iterable[str]):
    return pc.invert(pc.fill_null(pc.is_in(col, value_set=pa.array(list(values), pa.string())), False))


def _ids_like(t: pa.Table, pattern: str, names: Sequence[str]) -> Tuple[pa.Table, Dict[str, pa.Array]]:
    """The rows whose id matches ``pattern`` and those parts of their ids; the others are left out."""
    parts = pc.extract_regex(t.column("id"), pattern)
    good = pc.fill_null(pc.is_valid(parts), False)
    parsed = pc.filter(parts, good)
    return t.filter(good), {n: pc.struct_field(parsed, n) for n in names}


def _runs(codes: np.ndarray, values: np.ndarray) -> Iterable[Tuple[int, np.ndarray]]:
    """(code, its sorted distinct values) of (code, value) pairs."""
    if not len(codes):
        return
    order = np.lexsort((values, codes))
    codes, values = codes[order], values[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(codes)
        yield int(codes[start]), np.unique(values[start:end])


class _IndexCheck:
    """The index against the contract, the manifest and the tars."""

    def __init__(self, t: pa.Table, m: _Manifest, report: Report):
        self.m, self.report = m, report
        self.t = self._valid(t)
        self.missing_lines: List[str] = []

    def problem(self, text: str) -> None:
        self.report.add(f"index: {text}")

    def _valid(self, t: pa.Table) -> pa.Table:
        """The rows with an id, a status and a kind of this output; the others reported."""
        no_id = t.column("id").is_null()
        if pc.any(no_id).as_py():
            self.problem(f"{pc.sum(no_id).as_py()} rows have no id")
        t = _mask(t, pc.invert(no_id))
        bad = _mask(t, _not_in(t.column("status"), ("kept", "dropped")))
        if bad.num_rows:
            self.problem(f"{bad.num_rows} rows have a status other than kept or dropped: {_named(_ids(bad))}")
        kinds = KINDS[self.m.unit]
        wrong = _mask(t, _not_in(t.column("kind"), kinds))
        if wrong.num_rows:
            found = sorted({str(k) for k in wrong.column("kind").to_pylist()})
            self.problem(
                f"{wrong.num_rows} rows of kind {', '.join(found)}, not {' or '.join(kinds)} "
                f"(an output of {self.m.unit}): {_named(_ids(wrong))}"
            )
        ok = pc.and_(
            pc.invert(_not_in(t.column("status"), ("kept", "dropped"))), pc.invert(_not_in(t.column("kind"), kinds))
        )
        return _mask(t, ok)

    def of(self, kind: str, status: Optional[str] = None) -> pa.Table:
        cond = pc.equal(self.t.column("kind"), kind)
        if status is not None:
            cond = pc.and_(cond, pc.equal(self.t.column("status"), status))
        return _mask(self.t, cond)

    # -- every row: stage and reason, key and shard

    def rows(self) -> None:
        t = self.t
        dropped = _mask(t, pc.equal(t.column("status"), "dropped"))
        for col in ("stage", "reason"):
            empty = _mask(dropped, pc.or_kleene(dropped.column(col).is_null(), pc.equal(dropped.column(col), "")))
            if empty.num_rows:
                self.problem(f"{empty.num_rows} dropped rows have no {col}: {_named(_ids(empty))}")
        named = _mask(
            dropped, pc.and_(pc.not_equal(dropped.column("stage"), ""), pc.not_equal(dropped.column("reason"), ""))
        )
        groups = named.group_by(["kind", "stage", "reason"], use_threads=False).aggregate(
            [("id", "count"), ("id", "first")]
        )
        for g in groups.to_pylist():
            kind, stage, reason, n, example = g["kind"], g["stage"], g["reason"], g["id_count"], g["id_first"]
            r = lookup(stage, reason)
            if r is None:
                self.problem(
                    f"drop {stage}/{reason} is not a (stage, reason) pair of the registry ({n} rows, e.g. {example!r})"
                )
            elif kind not in r.kinds:
                self.problem(
                    f"drop {stage}/{reason} is registered for {', '.join(r.kinds)} rows, not {kind} "
                    f"({n} rows, e.g. {example!r})"
                )
        kept = _mask(t, pc.equal(t.column("status"), "kept"))
        stage = _mask(kept, pc.fill_null(pc.not_equal(kept.column("stage"), KEPT_STAGE), True))
        if stage.num_rows:
            self.problem(f"{stage.num_rows} kept rows have a stage other than {KEPT_STAGE!r}: {_named(_ids(stage))}")
        for col, pattern, what in (
            ("key", KEY.pattern, f"{KEY_DIGITS} digits"),
            ("shard", SHARD_NAME.pattern, "a shard name"),
        ):
            bad = _mask(
                kept, pc.invert(pc.fill_null(pc.match_substring_regex(kept.column(col), f"^{pattern}$"), False))
            )
            if bad.num_rows:
                self.problem(f"{bad.num_rows} kept rows have no {col} ({what}): {_named(_ids(bad))}")

    # -- ids: unique, of the contract's form, every input row once

    def unique(self, t: pa.Table, kind: str) -> int:
        """Reports the ids of ``kind`` that appear more than once; returns the number of distinct ids."""
        counts = pc.value_counts(t.column("id"))
        many = pc.greater(counts.field("counts"), 1)
        if pc.any(many).as_py():
            dups = pc.filter(counts, many).to_pylist()
            named = [f"{d['values']!r} ({d['counts']} times)" for d in dups]
            self.problem(f"{len(dups)} {kind} ids appear more than once: {_listing(named)}")
        return len(counts)

    def inputs(self, t: pa.Table, kind: str) -> None:
        """Row and document ids: ``<source>:<row>``, matching their columns, one name per input,
        and LAION rows numbered from 0 without a gap (MMC4 lines may skip blank lines: the gaps
        are kept to name when the count falls short)."""
        pattern = r"^(?P<source>.+):(?P<line>[0-9]+|\*)$"
        good, parts = _ids_like(t, pattern, ("source", "line"))
        if good.num_rows != t.num_rows:
            bad = [i for i in _ids(t) if not re.fullmatch(pattern[1:-1], i)]
            self.problem(f"{len(bad)} {kind} ids are not <source>:<row>: {_named(bad)}")
        row = good.column("row")
        expected = pc.if_else(pc.equal(row, -1), "*", pc.cast(row, pa.string()))
        differ = pc.fill_null(pc.not_equal(parts["line"], expected), True)
        if pc.any(differ).as_py():
            wrong = pc.filter(good, differ)
            named = [f"{i!r} (row {r})" for i, r in zip(_ids(wrong), wrong.column("row").to_pylist())]
            self.problem(f"{len(named)} {kind} ids do not match their row column: {_listing(named)}")
        pairs = pa.table({"index": good.column("source_index"), "source": parts["source"]})
        pairs = pairs.group_by(["index", "source"], use_threads=False).aggregate([]).to_pylist()
        by_index: Dict[Any, Set[str]] = defaultdict(set)
        by_name: Dict[str, Set[Any]] = defaultdict(set)
        for p in pairs:
            by_index[p["index"]].add(p["source"])
            by_name[p["source"]].add(p["index"])
        for index, names in sorted(by_index.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            if len(names) > 1:
                self.problem(f"{kind} ids of source_index {index} name several inputs: {_named(sorted(names))}")
            srcs = self.m.sources
            if srcs is not None and (not isinstance(index, int) or not 0 <= index < len(srcs)):
                self.problem(f"source_index {index} of {kind} ids, the manifest lists {len(srcs)} inputs")
            elif srcs is not None and srcs[index] not in names:
                self.problem(f"{kind} ids of input {index} name {_named(sorted(names))}, the input is {srcs[index]!r}")
        for name, indexes in sorted(by_name.items()):
            if len(indexes) > 1:
                self.problem(f"{kind} ids name input {name!r} with several source_index values")
        names = pc.dictionary_encode(_array(parts["source"]))
        lines = pc.cast(pc.if_else(pc.equal(parts["line"], "*"), "-1", parts["line"]), pa.int64())
        codes = names.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        values = np.asarray(lines.to_numpy(zero_copy_only=False), dtype=np.int64)
        dictionary = names.dictionary.to_pylist()
        gaps: List[str] = []
        first = 0 if kind == "row" else 1
        for code, got in _runs(codes, values):
            source = dictionary[code]
            whole = -1 if kind == "row" else 0  # the row of a file that could not be read at all
            if whole in got:
                if len(got) > 1:
                    self.problem(
                        f"input {source!r} has a row for the whole unreadable file "
                        f"({source}:{'*' if whole < 0 else 0}) beside rows of its own"
                    )
                continue
            gaps += [f"{source}:{n}" for n in np.setdiff1d(np.arange(first, int(got[-1]) + 1), got)]
        if kind == "row" and gaps:
            self.problem(
                f"{len(gaps)} rows missing (an input's rows are numbered from 0, "
                f"every one in the index): {_named(gaps)}"
            )
        if kind == "document":
            self.missing_lines = gaps

    def children(self, t: pa.Table, documents: pa.Table, kind: str, sep: str) -> None:
        """Image ids ``<document id>#<position>`` (window ids ``<document id>/w<n>``) matching
        doc_id and position, their document in the index with the same source_index and row,
        numbered 0..k-1 per document without a gap; a kept one's document kept."""
        units = UNIT_OF[kind]
        pattern = f"^(?P<doc>.+){re.escape(sep)}(?P<position>[0-9]+)$"
        good, parts = _ids_like(t, pattern, ("doc", "position"))
        if good.num_rows != t.num_rows:
            bad = [i for i in _ids(t) if not re.fullmatch(pattern[1:-1], i)]
            self.problem(f"{len(bad)} {kind} ids are not <document id>{sep}<n>: {_named(bad)}")
        expected = pc.binary_join_element_wise(
            good.column("doc_id"), pc.cast(good.column("position"), pa.string()), sep
        )
        differ = pc.fill_null(pc.not_equal(good.column("id"), expected), True)
        if pc.any(differ).as_py():
            self.problem(
                f"{pc.sum(differ).as_py()} {kind} ids do not match their doc_id and position: "
                f"{_named(_ids(pc.filter(good, differ)))}"
            )
        doc = pc.index_in(parts["doc"], value_set=_array(documents.column("id")))
        orphan = doc.is_null()
        if pc.any(orphan).as_py():
            self.problem(
                f"{pc.sum(orphan).as_py()} {units} whose document is not in the index: "
                f"{_named(_ids(pc.filter(good, orphan)))}"
            )
        has_doc = pc.invert(orphan)
        good, doc = good.filter(has_doc), pc.filter(doc, has_doc)
        positions = pc.cast(pc.filter(parts["position"], has_doc), pa.int64())
        codes = np.asarray(doc.to_numpy(zero_copy_only=False), dtype=np.int64)
        values = np.asarray(positions.to_numpy(zero_copy_only=False), dtype=np.int64)
        doc_ids = documents.column("id")
        gaps = []
        for code, got in _runs(codes, values):
            if len(got) != int(got[-1]) + 1:
                name = doc_ids[code].as_py()
                gaps += [f"{name}{sep}{p}" for p in np.setdiff1d(np.arange(int(got[-1]) + 1), got)]
        if gaps:
            self.problem(
                f"{len(gaps)} {units} missing (a document's {units} are numbered from 0, every one in the index): "
                f"{_named(gaps)}"
            )
        for col in ("source_index", "row"):
            differ = pc.fill_null(pc.not_equal(good.column(col), pc.take(documents.column(col), doc)), True)
            if pc.any(differ).as_py():
                self.problem(
                    f"{pc.sum(differ).as_py()} {units} have another {col} than their document: "
                    f"{_named(_ids(pc.filter(good, differ)))}"
                )
        doc_kept = pc.fill_null(pc.equal(pc.take(documents.column("status"), doc), "kept"), False)
        alone = pc.and_(pc.equal(good.column("status"), "kept"), pc.invert(doc_kept))
        if pc.any(alone).as_py():
            self.problem(
                f"{pc.sum(alone).as_py()} kept {units} whose document is not kept: "
                f"{_named(_ids(pc.filter(good, alone)))}"
            )

    def kept_with_samples(self, kind: str, samples: pa.Table, sample_kind: str) -> None:
        """A kept image (and, when windows are the samples, a kept document) carries the key and
        shard of a kept sample of its own document."""
        docs = samples.column("id" if sample_kind == "document" else "doc_id").to_pylist()
        where = dict(zip(samples.column("key").to_pylist(), zip(docs, samples.column("shard").to_pylist())))
        kept = self.of(kind, "kept")
        own = kept.column("id" if kind == "document" else "doc_id").to_pylist()
        keys, shards = kept.column("key").to_pylist(), kept.column("shard").to_pylist()
        apart = [i for i, d, k, s in zip(_ids(kept), own, keys, shards) if where.get(k) != (d, s)]
        if apart:
            self.problem(
                f"{len(apart)} kept {UNIT_OF[kind]} are not kept with their document "
                f"(the key and shard of one of its kept {UNIT_OF[sample_kind]}): {_named(apart)}"
            )

    # -- the index against the manifest and the tars

    def counts(self, kind: str, t: pa.Table, distinct: int) -> None:
        unit = UNIT_OF[kind]
        sec = self.m.sections.get(kind)
        if sec is None:
            if t.num_rows:
                self.report.add(f"{MANIFEST}: no {unit} section, the index holds {t.num_rows} {unit}")
            return
        if sec.accounted is not None:
            if t.num_rows != sec.accounted:
                self.problem(f"{t.num_rows} {unit}, the manifest accounts for {sec.accounted}")
            if distinct != sec.accounted:
                gaps = (
                    f"; lines not in the index (blank lines hold no document): {_named(self.missing_lines)}"
                    if (kind == "document" and distinct < sec.accounted and self.missing_lines)
                    else ""
                )
                self.problem(f"{distinct} distinct {kind} ids, the manifest accounts for {sec.accounted}{gaps}")
        if sec.n_in is not None and distinct != sec.n_in and sec.n_in != sec.accounted:
            self.problem(f"{distinct} distinct {kind} ids, the manifest says {sec.n_in} {unit} in")
        kept = pc.sum(pc.equal(t.column("status"), "kept")).as_py() or 0
        if sec.kept is not None and kept != sec.kept:
            self.problem(f"{kept} {unit} kept, the manifest says {sec.kept}")
        if sec.drops is not None:
            dropped = _mask(t, pc.equal(t.column("status"), "dropped"))
            got: Dict[str, int] = defaultdict(int)
            for g in dropped.group_by(["stage", "reason"], use_threads=False).aggregate([("id", "count")]).to_pylist():
                got[f"{g['stage']}/{g['reason']}"] += g["id_count"]
            for name in sorted(set(got) | set(sec.drops)):
                if got.get(name, 0) != sec.drops.get(name, 0):
                    self.problem(
                        f"{got.get(name, 0)} {unit} dropped as {name}, the manifest says {sec.drops.get(name, 0)}"
                    )

    def against_tars(self, kept: pa.Table, kind: str, tars: _Tars) -> None:
        """Every kept row's key is in the shard it names (with its id in the json), and every key
        in the tars is a kept row's."""
        listed = {s["name"] for s in self.m.shards}
        index_keys: Dict[str, Tuple[str, str]] = {}
        reused, absent, moved, other_id, unlisted = [], [], [], [], []
        unread: Dict[str, int] = defaultdict(int)  # kept rows in shards that could not be read whole
        for id_, key, shard in zip(_ids(kept), kept.column("key").to_pylist(), kept.column("shard").to_pylist()):
            if key is None or shard is None:
                continue  # reported by rows()
            if key in index_keys:
                reused.append(f"{key} ({index_keys[key][1]!r} and {id_!r})")
                continue
            index_keys[key] = (shard, id_)
            found = tars.keys.get(key)
            if shard not in listed:
                unlisted.append(f"{id_!r} ({key} in {shard})")
            elif found is None:
                if shard in tars.complete:
                    absent.append(f"{id_!r} ({key} in {shard})")
                else:
                    unread[shard] += 1
            elif found[0] != shard:
                moved.append(f"{id_!r} ({key} in {shard}, the key is in {found[0]})")
            elif found[1] is not None and found[1] != id_:
                other_id.append(f"{key} in {shard} (id {found[1]!r} in its json, {id_!r} in the index)")
        for items, text in (
            (reused, f"keys given to more than one kept {kind}"),
            (unlisted, f"kept {kind}s name a shard the manifest does not list"),
            (absent, f"kept {kind}s point at a key no tar holds"),
            (moved, f"kept {kind}s name another shard than the one holding their key"),
            (other_id, "samples whose json names another id than the index"),
            (
                [f"{n} in {shard}" for shard, n in sorted(unread.items())],
                f"shards hold kept {kind}s but could not be read",
            ),
        ):
            if items:
                self.problem(f"{len(items)} {text}: {_listing(items)}")
        orphans = [f"{key} ({shard})" for key, (shard, _) in sorted(tars.keys.items()) if key not in index_keys]
        if orphans:
            self.problem(f"{len(orphans)} keys in the tars have no kept {kind} in the index: {_listing(orphans)}")


def _check_index(t: pa.Table, complete: bool, m: _Manifest, tars: _Tars, report: Report) -> None:
    check = _IndexCheck(t, m, report)
    check.rows()
    documents = check.of("document")
    for kind in KINDS[m.unit]:
        sub = check.of(kind)
        distinct = check.unique(sub, kind)
        if kind in CHILD_SEPARATOR:
            check.children(sub, documents, kind, CHILD_SEPARATOR[kind])
        else:
            check.inputs(sub, kind)
        if complete:
            check.counts(kind, sub, distinct)
    samples = check.of(m.sample_kind, "kept")
    for kind in KINDS[m.unit]:
        if kind != m.sample_kind and (kind == "image" or m.sample_kind == "window"):
            check.kept_with_samples(kind, samples, m.sample_kind)
    if complete:
        check.against_tars(samples, m.sample_kind, tars)


# --- verify --------------------------------------------------------------------------------------


def _guard(report: Report, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; an exception it raises is a problem of the report (a damaged output must never
    pass, and never raise)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        report.add(f"{what}: could not be checked ({_short(e)})")
        return None


def _quick(out: _Output, m: _Manifest, entries: Dict[str, Tuple[int, str]], report: Report) -> None:
    for s in m.shards:
        found = entries.get(s["name"])
        if found is None:
            report.add(f"{s['name']}: missing")
        elif found[1] == "file" and s["bytes"] is not None and found[0] != s["bytes"]:
            report.add(f"{s['name']}: {found[0]} bytes, the manifest says {s['bytes']}")
    files = _index_files(out, report)
    rows = _index_row_counts(out, files, report) if files else None
    if rows is not None:
        accounted = [sec.accounted for sec in m.sections.values()]
        if None not in accounted and rows != sum(a for a in accounted if a is not None):
            report.add(f"index: {rows} rows, the manifest accounts for {sum(a for a in accounted if a is not None)}")


def verify(output_dir: str, quick: bool = False) -> Report:
    """Check the output in ``output_dir``: see the module docstring.  Never raises: every problem
    (a damaged file, an unexpected failure) is in the report."""
    out = _Output(output_dir)
    report = Report()
    missing = out.missing()
    if missing:
        report.found = False
        report.add(f"{out.root}: {missing}")
        return report
    read, raw = _load_json(out, MANIFEST, report)
    m = _guard(report, MANIFEST, lambda: _parse_manifest(raw, report)) if read else None
    have_sizes, sizes = _load_json(out, SIZES, report)
    if m is None:
        return report
    report.shards = len(m.shards)
    if have_sizes:
        _guard(report, SIZES, lambda: _check_sizes(sizes, m, report))
    entries = _guard(report, "the output's files", lambda: _check_listing(out, m, report)) or {}
    if quick:
        report.samples = sum(s["count"] or 0 for s in m.shards)
        _guard(report, "the shards and index", lambda: _quick(out, m, entries, report))
        return report
    tars = _Tars()
    for s in sorted(m.shards, key=lambda s: s["name"]):
        if entries.get(s["name"], (0, "file"))[1] != "file":
            continue  # a link or a folder: reported by the listing, not read
        _guard(report, s["name"], _check_shard, out, s, m.unit, tars, report)
    report.samples = tars.samples
    kept = m.sections[m.sample_kind].kept
    if kept is not None and kept != tars.samples:
        report.add(f"manifest {m.totals_of_samples}.kept is {kept}, the tars hold {tars.samples}")
    files = _guard(report, "index", lambda: _index_files(out, report)) or []
    if files:
        table, whole = _guard(report, "index", lambda: _read_index(out, files, report)) or (None, False)
        if table is not None:
            _guard(report, "index", lambda: _check_index(table, whole, m, tars, report))
    return report
