"""Figures of a build's statistics, and ``flamingo-corpus stats``'s one-file HTML report.

``flamingo_corpus.stats.compute`` computes; this module draws.  Each ``plot_*`` takes what a stats function
returned and gives a matplotlib Figure, made without pyplot (no global figure state, no GUI
backend: the CLI runs headless and the notebooks show the same Figure objects).  ``sections``
lists what the report shows, in order; the notebooks call the same stats and plot functions cell
by cell, so there is one implementation of every number and every picture.

The HTML report is one file: the figures are PNGs embedded as ``data:`` URIs, the style sheet is
inline, and nothing is linked, so it can be mailed or attached to an issue as it is.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
import posixpath
import tarfile
import textwrap
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from . import compute as stats
from .compute import Build, Histogram, SampleItem

KEPT_COLOR, DROPPED_COLOR, IN_COLOR = "#2a9d8f", "#e76f51", "#6c757d"
SERIES_COLORS = {"kept": KEPT_COLOR, "dropped": DROPPED_COLOR}
PALETTE = (
    "#264653",
    "#e9c46a",
    "#f4a261",
    "#8ab17d",
    "#b5838d",
    "#457b9d",
    "#e63946",
    "#6d597a",
    "#9c6644",
    "#588157",
    "#bc6c25",
    "#3a86ff",
    "#ff006e",
)
DPI = 100


def _figure(width: float = 8.0, height: float = 4.0, panels: int = 1) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained", dpi=DPI)
    fig.subplots(1, panels)
    return fig


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=IN_COLOR, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _stage_colors(stage_names: Sequence[Optional[str]]) -> Dict[Optional[str], str]:
    ordered = sorted({s for s in stage_names if s}, key=stats.stage_rank)
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(ordered)}


def plot_funnel(table: pa.Table, title: str = "Filter funnel") -> Figure:
    """A waterfall: the rows in, each drop reason (coloured by stage) taken off what remains, and
    the rows kept."""
    rows = table.to_pylist()
    fig = _figure(9, 0.32 * len(rows) + 1.4)
    ax = fig.axes[0]
    colors = _stage_colors([r["stage"] for r in rows])
    total = rows[0]["count"] if rows else 0
    for y, r in enumerate(rows):
        if r["stage"] is None:  # "in" and "kept"
            left, width, color = 0, r["count"], KEPT_COLOR if r["step"] == "kept" else IN_COLOR
        else:
            left, width, color = r["remaining"], r["count"], colors[r["stage"]]
        ax.barh(y, width, left=left, color=color, height=0.7)
        pct = f" ({100 * r['count'] / total:.1f}%)" if total else ""
        ax.text(left + width + total * 0.01, y, f"{r['count']:,}{pct}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["step"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1, total) * 1.18)
    ax.set_xlabel("count")
    ax.set_title(title)
    if colors:
        ax.legend(
            handles=[Patch(color=c, label=s) for s, c in colors.items()], title="stage", fontsize=8, loc="lower right"
        )
    return fig


def _short(v: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:g}{suffix}"
    return f"{v:g}"


def _log_axis(ax, lo: float, hi: float) -> None:
    """A log x axis labelled with plain round numbers (1, 2, 5 x 10^k; finer on a short range)
    instead of matplotlib's 2x10^2 notation."""
    ax.set_xscale("log")
    k0, k1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in mantissas if lo <= m * 10.0**k <= hi]
        if len(ticks) >= 4:
            break
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ticker.FixedFormatter([_short(t) for t in ticks]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def plot_histograms(
    hists: Sequence[Histogram],
    title: str = "",
    threshold: Optional[float] = None,
    threshold_label: str = "threshold",
    titles: Optional[Sequence[str]] = None,
) -> Figure:
    """One panel per histogram, one outline per series (kept, dropped, ...)."""
    fig = _figure(4.6 * len(hists) + 0.6, 3.6, len(hists))
    for i, (ax, h) in enumerate(zip(fig.axes, hists)):
        if titles:
            ax.set_title(titles[i], fontsize=10)
        if h.empty:
            _no_data(ax, f"no {h.what} in this build")
            continue
        for j, (label, counts) in enumerate(h.counts.items()):
            color = SERIES_COLORS.get(label, PALETTE[j % len(PALETTE)])
            ax.stairs(counts, h.edges, label=f"{label} ({int(counts.sum()):,})", color=color, fill=True, alpha=0.35)
            ax.stairs(counts, h.edges, color=color)
        if h.log:
            _log_axis(ax, h.edges[0], h.edges[-1])
        if threshold is not None and i == 0:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"{threshold_label} {threshold:g}")
        ax.set_xlabel(h.what)
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_histogram(
    h: Histogram, title: str = "", threshold: Optional[float] = None, threshold_label: str = "threshold"
) -> Figure:
    return plot_histograms([h], title, threshold, threshold_label)


