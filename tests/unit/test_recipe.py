"""The build recipe: shipped recipes load, typos and bad values fail loudly, paths resolve."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from flamingo_corpus.recipe import (
    ClipConfig,
    ImageConfig,
    Recipe,
    RecipeError,
    load_recipe,
    recipe_from_dict,
)

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"


def _write(tmp_path: Path, data, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------- shipped recipes


def test_sample_laion_recipe_loads_with_its_settings():
    raw = yaml.safe_load((MANIFESTS / "sample-laion.yaml").read_text())
    r = load_recipe(MANIFESTS / "sample-laion.yaml")
    assert isinstance(r, Recipe)
    assert r.name == raw["name"]
    assert r.input.corpus == "laion"
    assert r.image.resize_mode == raw["image"]["resize_mode"]
    assert r.image.image_size == raw["image"]["image_size"]
    assert r.clip.min_similarity == pytest.approx(raw["clip"]["min_similarity"])
    assert r.filters.language.allowed == tuple(raw["filters"]["language"]["allowed"])
    assert r.sample_web.enabled is True
    # relative paths in the shipped recipe point at real bundled files once resolved
    assert Path(r.input.path).is_absolute()
    assert Path(r.input.path) == (MANIFESTS / raw["input"]["path"]).resolve()
    assert Path(r.sample_web.root) == (MANIFESTS / raw["sample_web"]["root"]).resolve()


def test_laion2b_recipe_loads_and_keeps_the_laion_defaults():
    raw = yaml.safe_load((MANIFESTS / "laion2b-en.yaml").read_text())
    r = load_recipe(MANIFESTS / "laion2b-en.yaml")
    assert r.name == raw["name"]
    assert r.input.path == raw["input"]["path"]  # gs:// untouched
    assert r.input.path.startswith("gs://")
    assert r.clip.model == raw["clip"]["model"]
    assert r.clip.pretrained == raw["clip"]["pretrained"]  # a tag, not a path
    assert r.clip.min_similarity == pytest.approx(raw["clip"]["min_similarity"])
    assert r.filters.max_punsafe == pytest.approx(raw["filters"]["max_punsafe"])
    assert r.filters.min_metadata_similarity is None  # explicit null kept as None
    assert r.download.threads == raw["download"]["threads"]
    assert isinstance(r.download.timeout_s, float)  # YAML int coerced to the float field
    assert r.image.encode_format in ("jpg", "png")


def test_empty_recipe_gives_dataclass_defaults():
    assert recipe_from_dict({}) == Recipe()


# ---------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_names_key_and_allowed_keys():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"name": "x", "imagee": {"image_size": 3}})
    msg = str(e.value)
    assert "imagee" in msg
    assert "top level" in msg
    for allowed in (f.name for f in dataclasses.fields(Recipe)):
        assert allowed in msg


def test_unknown_nested_key_names_key_section_and_allowed_keys(tmp_path):
    path = _write(tmp_path, {"clip": {"min_similarty": 0.3}})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "min_similarty" in msg
    assert "in clip" in msg
    for allowed in (f.name for f in dataclasses.fields(ClipConfig)):
        assert allowed in msg
    assert str(path) in msg  # load_recipe says which file


def test_unknown_key_two_levels_deep_names_full_location():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"filters": {"language": {"min_scor": 0.3}}})
    msg = str(e.value)
    assert "min_scor" in msg and "filters.language" in msg and "min_score" in msg


def test_several_unknown_keys_are_all_named():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"image": {"sise": 1, "mode": "border"}})
    assert "'sise'" in str(e.value) and "'mode'" in str(e.value)


def test_section_that_is_not_a_mapping_is_rejected():
    with pytest.raises(RecipeError, match="clip"):
        recipe_from_dict({"clip": ["ViT-B-32"]})


# ---------------------------------------------------------------- types and choices


def test_string_for_int_is_rejected_with_field_name():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"image": {"image_size": "256"}})
    assert "image.image_size" in str(e.value) and "integer" in str(e.value)


def test_bool_for_int_is_rejected():
    with pytest.raises(RecipeError, match=r"shard\.samples_per_shard.*integer"):
        recipe_from_dict({"shard": {"samples_per_shard": True}})


def test_float_for_int_is_rejected():
    with pytest.raises(RecipeError, match=r"download\.threads"):
        recipe_from_dict({"download": {"threads": 2.5}})


def test_bool_and_string_for_float_are_rejected():
    with pytest.raises(RecipeError, match=r"filters\.max_punsafe.*number"):
        recipe_from_dict({"filters": {"max_punsafe": True}})
    with pytest.raises(RecipeError, match=r"clip\.min_similarity.*number"):
        recipe_from_dict({"clip": {"min_similarity": "0.28"}})


def test_int_accepted_for_float_and_null_for_optional():
    r = recipe_from_dict({"clip": {"min_similarity": 0}, "filters": {"max_punsafe": None}})
    assert r.clip.min_similarity == 0.0 and isinstance(r.clip.min_similarity, float)
    assert r.filters.max_punsafe is None


def test_string_for_bool_is_rejected():
    with pytest.raises(RecipeError, match=r"dedup\.exact.*true or false"):
        recipe_from_dict({"dedup": {"exact": "yes"}})


def test_list_expected():
    with pytest.raises(RecipeError, match=r"mmc4\.url_words.*list"):
        recipe_from_dict({"mmc4": {"url_words": 5}})
    with pytest.raises(RecipeError, match=r"filters\.language\.allowed.*list"):
        recipe_from_dict({"filters": {"language": {"allowed": {"en": 1}}}})
    # a single string is one element, and lists become tuples
    r = recipe_from_dict({"filters": {"language": {"allowed": "de"}}, "mmc4": {"image_extensions": ["png"]}})
    assert r.filters.language.allowed == ("de",)
    assert r.mmc4.image_extensions == ("png",)


def test_value_outside_choices_names_field_value_and_choices():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"image": {"resize_mode": "squash"}})
    msg = str(e.value)
    assert "image.resize_mode" in msg and "squash" in msg
    for choice in ("no", "keep_ratio", "center_crop", "border"):
        assert choice in msg


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("image", "encode_format", "webp"),  # the OpenFlamingo loader silently drops webp
        ("input", "corpus", "coyo"),
        ("clip", "precision", "int8"),
        ("mmc4", "leftover", "keep"),
    ],
)
def test_other_choices_are_enforced(section, key, value):
    with pytest.raises(RecipeError, match=f"{section}\\.{key}"):
        recipe_from_dict({section: {key: value}})


@pytest.mark.parametrize("mode", ["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"])
def test_every_resize_mode_is_accepted(mode):
    assert recipe_from_dict({"image": {"resize_mode": mode}}).image.resize_mode == mode


@pytest.mark.parametrize(
    "section,key",
    [
        ("shard", "samples_per_shard"),
        ("download", "threads"),
        ("image", "image_size"),
    ],
)
def test_values_below_one_are_rejected(section, key):
    with pytest.raises(RecipeError, match=f"{section}\\.{key}"):
        recipe_from_dict({section: {key: 0}})
    assert getattr(getattr(recipe_from_dict({section: {key: 1}}), section), key) == 1


# ---------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path):
    folder = tmp_path / "recipes" / "nested"
    folder.mkdir(parents=True)
    path = _write(
        folder,
        {
            "input": {"path": "../data/*.parquet"},
            "filters": {"language": {"model_path": "models/lid.176.ftz"}},
            "clip": {"pretrained": "./ckpt/model.pt", "model_config": "cfg/model.json"},
            "sample_web": {"root": "web"},
        },
    )
    r = load_recipe(path)
    assert r.input.path == str((folder / "../data/*.parquet").resolve())
    assert r.input.path == str(tmp_path.resolve() / "recipes" / "data" / "*.parquet")
    assert r.filters.language.model_path == str(folder.resolve() / "models" / "lid.176.ftz")
    assert r.clip.pretrained == str(folder.resolve() / "ckpt" / "model.pt")
    assert r.clip.model_config == str(folder.resolve() / "cfg" / "model.json")
    assert r.sample_web.root == str(folder.resolve() / "web")


def test_remote_absolute_and_tag_paths_are_untouched(tmp_path):
    absolute = str(tmp_path / "abs" / "x.parquet")
    path = _write(
        tmp_path,
        {
            "input": {"path": "gs://bucket/laion/*.parquet"},
            "filters": {"language": {"model_path": absolute}},
            "clip": {"pretrained": "openai", "model_config": "s3://bucket/cfg.json"},
            "sample_web": {"root": "hdfs://namenode/web"},
        },
    )
    r = load_recipe(path)
    assert r.input.path == "gs://bucket/laion/*.parquet"
    assert r.filters.language.model_path == absolute
    assert r.clip.pretrained == "openai"
    assert r.clip.model_config == "s3://bucket/cfg.json"
    assert r.sample_web.root == "hdfs://namenode/web"


def test_recipe_from_dict_without_base_dir_keeps_paths_as_written():
    r = recipe_from_dict({"input": {"path": "data/x.parquet"}})
    assert r.input.path == "data/x.parquet"


# ---------------------------------------------------------------- digest


def test_digest_is_stable_and_tracks_thresholds(tmp_path):
    data = {"name": "d", "clip": {"min_similarity": 0.28}, "image": {"image_size": 256}}
    a = recipe_from_dict(data)
    b = recipe_from_dict(yaml.safe_load(yaml.safe_dump(data)))
    assert a == b
    assert a.digest() == b.digest()
    assert len(a.digest()) == 64 and int(a.digest(), 16) >= 0
    # an explicit default equals the omitted one
    assert recipe_from_dict({"name": "d", "image": {"image_size": 256}}).digest() == a.digest()
    changed = recipe_from_dict({**data, "clip": {"min_similarity": 0.3}})
    assert changed.digest() != a.digest()
    assert recipe_from_dict({**data, "image": {"image_size": 224}}).digest() != a.digest()
    # the same recipe file loaded twice hashes the same
    path = _write(tmp_path, data)
    assert load_recipe(path).digest() == load_recipe(path).digest()


def test_to_dict_is_plain_json_data():
    d = recipe_from_dict({"filters": {"language": {"allowed": ["en", "de"]}}}).to_dict()
    assert d["filters"]["language"]["allowed"] == ["en", "de"]
    assert d["image"] == dataclasses.asdict(ImageConfig())


# ---------------------------------------------------------------- files


def test_invalid_yaml_names_the_file(tmp_path):
    path = _write(tmp_path, "name: x\nimage: {image_size: 3\n  resize_mode: [border\n", name="broken.yaml")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "broken.yaml" in str(e.value)
    assert "YAML" in str(e.value)


def test_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    path = _write(tmp_path, "- a\n- b\n", name="list.yaml")
    with pytest.raises(RecipeError, match="list.yaml.*mapping"):
        load_recipe(path)


def test_empty_file_gives_defaults(tmp_path):
    path = _write(tmp_path, "", name="empty.yaml")
    assert load_recipe(path) == Recipe()


def test_a_removed_key_says_what_replaced_it():
    with pytest.raises(RecipeError, match=r"shard\.chunk_rows is no longer a recipe key: shards now follow the input"):
        recipe_from_dict({"shard": {"samples_per_shard": 10, "chunk_rows": 100}})
