"""Near-duplicate dedup switched on in a LAION build: recompressed, resized and framed copies go."""

from __future__ import annotations

import pytest
from PIL import Image, ImageOps

from ..loopback_build import build_over_loopback, jpeg_bytes, smooth_photo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_near_copies_are_dropped_with_their_original_named(tmp_path):
    original = smooth_photo(1)
    files = {
        "original.jpg": jpeg_bytes(original),
        "recompressed.jpg": jpeg_bytes(original, quality=35),
        "half.jpg": jpeg_bytes(original.resize((160, 120), Image.Resampling.BICUBIC)),
        "framed.jpg": jpeg_bytes(ImageOps.expand(original, border=16, fill=(255, 255, 255))),
        **{f"other{i}.jpg": jpeg_bytes(smooth_photo(100 + i)) for i in range(5)},
    }
    rows, result = build_over_loopback(
        tmp_path,
        files,
        {
            "image": {"resize_mode": "keep_ratio", "image_size": 128},
            "dedup": {"near": True, "near_max_distance": 10},
        },
    )
    assert rows["original.jpg"]["status"] == "kept"
    for copy in ("recompressed.jpg", "half.jpg", "framed.jpg"):
        assert rows[copy]["reason"] == "near_duplicate" and rows[copy]["duplicate_of"] == rows["original.jpg"]["id"]
    assert all(rows[f"other{i}.jpg"]["status"] == "kept" for i in range(5))
    assert result.kept == 6 and result.drops == {"near_dup/near_duplicate": 3}
