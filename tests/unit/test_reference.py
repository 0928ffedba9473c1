"""The generated reference tables of docs/ and the registry of drop reasons they show.

The docs pages are what ``python -m flamingo_corpus.reference`` makes of the code; every recipe key
and index column is in them; every (stage, reason) the code can emit is in
``flamingo_corpus.output.reasons``, found by reading the source and by reading the sample builds'
indexes.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional

import pytest

from flamingo_corpus import reference
from flamingo_corpus.download.fetch import REASONS as FETCH_REASONS
from flamingo_corpus.output import reasons
from flamingo_corpus.recipe import Recipe, RecipeError, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


# --- the pages are current ---------------------------------------------------------------------


def test_docs_pages_are_current(capsys):
    """Fails when the code changed and `make docs` was not run: run it and commit the pages."""
    code = reference.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_check_names_a_stale_section_and_leaves_the_page(tmp_path, capsys):
    for page in reference.PAGES:
        (tmp_path / page).write_text((DOCS / page).read_text())
    stale = (tmp_path / "output.md").read_text().replace("| `download` | `timeout` |", "| `download` | `t1meout` |")
    (tmp_path / "output.md").write_text(stale)
    assert reference.main(["--check", "--docs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "output.md: generated section drop-reasons is out of date" in err and "make docs" in err
    assert (tmp_path / "output.md").read_text() == stale  # --check writes nothing
    assert reference.main(["--docs", str(tmp_path)]) == 0
    assert (tmp_path / "output.md").read_text() == reference.render("output.md", stale)


def test_a_page_without_its_markers_is_an_error(tmp_path, capsys):
    for page in reference.PAGES:
        (tmp_path / page).write_text("# nothing generated here\n")
    assert reference.main(["--docs", str(tmp_path)]) == 1
    assert "expected one <!-- BEGIN GENERATED: recipe-keys -->" in capsys.readouterr().err


# --- every recipe key and index column is in the tables ------------------------------------------


def _recipe_keys(cls: type = Recipe, prefix: str = "") -> Iterator[str]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _recipe_keys(hints[f.name], key + ".")
        else:
            yield key


def _first_cells(page: str) -> set:
    """The code spans of the first column of every table row of a docs page."""
    return set(re.findall(r"^\| `([^`]+)` \|", (DOCS / page).read_text(), re.M))


def test_every_recipe_key_is_in_the_table():
    keys = set(_recipe_keys())
    assert len(keys) > 80 and "clip.min_similarity" in keys and "input.columns.url" in keys
    listed = _first_cells("recipes.md")
    assert keys - listed == set(), "recipe keys missing from docs/recipes.md"
    assert "shard.chunk_rows" in listed  # the removed keys table


def test_every_index_column_is_in_the_table():
    from flamingo_corpus.output.index import INDEX_SCHEMA

    assert set(INDEX_SCHEMA.names) - _first_cells("output.md") == set()


def test_ranges_are_the_ones_recipe_py_enforces():
    """Each range the table shows is refused when broken, and every key recipe.py's _validate
    refuses a value of has its range in the table."""
    import flamingo_corpus.recipe as recipe_module

    for key, (_, example) in reference.CONDITIONS.items():
        with pytest.raises(RecipeError, match=re.escape(key)):
            recipe_from_dict(example)
    tree = ast.parse(Path(recipe_module.__file__).read_text())
    (validate,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_validate"]
    messages = [
        n.exc.args[0].value
        for n in ast.walk(validate)
        if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call) and isinstance(n.exc.args[0], ast.Constant)
    ]
    named = {m.split()[0] for m in messages}
    assert len(named) >= 4
    assert named - set(reference.CONDITIONS) == set(), "keys _validate checks that the recipe table does not show"


# --- the registry holds every reason the code can emit -------------------------------------------


class Emitted(NamedTuple):
    stage: Optional[str]  # None: decided by the caller (a filter function, ``self.stage``)
    token: str  # a token, or a regular expression when ``pattern``
    pattern: bool
    where: str


def _module_strings(tree: ast.Module) -> dict:
    """Module-level names bound to string constants: STAGE = "image"; READ, DOCUMENT = "read", ..."""
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
                out[target.id] = node.value.value
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for name, value in zip(target.elts, node.value.elts):
                    if isinstance(name, ast.Name) and isinstance(value, ast.Constant):
                        out[name.id] = value.value
    return {k: v for k, v in out.items() if isinstance(v, str)}


def _strings(node: Optional[ast.expr], names: dict) -> List[tuple]:
    """(text, is_pattern) for each string ``node`` can be: a literal, a module constant, both arms of
    a conditional, an f-string as a pattern. Empty when it is computed some other way."""
    if node is None:
        return []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [(node.value, False)]
    if isinstance(node, ast.Name) and node.id in names:
        return [(names[node.id], False)]
    if isinstance(node, ast.IfExp):
        return _strings(node.body, names) + _strings(node.orelse, names)
    if isinstance(node, ast.JoinedStr):
        parts = [re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in node.values]
        return [("".join(parts), True)]
    return []


def _error_texts(node: Optional[ast.expr], names: dict) -> List[str]:
    """The text a returned reason or error starts with; an f-string's leading literal part."""
    if isinstance(node, ast.JoinedStr):
        head = node.values[0] if node.values else None
        return [head.value] if isinstance(head, ast.Constant) else []
    return [text for text, pattern in _strings(node, names) if not pattern]


