"""Images/s of the CLIP stage's model path against a bare open_clip forward loop.

The stage path is ``ClipModel.embed_encoded`` (what the RunInference handler calls): JPEG bytes in,
L2-normalised float32 embeddings out.  The bare loop feeds an already-preprocessed tensor, already
on the device, to the same model at the same batch size and dtype; the ratio stage/bare is the
stage's overhead (the issue's goal: ViT-L/14 in bf16 on an H100 over 2,000 images/s through the
stage, and the stage at >= 85% of the bare loop).  Weights are random (nothing is downloaded):
speed does not depend on them.  Inputs are distinct 256x256 JPEGs (quality 95, the image stage's
defaults) of synthetic scenes with film grain, so that they carry a photo's entropy.

Lines printed per model (CUDA), all in images/s:

  bare fp32 weights + autocast   the stage's old way of running bf16
  bare bf16 weights              weights cast once (the stage's way now, open_clip pure_bf16)
  decode+preprocess only, GPU    nvJPEG + resize/crop/normalise on the GPU, no model
  decode+preprocess only, CPU    PIL on the thread pool (the old path; the CPU device's path)
  stage, GPU decode              embed_encoded as the pipeline runs it on CUDA
  stage, GPU decode, chunk N     the same with N images per forward (N = batch: no overlap)
  stage, CPU decode              embed_encoded with the old CPU decode feeding the GPU
  stage, GPU decode, autocast    the new decode with the old autocast model
  compiled ...                   with torch.compile (ClipConfig.compile), after its compile time

Every variant is tried on its own: one that fails prints FAILED and the run goes on.  Optional
variants (compile, chunk sweep) are skipped once ``--budget-s`` seconds have passed.

    python benchmarks/clip_throughput.py                       # CUDA: ViT-L-14 and ViT-B-32, batch 256
    python benchmarks/clip_throughput.py --models ViT-L-14 --batch 256 --images 2048 --compile on
    python benchmarks/clip_throughput.py --device cpu          # smoke check: small sizes

Like every benchmark it imports the installed package (``make setup``): run it with ``.venv/bin/python``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
import random
import sys
import time
import traceback

import numpy as np
import torch
from _common import cpu_model

from flamingo_corpus.clip.model import CUDA_LOWP, GPU_CHUNKS, MIN_GPU_CHUNK, load_clip, resolve_device
from flamingo_corpus.recipe import ClipConfig
from flamingo_corpus.sample import synthetic

START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def say(line: str = "") -> None:
    print(line, flush=True)


def jpegs(n: int, side: int = 256, grain: float = 6.0, quality: int = 95):
    """n distinct JPEGs: each a different random scene, with one of 16 grain fields (drawing a
    fresh field per image would cost more than the rest of the run's set-up)."""
    from PIL import Image

    rng = random.Random(0)
    fields = [np.random.default_rng(k).normal(0, grain, (side, side, 3)).astype(np.float32) for k in range(16)]
    out = []
    for i in range(n):
        image = synthetic.render(synthetic.random_scene(rng), side, side)
        if grain:
            grainy = np.asarray(image, dtype=np.float32) + fields[i % len(fields)]
            image = Image.fromarray(np.clip(grainy, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(fn, images_per_call: int, device: str, calls: int, warmup: int = 1) -> float:
    """images/s of ``calls`` calls of fn after ``warmup`` untimed ones, the device drained around."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return images_per_call * calls / (time.perf_counter() - start)


def min_cosine(a, b, batch) -> str:
    """Agreement of two ways of embedding one batch (same weights): a sanity check, not a speed."""
    return f"{float((a.embed_encoded(batch) * b.embed_encoded(batch)).sum(1).min()):.5f} (min cosine)"


class Runner:
    """Runs named variants, prints each figure as it comes, survives failures."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.results = {}

    def run(self, model: str, label: str, fn, optional: bool = False, need_s: float = 0.0):
        if optional and elapsed() + need_s > self.budget_s:
            say(f"  {label:<44} skipped (time budget {self.budget_s:.0f} s; {elapsed():.0f} s used)")
            return None
        try:
            value = fn()
        except Exception as e:  # a failing variant is reported, the others still run
            say(f"  {label:<44} FAILED {type(e).__name__}: {str(e)[:300]}")
            say("    " + " | ".join(line.strip() for line in traceback.format_exc().strip().splitlines()[-4:]))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None
        self.results[(model, label)] = value
        if isinstance(value, float):
            say(f"  {label:<44} {value:10,.0f} images/s   [{elapsed():.0f} s]")
        else:
            say(f"  {label:<44} {value}   [{elapsed():.0f} s]")
        return value

    def get(self, model, label):
        return self.results.get((model, label))


def bench_model(name: str, args, data, runner: Runner, keep: bool):
    """Every variant but compile; returns the stage model and a timing helper when ``keep``."""
    device = resolve_device(args.device)
    on_cuda = device.startswith("cuda")
    cfg = ClipConfig(model=name, pretrained=None, device=args.device, precision=args.precision)
    batches = [data[i : i + args.batch] for i in range(0, len(data) - args.batch + 1, args.batch)]
    n = len(batches) * args.batch
    t0 = time.perf_counter()
    stage = load_clip(cfg)  # the stage's own loading: CUDA_LOWP weights, GPU decode where possible
    say(
        f"\n{name}: device {device}, precision {stage.precision}, weights {stage.input_dtype}, "
        f"autocast {stage.autocast_dtype}, GPU decode {stage.gpu_decode}, batch {args.batch}, "
        f"{len(batches)} batches of distinct images (loaded in {time.perf_counter() - t0:.1f} s)"
    )
    amp = None
    if on_cuda and stage.precision in ("bf16", "fp16") and CUDA_LOWP != "autocast":
        try:
            amp = load_clip(cfg, lowp="autocast")
        except Exception as e:
            say(f"  loading fp32 weights for autocast FAILED {type(e).__name__}: {str(e)[:300]}")

    def bare(m):
        pixels = m.pixels_from_bytes(batches[0]).to(m.device).to(m.input_dtype)

        def call():
            with torch.inference_mode(), m._autocast():
                m.image_forward(pixels)

        return rate(call, args.batch, device, calls=args.bare_calls, warmup=2)

    def stage_pass(m, chunk=None):
        def call():
            for b in batches:
                m.embed_encoded(b, chunk)

        m.embed_encoded(batches[0], chunk)  # warm-up (kernels, allocator, nvJPEG state)
        return rate(call, n, device, calls=1, warmup=0)

    cpu_decode = dataclasses.replace(stage, gpu_decode=False) if stage.gpu_decode else stage

    if amp is not None:
        runner.run(name, "bare fp32 weights + autocast", lambda: bare(amp))
    runner.run(name, f"bare {stage.input_dtype} weights".replace("torch.", ""), lambda: bare(stage))
    runner.run(
        name,
        "decode+preprocess only, GPU" if on_cuda else "decode+preprocess only, torch path",
        lambda: rate(lambda: [stage.pixels_on_device(b) for b in batches], n, device, calls=1),
    )
    runner.run(
        name,
        "decode+preprocess only, CPU (PIL, pool)",
        lambda: rate(lambda: [stage.pixels_from_bytes(b) for b in batches], n, device, calls=1),
    )
    label_stage = "stage, GPU decode" if stage.gpu_decode else "stage (CPU decode)"
    runner.run(name, label_stage, lambda: stage_pass(stage))
    if stage.gpu_decode:
        for chunk in args.chunks:
            if chunk <= args.batch:
                runner.run(
                    name, f"stage, GPU decode, chunk {chunk}", lambda c=chunk: stage_pass(stage, c), optional=True
                )
        runner.run(name, "stage, CPU decode", lambda: stage_pass(cpu_decode))
        if amp is not None:
            runner.run(name, "stage, GPU decode, autocast", lambda: stage_pass(amp))
        runner.run(name, "min cosine GPU-decode vs CPU-decode", lambda: min_cosine(stage, cpu_decode, batches[0]))
    if amp is not None:
        runner.run(name, "min cosine bf16 weights vs autocast", lambda: min_cosine(stage, amp, batches[0]))

    amp = cpu_decode = None  # free the fp32 copy before the next model
    if on_cuda:
        torch.cuda.empty_cache()
    if not keep:
        return None

    def compile_phase():
        """torch.compile'd forward (ClipConfig.compile): compile time, then bare and stage."""
        say(f"\n{name}, torch.compile (default mode, batch dimension dynamic):")
        compiled = dataclasses.replace(stage, compile=True)

        def compile_time():
            pixels = compiled.pixels_on_device(batches[0])
            t = time.perf_counter()
            with torch.inference_mode(), compiled._autocast():
                compiled.image_forward(pixels)
            sync(device)
            return f"{time.perf_counter() - t:.1f} s"

        if (
            runner.run(name, "compile time (first call)", compile_time, optional=True, need_s=args.compile_need_s)
            is not None
        ):
            runner.run(name, "compiled bare", lambda: bare(compiled))
            runner.run(name, "compiled stage, GPU decode", lambda: stage_pass(compiled))

    return compile_phase


def summary(models, runner: Runner, args) -> None:
    say("\nSummary (images/s; ratio = stage / bare with the same weights and batch)")
    cols = [
        "bare fp32 weights + autocast",
        "bare bfloat16 weights",
        "stage, CPU decode",
        "stage, GPU decode",
        "compiled bare",
        "compiled stage, GPU decode",
    ]
    heads = [
        "bare amp",
        "bare lowp",
        "stage cpu-dec",
        "stage gpu-dec",
        "ratio",
        "bare compiled",
        "stage compiled",
        "ratio",
    ]
    say("  " + f"{'model':<10}" + "".join(f"{h:>15}" for h in heads))

    def cell(v):
        return f"{v:>15,.0f}" if isinstance(v, float) else f"{'-':>15}"

    for m in models:
        v = [runner.get(m, c) for c in cols]
        if v[1] is None:  # not CUDA/bf16: the weights' dtype names the bare line
            v[1] = next(
                (
                    val
                    for (mm, label), val in runner.results.items()
                    if mm == m and label.startswith("bare ") and "autocast" not in label
                ),
                None,
            )
        if v[3] is None:
            v[3] = runner.get(m, "stage (CPU decode)")
        ratio = f"{v[3] / v[1]:>15.2f}" if v[1] and v[3] else f"{'-':>15}"
        cratio = f"{v[5] / v[4]:>15.2f}" if v[4] and v[5] else f"{'-':>15}"
        say(
            "  "
            + f"{m:<10}"
            + cell(v[0])
            + cell(v[1])
            + cell(v[2])
            + cell(v[3])
            + ratio
            + cell(v[4])
            + cell(v[5])
            + cratio
        )
    goal = "ViT-L-14"
    if goal in models and torch.cuda.is_available():
        stage = runner.get(goal, "stage, GPU decode")
        bare = runner.get(goal, "bare bfloat16 weights")
        cstage, cbare = runner.get(goal, "compiled stage, GPU decode"), runner.get(goal, "compiled bare")
        say(f"\nGoal ({goal}, batch {args.batch}): stage > 2,000 images/s and stage >= 0.85 x bare")
        for label, s, b in (("without compile", stage, bare), ("with compile", cstage, cbare)):
            if s and b:
                say(
                    f"  {label:<16} stage {s:,.0f}/s: {'PASS' if s > 2000 else 'FAIL'};  "
                    f"stage/bare {s / b:.2f}: {'PASS' if s >= 0.85 * b else 'FAIL'}"
                )
            else:
                say(f"  {label:<16} not measured")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument(
        "--models", default=None, help="comma-separated (default: ViT-L-14,ViT-B-32 on CUDA, ViT-B-32 on CPU)"
    )
    ap.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 8 on CPU")
    ap.add_argument("--images", type=int, default=None, help="distinct images (default 8 batches on CUDA, 2 on CPU)")
    ap.add_argument("--chunks", default="64,128,256", help="GPU-decode chunk sizes to sweep (first model)")
    ap.add_argument(
        "--compile", choices=("auto", "on", "off"), default="auto", help="auto: the first model only, on CUDA"
    )
    ap.add_argument("--budget-s", type=float, default=200.0, help="skip optional variants after this")
    ap.add_argument(
        "--compile-need-s", type=float, default=100.0, help="start a compile only with this much of the budget left"
    )
    ap.add_argument("--bare-calls", type=int, default=None, help="timed bare forward calls (default 8 CUDA, 2 CPU)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    on_cuda = device.startswith("cuda")
    models = (args.models or ("ViT-L-14,ViT-B-32" if on_cuda else "ViT-B-32")).split(",")
    args.batch = args.batch or (256 if on_cuda else 8)
    args.images = max(args.images or (8 if on_cuda else 2) * args.batch, args.batch)
    args.bare_calls = args.bare_calls or (8 if on_cuda else 2)
    args.chunks = [int(c) for c in args.chunks.split(",") if c]

    import open_clip
    import torchvision

    gpu = torch.cuda.get_device_name(0) if on_cuda else "no GPU"
    say(
        f"CLIP stage throughput: {gpu}; {cpu_model()}, {os.cpu_count()} cores; "
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"torchvision {torchvision.__version__}, open_clip {open_clip.__version__}"
    )
    t = time.perf_counter()
    data = jpegs(args.images)
    say(
        f"{len(data)} distinct 256x256 JPEGs, mean {np.mean([len(d) for d in data]) / 1024:.1f} KiB "
        f"(made in {time.perf_counter() - t:.1f} s); models {', '.join(models)}; budget {args.budget_s:.0f} s"
    )
    say(
        f"stage defaults: CUDA_LOWP={CUDA_LOWP!r} (bf16 weights, no autocast), GPU chunks: "
        f"max({MIN_GPU_CHUNK}, batch/{GPU_CHUNKS}) images per forward, decode of the next chunk overlapped"
    )
    runner = Runner(args.budget_s)
    compile_later = []  # compiles last, so a slow compile cannot cost the other figures
    for i, name in enumerate(models):
        wants_compile = on_cuda and (args.compile == "on" or (args.compile == "auto" and i == 0))
        try:
            phase = bench_model(name, args, data, runner, keep=wants_compile)
        except Exception as e:  # loading failed: report and go on with the next model
            say(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc(limit=3, file=sys.stdout)
            continue
        if phase is not None:
            compile_later.append(phase)
    for phase in compile_later:
        try:
            phase()
        except Exception as e:
            say(f"compile phase FAILED {type(e).__name__}: {str(e)[:300]}")
    summary(models, runner, args)
    say(f"\ndone in {elapsed():.0f} s")


if __name__ == "__main__":
    main()
