"""A tiny open_clip model trained on the synthetic world, for tests and local sample builds.

No pretrained CLIP weights can be downloaded in tests or offline builds, yet the CLIP stage
needs similarity scores that mean something.  This module defines a small open_clip
architecture (``TINY_MODEL_NAME``), trains it for about 90 s on 2 CPU cores on images and
captions from ``flamingo_corpus.sample.synthetic`` and caches the checkpoint, so that matched image/caption
pairs score clearly higher than wrong captions.

The checkpoint is a plain ``state_dict`` saved with ``torch.save``; it loads through the same
path as real weights::

    register_tiny_config()
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_MODEL_NAME, pretrained=str(ensure_tiny_clip()))

Training renders images at varied sizes and passes them through that validation
``preprocess``, so the model sees the same input distribution as the pipeline.

``python -m flamingo_corpus.sample.tiny_clip [--cache-dir DIR]`` builds the checkpoint and prints its metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import pathlib
import random
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from . import synthetic

TINY_MODEL_NAME = "flamingo-tiny-clip"

# open_clip model config, same format as the JSON files in open_clip/model_configs/.  The image
# tower is a small ModifiedResNet (as in RN50, so it has BatchNorm: call ``model.eval()``
# before inference); a ViT of the same cost learned colours and backgrounds but hardly
# shape or position in the time available.
TINY_MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines the trained weights besides the model config.

    All fields enter the checkpoint's file name hash, so changing any of them retrains.
    """

    steps: int = 500
    batch_size: int = 128
    train_scenes: int = 4096  # size of the fixed, pre-rendered training set
    learning_rate: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    eval_seed: int = 1_000_003  # held-out scenes for the metrics
    eval_pairs: int = 64
    image_sides: Tuple[int, int] = (48, 192)  # range of rendered widths and heights, in pixels
    log_every: int = 100


DEFAULT_SETTINGS = TrainSettings()


# --- open_clip registration and cache paths -------------------------------------------------


