"""A small synthetic image world with matching English captions.

Every image shows one coloured shape on a textured background.  A ``Scene`` names everything
that is drawn, ``render`` draws it and ``caption`` describes it, so an image and its caption
agree by construction; ``wrong_caption`` describes a different scene.  The world exists for
the tiny CLIP model in ``flamingo_corpus.sample.tiny_clip`` (which is trained on it) and for tests and
local sample builds, where no real images or pretrained weights are available.

Layout: the scene is composed inside the *central square* of the canvas (side = the shorter
image side); on a non-square canvas the extra width or height is background only.  A
shortest-side resize followed by a centre crop, which is what CLIP preprocessing does, keeps
the whole scene, and "left" still means left of the image centre.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

# Bump when rendering or captions change in a way that invalidates models trained on the world.
WORLD_VERSION = 1

RGB = Tuple[int, int, int]
Point = Tuple[float, float]

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")

# Saturated shape colours.  The background palette below is muted and disjoint from it, so a
# shape never has the colour of its background.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

BACKGROUND_COLOURS = {
    "grey": (128, 128, 128),
    "brown": (120, 85, 60),
    "teal": (60, 120, 120),
    "olive": (115, 115, 60),
}

BACKGROUNDS: Tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

# Position word (as used in captions) -> offset of the shape centre from the canvas centre, in
# units of the central square's side.
POSITIONS = {
    "left": (-0.27, 0.0),
    "right": (0.27, 0.0),
    "top": (0.0, -0.27),
    "bottom": (0.0, 0.27),
    "centre": (0.0, 0.0),
}

_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}

# {thing} is the shape with its colour and article, e.g. "an orange star".
_TEMPLATES: Tuple[str, ...] = (
    "{thing} {where} on a {texture} {bg} background",
    "a photo of {thing} {where}, {texture} {bg} background",
    "a {texture} {bg} background with {thing} {where}",
    "there is {thing} {where} and the background is {texture} {bg}",
)

# The attributes a caption names, with their possible values.
ATTRIBUTES = {
    "shape": SHAPES,
    "colour": tuple(sorted(COLOURS)),
    "position": tuple(sorted(POSITIONS)),
    "background": BACKGROUNDS,
    "background_colour": tuple(sorted(BACKGROUND_COLOURS)),
}

SIZE_RANGE = (0.75, 1.0)  # scale factor applied to the base shape radius
MAX_JITTER = 0.04  # largest random shift of the shape, in units of the central square's side
_BASE_RADIUS = 0.19  # shape radius at size 1.0, in units of the central square's side
_TILE_FRACTION = 1 / 8  # background pattern period, in units of the central square's side
_PATTERN_LIGHTEN = 0.3  # how far the pattern colour is mixed towards white

assert set(COLOURS).isdisjoint(BACKGROUND_COLOURS)
assert set(COLOURS.values()).isdisjoint(BACKGROUND_COLOURS.values())


@dataclass(frozen=True)
class Scene:
    """Everything that is drawn in one synthetic image.

    ``size`` scales the shape (see ``SIZE_RANGE``); ``jitter_x`` / ``jitter_y`` shift it by a
    fraction of the central square's side (at most ``MAX_JITTER``) so images of the same
    described scene still differ.
    """

    shape: str
    colour: str
    position: str
    background: str
    background_colour: str
    size: float = 1.0
    jitter_x: float = 0.0
    jitter_y: float = 0.0

    def __post_init__(self) -> None:
        for attribute, values in ATTRIBUTES.items():
            value = getattr(self, attribute)
            if value not in values:
                raise ValueError(f"unknown {attribute} {value!r}; expected one of {values}")


def random_scene(rng: random.Random) -> Scene:
    """Draw a scene uniformly over the named attributes, with random size and jitter."""
    return Scene(
        **{attribute: rng.choice(values) for attribute, values in ATTRIBUTES.items()},
        size=rng.uniform(*SIZE_RANGE),
        jitter_x=rng.uniform(-MAX_JITTER, MAX_JITTER),
        jitter_y=rng.uniform(-MAX_JITTER, MAX_JITTER),
    )


def scenes(seed: int, n: int) -> Iterator[Scene]:
    """Yield ``n`` random scenes from a generator seeded with ``seed`` (same seed, same scenes)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield random_scene(rng)