def _argument(call: ast.Call, position: int, keyword: str) -> Optional[ast.expr]:
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


# callee -> (position and name of the reason argument, of the stage argument or a fixed stage)
DROP_CALLS = {
    "drop": ((1, "reason"), (2, "stage")),
    "dropped": ((1, "reason"), (2, "stage")),
    "KeepOnePerKey": ((2, "reason"), (3, "stage")),
    "DedupRule": ((2, "reason"), (3, "stage")),
    "ImageRejected": ((0, "reason"), "image"),
    "_Drop": ((0, "reason"), "download"),  # the fetcher's own drops (download/fetch.py)
}
# Modules whose functions returning Optional[str] return reason tokens (the pure checks), and the
# MMC4 reader, whose errors are "<token>: <why>". filters/removal_list.py returns the matching rule.
REASON_FUNCTION_MODULES = ("filters/text.py", "filters/url.py", "filters/safety.py", "filters/language.py")
REASON_FUNCTION_MODULES += ("filters/image.py", "filters/document.py", "pipeline/mmc4/files.py")
REASON_FUNCTION_MODULES += ("pipeline/mmc4/windows.py",)


def _returns_optional_str(fn: ast.FunctionDef) -> bool:
    return fn.returns is not None and ast.unparse(fn.returns).replace(" ", "") in ("Optional[str]", "str|None")


def scan_source() -> List[Emitted]:
    """Every (stage, reason) the source of pipeline/ and filters/ spells out."""
    found = [Emitted("download", token, False, "download/fetch.py REASONS") for token in FETCH_REASONS]
    found = [e._replace(token=re.sub(r"<[^>]+>", "[0-9]+", e.token), pattern="<" in e.token) for e in found]
    files = sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "filters").glob("*.py"))
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        if rel in ("pipeline/output/reasons.py", "pipeline/reference.py"):
            continue
        tree = ast.parse(path.read_text())
        names = _module_strings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _callee(node) in DROP_CALLS:
                (r_pos, r_kw), stage_arg = DROP_CALLS[_callee(node)]
                if isinstance(stage_arg, str):
                    stages = [stage_arg]
                else:
                    stages = [s for s, _ in _strings(_argument(node, *stage_arg), names)] or [None]
                for token, pattern in _strings(_argument(node, r_pos, r_kw), names):
                    found += [Emitted(stage, token, pattern, f"{rel}:{node.lineno}") for stage in stages]
            if rel in REASON_FUNCTION_MODULES and isinstance(node, ast.FunctionDef):
                for inner in ast.walk(node):
                    value = None
                    if isinstance(inner, ast.Return) and _returns_optional_str(node):
                        value = inner.value
                    elif isinstance(inner, (ast.Yield, ast.Return)) and isinstance(inner.value, ast.Tuple):
                        elts = inner.value.elts  # the MMC4 reader's (line, document, error)
                        value = elts[2] if len(elts) == 3 and rel == "pipeline/mmc4/files.py" else None
                    for text in _error_texts(value, names):  # "bad_json: <why>" -> bad_json
                        found.append(Emitted(None, text.split(":")[0], False, f"{rel}:{inner.lineno}"))
    return found


