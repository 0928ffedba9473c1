"""The synthetic image world: deterministic rendering and captions that describe the image."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from flamingo_corpus.sample import synthetic


def _words(text: str) -> set:
    return set(re.findall(r"[a-z]+", text))


def _shape_centroid(scene: synthetic.Scene, width: int, height: int) -> tuple:
    """Mean (x, y) of the pixels that have the shape's colour."""
    pixels = np.asarray(synthetic.render(scene, width, height))
    ys, xs = np.nonzero((pixels == synthetic.COLOURS[scene.colour]).all(axis=-1))
    assert len(xs), "shape not drawn"
    return xs.mean(), ys.mean()


@pytest.fixture
def scene() -> synthetic.Scene:
    return synthetic.Scene("star", "red", "left", "striped", "grey", size=0.9, jitter_x=0.01, jitter_y=-0.02)


def test_render_is_deterministic(scene):
    assert synthetic.render(scene, 160, 120).tobytes() == synthetic.render(scene, 160, 120).tobytes()


@pytest.mark.parametrize("width,height", [(224, 224), (300, 120), (100, 200), (33, 17)])
def test_render_respects_the_requested_size(scene, width, height):
    image = synthetic.render(scene, width, height)
    assert image.size == (width, height)
    assert image.mode == "RGB"


@pytest.mark.parametrize("attribute", sorted(synthetic.ATTRIBUTES))
def test_changing_any_attribute_changes_the_image(scene, attribute):
    other = synthetic.vary(scene, attribute, random.Random(0))
    assert getattr(other, attribute) != getattr(scene, attribute)
    assert synthetic.render(other, 128, 96).tobytes() != synthetic.render(scene, 128, 96).tobytes()


def test_random_scenes_give_different_images():
    images = {synthetic.render(s, 64, 64).tobytes() for s in synthetic.scenes(seed=3, n=20)}
    assert len(images) == 20


@pytest.mark.parametrize("width,height", [(200, 200), (300, 120), (120, 300)])
@pytest.mark.parametrize("position", sorted(synthetic.POSITIONS))
def test_shape_is_drawn_at_its_position(position, width, height):
    scene = synthetic.Scene("square", "blue", position, "plain", "grey")
    x, y = _shape_centroid(scene, width, height)
    dx, dy = (x - width / 2) / min(width, height), (y - height / 2) / min(width, height)
    expected_dx, expected_dy = synthetic.POSITIONS[position]
    assert dx == pytest.approx(expected_dx, abs=0.02)
    assert dy == pytest.approx(expected_dy, abs=0.02)


def test_scenes_are_seeded():
    assert list(synthetic.scenes(seed=5, n=10)) == list(synthetic.scenes(seed=5, n=10))
    assert list(synthetic.scenes(seed=5, n=10)) != list(synthetic.scenes(seed=6, n=10))


def test_background_colour_never_equals_the_shape_colour():
    for scene in synthetic.scenes(seed=7, n=200):
        assert synthetic.COLOURS[scene.colour] != synthetic.BACKGROUND_COLOURS[scene.background_colour]


def test_scene_rejects_unknown_values():
    with pytest.raises(ValueError, match="shape"):
        synthetic.Scene("hexagon", "red", "left", "plain", "grey")


def test_caption_mentions_the_scene():
    rng = random.Random(1)
    for scene in synthetic.scenes(seed=2, n=50):
        for text in (synthetic.caption(scene), synthetic.caption(scene, rng)):
            words = _words(text)
            for attribute in synthetic.ATTRIBUTES:
                assert getattr(scene, attribute) in words, (attribute, text)


def test_caption_without_rng_uses_one_fixed_template(scene):
    assert synthetic.caption(scene) == synthetic.caption(scene)
    assert synthetic.caption(scene) == "a red star on the left on a striped grey background"


def test_captions_use_several_templates(scene):
    rng = random.Random(0)
    assert len({synthetic.caption(scene, rng) for _ in range(50)}) > 1


def test_wrong_caption_differs_in_shape_and_colour():
    rng = random.Random(4)
    for scene in synthetic.scenes(seed=8, n=100):
        words = _words(synthetic.wrong_caption(scene, rng))
        assert scene.shape not in words
        assert scene.colour not in words
        assert words & set(synthetic.SHAPES) and words & set(synthetic.COLOURS)
