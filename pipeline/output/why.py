"""``flamingo-corpus why OUTPUT QUERY``: what happened to one input row, document or image.

QUERY is an id (``metadata.parquet:47``, an MMC4 document ``docs.jsonl:6`` or image
``docs.jsonl:6#4``), a URL, or a sample key (``0000000042``). The build's per-row index is
scanned with Arrow's dataset reader, filtering on those columns (row groups whose statistics rule
the value out are skipped), so memory stays that of a few rows whatever the size of the index.
For each match: the stages it passed, where it was dropped with the reason, the registry's
meaning and the detail, or the shard and key it was written to; for MMC4, the document of an
image and the images of a document.
"""

from __future__ import annotations

import posixpath
from typing import Dict, List, Optional, Sequence

from .index import INDEX_DIR
from .reasons import lookup

__all__ = ["explain", "find_rows", "WhyError", "PASSAGE"]

# The order a row meets the stages that can drop it, per kind of index row (the laion and mmc4
# pipeline modules); a dropped row passed every stage before its own.
PASSAGE: Dict[str, List[str]] = {
    "row": ["read", "metadata", "download", "image", "safety", "clip", "decontaminate", "dedup", "near_dup",
            "sem_dedup"],
    "document": ["read", "document", "align"],
    "image": ["metadata", "download", "image", "safety", "clip", "decontaminate", "near_dup", "sem_dedup", "align"],
    "window": ["align"],  # mmc4.windows: cut from its document after the alignment
}  # fmt: skip
MAX_MATCHES = 20
_COLUMNS = ["id", "kind", "status", "stage", "reason", "detail", "key", "shard", "url", "caption", "doc_id",
            "position", "similarity", "duplicate_of", "original_width", "original_height", "bytes"]  # fmt: skip


class WhyError(ValueError):
    """The output has no index to ask."""


def _dataset(output_dir: str):
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    root = posixpath.join(output_dir.rstrip("/"), INDEX_DIR)
    fs, path = pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise WhyError(f"{output_dir} has no index/ folder: is it the output of a finished build?")
    return ds.dataset(path, filesystem=fs, format="parquet")


def find_rows(
    output_dir: str, query: str, limit: int = MAX_MATCHES, by: Sequence[str] = ("id", "url", "key", "doc_id")
) -> List[dict]:
    """The index rows whose id, url, key or document id (``by``) is ``query`` (at most ``limit``)."""
    import pyarrow.dataset as ds

    data = _dataset(output_dir)
    names = set(data.schema.names)
    columns = [c for c in _COLUMNS if c in names]
    test = None
    for column in by:
        if column in names:
            clause = ds.field(column) == query
            test = clause if test is None else test | clause
    rows: List[dict] = []
    for batch in data.to_batches(columns=columns, filter=test):
        rows.extend(batch.to_pylist())
        if len(rows) >= limit:
            break
    return sorted(rows[:limit], key=lambda r: (r.get("kind") != "document", r["id"]))


def _related(output_dir: str, row: dict) -> List[dict]:
    """The document of an image, or nothing (a document's images are matched by doc_id already)."""
    if row.get("kind") == "image" and row.get("doc_id"):
        return find_rows(output_dir, row["doc_id"], limit=1, by=("id",))
    return []


def _passed(row: dict) -> str:
    order = PASSAGE.get(row.get("kind") or "row", PASSAGE["row"])
    stage = row.get("stage")
    if row.get("status") == "kept":
        return "every stage"
    before = order[: order.index(stage)] if stage in order else []
    return ", ".join(before) if before else "none (dropped at the first stage)"


def _describe(row: dict) -> List[str]:
    kinds = {"row": "LAION row", "document": "MMC4 document", "image": "MMC4 image", "window": "MMC4 window"}
    kind = kinds.get(row.get("kind") or "row", "row")
    lines = [f"{row['id']}  ({kind})"]
    for label, column in (("url", "url"), ("caption", "caption"), ("document", "doc_id")):
        if row.get(column) and not (column == "doc_id" and row.get("kind") == "document"):
            lines.append(f"  {label:<11}{row[column]}")
    if row.get("position") is not None:
        lines.append(f"  {'position':<11}image {row['position']} of its document")
    if row.get("status") == "kept":
        where = f"shard {row.get('shard')} as key {row.get('key')}"
        if row.get("kind") == "image":
            where = "inside its document's sample" + (f" (key {row['key']})" if row.get("key") else "")
        lines.append(f"  {'kept':<11}{where}")
        if row.get("similarity") is not None:
            lines.append(f"  {'similarity':<11}{row['similarity']}")
        return lines
    entry = lookup(row.get("stage") or "", row.get("reason") or "")
    lines.append(
        f"  {'dropped':<11}at {row.get('stage')}: {row.get('reason')}" + (f" ({entry.meaning})" if entry else "")
    )
    if row.get("detail"):
        lines.append(f"  {'detail':<11}{row['detail']}")
    if row.get("duplicate_of"):
        lines.append(f"  {'kept':<11}{row['duplicate_of']} in its place")
    lines.append(f"  {'passed':<11}{_passed(row)}")
    return lines


def explain(output_dir: str, query: str) -> Optional[str]:
    """What happened to ``query`` in ``output_dir``, for a person to read; None when no index row matches."""
    rows = find_rows(output_dir, query)
    if not rows:
        return None
    seen = {r["id"] for r in rows}
    related = [r for row in rows for r in _related(output_dir, row) if r["id"] not in seen]
    blocks = ["\n".join(_describe(r)) for r in rows]
    blocks += ["\n".join(["of the document:"] + _describe(r)) for r in related]
    more = "" if len(rows) < MAX_MATCHES else f"\n(the first {MAX_MATCHES} matches; query the index for all)"
    return "\n\n".join(blocks) + more
