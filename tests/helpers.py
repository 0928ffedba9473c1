"""Small helpers several test files share (the loopback build and its pictures: loopback_build.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow.parquet as pq


def index_rows(out: Path) -> list:
    """Every row of a build's parquet index (``out/index/*.parquet``), file by file in name order."""
    return pq.read_table(sorted((Path(out) / "index").glob("*.parquet"))).to_pylist()


def flip_bits(phash: str, bits: Iterable[int]) -> str:
    """A 64-bit hex hash with the bits at the given distinct positions inverted: that many bits away."""
    value = int(phash, 16)
    for bit in bits:
        value ^= 1 << bit
    return f"{value:016x}"
