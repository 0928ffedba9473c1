"""The bundled LAION sample: synthetic images and a metadata parquet that points at them.

``python -m flamingo_corpus.sample.laion_data`` regenerates ``pipeline/assets/sample/laion`` deterministically.
The rows mix good image-caption pairs with every kind of trouble the pipeline must record:
wrong captions (CLIP similarity filter), other languages, short captions, unsafe and watermark
scores, bad schemes, repeated URLs, repeated images, 404s, server errors, timeouts, HTML served
as an image, truncated and undecodable files, images too small or too elongated,
``X-Robots-Tag: noai``, and a few faults of the fault web (connection resets, bodies shorter or
longer than their Content-Length, 429, a redirect loop, gzip and PNG decompression bombs).  The
URLs point at the embedded loopback web server of the sample recipe.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import pyarrow as pa
import pyarrow.parquet as pq

from ..paths import ASSETS as PACKAGE_ASSETS
from . import synthetic

SAMPLE_PORT = 8741
BASE_URL = f"http://127.0.0.1:{SAMPLE_PORT}"
ASSETS = PACKAGE_ASSETS / "sample" / "laion"
SEED = 20240611

FOREIGN = [
    "ein roter Kreis auf einem gestreiften grauen Hintergrund",
    "un carré bleu en haut sur un fond à pois marron",
    "una estrella amarilla a la derecha sobre un fondo a cuadros",
    "een groene driehoek onderaan op een effen achtergrond",
    "un cerchio viola al centro su uno sfondo a righe",
    "ein schwarzes Kreuz links auf einem karierten Hintergrund",
    "une étoile orange au centre sur un fond uni vert olive",
    "um anel branco à esquerda num fundo listrado",
]


class _Writer:
    """Collects rows and the files the sample web serves."""

    def __init__(self, root: Path, rng: random.Random):
        self.web = root / "web"
        self.rng = rng
        self.rows: List[Dict] = []
        self.n = 0

    def image_file(self, scene, width: int, height: int, quality: int = 90) -> str:
        self.n += 1
        rel = f"img/{self.n:05d}.jpg"
        path = self.web / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.render(scene, width, height).save(path, format="JPEG", quality=quality)
        return rel

    def raw_file(self, rel: str, data: bytes) -> str:
        path = self.web / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return rel

    def row(self, url: str, caption, width=None, height=None, punsafe=0.01, pwatermark=0.05, similarity=0.31):
        self.rows.append(
            {
                "URL": url,
                "TEXT": caption,
                "WIDTH": width,
                "HEIGHT": height,
                "similarity": similarity,
                "punsafe": punsafe,
                "pwatermark": pwatermark,
            }
        )


def _size(rng: random.Random):
    return rng.choice([(320, 240), (256, 256), (400, 300), (300, 400), (640, 480), (200, 160), (512, 384)])


def _good(w: _Writer, prefix: str = "") -> None:
    scene = synthetic.random_scene(w.rng)
    width, height = _size(w.rng)
    rel = w.image_file(scene, width, height)
    w.row(f"{BASE_URL}/{prefix}{rel}", synthetic.caption(scene, w.rng), width, height)


def _wrong_caption(w: _Writer) -> None:
    scene = synthetic.random_scene(w.rng)
    rel = w.image_file(scene, *_size(w.rng))
    w.row(f"{BASE_URL}/{rel}", synthetic.wrong_caption(scene, w.rng))


def _foreign(w: _Writer) -> None:
    scene = synthetic.random_scene(w.rng)
    rel = w.image_file(scene, *_size(w.rng))
    w.row(f"{BASE_URL}/{rel}", w.rng.choice(FOREIGN))


def _with_caption(caption) -> Callable[[_Writer], None]:
    def make(w: _Writer) -> None:
        rel = w.image_file(synthetic.random_scene(w.rng), 256, 256)
        w.row(f"{BASE_URL}/{rel}", caption)

    return make


def _scores(**scores) -> Callable[[_Writer], None]:
    def make(w: _Writer) -> None:
        scene = synthetic.random_scene(w.rng)
        rel = w.image_file(scene, 256, 256)
        w.row(f"{BASE_URL}/{rel}", synthetic.caption(scene, w.rng), **scores)

    return make


def _url(url: str) -> Callable[[_Writer], None]:
    def make(w: _Writer) -> None:
        w.row(url.format(n=len(w.rows), base=BASE_URL), synthetic.caption(synthetic.random_scene(w.rng), w.rng))

    return make


def _geometry(width: int, height: int) -> Callable[[_Writer], None]:
    def make(w: _Writer) -> None:
        scene = synthetic.random_scene(w.rng)
        rel = w.image_file(scene, width, height)
        w.row(f"{BASE_URL}/{rel}", synthetic.caption(scene, w.rng), width, height)

    return make


def _served_as(prefix: str) -> Callable[[_Writer], None]:
    def make(w: _Writer) -> None:
        _good(w, prefix)

    return make


def _duplicate_image(w: _Writer) -> None:
    """The same bytes under a second URL: exact image dedup keeps one."""
    scene = synthetic.random_scene(w.rng)
    rel = w.image_file(scene, 320, 240)
    copy = w.raw_file(rel.replace("img/", "mirror/"), (w.web / rel).read_bytes())
    cap = synthetic.caption(scene, w.rng)
    w.row(f"{BASE_URL}/{rel}", cap, 320, 240)
    w.row(f"{BASE_URL}/{copy}", synthetic.caption(scene, w.rng), 320, 240)


def _duplicate_url(w: _Writer) -> None:
    scene = synthetic.random_scene(w.rng)
    rel = w.image_file(scene, 256, 256)
    w.row(f"{BASE_URL}/{rel}", synthetic.caption(scene, w.rng))
    w.row(f"{BASE_URL}/{rel}#again", synthetic.caption(scene, w.rng))


def _html_as_jpg(w: _Writer) -> None:
    rel = w.raw_file(f"broken/page{len(w.rows)}.jpg", b"<html><body>Not found, but 200 OK</body></html>\n")
    w.row(f"{BASE_URL}/{rel}", synthetic.caption(synthetic.random_scene(w.rng), w.rng))


def _truncated(w: _Writer) -> None:
    buf = io.BytesIO()
    synthetic.render(synthetic.random_scene(w.rng), 320, 240).save(buf, format="JPEG", quality=90)
    rel = w.raw_file(f"broken/cut{len(w.rows)}.jpg", buf.getvalue()[:600])
    w.row(f"{BASE_URL}/{rel}", synthetic.caption(synthetic.random_scene(w.rng), w.rng))


# Rows that exercise the fault web's connection, framing and size faults (pipeline/sample/web.py),
# with the download reason each must get.  They come after the shuffled rows and draw their
# captions from a random stream of their own, so the rows above keep their order and pictures.
FAULT_URLS = [
    ("{base}/reset/1000000/img/00001.jpg", "connection_reset"),  # retried, then given up
    ("{base}/truncated/1000000/img/00002.jpg", "truncated"),  # shorter than its Content-Length
    ("{base}/extra/img/00003.jpg", "extra_bytes"),  # longer than its Content-Length
    ("{base}/status/429/busy.jpg?retry_after=0", "http_429"),
    ("{base}/redirect-loop/loop.jpg", "redirect_loop"),
    ("{base}/gzip-bomb/64/bomb.png", "too_large"),  # 64 MiB once decoded
    ("{base}/png-bomb/10000/bomb.png", "decompression_bomb"),  # 100 megapixels (the image stage)
]


def fault_rows(w: _Writer, seed: int) -> None:
    rng = random.Random(seed + 1)
    for url, _ in FAULT_URLS:
        w.row(url.format(base=BASE_URL), synthetic.caption(synthetic.random_scene(rng), rng))


# (how many, what) — about 300 rows in all.
RECIPE = [
    (190, _good),
    (30, _wrong_caption),
    (8, _foreign),
    (3, _with_caption("ok")),
    (2, _with_caption(None)),
    (4, _scores(punsafe=0.93)),
    (3, _scores(pwatermark=0.97)),
    (2, _url("ftp://127.0.0.1/{n}.jpg")),
    (2, _url("file:///etc/passwd")),
    (5, _duplicate_url),
    (6, _duplicate_image),
    (8, _url("{base}/missing/{n}.jpg")),
    (3, _url("{base}/status/503/{n}.jpg")),
    (2, _url("{base}/status/403/{n}.jpg")),
    (3, _served_as("slow/5/")),
    (4, _served_as("noai/")),
    (3, _served_as("as-html/")),
    (3, _html_as_jpg),
    (2, _truncated),
    (5, _geometry(48, 40)),
    (5, _geometry(600, 90)),
]


def generate(root: Path = ASSETS, seed: int = SEED) -> Path:
    """Write the web root and ``metadata.parquet`` under ``root``; returns the parquet path."""
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    w = _Writer(root, rng)
    makers = [make for count, make in RECIPE for _ in range(count)]
    rng.shuffle(makers)
    for make in makers:
        make(w)
    fault_rows(w, seed)
    table = pa.Table.from_pylist(
        w.rows,
        schema=pa.schema(
            [
                ("URL", pa.string()),
                ("TEXT", pa.string()),
                ("WIDTH", pa.int64()),
                ("HEIGHT", pa.int64()),
                ("similarity", pa.float64()),
                ("punsafe", pa.float64()),
                ("pwatermark", pa.float64()),
            ]
        ),
    )
    out = root / "metadata.parquet"
    pq.write_table(table, out, row_group_size=64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ASSETS)
    args = ap.parse_args()
    out = generate(args.root)
    print(f"wrote {pq.ParquetFile(out).metadata.num_rows} rows to {out}")


if __name__ == "__main__":
    main()
