"""Images/s of the CLIP stage's model path against a bare open_clip forward loop.

The stage path (``ClipModel.embed_encoded``, what the RunInference handler calls) decodes JPEG
bytes and preprocesses them on its thread pool while the model runs on the chunks already ready; the bare loop feeds an already-preprocessed tensor to
``model.encode_image`` at the same batch size and dtype.  The ratio is the stage's overhead.
Weights are random (nothing is downloaded): speed does not depend on them.

    python benchmarks/clip_throughput.py --model ViT-L-14 --batch 256 --images 4096
"""
from __future__ import annotations

import argparse
import io
import random
import time

import torch

from pipeline import synthetic
from pipeline.clip_model import load_clip
from pipeline.recipe import ClipConfig


def jpegs(n: int, side: int = 256):
    rng = random.Random(0)
    distinct = []
    for _ in range(min(n, 64)):
        buf = io.BytesIO()
        synthetic.render(synthetic.random_scene(rng), side, side).save(buf, format="JPEG", quality=90)
        distinct.append(buf.getvalue())
    return [distinct[i % len(distinct)] for i in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()

    m = load_clip(ClipConfig(model=args.model, pretrained=None, device=args.device, precision=args.precision))
    data = jpegs(args.images)
    batches = [data[i:i + args.batch] for i in range(0, len(data), args.batch)]
    pixels = m.pixels_from_bytes(batches[0]).to(m.device)
    repeats = len(batches)

    def bare():
        with torch.inference_mode(), m._autocast():
            m.model.encode_image(pixels)

    def stage():
        for b in batches:
            m.embed_encoded(b)

    bare_s = timed(bare, m.device, repeats) * repeats
    stage_s = timed(stage, m.device, 1)
    name = torch.cuda.get_device_name(0) if m.device.startswith("cuda") else "CPU"
    n = len(batches) * args.batch
    print(f"{args.model} on {name} ({m.device}, {m.precision}), batch {args.batch}, "
          f"{m.threads} preprocessing threads, torch {torch.__version__}")
    print(f"  bare open_clip encode_image: {n / bare_s:9.1f} images/s")
    print(f"  stage (decode+preprocess+embed): {n / stage_s:9.1f} images/s "
          f"({100 * (stage_s / bare_s - 1):.0f}% over the bare model)")


if __name__ == "__main__":
    main()
