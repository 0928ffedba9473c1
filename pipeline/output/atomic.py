"""Files written whole or not at all, on any Beam filesystem, and outputs that are not inputs.

A command that writes a file writes it under a temporary name beside it and renames it when the
last byte is written: a kill, a full disk or a bad input row half-way leaves the old file (or no
file), never a truncated one. Renames are atomic on local disks and HDFS; on object stores (gs://,
s3://) Beam's rename is a copy and a delete, after which the object is complete all the same.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from typing import BinaryIO, Iterator

from apache_beam.io.filesystems import FileSystems

from ..errors import UserError

__all__ = ["atomic_create", "atomic_write", "same_path", "OutputIsInput", "TMP_MARK"]

TMP_MARK = ".tmp-"  # in the names of files being written (flamingo-corpus removes them on resume)


class OutputIsInput(UserError, ValueError):
    """The file a command would write is one of the files it reads."""


def _local(path: str) -> bool:
    return "://" not in path


def same_path(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name the same file: the same local file (links, ``..`` and
    relative paths resolved), or the same URL."""
    if _local(a) and _local(b):
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.realpath(a) == os.path.realpath(b)
    return posixpath.normpath(a.rstrip("/")) == posixpath.normpath(b.rstrip("/"))


@contextlib.contextmanager
def atomic_create(path: str) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: it appears under its name only once the block
    ends without an exception; otherwise the partial file is removed and the exception goes on."""
    directory, name = posixpath.split(path) if not _local(path) else os.path.split(path)
    tmp = (posixpath.join if not _local(path) else os.path.join)(directory, f"{name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        with FileSystems.create(tmp) as f:
            yield f
        if _local(path):
            os.replace(tmp, path)  # atomic, and replaces an older file (Beam's rename may refuse)
        else:
            if FileSystems.exists(path):
                FileSystems.delete([path])
            FileSystems.rename([tmp], [path])
    except BaseException:
        with contextlib.suppress(Exception):
            if FileSystems.exists(tmp):
                FileSystems.delete([tmp])
        raise


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all."""
    with atomic_create(path) as f:
        f.write(data)
