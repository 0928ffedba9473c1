"""The command line: help texts, clear errors for bad recipes and occupied outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flamingo_corpus import cli


@pytest.mark.parametrize("command", [[], ["build"], ["sample"], ["tiny-clip"], ["realign"], ["verify"]])
def test_help_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(command + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: flamingo-corpus" in text
    if command == ["build"]:
        assert "--output" in text and "DataflowRunner" in text


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "flamingo_corpus.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "build" in out.stdout and "sample" in out.stdout


def test_unknown_recipe_key_is_a_clear_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nclip:\n  min_similarty: 0.3\n")
    assert cli.main(["build", str(recipe), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "min_similarty" in err and "clip" in err and "min_similarity" in err


def test_build_refuses_to_mix_with_an_earlier_build(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "000000.tar").write_bytes(b"")
    data = tmp_path / "in.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"URL": ["http://example.com/a.jpg"], "TEXT": ["a red circle"]}), data)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\ninput:\n  path: {data}\n")
    assert cli.main(["build", str(recipe), "--output", str(out)]) == 2
    assert "no flamingo-corpus build wrote (000000.tar)" in capsys.readouterr().err
    # nothing shows this tar is ours: --overwrite leaves it too
    assert cli.main(["build", str(recipe), "--output", str(out), "--overwrite"]) == 2
    assert "000000.tar" in capsys.readouterr().err
    assert (out / "000000.tar").exists()