def _integer_axis(axis) -> None:
    """Ticks on whole numbers only: an axis of counts has no 2.5 rows."""
    axis.set_major_locator(ticker.MaxNLocator(integer=True))


def _stacked_barh(ax, labels: Sequence[str], parts: Dict[str, Sequence[int]], colors: Dict[str, str]) -> None:
    """Stacked horizontal bars, each labelled with its total at its end."""
    left = np.zeros(len(labels))
    for name, part in parts.items():
        values = np.asarray(part, dtype=float)
        ax.barh(range(len(labels)), values, left=left, label=name, color=colors[name], height=0.7)
        left += values
    for y, total in enumerate(left):
        ax.text(total, y, f" {int(total):,}", va="center", ha="left", fontsize=7)
    ax.set_xlim(0, max(left.max() if len(left) else 1, 1) * 1.15)  # room for the labels
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    _integer_axis(ax.xaxis)


def plot_languages(table: pa.Table, title: str = "Language mix") -> Figure:
    rows = table.to_pylist()
    fig = _figure(7, 0.3 * len(rows) + 1.4)
    ax = fig.axes[0]
    if not rows:
        _no_data(ax, "no rows")
        ax.set_title(title)
        return fig
    _stacked_barh(
        ax,
        [r["language"] for r in rows],
        {"kept": [r["kept"] for r in rows], "dropped": [r["dropped"] for r in rows]},
        SERIES_COLORS,
    )
    ax.set_xlabel("rows")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def plot_duplicate_groups(table: pa.Table, title: str = "Duplicate groups") -> Figure:
    """Groups per size (the kept copy and the copies dropped), one bar series per reason."""
    rows = table.to_pylist()
    fig = _figure(7, 3.6)
    ax = fig.axes[0]
    if not rows:
        _no_data(ax, "no duplicates were dropped")
        ax.set_title(title)
        return fig
    reasons = sorted({f"{r['stage']}/{r['reason']}" for r in rows})
    sizes = sorted({r["group_size"] for r in rows})
    width = 0.8 / len(reasons)
    for i, reason in enumerate(reasons):
        per = {r["group_size"]: r["groups"] for r in rows if f"{r['stage']}/{r['reason']}" == reason}
        ax.bar(
            np.arange(len(sizes)) + (i - (len(reasons) - 1) / 2) * width,
            [per.get(s, 0) for s in sizes],
            width=width,
            label=reason,
            color=PALETTE[i % len(PALETTE)],
        )
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_xlabel("group size (kept copy + dropped copies)")
    ax.set_ylabel("groups")
    _integer_axis(ax.yaxis)
    if max(r["groups"] for r in rows) > 100 * max(1, min(r["groups"] for r in rows)):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def plot_download_errors(by_reason: pa.Table, by_domain: pa.Table, title: str = "Download errors") -> Figure:
    reasons = by_reason.to_pylist()
    domains = by_domain.to_pylist()
    fig = _figure(11, 0.3 * max(len(reasons), len(domains), 4) + 1.6, 2)
    ax_r, ax_d = fig.axes
    if not reasons:
        _no_data(ax_r, "no download errors")
        _no_data(ax_d, "no download errors")
        fig.suptitle(title)
        return fig
    colors = {r["reason"]: PALETTE[i % len(PALETTE)] for i, r in enumerate(reasons)}
    bars = ax_r.barh(range(len(reasons)), [r["count"] for r in reasons], color=[colors[r["reason"]] for r in reasons])
    ax_r.bar_label(bars, [f" {r['count']:,}" for r in reasons], fontsize=7)
    ax_r.set_xlim(0, max(r["count"] for r in reasons) * 1.15)
    ax_r.set_yticks(range(len(reasons)), [r["reason"] for r in reasons], fontsize=8)
    ax_r.invert_yaxis()
    _integer_axis(ax_r.xaxis)
    ax_r.set_xlabel("rows")
    ax_r.set_title("by reason", fontsize=10)
    names = [c for c in by_domain.column_names if c not in ("domain", "total")]
    _stacked_barh(
        ax_d,
        [d["domain"] for d in domains],
        {n: [d[n] for d in domains] for n in names},
        {n: colors.get(n, IN_COLOR) for n in names},
    )
    ax_d.set_xlabel("rows")
    ax_d.set_title("by domain", fontsize=10)
    # beside the panel, not over its bars (the longest bar is the top one, where a legend goes)
    ax_d.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(title)
    return fig


