"""The reference tables of docs/, generated from the code so they cannot drift from it.

``python -m flamingo_corpus.reference`` (``make docs``) rewrites, in place, the parts of the docs
pages that lie between ``<!-- BEGIN GENERATED: NAME -->`` and ``<!-- END GENERATED: NAME -->``:

- docs/recipes.md ``recipe-keys``: every recipe key with its type, default, allowed values and
  meaning, from the dataclasses of recipe.py (meanings: the field's comment there, else
  ``KEY_MEANINGS`` below; ranges: ``recipe.RANGES``, conditions between keys: ``CONDITIONS`` below);
  ``removed-keys``: recipe.py's ``_REMOVED``;
- docs/output.md ``drop-reasons``: output/reasons.py's registry; ``index-columns``: the index
  schema of output/index.py (meanings: the comments of records.IndexRow, else ``COLUMN_MEANINGS``).

``--check`` rewrites nothing and exits 1, naming each stale section, when a page is out of date
(tests/unit/test_reference.py runs it).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import recipe as recipe_module
from .paths import PACKAGE_DIR
from .recipe import Recipe

__all__ = ["DOCS", "PAGES", "recipe_keys", "render", "stale_sections", "update_page", "main"]

DOCS = PACKAGE_DIR.parent / "docs"  # docs/ of a checkout (the folder pipeline/ sits in)

# Meanings of the keys whose field has no comment in recipe.py. A key with neither is an error.
KEY_MEANINGS = {
    "name": "the build's name, in the manifest and the summary",
    "description": "free text, kept in the manifest",
    "input.columns.url": "the column holding the image URL",
    "input.columns.caption": "the column holding the caption",
    "input.columns.width": "the image width column, copied into each sample's `<key>.json` metadata (null: none)",
    "input.columns.height": "the image height column, copied into `<key>.json` metadata (null: none)",
    "input.columns.similarity": "LAION's CLIP similarity column, for `filters.min_metadata_similarity`",
    "input.columns.punsafe": "LAION's NSFW probability column, for `filters.max_punsafe` and `safety.nsfw_head`",
    "input.columns.pwatermark": "LAION's watermark probability column, for `filters.max_pwatermark`",
    "input.columns.language": "the input's language column, copied into `<key>.json` metadata (not the filter's)",
    "input.columns.hash": "the input's hash column, copied into `<key>.json` metadata",
    "input.columns.key": "the input's key column, copied into `<key>.json` metadata (output keys are the build's)",
    "filters.language.enabled": "identify each caption's language with fastText lid.176",
    "filters.language.min_score": "lid.176 probability below which an allowed language counts as uncertain",
    "filters.min_caption_chars": "drop captions shorter than this, after whitespace normalisation",
    "filters.max_caption_chars": "drop captions longer than this",
    "filters.min_caption_words": "drop captions of fewer words",
    "filters.max_punsafe": "drop rows whose LAION punsafe is above (null: keep all)",
    "filters.max_pwatermark": "drop rows whose LAION pwatermark is above (null: keep all)",
    "filters.url_schemes": "URL schemes that are fetched; others are dropped before download",
    "filters.dedup_urls": "keep one row per normalised URL (the earliest)",
    "download.timeout_s": "seconds for connecting, resolving and each read",
    "download.deadline_s": "seconds for a whole URL, retries, redirects and backoff included",
    "download.retries": "extra tries of transient failures, HTTP 429 and 5xx",
    "download.backoff_s": "first backoff between tries (exponential, with jitter)",
    "download.max_backoff_s": "longest backoff, `Retry-After` included",
    "download.max_bytes": "largest body, received or decoded",
    "download.max_redirects": "redirects followed at most",
    "download.user_agent": "the User-Agent header sent",
    "download.disallowed_robots": "`X-Robots-Tag` directives that make a URL `robots_disallowed`",
    "image.image_size": "side of the output image, as img2dataset's `image_size`",
    "image.resize_only_if_bigger": "leave images at or under `image_size` as they are",
    "image.encode_quality": "JPEG quality (PNG: compression level quality // 10)",
    "clip.enabled": "run CLIP: LAION scores image-caption similarity, MMC4 embeds images and sentences",
    "clip.model": "open_clip model name (`flamingo-tiny-clip`: the test and sample model)",
    "clip.batch_size": "images per model batch (256 on a GPU)",
    "mmc4.min_images": "drop documents with fewer images after alignment (mmc4-core: 2)",
    "mmc4.max_images": "drop documents with more images after alignment (mmc4-core: 15)",
    "mmc4.min_sentences": "drop documents with fewer sentences (mmc4-core: 4)",
    "mmc4.max_sentences": "drop documents with more sentences (mmc4-core: 40)",
    "mmc4.core_min_fraction": "mmc4-core: the fraction of matched similarities that must pass",
    "mmc4.core_min_similarity": "mmc4-core: the similarity a matched image must exceed",
    "mmc4.loader_max_images": "images OpenFlamingo's loader takes from a document",
    "sample_web.enabled": "serve `root` on 127.0.0.1 during the build (the local sample)",
    "sample_web.root": "folder of the sample's images",
    "sample_web.port": "port of the sample server (0: any free port)",
}

# Each numeric key's range comes from recipe.RANGES; these are the conditions between keys that
# recipe.py's _validate enforces: key -> (what the table says, a recipe that breaks it).
# tests/unit/test_reference.py checks each example is refused and that every key _validate names
# is here.
CONDITIONS: Dict[str, Tuple[str, dict]] = {
    "dedup.near_bands": (
        "1 to `near_max_distance` + 1",
        {"dedup": {"near_max_distance": 5, "near_bands": 7}},
    ),
    "dedup.semantic": ("needs `clip.enabled`", {"dedup": {"semantic": True}, "clip": {"enabled": False}}),
    "dedup.semantic_clusters": ("1 to `semantic_fit_rows`", {"dedup": {"semantic_clusters": 0}}),
    "dedup.semantic_fit_rows": (">= `semantic_clusters`", {"dedup": {"semantic_fit_rows": 10}}),
    "safety.nsfw_head": ("needs `clip.enabled`", {"safety": {"nsfw_head": "head.npz"}, "clip": {"enabled": False}}),
    "mmc4.windows.enabled": ("needs `mmc4.leftover: drop`", {"mmc4": {"windows": {"enabled": True}}}),
}

# Meanings of the index columns whose IndexRow field has no comment in records.py.
COLUMN_MEANINGS = {
    "id": "the input row's id: `<source>:<row>` (LAION), `<source>:<line>` (MMC4 document), "
    "`<document id>#<position>` (MMC4 image), `<document id>/w<n>` (MMC4 window)",
    "source_index": "the input file's position in the sorted input list",
    "row": "row (LAION) or line (MMC4, from 1) in that file",
    "status": "`kept` or `dropped`",
    "shard": "the shard the sample is in, e.g. `000003.tar` (kept rows only)",
    "url": "the image URL",
    "caption": "the caption (LAION)",
    "doc_id": "MMC4: the document the image or window belongs to",
    "position": "MMC4: the image's index in the input `image_info`; a window's number in its document",
    "language": "the language lid.176 identified (LAION, with `filters.language.enabled`)",
    "original_width": "width of the downloaded image",
    "original_height": "height of the downloaded image",
    "width": "width of the encoded output image",
    "height": "height of the encoded output image",
    "bytes": "size of the image bytes when the row was decided",
    "similarity": "CLIP similarity: image-caption (LAION), matched sentence (MMC4 image)",
    "sha256": "sha256 of the encoded output image",
    "phash": "64-bit perceptual hash, 16 hex digits (images/perceptual.py, `VERSION`)",
    "duplicate_of": "for a duplicate: the id of the row kept in its place",
    "nsfw": "the NSFW head's score, when it ran",
}


# --- recipe keys -------------------------------------------------------------------------------


class KeyRow(typing.NamedTuple):
    key: str  # dotted, as in a recipe: "clip.min_similarity"
    type: str
    default: str
    allowed: str
    meaning: str


def field_comments(cls: type) -> Dict[str, str]:
    """The comments of a dataclass's fields in its source: the comment lines right above a field
    and the comment at the end of its line, joined."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: Dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.ClassDef)
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        above: List[str] = []
        n = item.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        trailing = [comments[n] for n in range(item.lineno, (item.end_lineno or item.lineno) + 1) if n in comments]
        text = " ".join(above + trailing).strip()
        if text:
            out[item.target.id] = text
    return out