def default_cache_dir() -> pathlib.Path:
    """``$FLAMINGO_CORPUS_CACHE`` if set, else ``~/.cache/flamingo-corpus``."""
    env = os.environ.get("FLAMINGO_CORPUS_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "flamingo-corpus"


def register_tiny_config(cache_dir: Optional[pathlib.Path] = None) -> None:
    """Make ``TINY_MODEL_NAME`` known to open_clip (idempotent).

    open_clip only reads model configs from JSON files (named after the model), so the config
    is written to ``<cache_dir>/model_configs/<config hash>/flamingo-tiny-clip.json`` and that
    file is registered; the hash keeps processes running different versions of this module
    from overwriting each other's config.
    """
    import open_clip

    if open_clip.get_model_config(TINY_MODEL_NAME) == TINY_MODEL_CONFIG:
        return
    config_dir = pathlib.Path(cache_dir or default_cache_dir()) / "model_configs" / _short_hash(TINY_MODEL_CONFIG)
    path = config_dir / f"{TINY_MODEL_NAME}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda f: f.write(json.dumps(TINY_MODEL_CONFIG, indent=2).encode()))
    open_clip.add_model_config(path)


def settings_hash(settings: TrainSettings = DEFAULT_SETTINGS) -> str:
    """Short hash of the model config, the training settings and the synthetic world version."""
    return _short_hash(
        {
            "model": TINY_MODEL_CONFIG,
            "settings": dataclasses.asdict(settings),
            "world": synthetic.WORLD_VERSION,
        }
    )


def _short_hash(value) -> str:
    """First 12 hex digits of the SHA-256 of ``value`` as canonical JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_path(cache_dir: pathlib.Path, settings: TrainSettings = DEFAULT_SETTINGS) -> pathlib.Path:
    """Where the checkpoint for ``settings`` lives inside ``cache_dir``."""
    return pathlib.Path(cache_dir) / f"{TINY_MODEL_NAME}-{settings_hash(settings)}.pt"


def metrics_path(checkpoint: pathlib.Path) -> pathlib.Path:
    """The JSON file with the training metrics, beside ``checkpoint``."""
    return checkpoint.with_suffix(".metrics.json")


# --- building the checkpoint once -----------------------------------------------------------


def ensure_tiny_clip(
    cache_dir: Optional[pathlib.Path] = None, log: Log = print, settings: TrainSettings = DEFAULT_SETTINGS
) -> pathlib.Path:
    """Return the path of the trained checkpoint, training and saving it first if missing.

    Safe to call from several processes at once: one trains while holding a file lock, the
    others wait for the lock and then find the finished file.  Files are written atomically,
    and the metrics JSON is written before the checkpoint, so an existing checkpoint is
    always complete.
    """
    cache_dir = pathlib.Path(cache_dir or default_cache_dir())
    register_tiny_config(cache_dir)
    path = checkpoint_path(cache_dir, settings)
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(path.with_suffix(".lock")):
        if path.exists():  # another process trained it while we waited
            return path
        log(f"training {TINY_MODEL_NAME} -> {path}")
        state_dict, metrics = train_tiny_clip(settings, log)
        _atomic_write(metrics_path(path), lambda f: f.write(json.dumps(metrics, indent=2).encode()))
        _atomic_write(path, lambda f: _torch().save(state_dict, f))
    return path


@contextlib.contextmanager
def _exclusive_lock(lock_path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (blocks until it is free)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write(path: pathlib.Path, write: Callable) -> None:
    """Write ``path`` via ``write(binary_file)`` into a temp file, then rename it into place."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        tmp = pathlib.Path(f.name)
        try:
            write(f)
        except BaseException:
            f.close()
            tmp.unlink()
            raise
    os.chmod(tmp, 0o644)  # temp files are private; the cache is meant to be shared
    os.replace(tmp, path)


def _torch():
    """Import torch lazily, so importing this module stays cheap."""
    import torch

    return torch


def _free_cores() -> int:
    """CPU cores available to this process, less those other processes are using right now.

    torch's OpenMP threads spin while they wait for each other, so more threads than free
    cores is much slower than fewer: on 2 cores shared with one busy process, a training step
    with 2 threads took 5-9 times as long as with 1 thread.  "Right now" is the number of
    runnable tasks in ``/proc/loadavg`` (this process included); without it, all cores.
    """
    cores = len(os.sched_getaffinity(0))
    try:
        running = int(pathlib.Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return cores
    return max(1, min(cores, cores - (running - 1)))


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Let torch use ``n`` threads, then restore the previous setting."""
    torch = _torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- data ---------------------------------------------------------------------------------


def _images(scene_list: Sequence[synthetic.Scene], preprocess, rng: random.Random, sides: Tuple[int, int]):
    """Render each scene with width and height drawn from ``sides``; stack the preprocessed tensors."""
    torch = _torch()
    return torch.stack([preprocess(synthetic.render(s, rng.randint(*sides), rng.randint(*sides))) for s in scene_list])


def _training_set(preprocess, tokenizer, settings: TrainSettings):
    """The fixed training set: (images, tokenised captions) for ``settings.train_scenes`` scenes."""
    rng = random.Random(settings.seed)
    scene_list = [synthetic.random_scene(rng) for _ in range(settings.train_scenes)]
    captions = [synthetic.caption(s, rng) for s in scene_list]
    return _images(scene_list, preprocess, rng, settings.image_sides), tokenizer(captions)


# --- training -------------------------------------------------------------------------------


def _param_groups(model, weight_decay: float) -> List[dict]:
    """AdamW groups as in open_clip's trainer: no decay on gains, biases and the logit scale."""
    exempt = ("bn", "ln", "bias", "logit_scale")
    decays = [(p.ndim >= 2 and not any(word in n for word in exempt), p) for n, p in model.named_parameters()]
    return [
        {"params": [p for d, p in decays if not d], "weight_decay": 0.0},
        {"params": [p for d, p in decays if d], "weight_decay": weight_decay},
    ]


def _lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warmup, then cosine decay to zero at the last step."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _train_loop(model, images, texts, settings: TrainSettings, log: Log) -> float:
    """Optimise ``model`` with the CLIP contrastive loss; return the last step's loss."""
    import open_clip

    torch = _torch()
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_lr_factor, settings=settings))
    loss_fn = open_clip.loss.ClipLoss()
    generator = torch.Generator().manual_seed(settings.seed)
    batch_size = min(settings.batch_size, len(images))
    model.train()
    for step in range(1, settings.steps + 1):
        batch = torch.randperm(len(images), generator=generator)[:batch_size]
        loss = loss_fn(**model(images[batch], texts[batch]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % settings.log_every == 0 or step == settings.steps:
            log(f"step {step}/{settings.steps} loss {loss.item():.4f}")
    return loss.item()


def train_tiny_clip(settings: TrainSettings = DEFAULT_SETTINGS, log: Log = print) -> Tuple[dict, dict]:
    """Train the tiny CLIP from scratch on CPU; return ``(state_dict, metrics)``."""
    import open_clip

    torch = _torch()
    register_tiny_config()
    threads = _free_cores()
    with _torch_threads(threads):
        log(f"training on {threads} CPU thread(s)")
        start = time.monotonic()
        torch.manual_seed(settings.seed)
        model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL_NAME, output_dict=True)
        tokenizer = open_clip.get_tokenizer(TINY_MODEL_NAME)
        images, texts = _training_set(preprocess, tokenizer, settings)
        log(f"rendered {len(images)} training pairs in {time.monotonic() - start:.1f}s")
        final_loss = _train_loop(model, images, texts, settings, log)
        train_seconds = time.monotonic() - start
        metrics = evaluate(model, preprocess, tokenizer, settings.eval_seed, settings.eval_pairs, settings.image_sides)
    metrics.update(
        final_loss=round(final_loss, 4),
        train_seconds=round(train_seconds, 1),
        settings_hash=settings_hash(settings),
        settings=dataclasses.asdict(settings),
        model_config=TINY_MODEL_CONFIG,
    )
    log("metrics " + json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}))
    return model.state_dict(), metrics