def plot_politeness(table: pa.Table, title: str = "Requests per host") -> Figure:
    """The busiest hosts' requests, with the 429 and 5xx answers among them."""
    rows = [r for r in table.to_pylist() if r["requests"]]
    fig = _figure(8, 0.3 * max(len(rows), 4) + 1.4)
    (ax,) = fig.axes
    if not rows:
        _no_data(ax, "no requests")
        fig.suptitle(title)
        return fig
    parts: Dict[str, Sequence[int]] = {
        "answered": [r["requests"] - r["http_429"] - r["http_5xx"] for r in rows],
        "429": [r["http_429"] for r in rows],
        "5xx": [r["http_5xx"] for r in rows],
    }
    _stacked_barh(ax, [r["host"] for r in rows], parts, {"answered": IN_COLOR, "429": PALETTE[1], "5xx": PALETTE[3]})
    ax.set_xlabel("requests (tries, retries included)")
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return fig


def plot_shards(table: pa.Table, title: str = "Shards") -> Figure:
    """Samples and megabytes per shard: bars for a few shards, histograms for many."""
    fig = _figure(10, 3.4, 2)
    counts = np.asarray(table.column("count").to_pylist(), dtype=float)
    mbytes = np.asarray(table.column("bytes").to_pylist(), dtype=float) / 1e6
    for ax, values, what in ((fig.axes[0], counts, "samples per shard"), (fig.axes[1], mbytes, "MB per shard")):
        if not len(values):
            _no_data(ax, "no shards")
        elif len(values) <= 64:
            ax.bar(range(len(values)), values, color=PALETTE[0])
            _integer_axis(ax.xaxis)
            if what == "samples per shard":
                _integer_axis(ax.yaxis)
            ax.set_xlabel("shard number")
            ax.set_ylabel(what)
        else:
            ax.hist(values, bins=40, color=PALETTE[0])
            ax.set_xlabel(what)
            ax.set_ylabel("shards")
        ax.set_title(what, fontsize=10)
    fig.suptitle(f"{title} ({len(counts):,})")
    return fig