def section_doc(cls: type) -> str:
    """The class docstring, unless it is the signature dataclasses writes when there is none."""
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if tp is tuple or origin is tuple:
        return "list of strings"
    return {str: "string", int: "integer", float: "number", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _yaml(value: Any) -> str:
    """A default as it would be written in a recipe."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        return '""' if value == "" else value
    return repr(value)


def _sections(cls: type = Recipe, prefix: str = "") -> Iterator[Tuple[str, type]]:
    """(dotted section name, dataclass) of the recipe's top level and every nested section."""
    yield prefix, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _sections(hints[f.name], f"{prefix}.{f.name}" if prefix else f.name)


def recipe_keys() -> List[Tuple[str, type, List[KeyRow]]]:
    """(section, its dataclass, its keys) for every section of the recipe, top level first."""
    choices = recipe_module._CHOICES
    out = []
    for section, cls in _sections():
        hints = typing.get_type_hints(cls)
        comments = field_comments(cls)
        defaults = cls()  # every recipe field has a default
        rows = []
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            key = f"{section}.{f.name}" if section else f.name
            meaning = comments.get(f.name) or KEY_MEANINGS.get(key)
            if not meaning:
                raise ValueError(
                    f"recipe key {key} has no meaning: add a comment to its field in recipe.py "
                    "or an entry to KEY_MEANINGS in reference.py"
                )
            default = getattr(defaults, f.name)
            allowed = []
            if (section, f.name) in choices:
                allowed.append("one of " + ", ".join(f"`{c}`" for c in choices[(section, f.name)]))
            bounds = recipe_module.RANGES.get((section, f.name))
            if bounds is not None:
                allowed.append(recipe_module.describe_range(*bounds))
            if key in CONDITIONS:
                allowed.append(CONDITIONS[key][0])
            rows.append(KeyRow(key, _type_name(hints[f.name]), _yaml(default), "; ".join(allowed), meaning))
        out.append((section, cls, rows))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def render_recipe_keys() -> str:
    sections = recipe_keys()
    titles = [section or "top level" for section, _, _ in sections]
    lines = [
        "Every key a recipe may set, generated from the dataclasses of `pipeline/recipe.py` by "
        "`make docs`. A key left out takes its default; `null` is YAML's none.",
        "",
        "Sections: " + " · ".join(f"[{t}](#{_anchor(t)})" for t in titles),
    ]
    for title, (_, cls, rows) in zip(titles, sections):
        lines += ["", f"### {title}", ""]
        doc = section_doc(cls)
        if doc:
            lines += [doc, ""]
        lines += _table(
            ["key", "type", "default", "allowed", "meaning"],
            [(_code(r.key), r.type, _code(r.default), r.allowed, r.meaning) for r in rows],
        )
    return "\n".join(lines)


def render_removed_keys() -> str:
    rows = [(_code(key), why) for key, why in sorted(recipe_module._REMOVED.items())]
    lines = ["A recipe that still names one of these is refused with this message:", ""]
    return "\n".join(lines + _table(["removed key", "what replaced it"], rows))


# --- the index -----------------------------------------------------------------------------------


def render_drop_reasons() -> str:
    from .output import reasons

    lines = [
        f"{len(reasons.REASONS)} (stage, reason) pairs, generated from `pipeline/output/reasons.py` by "
        "`make docs`. Index rows: `row` is a LAION row, `document` and `image` are MMC4's. "
        "A reason with `<...>` is a pattern (`http_<code>`: `http_404`, `http_503`, ...).",
        "",
    ]
    lines += _table(["stage", "what drops there"], [(_code(s), m) for s, m in reasons.STAGES.items()])
    lines += [""]
    lines += _table(
        ["stage", "reason", "index rows", "meaning"],
        [(_code(r.stage), _code(r.token), ", ".join(r.kinds), r.meaning) for r in reasons.REASONS],
    )
    return "\n".join(lines)


def render_index_columns() -> str:
    from .output.index import INDEX_SCHEMA
    from .records import IndexRow

    comments = field_comments(IndexRow)
    rows = []
    for col in INDEX_SCHEMA:
        meaning = comments.get(col.name) or COLUMN_MEANINGS.get(col.name)
        if not meaning:
            raise ValueError(
                f"index column {col.name} has no meaning: add a comment to IndexRow.{col.name} in "
                "records.py or an entry to COLUMN_MEANINGS in reference.py"
            )
        rows.append((_code(col.name), str(col.type), meaning))
    lines = [
        "The columns of `index/*.parquet`, in order, generated from `pipeline/output/index.py`'s "
        "schema by `make docs`:",
        "",
    ]
    return "\n".join(lines + _table(["column", "type", "meaning"], rows))


# --- pages ---------------------------------------------------------------------------------------

# page -> generated section name -> what goes between its markers
PAGES: Dict[str, Dict[str, Callable[[], str]]] = {
    "recipes.md": {"recipe-keys": render_recipe_keys, "removed-keys": render_removed_keys},
    "output.md": {"index-columns": render_index_columns, "drop-reasons": render_drop_reasons},
}


def _markers(name: str) -> Tuple[str, str]:
    return f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"


def update_page(text: str, name: str, content: str) -> str:
    """``text`` with the lines between ``name``'s markers replaced by ``content``."""
    begin, end = _markers(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"expected one {begin} and, after it, one {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n\n{content.strip()}\n\n{end}{tail}"


def render(page: str, text: str) -> str:
    """``text`` of ``page`` with every generated section brought up to date."""
    for name, make in PAGES[page].items():
        try:
            text = update_page(text, name, make())
        except ValueError as e:
            raise ValueError(f"docs/{page}: {e}") from e
    return text


def stale_sections(page: str, text: str) -> List[str]:
    """The names of ``page``'s generated sections that differ from what the code gives."""
    stale = []
    for name, make in PAGES[page].items():
        if update_page(text, name, make()) != text:
            stale.append(name)
    return stale


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m flamingo_corpus.reference", description=__doc__.splitlines()[0] if __doc__ else None
    )
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page is out of date")
    ap.add_argument("--docs", type=Path, default=DOCS, help=f"the docs folder (default: {DOCS})")
    args = ap.parse_args(argv)
    problems, written = [], []
    for page in PAGES:
        path = args.docs / page
        if not path.is_file():
            problems.append(f"{path} does not exist (run this from a checkout, or pass --docs)")
            continue
        text = path.read_text()
        try:
            if args.check:
                stale = stale_sections(page, text)
                if stale:
                    problems.append(f"{path}: generated section {', '.join(stale)} is out of date")
                continue
            new = render(page, text)
        except ValueError as e:
            problems.append(str(e))
            continue
        if new != text:
            path.write_text(new)
            written.append(str(path))
    for problem in problems:
        print(f"reference: {problem}", file=sys.stderr)
    if problems and args.check:
        print("reference: run `make docs` (python -m flamingo_corpus.reference) and commit the result", file=sys.stderr)
    if not args.check:
        print("reference: " + (f"rewrote {', '.join(written)}" if written else "docs are up to date"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
