"""``flamingo-corpus verify STORE`` and ``flamingo-corpus stats STORE``: what an image store holds.

Every block of every recipe digest is read whole and checked as a build reads it (parquet page
checksums, the block's metadata against its path and its digest folder, row counts, each image
against its sha256); the figures are added up per digest: blocks, rows, stored images and their
bytes, drops per stage and reason, rows a ``--retry-failed`` would fetch again, rows that needed
more than one attempt.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from apache_beam.io.filesystems import FileSystems

from ..download.lanes import Lanes
from .blocks import (
    DIGEST_CHARS,
    STORE_FILE,
    DamagedBlock,
    block_files,
    block_summary,
    parse_block_path,
    read_block,
    store_digest,
    store_folders,
)

__all__ = ["StoreReport", "check_store", "is_store"]


def is_store(path: str) -> bool:
    """True when ``path`` is an image store: a folder of ``<digest>/store.json``."""
    path = path.rstrip("/")
    if FileSystems.exists(posixpath.join(path, "manifest.json")):
        return False
    return bool(store_folders(path))


@dataclass
class DigestReport:
    folder: str
    sections: dict
    blocks: int = 0
    rows: int = 0
    images: int = 0
    image_bytes: int = 0
    retryable: int = 0
    retried: int = 0
    drops: Dict[str, int] = field(default_factory=dict)


@dataclass
class StoreReport:
    root: str
    digests: List[DigestReport] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [f"image store {self.root}: {len(self.digests)} recipe digest{'s' if len(self.digests) != 1 else ''}"]
        for d in self.digests:
            image = d.sections.get("image", {})
            per = d.image_bytes / d.images if d.images else 0
            lines += [
                f"  {posixpath.basename(d.folder)}: image {image.get('resize_mode')} {image.get('image_size')} "
                f"{image.get('encode_format')}, blocks of {d.sections.get('store', {}).get('block_rows')} rows",
                f"    blocks {d.blocks:,}, rows {d.rows:,}, images {d.images:,} "
                f"({d.image_bytes / 1e6:,.1f} MB, {per:,.0f} B each)",
                f"    retryable (transient) failures {d.retryable:,}; rows fetched more than once {d.retried:,}",
            ]
            lines += [f"    {k:<38}{v:>10,}" for k, v in sorted(d.drops.items(), key=lambda kv: (-kv[1], kv[0]))]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("OK" if self.ok else f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "digests": [d.__dict__ for d in self.digests],
            "problems": self.problems,
        }


def check_store(root: str) -> StoreReport:
    """Read and check every block of the store at ``root``; never raises for a damaged block."""
    root = root.rstrip("/")
    report = StoreReport(root)
    for folder, meta in store_folders(root):
        name = posixpath.basename(folder)
        sections = meta.get("sections") or {}
        digest = meta.get("digest") or ""
        if not sections or store_digest(sections) != digest or digest[:DIGEST_CHARS] != name:
            report.problems.append(f"{posixpath.join(folder, STORE_FILE)}: does not describe the folder {name}")
        d = DigestReport(folder, sections)
        report.digests.append(d)
        routing = _routing(sections.get("store") or {})
        for path in block_files(folder):
            try:
                rows = read_block(path, digest) or []
            except DamagedBlock as e:
                report.problems.append(f"{e.path}: damaged ({e.why}); a build fetches its rows again")
                continue
            try:
                _, number = parse_block_path(path)
            except ValueError:
                report.problems.append(f"{path}: not a block file name")
                continue
            outside = _outside(rows, number, routing)
            if outside:
                report.problems.append(f"{path}: holds rows of another block ({outside[0]})")
            if len({r["id"] for r in rows}) != len(rows):
                report.problems.append(f"{path}: holds a row twice")
            s = block_summary(rows)
            d.blocks += 1
            d.rows += s["rows"]
            d.images += s["images"]
            d.image_bytes += s["image_bytes"]
            d.retryable += s["retryable"]
            d.retried += s["retried"]
            for k, v in s["drops"].items():
                d.drops[k] = d.drops.get(k, 0) + v
    if not report.digests:
        report.problems.append(f"{root}: no image store here (no <digest>/{STORE_FILE})")
    return report


def write_store_report(report: StoreReport, path: str) -> None:
    """The store's figures as a small self-contained HTML page (``flamingo-corpus stats STORE``)."""
    import html

    body = html.escape(str(report))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>image store</title></head><body>"
        f"<h1>Image store {html.escape(report.root)}</h1><pre>{body}</pre>"
        f"<script type='application/json' id='figures'>{html.escape(json.dumps(report.to_dict()))}</script>"
        "</body></html>\n"
    )
    with FileSystems.create(path) as f:
        f.write(page.encode("utf-8"))


def _outside(rows: List[dict], number: int, routing: Optional[Lanes]) -> List[str]:
    """Ids of ``rows`` that cannot be in block ``number``: a block holds rows of one lane and one
    band, starting at row ``number`` (download/lanes.py)."""
    if routing is None or not rows:
        return []
    first = min(rows, key=lambda r: r["row"])
    lane, band = routing.lane(first["url"], first["id"]), routing.band(number)
    return [
        r["id"]
        for r in rows
        if r["row"] < number or routing.band(r["row"]) != band or routing.lane(r["url"], r["id"]) != lane
    ]


def _routing(store: dict) -> Optional[Lanes]:
    """How the store's recipe cut its blocks (None when its section does not say)."""
    try:
        return Lanes(int(store.get("lanes", 1)), int(store.get("host_spread", 1)), int(store["block_rows"]))
    except (KeyError, TypeError, ValueError):
        return None
