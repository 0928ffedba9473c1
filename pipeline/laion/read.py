"""Reading the input metadata: LAION parquet rows, one Sample per row.

Input files are matched once when the pipeline is built (``inputs.py``); then every parquet row
group becomes its own unit of work, so a few huge files still spread over many workers.  The row
id is ``<file name>:<row>`` (the path below the common folder where file names repeat): stable as
long as the file is, and unique in the build.

Metadata on the web is messy and no input may stop a build: a file whose footer cannot be read is
one ``unreadable_input`` row, a row group that cannot be decoded drops its rows
(``unreadable_row_group``), a URL or caption column of a non-text type drops its rows
(``bad_column_type``), a URL or caption that is not UTF-8 drops its row (``url_not_utf8``,
``caption_not_utf8``), and optional numeric columns holding something else read as missing.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, List, Optional, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from ..inputs import input_units
from ..recipe import InputConfig, LaionColumns
from ..records import Sample
from ..stage import apply_with_drops, drop

log = logging.getLogger(__name__)

__all__ = ["ReadLaionRows"]

# Canonical names of the optional LAION columns, as the rest of the pipeline sees them in Sample.meta.
OPTIONAL_COLUMNS = ("width", "height", "similarity", "punsafe", "pwatermark", "language", "hash", "key")
NUMERIC_COLUMNS = ("width", "height", "similarity", "punsafe", "pwatermark")
TEXT_COLUMNS = ("url", "caption")  # required; read as bytes and decoded here, see _text_values


class _ListRowGroups(beam.DoFn):
    """(source_index, path, name) -> one work item per parquet row group, with its first row
    number and its number of rows."""

    def process(self, item: Tuple[int, str, str]) -> Iterable[Tuple[int, str, str, int, int, int]]:
        source_index, path, name = item
        try:
            with FileSystems.open(path) as f:
                meta = pq.ParquetFile(f).metadata
        except Exception as e:  # an unreadable file is reported, the rest of the build goes on
            log.error("cannot read parquet footer of %s: %s", path, e)
            yield source_index, path, name, -1, 0, 0
            return
        first = 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            yield source_index, path, name, rg, first, n
            first += n


def _value(v):
    """Parquet nulls and NaNs become None; bytes in a text column become text."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return v


def _number(v) -> Optional[float]:
    """An optional numeric column's value, or None for null, NaN, infinities and anything not a
    number (a string "0.9" is read as the number; "high" as missing, as a null would be)."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _text_type_problem(t: pa.DataType) -> Optional[str]:
    """None when the column holds text (string, binary, dictionary of those, all-null)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    text = (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_null(t)
        or str(t) in ("string_view", "binary_view")
    )
    return None if text else str(t)


def _text_values(column: pa.ChunkedArray) -> list:
    """The column as bytes (or None): pyarrow would raise on the first string that is not valid
    UTF-8 and take the whole row group with it, so decoding is left to each row."""
    return pc.cast(column, pa.large_binary()).to_pylist()


def _decode(v: Optional[bytes]) -> Tuple[Optional[str], bool]:
    """(text, ok): None stays None; bytes that are not UTF-8 give (None, False)."""
    if v is None:
        return None, True
    try:
        return v.decode("utf-8"), True
    except UnicodeDecodeError:
        return None, False


class _ReadRowGroup(beam.DoFn):
    def __init__(self, columns: LaionColumns, limit):
        self.columns = columns
        self.limit = limit

    def _read(self, path: str, rg: int):
        """(columns by canonical name, the wanted names of missing required columns)."""
        with FileSystems.open(path) as f:
            pf = pq.ParquetFile(f)
            present = set(pf.schema_arrow.names)
            wanted = {"url": self.columns.url, "caption": self.columns.caption}
            wanted.update({k: getattr(self.columns, k) for k in OPTIONAL_COLUMNS if getattr(self.columns, k)})
            available = {k: c for k, c in wanted.items() if c in present}
            table = pf.read_row_group(rg, columns=sorted(set(available.values())))
        missing = [wanted[k] for k in TEXT_COLUMNS if k not in available]
        return {k: table.column(c) for k, c in available.items()}, missing

    def process(self, item: Tuple[int, str, str, int, int, int]):
        source_index, path, name, rg, first, n = item
        if rg < 0:
            yield drop(
                Sample(id=f"{name}:*", source_index=source_index, row=-1, url=None),
                "unreadable_input",
                "read",
                detail=path,
            )
            return
        if self.limit is not None:
            n = max(0, min(n, self.limit - first))
        if n == 0:
            return
        rows = range(first, first + n)
        try:
            columns, missing = self._read(path, rg)
            bad_types = {k: _text_type_problem(columns[k].type) for k in TEXT_COLUMNS if k in columns}
            bad_types = {k: t for k, t in bad_types.items() if t}
            data = {
                k: _text_values(c) if _text_type_problem(c.type) is None else c.to_pylist() for k, c in columns.items()
            }
        except Exception as e:  # noqa: BLE001 - a corrupt row group loses its rows, not the build
            log.error("cannot read row group %d of %s: %s", rg, path, e)
            for row in rows:
                yield drop(
                    Sample(id=f"{name}:{row}", source_index=source_index, row=row, url=None),
                    "unreadable_row_group",
                    "read",
                    detail=f"{path} row group {rg}: {e}"[:300],
                )
            return
        text = [k for k in TEXT_COLUMNS if k in data and k not in bad_types]
        for i, row in enumerate(rows):
            meta = {k: (_number if k in NUMERIC_COLUMNS else _value)(data[k][i]) for k in OPTIONAL_COLUMNS if k in data}
            decoded = {k: _decode(data[k][i]) for k in text}
            s = Sample(
                id=f"{name}:{row}",
                source_index=source_index,
                row=row,
                meta=meta,
                url=decoded.get("url", (None,))[0],
                caption=decoded.get("caption", (None,))[0],
            )
            if missing:
                yield drop(s, "missing_column", "read", detail=f"{path} has no column {', '.join(missing)}")
                continue
            if bad_types:
                yield drop(
                    s,
                    "bad_column_type",
                    "read",
                    detail="; ".join(
                        f"{getattr(self.columns, k)} is {t}, not text" for k, t in sorted(bad_types.items())
                    ),
                )
                continue
            not_utf8 = next((k for k in TEXT_COLUMNS if not decoded[k][1]), None)
            if not_utf8:
                yield drop(
                    s,
                    f"{not_utf8}_not_utf8",
                    "read",
                    detail=f"{getattr(self.columns, not_utf8)} holds bytes that are not UTF-8",
                )
                continue
            yield s


class ReadLaionRows(beam.PTransform):
    """LAION metadata parquet files -> (Samples, drops for unreadable input)."""

    def __init__(self, config: InputConfig, paths: List[str]):
        super().__init__()
        self.config = config
        self.paths = paths

    def expand(self, pbegin):
        units = (
            pbegin
            | "Input files" >> beam.Create(input_units(self.paths))
            | "List row groups" >> beam.ParDo(_ListRowGroups())
            | "Spread row groups" >> beam.Reshuffle()
        )
        return apply_with_drops(units, "Read row groups", _ReadRowGroup(self.config.columns, self.config.limit))
