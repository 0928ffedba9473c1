"""The output folder: --overwrite removes only what a build of this tool wrote, and an output that
is, or holds, an input is refused. Each case is one line and exit status 2, with nothing touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flamingo_corpus import cli

from ..loopback_build import BASE_RECIPE, jpeg_bytes, serve_rows, smooth_photo

pytestmark = pytest.mark.slow


@pytest.fixture
def recipe(tmp_path):
    """A three-row LAION recipe over a loopback web (served for the whole test)."""
    files = {f"{i}.jpg": jpeg_bytes(smooth_photo(i)) for i in range(3)}
    with serve_rows(tmp_path, files):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**BASE_RECIPE, "input": {"path": str(tmp_path / "rows.parquet")}}))
        yield path


def _build(recipe: Path, out: Path, *extra: str) -> int:
    return cli.main(["build", str(recipe), "--output", str(out), *extra])


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _foreign(folder: Path) -> None:
    """Somebody else's files, named as a build names its own."""
    (folder / "index").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": "my photo archive", "shards": 3}))
    (folder / "holiday.tar").write_bytes(b"not ours" * 100)
    (folder / "index" / "catalogue.parquet").write_bytes(b"PAR1 not ours")


@pytest.mark.parametrize("overwrite", [False, True])
def test_somebody_elses_folder_is_never_touched(recipe, tmp_path, capsys, overwrite):
    out = tmp_path / "out"
    _foreign(out)
    before = _snapshot(out)
    assert _build(recipe, out, *(["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err
    assert "no flamingo-corpus build wrote" in err and "holiday.tar" in err
    assert "complete build of another recipe" not in err and "Traceback" not in err
    assert _snapshot(out) == before


def test_overwrite_replaces_our_build_but_not_a_file_of_the_user_beside_it(recipe, tmp_path, capsys):
    out = tmp_path / "out"
    assert _build(recipe, out) == 0
    assert _build(recipe, out, "--overwrite") == 0  # our own build: replaced
    (out / "notes.tar").write_bytes(b"the user's")
    before = _snapshot(out)
    assert _build(recipe, out, "--overwrite") == 2
    assert "notes.tar" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_an_output_that_is_an_input_file_is_refused(recipe, tmp_path, capsys):
    parquet = tmp_path / "rows.parquet"
    before = parquet.read_bytes()
    assert _build(recipe, parquet, "--overwrite") == 2
    assert "is an input file" in capsys.readouterr().err
    assert parquet.read_bytes() == before


def test_an_output_folder_that_holds_an_input_is_refused(recipe, tmp_path, capsys):
    assert _build(recipe, tmp_path, "--overwrite") == 2
    assert "holds the recipe's input" in capsys.readouterr().err
    assert (tmp_path / "rows.parquet").exists()


def test_an_output_that_is_a_file_is_refused(recipe, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert _build(recipe, target) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"
