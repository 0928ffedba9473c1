"""The input files of a build, both corpora: matched once when the pipeline is built, sorted, so
each file has a stable ``source_index``, and named the way row ids name them."""

from __future__ import annotations

import posixpath
import re
from typing import List, Tuple

from apache_beam.io.filesystems import FileSystems

from .errors import UserError

__all__ = ["match_inputs", "source_names", "input_units", "InputError", "unfilled_placeholders"]


# The extra of setup.cfg that brings a filesystem's client, by URL scheme.
_EXTRAS = {"gs": "gcp", "s3": "aws", "hdfs": "hadoop"}


class InputError(UserError, FileNotFoundError):
    """The recipe's input cannot be listed, or matches no file."""


def match_inputs(pattern: str) -> List[str]:
    """All files matching a path or glob on any Beam filesystem, sorted; an error if none."""
    try:
        paths = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    except Exception as e:  # noqa: BLE001 - Beam's errors for a missing client or credentials vary
        scheme = pattern.split("://", 1)[0] if "://" in pattern else ""
        extra = _EXTRAS.get(scheme)
        hint = (
            f"; for {scheme}:// install the '{extra}' extra (pip install 'flamingo-corpus[{extra}]')" if extra else ""
        )
        reason = str(e).splitlines()[0][:300]
        raise InputError(f"cannot list the input {pattern}: {reason}{hint}") from None
    if not paths:
        raise InputError(f"no input files match {pattern!r}")
    return paths


def source_names(paths: List[str]) -> List[str]:
    """Names of the input files in row ids: the file names, or where two inputs share a file
    name (shards of the same name in two folders), the paths below their common folder."""
    base = [posixpath.basename(p.rstrip("/")) for p in paths]
    if len(set(base)) == len(base):
        return base
    common = (
        posixpath.commonpath([posixpath.dirname(p) for p in paths])
        if "://" not in paths[0]
        else posixpath.commonprefix([posixpath.dirname(p) + "/" for p in paths]).rsplit("/", 1)[0]
    )
    return [p[len(common) :].lstrip("/") for p in paths]


def input_units(paths: List[str]) -> List[Tuple[int, str, str]]:
    """(source_index, path, source name) of every input file."""
    return list(zip(range(len(paths)), paths, source_names(paths)))


PLACEHOLDER = re.compile(r"YOUR-[A-Z]+")


def unfilled_placeholders(recipe) -> List[str]:
    """``key: value`` of every recipe path still holding a shipped placeholder (``YOUR-BUCKET``)."""
    found = []
    for section in ("input", "safety", "decontamination", "clip"):
        config = getattr(recipe, section)
        for key, value in vars(config).items():
            if isinstance(value, str) and PLACEHOLDER.search(value):
                found.append(f"{section}.{key}: {value}")
    return found
