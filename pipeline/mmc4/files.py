"""Multimodal C4 documents: read them from jsonl shards, validate them, name them.

A shard is one JSON document per line, either as a plain ``.jsonl`` file or, as released, one
jsonl inside a ``.zip``.  Files are opened with Beam's ``FileSystems``, so local paths, gs:// and
s3:// all work, and they are read line by line: a shard never sits in memory whole.

Reading and validating are separate steps with separate reasons: :func:`read_documents` reports
lines that are not JSON, :func:`validate_document` reports JSON that is not an MMC4 document, and
:func:`checked_documents` does both.  Unknown fields (``could_have_url_duplicate``,
``face_detections``, ...) are kept untouched.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from typing import IO, Any, Iterable, Iterator, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

REQUIRED_FIELDS = ("url", "text_list", "image_info", "similarity_matrix")

# (line number from 1 -- or 0 for an error about the whole file --, document or None, error or None)
Item = Tuple[int, Optional[Any], Optional[str]]


def read_documents(path: str) -> Iterator[Item]:
    """Yield ``(line_number, document, None)`` or ``(line_number, None, error)`` for every line.

    Lines are numbered from 1; blank lines are skipped (they hold no document) but still counted.
    A line that is not JSON gives ``"bad_json: <why>"``, JSON holding a string that is not valid
    Unicode (a lone surrogate escape) ``"bad_unicode: <where>"``.  Errors about the whole file have line 0:
    ``zip_without_jsonl``, ``zip_with_several_jsonl`` and ``bad_zip`` (not a zip archive).
    """
    with FileSystems.open(path) as raw:
        if path.lower().endswith(".zip"):
            yield from _read_zip(raw)
        else:
            yield from _parse_lines(raw)


def _read_zip(raw: IO[bytes]) -> Iterator[Item]:
    """The items of the one jsonl inside a zip, decompressed as it is read."""
    try:
        archive = zipfile.ZipFile(raw)
    except zipfile.BadZipFile:
        yield 0, None, "bad_zip"
        return
    with archive:
        names = [n for n in archive.namelist() if n.lower().endswith(".jsonl")]
        if len(names) != 1:
            yield 0, None, "zip_without_jsonl" if not names else "zip_with_several_jsonl"
            return
        with archive.open(names[0]) as member:
            yield from _parse_lines(member)


# A \\u escape of a surrogate: JSON allows a lone one ("\\ud800"), which no UTF-8 writer accepts.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _parse_lines(lines: Iterable[bytes]) -> Iterator[Item]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
            yield number, None, f"bad_json: {e}"
            continue
        except RecursionError:  # "[[[[...": nested deeper than the decoder's recursion allows
            yield number, None, "bad_json: nested too deeply"
            continue
        bad = _lone_surrogate(doc) if _SURROGATE_ESCAPE.search(line) else None
        if bad is not None:
            yield number, None, f"bad_unicode: a lone surrogate in {_where(bad)} (not valid Unicode text)"
            continue
        yield number, doc, None


def _lone_surrogate(value: Any, path: Tuple[Any, ...] = ()) -> Optional[Tuple[Any, ...]]:
    """The path (keys and indices) of a string in ``value`` holding a lone surrogate (a pair
    decodes to one character and is fine), ``("<key>",)`` appended for a key; None when none."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        items: Iterable[Tuple[Any, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _lone_surrogate(key) is not None:
            return (*path, "<key>")
        found = _lone_surrogate(item, (*path, key))
        if found is not None:
            return found
    return None


def _where(path: Tuple[Any, ...]) -> str:
    """A path as the document names it: ``text_list[1]``, ``image_info[0]['raw_url']``."""
    if not path:
        return "the document"
    head, rest = path[0], path[1:]
    return str(head) + "".join(f"[{part!r}]" for part in rest)


def validate_document(doc: Any) -> Optional[str]:
    """``None`` for a well-formed MMC4 document, else the first reason token that applies.

    ``text_list`` must be a non-empty list of strings (images need sentences to be aligned into),
    ``image_info`` a list of objects, and ``similarity_matrix`` ``len(image_info)`` rows of
    ``len(text_list)`` finite numbers each.
    """
    if not isinstance(doc, dict):
        return "not_an_object"
    if any(field not in doc for field in REQUIRED_FIELDS):
        return "missing_field"
    texts, images = doc["text_list"], doc["image_info"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return "bad_text_list"
    if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        return "bad_image_info"
    if not _is_matrix(doc["similarity_matrix"], len(images), len(texts)):
        return "bad_matrix_shape"
    return None


def _is_matrix(value: Any, rows: int, columns: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == rows
        and all(isinstance(row, list) and len(row) == columns and all(map(_is_number, row)) for row in value)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checked_documents(path: str) -> Iterator[Item]:
    """:func:`read_documents` with :func:`validate_document` applied: invalid documents become errors."""
    for number, doc, error in read_documents(path):
        reason = error or validate_document(doc)
        yield (number, None, reason) if reason else (number, doc, None)


def reason_token(error: str) -> str:
    """The stable token of an error (``"bad_json: Expecting value ..."`` -> ``"bad_json"``), for counting."""
    return error.split(":", 1)[0]


def document_id(source_name: str, line_number: int) -> str:
    """``"<source name>:<line>"``, the source name as ``inputs.source_names`` gives it (unique in a build)."""
    return f"{source_name}:{line_number}"
