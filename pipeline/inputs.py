"""The input files of a build, both corpora: matched once when the pipeline is built, sorted, so
each file has a stable ``source_index``, and named the way row ids name them."""

from __future__ import annotations

import posixpath
from typing import List, Tuple

from apache_beam.io.filesystems import FileSystems

__all__ = ["match_inputs", "source_names", "input_units"]


def match_inputs(pattern: str) -> List[str]:
    """All files matching a path or glob on any Beam filesystem, sorted; an error if none."""
    paths = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    if not paths:
        raise FileNotFoundError(f"no input files match {pattern!r}")
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
