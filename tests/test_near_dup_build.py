"""Near-duplicate dedup switched on in a LAION build: recompressed and resized copies go."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.build import run_build
from pipeline.recipe import recipe_from_dict
from pipeline.sample_web import SampleWeb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _photo(seed: int) -> Image.Image:
    """A smooth random picture: distinct seeds give unrelated perceptual hashes."""
    small = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_near_copies_are_dropped_with_their_original_named(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    original = _photo(1)
    files = {
        "original.jpg": _jpeg(original),
        "recompressed.jpg": _jpeg(original, quality=35),
        "half.jpg": _jpeg(original.resize((160, 120), Image.Resampling.BICUBIC)),
        **{f"other{i}.jpg": _jpeg(_photo(100 + i)) for i in range(5)},
    }
    for name, data in files.items():
        (web / name).write_bytes(data)
    with SampleWeb(web) as server:
        names = list(files)
        pq.write_table(pa.table({"URL": [f"{server.url}/{n}" for n in names],
                                 "TEXT": [f"picture number {i} of the test" for i in range(len(names))]}),
                       tmp_path / "rows.parquet")
        recipe = recipe_from_dict({
            "name": "near", "input": {"path": str(tmp_path / "rows.parquet")},
            "filters": {"language": {"enabled": False}},
            "download": {"allow_private": True, "timeout_s": 5},
            "image": {"resize_mode": "keep_ratio", "image_size": 128},
            "clip": {"enabled": False},
            "dedup": {"near": True, "near_max_distance": 10},
        })
        result = run_build(recipe, str(tmp_path / "out"))
    rows = {r["url"].rsplit("/", 1)[1]: r for r in pq.read_table(sorted((tmp_path / "out" / "index").glob("*.parquet"))).to_pylist()}
    assert rows["original.jpg"]["status"] == "kept"
    for copy in ("recompressed.jpg", "half.jpg"):
        assert rows[copy]["reason"] == "near_duplicate" and rows[copy]["duplicate_of"] == rows["original.jpg"]["id"]
    assert all(rows[f"other{i}.jpg"]["status"] == "kept" for i in range(5))
    assert result.kept == 6 and result.drops == {"near_dup/near_duplicate": 2}
