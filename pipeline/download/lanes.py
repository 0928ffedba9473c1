"""Fetch lanes: every host's rows are fetched by at most ``spread`` workers at a time.

The per-host limits (download/hosts.py) are kept by each worker for the rows it fetches.  For
them to hold for the whole build, however many workers it has, the rows of one host must not be
fetched by every worker at once.  So the rows are routed:

- each row gets a *sub-lane* of its host, ``blake2b(id) mod spread``: a host with ten million rows
  is split into ``spread`` parts of about equal size, and a host with one row is in one of them;
- each (host, sub-lane) pair is hashed to one of ``lanes`` lanes, and the store blocks are cut
  per lane: a block holds rows of one lane only;
- the blocks are grouped by lane, and one worker fetches a lane's blocks one after the other
  (store/fetch.py).  A (host, sub-lane) is in exactly one lane, a lane is in one worker's hands at
  a time, so at most ``spread`` workers fetch one host at any moment, and each takes
  ``sub-lanes it holds / spread`` of the host's limits: the shares add up to the host's limits.

The default spread is 1: a host is fetched by one worker at a time, which then sees every answer
of the host, so a 429 pauses all of its rows (with a spread of S, each of up to S workers backs
off on what it sees).  A spread above 1 does not make a host that is held to its rate any faster
(the shares add up to the same limits); it splits a host whose rows are too many for one group
on runners that hand a worker a group whole instead of paging it (Dataflow pages large groups;
the local runner and the portable runners send a group as one element): a host with ten million
rows becomes S groups of 1/S of them each.  ``lanes`` bounds the build's parallelism (a lane is
fetched by one worker at a time): it should be several times the number of worker processes.

Blocks: the rows of each stretch of ``block_rows * lanes`` rows of an input file (a *band*) are
grouped per lane (``band``), and each such group is cut, in input order, into blocks of
``block_rows`` rows (store/fetch.py); a block is numbered by its first row, unique in its input
file.  A block holds at most ``block_rows`` rows of one lane.  All of it depends only on the rows'
ids, URLs and row numbers, never on the run, the runner or the number of workers: the same rows
make the same blocks on 1 or N workers, and a resumed build finds them again.  The largest group
before the cut is the busiest host's rows of a band (for a one-host input, the band): spreading
that host (``spread``) divides it.

The hash is blake2b, not Python's ``hash``: the same on every machine and process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..records import Sample
from ..stage import input_order
from .hosts import host_key

__all__ = ["Lanes", "stable_hash"]


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that every process and machine agrees on."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Lanes:
    """How rows are routed to fetch lanes (``download.per_host.lanes`` and ``spread``)."""

    lanes: int
    spread: int
    block_rows: int

    def host_and_sub(self, url: object, row_id: str) -> Tuple[Optional[str], int]:
        """The row's host (``hosts.host_key``; None without one) and its sub-lane of that host."""
        return host_key(url), stable_hash(row_id) % self.spread

    def lane(self, url: object, row_id: str) -> int:
        host, sub = self.host_and_sub(url, row_id)
        return stable_hash(f"{host or ''}\x00{sub}") % self.lanes

    def band(self, row: int) -> int:
        """The band of an input row: the stretch of ``block_rows * lanes`` rows it is in."""
        return row // (self.block_rows * self.lanes)

    def cut(self, samples: List[Sample]) -> List[Tuple[int, List[Sample]]]:
        """One lane's samples of a band (any order) cut into blocks, in input order: each block
        the samples of ``block_rows`` input rows (an MMC4 document's images of this lane stay in
        one block), numbered by its first row."""
        blocks: List[Tuple[int, List[Sample]]] = []
        rows_in_block = 0
        last_row = None
        for s in sorted(samples, key=input_order):
            if s.row != last_row:
                if not blocks or rows_in_block == self.block_rows:
                    blocks.append((s.row, []))
                    rows_in_block = 0
                rows_in_block += 1
                last_row = s.row
            blocks[-1][1].append(s)
        return blocks