def _registered(e: Emitted) -> bool:
    if not e.pattern:
        if e.stage is not None:
            return reasons.is_known(e.stage, e.token)
        return any(r.token == e.token for r in reasons.REASONS)
    # a pattern: some registered token of that stage has its form (http_<code> as http_404)
    candidates = [r for r in reasons.REASONS if e.stage is None or r.stage == e.stage]
    examples = [re.sub(r"<[^>]+>", "404", r.token) for r in candidates]
    return any(re.fullmatch(e.token, x) for x in examples) or any(r.token == e.token for r in candidates)


def test_the_source_scan_finds_the_reasons_it_should():
    """The scan is not vacuous: reasons spelled out in each way are found."""
    found = {(e.stage, e.token) for e in scan_source()}
    assert ("metadata", "duplicate_url") in found  # KeepOnePerKey(..., "duplicate_url", STAGE)
    assert ("image", "decompression_bomb") in found  # ImageRejected("decompression_bomb", ...)
    assert ("decontaminate", "eval_overlap") in found  # drop(s, REASON, STAGE)
    assert ("align", "unassigned") in found  # READ, DOCUMENT, IMAGE, ALIGN = ...
    assert ("read", ".+_not_utf8") in found  # f"{not_utf8}_not_utf8"
    assert (None, "wrong_language") in found and (None, "bad_json") in found and (None, "bad_zip") in found
    assert ("download", "http_[0-9]+") in found and ("download", "private_address") in found
    assert len(found) > 70


def test_every_reason_in_the_source_is_registered():
    missing = sorted({f"{e.stage or '*'}/{e.token} ({e.where})" for e in scan_source() if not _registered(e)})
    assert not missing, "reasons the code emits that flamingo_corpus/output/reasons.py does not list: " + "; ".join(
        missing
    )


def test_every_registered_reason_is_in_the_source():
    """The registry lists nothing the code cannot emit (a reason removed from the code goes from
    the registry and the docs too, with a CHANGELOG entry)."""
    found = scan_source()

    def spelled_out(r) -> bool:
        example = re.sub(r"<[^>]+>", "404", r.token)
        return any(
            e.stage in (None, r.stage) and (re.fullmatch(e.token, example) if e.pattern else e.token == r.token)
            for e in found
        )

    assert [f"{r.stage}/{r.token}" for r in reasons.REASONS if not spelled_out(r)] == []


def test_registry_lookup():
    assert reasons.lookup("download", "http_404").token == "http_<code>"
    assert reasons.lookup("download", "http_") is None and reasons.lookup("download", "http_40x") is None
    assert reasons.is_known("align", "low_similarity") and reasons.is_known("clip", "low_similarity")
    assert not reasons.is_known("clip", "unassigned")
    assert all(r.kinds and set(r.kinds) <= set(reasons.KINDS) and r.meaning for r in reasons.REASONS)


# --- ... and every reason the sample builds wrote --------------------------------------------------


@pytest.mark.slow
def test_the_sample_builds_write_only_registered_reasons(sample_build, mmc4_build):
    import pyarrow.dataset as ds

    seen = set()
    for out, _ in (sample_build, mmc4_build):
        table = ds.dataset(str(Path(out) / "index"), format="parquet").to_table(
            columns=["kind", "stage", "status", "reason"]
        )
        seen |= {tuple(row.values()) for row in table.to_pylist()}
    dropped = {(kind, stage, reason) for kind, stage, status, reason in seen if status == "dropped"}
    assert len(dropped) > 20  # the samples break rows in many ways on purpose
    unknown = sorted(
        f"{kind} {stage}/{reason}" for kind, stage, reason in dropped if not reasons.is_known(stage, reason)
    )
    assert not unknown, f"dropped rows with reasons flamingo_corpus/output/reasons.py does not list: {unknown}"
    wrong_kind = sorted(
        f"{kind} {stage}/{reason}" for kind, stage, reason in dropped if kind not in reasons.lookup(stage, reason).kinds
    )
    assert not wrong_kind, f"reasons registered for other kinds of index row: {wrong_kind}"
    assert {(stage, reason) for kind, stage, status, reason in seen if status == "kept"} == {("shard", None)}
