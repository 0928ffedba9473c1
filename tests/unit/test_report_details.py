"""What a reader of the statistics report sees: counts on the bars, whole-number ticks on count
axes, legends beside the bars they name, each sample's similarity (checked on the drawn figures;
`make report-png` renders the whole report with headless Chromium to look at)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from flamingo_corpus.stats import report
from flamingo_corpus.stats.compute import SampleItem


def _integer_ticks(axis) -> bool:
    return all(float(t).is_integer() for t in axis.get_majorticklocs())


def test_language_bars_carry_their_totals_and_whole_ticks():
    fig = report.plot_languages(pa.table({"language": ["en", "fr"], "kept": [3, 0], "dropped": [2, 1]}))
    ax = fig.axes[0]
    assert {t.get_text().strip() for t in ax.texts} >= {"5", "1"}
    fig.canvas.draw()
    assert _integer_ticks(ax.xaxis)


def test_the_domain_legend_does_not_cover_the_bars():
    by_reason = pa.table({"reason": ["http_404", "timeout"], "count": [3, 1]})
    by_domain = pa.table({"domain": ["a.com"], "total": [4], "http_404": [3], "timeout": [1]})
    fig = report.plot_download_errors(by_reason, by_domain)
    fig.canvas.draw()
    ax_d = fig.axes[1]
    legend = ax_d.get_legend().get_window_extent()
    for bar in ax_d.patches:
        assert not legend.overlaps(bar.get_window_extent())
    assert _integer_ticks(fig.axes[0].xaxis) and _integer_ticks(ax_d.xaxis)


def test_count_axes_tick_whole_numbers():
    fig = report.plot_duplicate_groups(pa.table({"stage": ["dedup"], "reason": ["duplicate_image"], "group_size": [2],
                                                 "groups": [3], "rows_dropped": [3]}))  # fmt: skip
    fig.canvas.draw()
    assert _integer_ticks(fig.axes[0].yaxis)


def test_each_sample_shows_its_similarity():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    items = [SampleItem("0000000001", "000000.tar", buf.getvalue(), "a caption", 0.3125)]
    fig = report.plot_sample_grid(items)
    assert "similarity 0.312" in fig.axes[0].get_title()
