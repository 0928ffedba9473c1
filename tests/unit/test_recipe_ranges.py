"""Every number a recipe sets is checked for type, finiteness and range where it is read."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from flamingo_corpus import cli
from flamingo_corpus.recipe import INF, ORDERED, RANGES, Recipe, RecipeError, recipe_from_dict


def _numeric_keys(cls=Recipe, where=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_keys(tp, f"{where}.{f.name}".lstrip("."))
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if args[0] in (int, float):
            yield where, f.name, args[0]


def _nested(section: str, name: str, value) -> dict:
    data: dict = {name: value}
    for part in reversed(section.split(".")):
        data = {part: data}
    return data


def _with(section, name, value):
    data = _nested(section, name, value)
    if section == "dedup" and name.startswith("semantic"):
        data["dedup"]["semantic"] = True
    return data


NUMERIC = sorted(_numeric_keys())


def test_every_numeric_key_has_a_range():
    assert {(s, n) for s, n, _ in NUMERIC} == set(RANGES)


@pytest.mark.parametrize("section, name, tp", NUMERIC)
def test_values_outside_the_range_are_refused_with_the_key_and_the_range(section, name, tp):
    low, high, low_in, high_in = RANGES[(section, name)]
    outside = [low - 1 if low_in else low] + ([high + 1 if high_in else high] if high != INF else [])
    for value in outside:
        value = int(value) if tp is int else float(value)
        with pytest.raises(RecipeError) as e:
            recipe_from_dict(_with(section, name, value))
        assert f"{section}.{name}" in str(e.value) and "allowed" in str(e.value), str(e.value)


@pytest.mark.parametrize("section, name, tp", NUMERIC)
def test_the_range_limits_themselves_are_accepted(section, name, tp):
    low, high, low_in, high_in = RANGES[(section, name)]
    for value in [v for v, inside in ((low, low_in), (high, high_in)) if inside and math.isfinite(v)]:
        data = _with(section, name, int(value) if tp is int else float(value))
        for other_section, small, big in ORDERED:  # keep ordered pairs in order
            if other_section == section and name in (small, big):
                partner = big if name == small else small
                data_section = data
                for part in section.split("."):
                    data_section = data_section[part]
                p_low = RANGES[(section, partner)][0]
                data_section[partner] = max(data_section[name], p_low) if partner == big else data_section[name]
        if (section, name) == ("dedup", "near_bands"):
            data["dedup"]["near_max_distance"] = 63
        if (section, name) == ("dedup", "semantic_clusters"):
            data["dedup"]["semantic_fit_rows"] = int(value)
        if (section, name) == ("dedup", "semantic_fit_rows"):
            data["dedup"]["semantic_clusters"] = 1
        recipe_from_dict(data)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", [("download", "timeout_s"), ("clip", "min_similarity"), ("safety", "max_nsfw")])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(RecipeError, match="finite"):
        recipe_from_dict(_nested(*key, value))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"input": {"limit": -5}}, "input.limit: -5 is out of range"),
        ({"input": {"limit": 0}}, "input.limit: 0 is out of range"),
        ({"download": {"timeout_s": -1}}, "download.timeout_s: -1.0 is out of range"),
        ({"download": {"deadline_s": 0}}, "download.deadline_s: 0.0 is out of range"),
        ({"clip": {"batch_size": 0}}, "clip.batch_size: 0 is out of range"),
        ({"filters": {"min_caption_chars": 50, "max_caption_chars": 10}}, "is larger than filters.max_caption_chars"),
        ({"mmc4": {"min_images": 5, "max_images": 2}}, "is larger than mmc4.max_images"),
    ],
)
def test_the_measured_mistakes_are_refused(data, message):
    with pytest.raises(RecipeError, match=message.replace(".", r"\.")):
        recipe_from_dict(data)


def test_a_range_mistake_is_one_line_and_exit_2_on_the_command_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input: {corpus: laion, path: x.parquet}\ndownload: {timeout_s: .nan}\n")
    assert cli.main(["build", str(recipe), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "download.timeout_s" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
