"""Real photographs for the benchmarks, from files that installed packages ship (no download).

scikit-image's ``skimage.data`` and matplotlib's sample data hold a dozen photographs (an
astronaut, a cat, coffee, a rocket, a motorcycle, Grace Hopper, the Hubble deep field ...).
``web_photos`` cuts them into as many different pictures as a benchmark needs, shaped like what a
LAION crawl downloads: a random crop of 40-100% a side, scaled so that the short side falls
between about 250 and 1,150 pixels, saved as JPEG (quality 70-95, a quarter of them progressive,
one in ten greyscale, one in twenty-five with an EXIF orientation that turns it upright) or, one in
twenty, as PNG.  Every picture is seeded by its number: the same list on every machine and run.

Each is written once under a folder and reused (``--workdir`` of the benchmark that asks).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from copy_detection import EVAL_PHOTOS
from PIL import Image

__all__ = ["PHOTOS", "source_photographs", "web_photo", "web_photos"]

# copy_detection's evaluation photographs but moon and cell, and a page of text (the order fixes the pictures)
PHOTOS = tuple(name for name in EVAL_PHOTOS if name not in ("moon", "cell")) + ("page",)
_cache: Dict[str, Image.Image] = {}


def source_photographs() -> Dict[str, Image.Image]:
    """The package photographs, RGB (loaded once, by copy_detection.photographs)."""
    if not _cache:
        from copy_detection import photographs

        _cache.update({name: img for name, img in photographs().items() if name in PHOTOS})
    return _cache


def web_photo(number: int) -> Tuple[bytes, str]:
    """Picture ``number``: (its file bytes, its extension)."""
    rng = np.random.default_rng(number)
    photos = source_photographs()
    name = PHOTOS[number % len(PHOTOS)]
    img = photos[name]
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x, y, x + cw, y + ch))
    short = float(rng.uniform(250, 1150))
    scale = short / min(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    kind = rng.random()
    buf = io.BytesIO()
    if kind < 0.05:
        img.save(buf, "PNG", optimize=False)
        return buf.getvalue(), "png"
    if kind < 0.15:
        img = img.convert("L")
    exif = None
    if rng.random() < 0.04:  # stored turned a quarter, with the orientation that turns it back
        img = img.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
    img.save(
        buf,
        "JPEG",
        quality=int(rng.integers(70, 96)),
        progressive=bool(rng.random() < 0.25),
        **({"exif": exif.tobytes()} if exif is not None else {}),
    )
    return buf.getvalue(), "jpg"


def web_photos(root: Path, count: int) -> List[str]:
    """``count`` pictures under ``root/photos`` (made once, then reused): their paths relative to ``root``."""
    (root / "photos").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        stem = root / "photos" / f"{i:07d}"
        found = [p for p in (stem.with_suffix(".jpg"), stem.with_suffix(".png")) if p.exists()]
        if found:
            paths.append(str(found[0].relative_to(root)))
            continue
        data, ext = web_photo(i)
        path = stem.with_suffix("." + ext)
        path.write_bytes(data)
        paths.append(str(path.relative_to(root)))
    return paths