def plot_images_per_document(table: pa.Table, title: str = "Images per document") -> Figure:
    rows = table.to_pylist()
    fig = _figure(8, 3.6)
    ax = fig.axes[0]
    if not rows:
        _no_data(ax, "no images")
        ax.set_title(title)
        return fig
    x = np.arange(len(rows))
    ax.bar(
        x - 0.2,
        [r["documents_in"] for r in rows],
        width=0.4,
        color=IN_COLOR,
        label="input images per document that reached the image stages",
    )
    ax.bar(
        x + 0.2, [r["documents_kept"] for r in rows], width=0.4, color=KEPT_COLOR, label="kept images per kept document"
    )
    ax.set_xticks(x, [str(r["images"]) for r in rows])
    ax.set_xlabel("images")
    ax.set_ylabel("documents")
    _integer_axis(ax.yaxis)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def plot_sample_grid(items: Sequence[SampleItem], columns: int = 4, title: str = "Sample images") -> Figure:
    """The images with their caption (MMC4: matched sentence) under each, key and shard above."""
    from PIL import Image

    rows = max(1, -(-len(items) // columns))
    fig = Figure(figsize=(2.8 * columns, 3.6 * rows), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    if not items:
        _no_data(axes[0], "no samples")
        return fig
    for ax, item in zip(axes, items):
        try:
            with Image.open(io.BytesIO(item.image)) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
        except Exception as e:  # noqa: BLE001 - one unreadable member must not sink the grid
            _no_data(ax, f"cannot show: {e}")
        score = f", similarity {item.similarity:.3f}" if item.similarity is not None else ""
        ax.set_title(f"{item.key} ({item.shard}){score}", fontsize=7, parse_math=False)
        text = "\n".join(textwrap.wrap(" ".join(item.text.split()), 34, max_lines=3, placeholder=" ...")) or "(no text)"
        ax.text(0.5, -0.03, text, transform=ax.transAxes, ha="center", va="top", fontsize=7, parse_math=False)
    fig.suptitle(title)
    return fig


# --- tables --------------------------------------------------------------------------------


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def _as_rows(obj) -> List[dict]:
    if isinstance(obj, Histogram):
        obj = obj.as_table()
    if isinstance(obj, pa.Table):
        return obj.to_pylist()
    if isinstance(obj, dict):
        return [{"figure": k, "value": v} for k, v in obj.items()]
    return list(obj)


def html_table(obj, max_rows: int = 60) -> str:
    """A small pa.Table, dict (headline) or Histogram as an HTML table; numbers right-aligned."""
    rows = _as_rows(obj)
    if not rows:
        return "<p class='empty'>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows[:max_rows]:
        cells = "".join(
            f"<td class='{'num' if isinstance(r[c], (int, float)) else 'txt'}'>{html.escape(_cell(r[c]))}</td>"
            for c in cols
        )
        body.append(f"<tr>{cells}</tr>")
    more = f"<p class='more'>... {len(rows) - max_rows:,} more rows</p>" if len(rows) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


class Table:
    """A table for notebooks: shows as HTML (the report's rendering), prints as text."""

    def __init__(self, obj, max_rows: int = 60):
        self.obj, self.max_rows = obj, max_rows

    def _repr_html_(self) -> str:
        return html_table(self.obj, self.max_rows)

    def __repr__(self) -> str:
        rows = _as_rows(self.obj)[: self.max_rows]
        return "\n".join("  ".join(f"{k}={_cell(v)}" for k, v in r.items()) for r in rows) or "(none)"


def table(obj, max_rows: int = 60) -> Table:
    return Table(obj, max_rows)


# --- the report ----------------------------------------------------------------------------


@dataclass
class Section:
    name: str  # file stem of its PNG (--png-dir)
    title: str
    figure: Optional[Figure] = None
    table: Union[pa.Table, dict, Histogram, None] = None
    note: str = ""


def _similarity_label(b: Build) -> str:
    return "min_image_similarity" if b.is_mmc4 else "clip.min_similarity"


def sections(build, samples: int = 12, documents: int = 200) -> List[Section]:
    """Everything the report shows, in order, with the figures drawn."""
    b = stats.open_build(build)
    unit = stats.UNITS[b.item_kind]
    out = [Section("headline", "Headline", table=stats.headline(b))]
    shown = stats.windows(b)
    if shown is not None:
        out.append(
            Section(
                "windows",
                "OpenFlamingo windows",
                table=shown,
                note="Each window is one sample: consecutive sentences within the loader's token budget and "
                "the images it keeps. Images outside every window written are downloaded but not shipped.",
            )
        )
    for kind in b.kinds:
        f = stats.funnel(b, kind)
        out.append(
            Section(
                f"funnel-{stats.UNITS[kind]}",
                f"Filter funnel: {stats.UNITS[kind]}",
                plot_funnel(f, f"Filter funnel: {stats.UNITS[kind]}"),
                f,
            )
        )
    sim = stats.similarity_histogram(b)
    shown = [name for name, counts in sim.counts.items() if np.asarray(counts).sum() > 0]
    series = " vs ".join(shown) if len(shown) > 1 else (f"{shown[0]} only" if shown else "none scored")
    out.append(
        Section(
            "similarity",
            "Matched CLIP similarity" if b.is_mmc4 else "CLIP similarity",
            plot_histogram(
                sim, f"CLIP similarity of {unit}, {series}", stats.similarity_threshold(b), _similarity_label(b)
            ),
            note="Rows dropped before CLIP scoring have no similarity and are not counted."
            + (
                " Kept images: similarity with their matched sentence; images dropped at alignment: "
                "with their best sentence."
                if b.is_mmc4
                else ""
            ),
        )
    )
    out.append(
        Section(
            "image-sizes",
            "Image sizes and aspect ratios",
            plot_histograms(
                [stats.image_sides(b), stats.aspect_ratios(b), stats.encoded_bytes(b)],
                f"Image sizes ({unit})",
                titles=["original width and height", "original aspect ratio", "bytes in the tars (kept)"],
            ),
            note="Original sizes of the images that decoded; images dropped by the size and aspect-ratio "
            "checks carry no dimensions in the index.",
        )
    )
    if b.is_mmc4:
        per_doc = stats.images_per_document(b)
        out.append(Section("images-per-document", "Images per document", plot_images_per_document(per_doc), per_doc))
        sample = stats.document_sample(b, documents)
        note = (
            f"From {len(sample):,} kept documents read from {len(sample.shards)} shard(s): the index "
            "holds no sentences, so these read the first documents of a few shards."
        )
        out.append(
            Section(
                "sentences",
                "Sentences per document and their lengths",
                plot_histograms(
                    [stats.sentences_per_document(sample), stats.sentence_lengths(sample)],
                    "Sentences (document sample)",
                    titles=["sentences per document", "words per sentence"],
                ),
                note=note,
            )
        )
        out.append(
            Section(
                "image-landing",
                "Where images land in the document",
                plot_histogram(stats.image_landing(sample), "Matched sentence of each kept image (document sample)"),
                note=note,
            )
        )
    else:
        words, chars = stats.caption_lengths(b)
        out.append(
            Section(
                "caption-lengths",
                "Caption length",
                plot_histograms([words, chars], "Caption length, kept vs dropped", titles=["words", "characters"]),
            )
        )
    langs = stats.languages(b)
    if langs.num_rows and set(langs.column("language").to_pylist()) != {stats.NO_LANGUAGE}:
        out.append(Section("languages", "Language mix", plot_languages(langs), langs))
    dups = stats.duplicate_groups(b)
    out.append(Section("duplicates", "Duplicate groups", plot_duplicate_groups(dups), dups))
    by_reason, by_domain = stats.download_errors(b), stats.download_errors_by_domain(b)
    retried = stats.retries(b)
    out.append(
        Section(
            "download-errors",
            "Download errors",
            plot_download_errors(by_reason, by_domain),
            by_domain,
            note=f"{retried['fetched more than once']:,} rows were fetched more than once (over the runs that "
            f"used the image store, --retry-failed): {retried['recovered']:,} recovered, "
            f"{retried['still failing']:,} still failing.",
        )
    )
    hosts, totals = stats.politeness(b)
    if hosts is not None:
        out.append(
            Section(
                "politeness",
                "Politeness per host",
                plot_politeness(hosts),
                hosts,
                note=f"{totals.get('requests', 0):,} requests to {totals.get('hosts', 0):,} hosts, "
                f"{totals.get('http_429', 0):,} answered 429 and {totals.get('http_5xx', 0):,} 5xx; "
                f"{totals.get('hosts_cut_off', 0):,} hosts cut off ({totals.get('rows_cut_off', 0):,} rows not "
                f"requested); the busiest second of one host: {totals.get('peak_rps', 0):,} requests. "
                "Per worker process, added up over the workers (a host fetched by two counts twice in the "
                "host count; its busiest seconds are added, an upper bound).",
            )
        )
    sh = stats.shards(b)
    out.append(Section("shards", "Shards", plot_shards(sh), sh if sh.num_rows <= 20 else None))
    if samples > 0:
        items = stats.sample_items(b, samples)
        out.append(
            Section(
                "samples",
                "Sample images",
                plot_sample_grid(items),
                note=f"{len(items)} kept samples, the first ones of a few shards: the only section "
                "that reads the tars (those members only).",
            )
        )
    return out


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; } th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note, .meta { color: #555; font-size: 0.85em; }
"""


def render_html(b: Build, parts: Sequence[Section]) -> str:
    m = b.manifest
    meta = (
        f"build <code>{html.escape(b.path)}</code> &middot; recipe <b>{html.escape(b.name)}</b> "
        f"(sha256 {html.escape(str(m.get('recipe_sha256', ''))[:12])}) &middot; "
        f"code {html.escape(str(m.get('code_version', '')))}"
        f" &middot; report written {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
    )
    body = [
        f"<h1>Dataset statistics: {html.escape(b.name)}</h1>",
        f"<p class='meta'>{meta}</p>",
        "<p class='note'>Computed from manifest.json and the per-row index; only the sample images "
        "(and, for MMC4, the sentence statistics) read a few tar members.</p>",
    ]
    for s in parts:
        body.append(f"<h2 id='{html.escape(s.name)}'>{html.escape(s.title)}</h2>")
        if s.note:
            body.append(f"<p class='note'>{html.escape(s.note)}</p>")
        if s.figure is not None:
            data = base64.b64encode(png_bytes(s.figure)).decode("ascii")
            body.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
        if s.table is not None:
            body.append(html_table(s.table))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(b.name)}: dataset statistics</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_report(build, output: str, samples: int = 12, png_dir: Optional[str] = None) -> Dict[str, float]:
    """Write the HTML report of ``build`` to ``output`` (local path or URL), and each figure as
    ``png_dir/<name>.png`` when asked; returns the headline figures."""
    b = stats.open_build(build)
    try:  # everything read and drawn before the file is written: a damaged index leaves no report
        parts = sections(b, samples)
        head = stats.headline(b)
    except (pa.ArrowException, tarfile.TarError) as e:
        raise stats.StatsError(f"{b.path}: the index cannot be read ({e})") from e
    fs, path = stats.filesystem(output)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with fs.open_output_stream(path) as fh:
        fh.write(render_html(b, parts).encode("utf-8"))
    if png_dir:
        dfs, droot = stats.filesystem(png_dir)
        dfs.create_dir(droot, recursive=True)
        for s in parts:
            if s.figure is not None:
                with dfs.open_output_stream(posixpath.join(droot, f"{s.name}.png")) as fh:
                    fh.write(png_bytes(s.figure))
    return head
