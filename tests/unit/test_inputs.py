"""The recipe's input: placeholders, unreachable filesystems and empty globs are one clear line."""

from __future__ import annotations

import pytest

from flamingo_corpus import cli
from flamingo_corpus.errors import UserError
from flamingo_corpus.inputs import InputError, match_inputs, unfilled_placeholders
from flamingo_corpus.recipe import load_recipe


def test_the_shipped_cluster_recipes_hold_placeholders_that_a_build_names():
    recipe = load_recipe("manifests/laion2b-en.yaml")
    assert unfilled_placeholders(recipe) == ["input.path: gs://YOUR-BUCKET/laion2B-en/*.parquet"]


def test_a_build_of_a_recipe_with_a_placeholder_stops_before_anything_starts(tmp_path, capsys):
    assert cli.main(["build", "manifests/laion2b-en.yaml", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "input.path: gs://YOUR-BUCKET" in err and "put your own location there" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("url, extra", [("gs://b/x/*.parquet", "gcp"), ("hdfs://h/x/*.parquet", "hadoop")])
def test_a_filesystem_without_its_client_names_the_extra(url, extra):
    with pytest.raises(InputError, match=f"flamingo-corpus\\[{extra}\\]") as e:
        match_inputs(url)
    assert isinstance(e.value, UserError) and "cannot list the input" in str(e.value)


def test_a_glob_that_matches_nothing(tmp_path):
    with pytest.raises(InputError, match="no input files match"):
        match_inputs(str(tmp_path / "*.parquet"))
