"""Rewrite an MMC4 shard with its image-to-sentence assignment recomputed from the matrices.

The work of ``flamingo-corpus realign``: mmc4 v1.0 stored wrong ``matched_text_index`` values for
part of its documents; this streams a shard, realigns every valid document
(:func:`flamingo_corpus.mmc4.align.realign_document`) and writes it as one JSON line.  Invalid lines are
counted by reason and reported, never written.  Lines are written as mmc4 wrote them
(``json.dumps`` defaults, keys in their order), so a released document whose assignment was
right comes out byte for byte.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from apache_beam.io.filesystems import FileSystems

from ..output.atomic import OutputIsInput, atomic_create, same_path
from .align import realign_document
from .files import checked_documents, reason_token


@dataclass
class RealignStats:
    read: int = 0  # documents (lines) read, valid or not
    changed: int = 0  # written documents whose assignment differed from the stored one
    written: int = 0
    invalid: Counter = field(default_factory=Counter)  # reason token -> documents

    def summary(self) -> str:
        lines = [
            f"documents read: {self.read}",
            f"written: {self.written}",
            f"changed: {self.changed}",
            f"invalid: {sum(self.invalid.values())}",
        ]
        lines += [f"  {reason}: {n}" for reason, n in sorted(self.invalid.items())]
        return "\n".join(lines)


def realign_file(
    source: str, destination: str, leftover: str = "argmax", on_invalid: Optional[Callable[[int, str], None]] = None
) -> RealignStats:
    """Realign every document of ``source`` (jsonl or zipped jsonl) into ``destination`` (jsonl).

    ``on_invalid(line_number, error)`` is called for each invalid line (line 0: the whole file).
    Both paths may be local or any Beam filesystem URL.  A missing source raises
    ``FileNotFoundError``.
    """
    if not FileSystems.exists(source):  # before creating the destination: no empty output for a typo
        raise FileNotFoundError(f"no such file: {source}")
    if same_path(source, destination):
        raise OutputIsInput(f"the output {destination} is the input file: write the realigned shard elsewhere")
    stats = RealignStats()
    with atomic_create(destination) as out:  # a bad line or a kill half-way leaves no partial file
        for number, doc, error in checked_documents(source):
            stats.read += number > 0  # line 0 is an error about the whole file, not a document
            if error:
                stats.invalid[reason_token(error)] += 1
                if on_invalid:
                    on_invalid(number, error)
                continue
            realigned, changed = realign_document(doc, leftover)
            out.write(json.dumps(realigned).encode("ascii") + b"\n")
            stats.written += 1
            stats.changed += changed
    return stats
