"""Output quality of the image stage against img2dataset's, on real photographs, and its CPU cost.

Real photographs shipped inside installed packages (scikit-image's ``skimage.data`` and
matplotlib's sample data, as ``copy_detection.photographs`` loads them: nothing is fetched) are
cut into ``--cases`` crops of varied sizes (``--min-crop`` to all of each side, at native
resolution: no photo is enlarged) and encoded in turn as baseline JPEG (quality 75, 90, 95 with
4:4:4 chroma), progressive JPEG, greyscale JPEG, EXIF-rotated JPEG (orientation 6 or 8: the
pixels stored sideways) and PNG.

Each is processed by our image stage (``process_image``) in several settings of the JPEG draft
(``process.DRAFT_OVERSAMPLE``: the draft decode stops at that many times the target size) and
the shrinking filter (``process.SHRINK_FILTER``), and by img2dataset's own ``Resizer``
configured from the same recipe as ``benchmarks/throughput.py`` configures img2dataset (size,
resize mode, resize_only_if_bigger, format, quality, min side, max aspect ratio).  The reference
is a full decode, the EXIF transpose, and Pillow's Lanczos resize to the same geometry (the
convolution over the whole source, no draft, no box reduction), cropped or padded as the resize
mode says.  PSNR is over the picture only (a border's white padding is left out) of the decoded
output (re-encoding included) against the reference.

img2dataset does not apply the EXIF orientation: it writes such photos sideways, ours are
upright.  Its sideways output is compared with the reference made in the stored orientation (not
penalised for being sideways), and the EXIF-rotated photos are also reported on their own line.

CPU: seconds of process time per image for the whole stage call (decode, pHash and its
variants, resize, encode; img2dataset: its Resizer call), ``--repeat`` passes over all the
images, the settings alternating within each pass, median of the passes.

    .venv/bin/python benchmarks/image_quality.py [--recipes sample-laion.yaml laion2b-en.yaml]
        [--cases 140] [--repeat 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from _common import REPO, load, machine  # noqa: E402
from copy_detection import EVAL_PHOTOS  # noqa: E402
from copy_detection import photographs as _rgb_photographs  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from flamingo_corpus.images import process  # noqa: E402
from flamingo_corpus.recipe import ImageConfig, load_recipe  # noqa: E402

# Photographs of scenes, people, objects, sky, microscopy and textures (the textures are the
# hardest case for a drafted decode: detail near the output's Nyquist frequency).
PHOTOS = EVAL_PHOTOS + ("grass", "gravel", "brick")
GREY_PHOTOS = ("camera", "coins", "moon", "cell", "grass", "gravel", "brick")  # stored as 8-bit grey
KINDS = ("jpeg q90", "jpeg q75", "jpeg q95 4:4:4", "progressive", "greyscale", "exif-rotated", "png")

# (label, DRAFT_OVERSAMPLE, SHRINK_FILTER, REDUCING_GAP) of our stage; the first is the code
# before this benchmark.  ``--settings`` picks some by label prefix.
Setting = Tuple[str, float, Image.Resampling, Optional[float]]
SETTINGS: Tuple[Setting, ...] = (
    ("draft 1x, box (before)", 1, Image.Resampling.BOX, None),
    ("draft 1x, Lanczos", 1, Image.Resampling.LANCZOS, None),
    ("draft 2x, box", 2, Image.Resampling.BOX, None),
    ("draft 2x, bilinear", 2, Image.Resampling.BILINEAR, None),
    ("draft 2x, bicubic", 2, Image.Resampling.BICUBIC, None),
    ("draft 2x, Lanczos", 2, Image.Resampling.LANCZOS, None),
    ("no draft, Lanczos", 10**6, Image.Resampling.LANCZOS, None),
    ("draft 1.5x, bicubic", 1.5, Image.Resampling.BICUBIC, None),
    ("draft 1.25x, bicubic", 1.25, Image.Resampling.BICUBIC, None),
    ("draft 2x, bicubic, gap 1.5 (now)", 2, Image.Resampling.BICUBIC, 1.5),
    ("draft 1.5x, bicubic, gap 1.5", 1.5, Image.Resampling.BICUBIC, 1.5),
    ("draft 1.5x, Lanczos", 1.5, Image.Resampling.LANCZOS, None),
)
THEIRS = "img2dataset 1.47 Resizer"


@dataclasses.dataclass
class Case:
    name: str  # photo and crop
    kind: str
    data: bytes
    orientation: int  # EXIF orientation (1: none)


def photographs() -> Dict[str, Image.Image]:
    """The photos, the grey ones as "L" (so their JPEGs are greyscale as a camera writes them)."""
    photos = _rgb_photographs()
    return {name: photos[name].convert("L") if name in GREY_PHOTOS else photos[name] for name in PHOTOS}


def _save(img: Image.Image, kind: str, rng) -> Tuple[bytes, int]:
    buf = io.BytesIO()
    orientation = 1
    if kind == "png":
        img.save(buf, "PNG", compress_level=1)
    elif kind == "exif-rotated":
        # stored sideways with the tag that turns it upright: orientation 6 means "rotate 90
        # degrees clockwise to display", so the stored pixels are the upright ones turned 90 anticlockwise
        orientation = int(rng.choice([6, 8]))
        stored = img.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    else:
        options = {
            "jpeg q90": dict(quality=90),
            "jpeg q75": dict(quality=75),
            "jpeg q95 4:4:4": dict(quality=95, subsampling=0),
            "progressive": dict(quality=90, progressive=True),
            "greyscale": dict(quality=90),
        }[kind]
        (img.convert("L") if kind == "greyscale" else img).save(buf, "JPEG", **options)
    return buf.getvalue(), orientation


def make_cases(n: int, min_crop: float, seed: int) -> List[Case]:
    """``n`` crops, the photos and kinds in turn, each side ``min_crop`` to 1 of the photo's."""
    rng = np.random.default_rng(seed)
    photos = photographs()
    cases = []
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        kind = KINDS[(i // len(PHOTOS) + i) % len(KINDS)]
        photo = photos[name]
        w = int(photo.width * rng.uniform(min_crop, 1.0))
        h = int(photo.height * rng.uniform(min_crop, 1.0))
        x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        data, orientation = _save(photo.crop((x, y, x + w, y + h)), kind, rng)
        cases.append(Case(f"{name} {w}x{h}+{x}+{y}", kind, data, orientation))
    return cases


# --- the reference and the comparison ---------------------------------------------------------


def _content_box(size: Tuple[int, int], cfg: ImageConfig) -> Tuple[int, int, int, int]:
    """Where the scaled picture (``size``, from ``target_size``) lies in the output: the whole
    output but for a border's white padding (img2dataset's PadIfNeeded: (n - side) // 2 first)."""
    w, h = size
    if cfg.resize_mode == "center_crop":
        w, h = min(w, cfg.image_size), min(h, cfg.image_size)
        return 0, 0, w, h
    if cfg.resize_mode == "border":
        left, top = max(0, (cfg.image_size - w) // 2), max(0, (cfg.image_size - h) // 2)
        return left, top, left + w, top + h
    return 0, 0, w, h


def reference(data: bytes, cfg: ImageConfig, upright: bool = True) -> np.ndarray:
    """The picture part of the output as it should be: full decode (no draft), the EXIF transpose
    when ``upright``, RGB, Lanczos over the whole source to ``target_size``, the centre crop."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if upright:
        img = ImageOps.exif_transpose(img)
    img = process._to_rgb(img)
    size = process.target_size(*img.size, cfg)
    scaled = img.resize(size, Image.Resampling.LANCZOS) if size != img.size else img
    if cfg.resize_mode == "center_crop":
        w, h = min(size[0], cfg.image_size), min(size[1], cfg.image_size)
        left, top = (size[0] - w) // 2, (size[1] - h) // 2
        scaled = scaled.crop((left, top, left + w, top + h))
    return np.asarray(scaled, dtype=np.float64)


def picture(output: bytes, size: Tuple[int, int], cfg: ImageConfig) -> np.ndarray:
    """The picture part of an encoded output, RGB."""
    img = Image.open(io.BytesIO(output)).convert("RGB")
    return np.asarray(img.crop(_content_box(size, cfg)), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# --- the tools --------------------------------------------------------------------------------


def ours(setting: Setting, cfg: ImageConfig) -> Callable[[bytes], bytes]:
    _, oversample, shrink, gap = setting

    def run(data: bytes) -> bytes:
        process.DRAFT_OVERSAMPLE, process.SHRINK_FILTER, process.REDUCING_GAP = oversample, shrink, gap
        return process.process_image(data, cfg).data

    return run


def img2dataset_resizer(cfg: ImageConfig) -> Callable[[bytes], bytes]:
    """img2dataset's Resizer with the arguments benchmarks/throughput.py gives its ``download``."""
    from img2dataset.resizer import Resizer

    resizer = Resizer(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_format=cfg.encode_format,
        encode_quality=cfg.encode_quality,
        min_image_size=cfg.min_side,
        max_aspect_ratio=cfg.max_aspect_ratio or math.inf,
    )

    def run(data: bytes) -> bytes:
        out, *_, err = resizer(io.BytesIO(data))
        if err:
            raise RuntimeError(err)
        return out

    return run


def scores(run: Callable[[bytes], bytes], cases: List[Case], cfg: ImageConfig, upright: bool) -> List[float]:
    """PSNR of each case's output; ``upright`` False: against the reference in the stored
    orientation (img2dataset, which ignores EXIF)."""
    out = []
    for case in cases:
        expected = reference(case.data, cfg, upright=upright)
        size = process.target_size(*(_upright_size(case.data) if upright else _stored_size(case.data)), cfg)
        out.append(psnr(picture(run(case.data), size, cfg), expected))
    return out


def _stored_size(data: bytes) -> Tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def _upright_size(data: bytes) -> Tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)


def cpu_per_image(runs: Dict[str, Callable[[bytes], bytes]], cases: List[Case], repeat: int) -> Dict[str, np.ndarray]:
    """Process seconds of each tool on each case (``repeat`` x cases), the tools alternating within
    each pass (the order rotated from pass to pass), after one untimed pass of each (warm-up)."""
    names = list(runs)
    for name in names:
        for case in cases:
            runs[name](case.data)
    times = {name: np.zeros((repeat, len(cases))) for name in names}
    for rep in range(repeat):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            run = runs[name]
            for i, case in enumerate(cases):
                start = time.process_time()
                run(case.data)
                times[name][rep, i] = time.process_time() - start
    return times


def p10(values) -> float:
    return float(np.percentile(values, 10))


def _med(values) -> float:
    return float(np.median(values)) if len(values) else math.nan


def report(recipe_name: str, cases: List[Case], repeat: int, settings: Sequence[Setting] = SETTINGS) -> None:
    cfg = load_recipe(REPO / "manifests" / recipe_name).image
    runs: Dict[str, Callable[[bytes], bytes]] = {s[0]: ours(s, cfg) for s in settings}
    runs[THEIRS] = img2dataset_resizer(cfg)
    rotated = [c for c in cases if c.orientation != 1]
    upright = [c for c in cases if c.orientation == 1]
    print(
        f"\n{recipe_name}: resize {cfg.resize_mode} {cfg.image_size}, {cfg.encode_format} q{cfg.encode_quality}; "
        f"{len(cases)} photos ({len(rotated)} EXIF-rotated); {load()}",
        flush=True,
    )
    cpu = cpu_per_image(runs, cases, repeat)
    side = max if cfg.resize_mode in ("border", "keep_ratio_largest") else min  # the side scaled to image_size
    large = np.array([side(_upright_size(c.data)) >= 2 * cfg.image_size for c in cases])
    print(
        f"  {'setting':<26} {'PSNR median':>11} {'p10':>6} {'min':>6} | {'upright only: med':>17} {'p10':>6} | "
        f"{'EXIF-rotated: med':>17} {'p10':>6} | {'large: med':>10} {'p10':>6} | CPU ms/image, median of {repeat} "
        f"passes (min-max): all | large"
    )
    for name, run in runs.items():
        is_theirs = name == THEIRS
        # cases in order: scores of the upright ones and of the rotated ones put back in case order
        by_case = dict(zip([id(c) for c in upright], scores(run, upright, cfg, True)))
        by_case.update(zip([id(c) for c in rotated], scores(run, rotated, cfg, not is_theirs)))
        every = np.array([by_case[id(c)] for c in cases])
        up = every[[c.orientation == 1 for c in cases]]
        rot = every[[c.orientation != 1 for c in cases]]
        big = every[large]
        ms_all = np.sort(cpu[name].mean(axis=1) * 1000)
        ms_big = np.sort(cpu[name][:, large].mean(axis=1) * 1000) if large.any() else np.array([math.nan])
        print(
            f"  {name:<26} {np.median(every):>11.2f} {p10(every):>6.2f} {every.min():>6.2f} | "
            f"{np.median(up):>17.2f} {p10(up):>6.2f} | {_med(rot):>17.2f} {p10(rot) if len(rot) else math.nan:>6.2f} | "
            f"{_med(big):>10.2f} {p10(big) if len(big) else math.nan:>6.2f} | "
            f"{np.median(ms_all):.2f} ({ms_all[0]:.2f}-{ms_all[-1]:.2f}) | "
            f"{np.median(ms_big):.2f} ({ms_big[0]:.2f}-{ms_big[-1]:.2f})",
            flush=True,
        )
    print(f"  large: the {int(large.sum())} photos whose {side.__name__} side is at least twice image_size")
    print("  (img2dataset's EXIF-rotated outputs are sideways: scored against the reference in the stored orientation)")


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["sample-laion.yaml", "laion2b-en.yaml"])
    ap.add_argument("--cases", type=int, default=140)
    ap.add_argument("--min-crop", type=float, default=0.5, help="smallest crop side, as a fraction of the photo's")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", nargs="+", help="run only the settings whose label starts with one of these")
    args = ap.parse_args(argv)
    chosen = [s for s in SETTINGS if not args.settings or any(s[0].startswith(p) for p in args.settings)]
    if not chosen:
        ap.error(f"no setting starts with {' or '.join(args.settings)}: {', '.join(s[0] for s in SETTINGS)}")
    print(f"machine: {machine()}; {load()}")
    cases = make_cases(args.cases, args.min_crop, args.seed)
    sides = sorted(min(_upright_size(c.data)) for c in cases)
    kb = sorted(len(c.data) / 1000 for c in cases)
    print(
        f"{len(cases)} photos from {len(PHOTOS)} pictures: short side {sides[0]}-{sides[-1]} px (median "
        f"{sides[len(sides) // 2]}), {statistics.mean(kb):.0f} kB mean; kinds: "
        + ", ".join(f"{k} {sum(c.kind == k for c in cases)}" for k in KINDS)
    )
    for recipe_name in args.recipes:
        report(recipe_name, cases, args.repeat, chosen)


if __name__ == "__main__":
    main()