# --- evaluation -----------------------------------------------------------------------------


def evaluate(
    model, preprocess, tokenizer, seed: int, pairs: int, image_sides: Tuple[int, int] = DEFAULT_SETTINGS.image_sides
) -> dict:
    """Score ``pairs`` held-out scenes drawn with ``seed`` (switches ``model`` to eval mode).

    Returns the mean (and worst-case) cosine similarity of matched image/caption pairs and of
    images with a ``synthetic.wrong_caption``, the fraction of images whose matched caption
    beats the wrong one, and image->text top-1 retrieval accuracy among the ``pairs`` captions.
    """
    torch = _torch()
    rng = random.Random(seed)
    scene_list = [synthetic.random_scene(rng) for _ in range(pairs)]
    matched = tokenizer([synthetic.caption(s, rng) for s in scene_list])
    wrong = tokenizer([synthetic.wrong_caption(s, rng) for s in scene_list])
    model.eval()
    with torch.no_grad():
        image_features = model.encode_image(_images(scene_list, preprocess, rng, image_sides), normalize=True)
        matched_features = model.encode_text(matched, normalize=True)
        wrong_features = model.encode_text(wrong, normalize=True)
    similarity = image_features @ matched_features.T
    matched_cos = similarity.diag()
    wrong_cos = (image_features * wrong_features).sum(dim=-1)
    retrieved = similarity.argmax(dim=1) == torch.arange(pairs)
    return {
        "eval_pairs": pairs,
        "matched_cosine_mean": round(matched_cos.mean().item(), 4),
        "matched_cosine_min": round(matched_cos.min().item(), 4),
        "wrong_cosine_mean": round(wrong_cos.mean().item(), 4),
        "wrong_cosine_max": round(wrong_cos.max().item(), 4),
        "matched_beats_wrong": round((matched_cos > wrong_cos).float().mean().item(), 4),
        "retrieval_top1": round(retrieved.float().mean().item(), 4),
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: build (or find) the checkpoint and print its metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=None,
        help="cache directory (default: $FLAMINGO_CORPUS_CACHE or ~/.cache/flamingo-corpus)",
    )
    args = parser.parse_args(argv)
    path = ensure_tiny_clip(args.cache_dir)
    print(path)
    print(metrics_path(path).read_text())


if __name__ == "__main__":
    main()
