"""The bundled MMC4 sample: real mmc4 text, images of the project's own, served from loopback.

``python -m flamingo_corpus.sample.mmc4_data --source ../shared/data/mmc4/docs_no_face_shard_151_v3.sample.jsonl``
regenerates ``pipeline/assets/sample/mmc4`` deterministically from the first documents of a real
mmc4-core-ff shard.  Each document keeps its URL and sentences; each of its images becomes a
synthetic image served by the sample web server, and a sentence describing that image is inserted
right after the sentence the release matched it to, so the tiny CLIP has something true to align
(real CLIP weights cannot be fetched here).  Some images and documents are broken on purpose:
a 404, a URL naming a logo, a .gif, images too small, too elongated or too few bytes, a repeated
image, an image that matches nothing, a document whose images all fail, a repeated document, a
line that is not JSON and a matrix of the wrong shape.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..paths import ASSETS as PACKAGE_ASSETS
from ..paths import CHECKOUT_MANIFESTS
from . import synthetic
from .laion_data import BASE_URL

ASSETS = PACKAGE_ASSETS / "sample" / "mmc4"
DEFAULT_SOURCE = (
    CHECKOUT_MANIFESTS.parent.parent / "shared" / "data" / "mmc4" / "docs_no_face_shard_151_v3.sample.jsonl"
)
DOCUMENTS = 30
SEED = 151
SIZES = [(400, 300), (360, 270), (300, 400), (320, 320)]


def photo(scene, width: int, height: int, rng: random.Random) -> Image.Image:
    """A synthetic image with sensor-like noise: real photos do not compress to a few KB."""
    pixels = np.asarray(synthetic.render(scene, width, height), dtype=np.int16)
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-6, 7, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class _Doc:
    """Rewrites one real document: its images become synthetic, served from the sample web."""

    def __init__(self, doc: dict, number: int, web: Path, rng: random.Random):
        self.doc, self.number, self.web, self.rng = doc, number, web, rng
        self.images = []  # (image_info entry, sentence to insert after its matched index or None)

    def serve(self, name: str, data: bytes) -> str:
        rel = f"mmc4/{self.number:03d}/{name}"
        (self.web / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.web / rel).write_bytes(data)
        return f"{BASE_URL}/{rel}"

    def add(self, info: dict, kind: str) -> None:
        scene = synthetic.random_scene(self.rng)
        pos = len(self.images)
        described = synthetic.caption(scene, self.rng)
        w, h = self.rng.choice(SIZES)
        if kind == "good":
            url = self.serve(f"{pos}.jpg", jpeg(photo(scene, w, h, self.rng)))
        elif kind == "missing":
            url = f"{BASE_URL}/mmc4/{self.number:03d}/gone-{pos}.jpg"
        elif kind == "logo":
            url = self.serve(f"site-logo-{pos}.png", jpeg(photo(scene, w, h, self.rng)))
        elif kind == "gif":
            url = self.serve(f"{pos}.gif", jpeg(photo(scene, w, h, self.rng)))
        elif kind == "small":
            url = self.serve(f"{pos}.jpg", jpeg(photo(scene, 120, 100, self.rng)))
        elif kind == "elongated":
            url = self.serve(f"{pos}.jpg", jpeg(photo(scene, 630, 180, self.rng)))
        elif kind == "few_bytes":  # big enough, but smooth: compresses under the loader's 11 kB
            url = self.serve(f"{pos}.jpg", jpeg(synthetic.render(scene, 200, 160), quality=60))
        elif kind == "repeat":  # the same bytes as the previous image of this document
            url = self.images[-1][0]["raw_url"]
            described = None
        else:  # "unmatched": no sentence describes it
            url = self.serve(f"{pos}.jpg", jpeg(photo(scene, w, h, self.rng)))
            described = None
        self.images.append(({**info, "raw_url": url}, described))

    def build(self) -> dict:
        """The document with the inserted sentences and a matrix of the new shape."""
        inserts = {}
        for i, (info, sentence) in enumerate(self.images):
            if sentence is not None:
                inserts.setdefault(info["matched_text_index"], []).append((i, sentence))
        text, column_of = [], {}
        for j, sentence in enumerate(self.doc["text_list"]):
            text.append(sentence)
            for i, described in inserts.get(j, []):
                column_of[i] = len(text)
                text.append(described)
        old = self.doc["similarity_matrix"]
        new_column = {c: i for i, c in column_of.items()}
        matrix, image_info = [], []
        for i, (info, _) in enumerate(self.images):
            row, k = [], 0
            for c in range(len(text)):
                if c in new_column:
                    row.append(0.0)  # inserted sentences were never scored by the release
                else:
                    row.append(old[i][k])
                    k += 1
            matrix.append(row)
            image_info.append(info)
        return {**self.doc, "text_list": text, "image_info": image_info, "similarity_matrix": matrix}


def _kinds(n_images: int, rng: random.Random) -> list:
    broken = ["missing", "logo", "gif", "small", "elongated", "few_bytes", "repeat", "unmatched"]
    kinds = ["good"] * n_images
    for pos in rng.sample(range(1, n_images), k=min(n_images - 1, 2)) if n_images > 1 else []:
        kinds[pos] = rng.choice(broken)
    return kinds


def generate(source: Path = DEFAULT_SOURCE, root: Path = ASSETS, seed: int = SEED) -> Path:
    if root.exists():
        shutil.rmtree(root)
    web = root / "web"
    rng = random.Random(seed)
    docs = [json.loads(line) for line in source.read_text().splitlines()[:DOCUMENTS]]
    lines = []
    for number, doc in enumerate(docs):
        d = _Doc(doc, number, web, rng)
        all_fail = number == 7
        for info, kind in zip(doc["image_info"], _kinds(len(doc["image_info"]), rng)):
            d.add(info, "missing" if all_fail else kind)
        lines.append(json.dumps(d.build()))
    lines.insert(12, lines[3])  # an exact duplicate document
    lines.insert(20, '{"url": "http://example.com/broken", "text_list": ["cut off')  # not JSON
    bad = json.loads(lines[25])
    bad["similarity_matrix"] = bad["similarity_matrix"][:-1]  # one row short
    lines[25] = json.dumps(bad)
    out = root / "docs.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--root", type=Path, default=ASSETS)
    args = ap.parse_args()
    out = generate(args.source, args.root)
    print(f"wrote {len(out.read_text().splitlines())} lines to {out}")


if __name__ == "__main__":
    main()
