"""Where an image's CPU goes, ours and img2dataset's, on the steady-state benchmark's photographs.

The steady state of ``steady_state.py`` is bound by the CPU a row costs (both tools keep the
cores busy), and most of a row's CPU is the image: this prints, per image and single-threaded,
the parts of our image stage (``process_image``: the JPEG decode with its draft, the pHash with
its copy variants and check hashes, the resize and the JPEG encode) beside img2dataset's
``Resizer`` (OpenCV's full decode, area resize and encode) and the two decoders on their own, so
that a steady-state figure can be read against what the image alone allows.

The photographs are ``photos.web_photos`` (the ones ``steady_state.py`` serves: crops of package
photographs, short side ~250-1,150 px, JPEG of several kinds and some PNG), made once under
``--workdir``.  CPU: process time, ``--repeat`` passes over all photographs, the parts alternating
within each pass (their order rotated from pass to pass) after an untimed warm-up pass, median of
the passes.  The resize and encode are timed on pictures decoded beforehand, the hashes likewise.

    .venv/bin/python benchmarks/image_stage.py [--photos 400] [--repeat 3] [--workdir DIR]
        [--recipe sample-laion.yaml]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from _common import REPO, load, machine  # noqa: E402
from image_quality import Case, cpu_per_image, img2dataset_resizer  # noqa: E402
from photos import web_photos  # noqa: E402
from PIL import Image  # noqa: E402

from flamingo_corpus.images import perceptual, process  # noqa: E402
from flamingo_corpus.recipe import ImageConfig, load_recipe  # noqa: E402

Decoded = Dict[bytes, Tuple[Image.Image, int, int]]


def parts(photos: List[bytes], cfg: ImageConfig) -> Tuple[Dict[str, Callable[[bytes], object]], Decoded]:
    """The timed calls by label (the hashes, resize and encode work on pictures decoded here) and
    what our stage decodes of each photograph it keeps (picture, original upright width and
    height; the others are left out of every timing)."""
    import cv2  # img2dataset's decoder (opencv-python-headless, an img2dataset dependency)

    cv2.setNumThreads(1)
    decoded: Decoded = {}
    for data in photos:
        try:
            decoded[data] = process.decode(data, cfg)
        except process.ImageRejected:
            pass
    resized = {data: process.resize(img, (w, h), cfg) for data, (img, w, h) in decoded.items()}

    def pil_full_decode(data: bytes) -> object:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img

    def opencv_decode(data: bytes) -> object:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)

    return {
        "ours: the whole stage (process_image)": lambda data: process.process_image(data, cfg),
        "  decode (draft to 2x, RGB, EXIF turn)": lambda data: process.decode(data, cfg),
        "  pHash, its variants and check hashes": lambda data: perceptual.hashes_with_checks(decoded[data][0]),
        "  resize": lambda data: process.resize(decoded[data][0], decoded[data][1:], cfg),
        "  encode": lambda data: process.encode(resized[data], cfg),
        "img2dataset: Resizer (whole)": img2dataset_resizer(cfg),
        "  OpenCV imdecode (its decode)": opencv_decode,
        "Pillow full decode (no draft)": pil_full_decode,
    }, decoded


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", help="keep the photographs here and reuse them (steady_state.py's --workdir)")
    ap.add_argument("--recipe", default="sample-laion.yaml")
    args = ap.parse_args(argv)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fc-image-stage-"))
    photos = [(root / path).read_bytes() for path in web_photos(root, args.photos)]
    cfg = load_recipe(REPO / "manifests" / args.recipe).image
    calls, decoded = parts(photos, cfg)
    kept = [data for data in photos if data in decoded]
    sides = sorted(min(w, h) for _, w, h in decoded.values())
    drafted = sum(img.width * img.height < w * h for img, w, h in decoded.values())
    print(f"machine: {machine()}; {load()}")
    print(
        f"{args.recipe}: resize {cfg.resize_mode} {cfg.image_size}, {cfg.encode_format} q{cfg.encode_quality}, "
        f"draft to {process.DRAFT_OVERSAMPLE:g}x, {process.SHRINK_FILTER.name.lower()} shrink, "
        f"reducing_gap {process.REDUCING_GAP}; {len(kept)} of {len(photos)} photographs decoded (short side "
        f"p10 {sides[len(sides) // 10]}, median {sides[len(sides) // 2]}, p90 {sides[9 * len(sides) // 10]} px; "
        f"{drafted} decoded by the draft at 1/2 or less)"
    )
    cases = [Case(str(i), "web", data, 1) for i, data in enumerate(kept)]
    times = cpu_per_image(calls, cases, args.repeat)
    for label in calls:
        per_pass = times[label].mean(axis=1) * 1000
        print(f"  {label:<42} {np.median(per_pass):6.2f} ms/image (passes {', '.join(f'{x:.2f}' for x in per_pass)})")
    print(f"  {load()}")


if __name__ == "__main__":
    main()
