"""A clip section open_clip cannot load fails on the launching machine, in one line, before any
worker starts: unknown model, unknown tag, missing or broken checkpoint, unreadable model config."""

from __future__ import annotations

import dataclasses

import pytest

from flamingo_corpus import cli
from flamingo_corpus.clip.model import ClipConfigError, check_clip
from flamingo_corpus.errors import UserError
from flamingo_corpus.recipe import ClipConfig

TINY = ClipConfig(model="flamingo-tiny-clip", pretrained="synthetic-world", device="cpu")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "ViT-B-23"}, "did you mean ViT-B-32"),
        ({"model": "no-such-model"}, "not a model open_clip knows"),
        ({"model": "ViT-B-32", "pretrained": "laion2b_s99b"}, "not a tag of ViT-B-32"),
        ({"model": "ViT-B-32", "pretrained": "synthetic-world"}, "only exists for model"),
        ({"model": "ViT-B-32", "pretrained": "/nonexistent/model.bin"}, "no checkpoint file"),
        ({"model": "ViT-B-32", "model_config": "/nonexistent/config.json"}, "not a readable model config"),
    ],
)
def test_clip_mistakes_are_one_user_error(changes, message):
    with pytest.raises(ClipConfigError, match=message) as e:
        check_clip(dataclasses.replace(TINY, **changes))
    assert isinstance(e.value, UserError)


def test_a_checkpoint_that_does_not_load(tmp_path):
    broken = tmp_path / "model.bin"
    broken.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ClipConfigError, match="does not load as a checkpoint"):
        check_clip(dataclasses.replace(TINY, model="ViT-B-32", pretrained=str(broken)))


def test_a_config_that_is_not_json(tmp_path):
    config = tmp_path / "my-model.json"
    config.write_text("{not json")
    with pytest.raises(ClipConfigError, match="not a readable model config"):
        check_clip(dataclasses.replace(TINY, model_config=str(config)))


def test_good_sections_pass(tiny_clip_checkpoint):
    check_clip(TINY)
    check_clip(dataclasses.replace(TINY, pretrained=str(tiny_clip_checkpoint)))
    check_clip(ClipConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))


def test_build_with_an_unknown_model_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    (tmp_path / "rows.parquet").write_bytes(b"")
    recipe.write_text(f"input: {{path: {tmp_path / 'rows.parquet'}}}\nclip: {{model: ViT-Q-99}}\n")
    assert cli.main(["build", str(recipe), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ViT-Q-99" in err and "Traceback" not in err