def vary(scene: Scene, attribute: str, rng: random.Random) -> Scene:
    """``scene`` with one named attribute (a key of ``ATTRIBUTES``) changed to another value."""
    others = [v for v in ATTRIBUTES[attribute] if v != getattr(scene, attribute)]
    return dataclasses.replace(scene, **{attribute: rng.choice(others)})


def different_scene(scene: Scene, rng: random.Random) -> Scene:
    """A random scene whose shape and colour both differ from ``scene``'s."""
    other = dataclasses.replace(random_scene(rng), shape=scene.shape, colour=scene.colour)
    return vary(vary(other, "shape", rng), "colour", rng)


def caption(scene: Scene, rng: Optional[random.Random] = None) -> str:
    """Describe ``scene`` in English: shape, colour, position and background.

    With ``rng`` the sentence template is chosen at random, without it the first template is
    used, e.g. "a red circle on the left on a striped grey background".
    """
    template = rng.choice(_TEMPLATES) if rng is not None else _TEMPLATES[0]
    article = "an" if scene.colour[0] in "aeiou" else "a"
    return template.format(
        thing=f"{article} {scene.colour} {scene.shape}",
        where=_POSITION_PHRASES[scene.position],
        texture=scene.background,
        bg=scene.background_colour,
    )


def wrong_caption(scene: Scene, rng: random.Random) -> str:
    """A caption of another scene, differing from ``scene`` at least in shape and colour."""
    return caption(different_scene(scene, rng), rng)


def render(scene: Scene, width: int = 224, height: int = 224) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``width`` x ``height`` pixels (deterministic)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    image = Image.new("RGB", (width, height), BACKGROUND_COLOURS[scene.background_colour])
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    _draw_background(draw, scene, width, height, side * _TILE_FRACTION)
    dx, dy = POSITIONS[scene.position]
    centre = (width / 2 + (dx + scene.jitter_x) * side, height / 2 + (dy + scene.jitter_y) * side)
    _draw_shape(draw, scene.shape, centre, _BASE_RADIUS * scene.size * side, COLOURS[scene.colour])
    return image


def _pattern_colour(base: RGB) -> RGB:
    """The lighter tint of a background colour that its texture is drawn in."""
    return tuple(round(c + (255 - c) * _PATTERN_LIGHTEN) for c in base)


def _tiles(width: int, height: int, period: float) -> Iterator[Tuple[int, int, float, float]]:
    """Grid cells (column, row, x, y of the top-left corner) covering the canvas.

    The grid is anchored at the canvas centre, so the central square looks the same whatever
    the aspect ratio.
    """
    x0 = width / 2 - math.ceil(width / 2 / period) * period
    y0 = height / 2 - math.ceil(height / 2 / period) * period
    for row in range(math.ceil((height - y0) / period)):
        for col in range(math.ceil((width - x0) / period)):
            yield col, row, x0 + col * period, y0 + row * period


def _draw_background(draw: ImageDraw.ImageDraw, scene: Scene, width: int, height: int, period: float) -> None:
    """Draw the background texture (vertical stripes, a dot grid or a checkerboard)."""
    if scene.background == "plain":
        return
    fill = _pattern_colour(BACKGROUND_COLOURS[scene.background_colour])
    for col, row, x, y in _tiles(width, height, period):
        if scene.background == "striped":
            draw.rectangle([x, y, x + period / 2, y + period], fill=fill)
        elif scene.background == "dotted":
            cx, cy, r = x + period / 2, y + period / 2, period / 6
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif scene.background == "checkered" and (col + row) % 2 == 0:
            draw.rectangle([x, y, x + period, y + period], fill=fill)


def _polygon(centre: Point, radii: Sequence[float], start_angle: float = -math.pi / 2) -> list:
    """Vertices at evenly spaced angles around ``centre``, cycling through ``radii``."""
    cx, cy = centre
    n = len(radii)
    return [
        (cx + r * math.cos(start_angle + 2 * math.pi * i / n), cy + r * math.sin(start_angle + 2 * math.pi * i / n))
        for i, r in enumerate(radii)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: Point, radius: float, fill: RGB) -> None:
    """Draw ``shape`` of roughly ``radius`` around ``centre``."""
    cx, cy = centre
    circle_box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(circle_box, fill=fill)
    elif shape == "ring":
        draw.ellipse(circle_box, outline=fill, width=max(1, round(radius * 0.4)))
    elif shape == "square":
        half = radius * 0.85
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(centre, [radius] * 3), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(centre, [radius, radius * 0.45] * 5), fill=fill)
    elif shape == "cross":
        arm = radius * 0.3
        draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
