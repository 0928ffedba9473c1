"""The statistics report of an MMC4 build with windows counts documents, windows, and the images
inside and outside a window."""

from __future__ import annotations

import pytest

from flamingo_corpus.stats import compute, report

from ..helpers import index_rows

pytestmark = pytest.mark.slow


def test_the_windows_table_counts_what_the_index_holds(mmc4_build):
    out, _ = mmc4_build
    table = dict(zip(*(compute.windows(str(out)).column(c).to_pylist() for c in ("what", "count"))))
    rows = index_rows(out)
    assert table["windows written"] == sum(r["kind"] == "window" and r["status"] == "kept" for r in rows) > 0
    assert table["images inside a window (shipped)"] == sum(
        r["kind"] == "image" and r["status"] == "kept" for r in rows
    )
    assert table["documents in"] == sum(r["kind"] == "document" for r in rows)
    ids = [s.name for s in report.sections(str(out), samples=0)]
    assert ids.index("windows") == 1  # right after the headline


def test_a_laion_build_has_no_windows_table(sample_build):
    out, _ = sample_build
    assert compute.windows(str(out)) is None
