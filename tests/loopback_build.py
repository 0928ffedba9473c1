"""A small LAION build over pictures the test makes, served from a loopback web server."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from flamingo_corpus.build import run_build
from flamingo_corpus.output.manifest import BuildResult
from flamingo_corpus.recipe import recipe_from_dict
from flamingo_corpus.sample.web import SampleWeb

from .helpers import index_rows

# The tiny CLIP trained on the synthetic world (the session fixture tiny_clip_checkpoint trains it),
# scoring on the CPU, with no similarity threshold: what the tests that switch CLIP on start from.
TINY_CLIP = {
    "enabled": True,
    "model": "flamingo-tiny-clip",
    "pretrained": "synthetic-world",
    "device": "cpu",
    "min_similarity": None,
}

BASE_RECIPE = {
    "name": "loopback",
    "filters": {"language": {"enabled": False}},
    "download": {"allow_private": True, "timeout_s": 5},
    "clip": {"enabled": False},
}


def smooth_photo(seed: int) -> Image.Image:
    """A smooth random picture: distinct seeds give unrelated perceptual hashes."""
    small = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC)


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@contextlib.contextmanager
def serve_rows(
    tmp_path: Path, files: Dict[str, bytes], paths: Optional[List[str]] = None, row_group_size: Optional[int] = None
) -> Iterator[SampleWeb]:
    """Serve ``files`` from ``tmp_path/web`` and write ``tmp_path/rows.parquet``, one LAION row
    (URL, TEXT) per file, or per entry of ``paths`` (URL paths on the server: a file's name, or a
    fault behaviour such as ``flaky/1/a.jpg``); yields the running server."""
    web = tmp_path / "web"
    web.mkdir()
    for name, data in files.items():
        (web / name).write_bytes(data)
    paths = list(files) if paths is None else paths
    with SampleWeb(web) as server:
        pq.write_table(
            pa.table(
                {
                    "URL": [f"{server.url}/{n}" for n in paths],
                    "TEXT": [f"picture number {i} of the test" for i in range(len(paths))],
                }
            ),
            tmp_path / "rows.parquet",
            row_group_size=row_group_size,
        )
        yield server


def build_over_loopback(
    tmp_path: Path, files: Dict[str, bytes], recipe: dict, prepare: Optional[Callable[[str], None]] = None
) -> Tuple[Dict[str, dict], BuildResult]:
    """Serve ``files``, build one row per file with ``recipe`` over BASE_RECIPE (sections merged),
    and return the index rows by file name with the build result.  ``prepare(server_url)`` runs
    before the build (to write a file that names the server's URLs); relative recipe paths
    resolve against ``tmp_path``."""
    with serve_rows(tmp_path, files) as server:
        if prepare:
            prepare(server.url)
        merged = {**BASE_RECIPE, **recipe, "input": {"path": str(tmp_path / "rows.parquet")}}
        for section, values in recipe.items():
            if isinstance(BASE_RECIPE.get(section), dict):
                merged[section] = {**BASE_RECIPE[section], **values}
        result = run_build(recipe_from_dict(merged, base_dir=tmp_path), str(tmp_path / "out"))
    index = index_rows(tmp_path / "out")
    return {r["url"].rsplit("/", 1)[1]: r for r in index}, result
