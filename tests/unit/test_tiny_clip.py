"""The tiny CLIP: it loads through open_clip, its scores separate right from wrong captions, and
the checkpoint is built once, even with concurrent callers."""

from __future__ import annotations

import json
import multiprocessing
import queue
import random

import pytest

from flamingo_corpus.sample import synthetic, tiny_clip

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

HELD_OUT_SEED = 20_240_611  # neither the training seed nor the metrics' eval seed
# Enough to exercise locking and saving in a couple of seconds; not a useful model.
QUICK_SETTINGS = tiny_clip.TrainSettings(
    steps=2, batch_size=8, train_scenes=16, eval_pairs=8, warmup_steps=1, log_every=1
)


@pytest.fixture(scope="module")
def loaded(tiny_clip_checkpoint):
    """(model, val preprocess, tokenizer), loaded the way the pipeline loads it."""
    tiny_clip.register_tiny_config()
    model, _, preprocess = open_clip.create_model_and_transforms(
        tiny_clip.TINY_MODEL_NAME, pretrained=str(tiny_clip_checkpoint)
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(tiny_clip.TINY_MODEL_NAME)


def _held_out(n: int):
    """``n`` unseen scenes rendered at assorted sizes, with their captions and wrong captions."""
    rng = random.Random(HELD_OUT_SEED)
    scene_list = list(synthetic.scenes(HELD_OUT_SEED, n))
    images = [synthetic.render(s, rng.randint(64, 320), rng.randint(64, 320)) for s in scene_list]
    return (
        images,
        [synthetic.caption(s, rng) for s in scene_list],
        [synthetic.wrong_caption(s, rng) for s in scene_list],
    )


def _embed(loaded, images, *caption_lists):
    """L2-normalised image features and one text feature matrix per caption list."""
    model, preprocess, tokenizer = loaded
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
        return (image_features, *(model.encode_text(tokenizer(c), normalize=True) for c in caption_lists))


def test_checkpoint_loads_through_open_clip(loaded, tiny_clip_checkpoint):
    model = loaded[0]
    saved = torch.load(tiny_clip_checkpoint, map_location="cpu", weights_only=True)
    assert set(saved) == set(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_metrics_are_stored_beside_the_checkpoint(tiny_clip_checkpoint):
    metrics = json.loads(tiny_clip.metrics_path(tiny_clip_checkpoint).read_text())
    assert metrics["settings_hash"] in tiny_clip_checkpoint.name
    assert metrics["matched_cosine_mean"] > metrics["wrong_cosine_mean"]
    assert 0 <= metrics["retrieval_top1"] <= 1


def test_matched_caption_beats_wrong_caption(loaded):
    images, captions, wrong = _held_out(128)
    image_features, matched_features, wrong_features = _embed(loaded, images, captions, wrong)
    matched = (image_features * matched_features).sum(-1)
    mismatched = (image_features * wrong_features).sum(-1)
    assert (matched > mismatched).float().mean().item() >= 0.9
    assert matched.mean().item() > mismatched.mean().item() + 0.3


def test_image_to_text_retrieval_is_well_above_chance(loaded):
    pairs = 64
    images, captions, _ = _held_out(pairs)
    image_features, text_features = _embed(loaded, images, captions)
    top1 = (image_features @ text_features.T).argmax(dim=1) == torch.arange(pairs)
    assert top1.float().mean().item() >= 0.5  # chance is 1/64


def test_second_call_reuses_the_checkpoint(tiny_clip_checkpoint):
    mtime = tiny_clip_checkpoint.stat().st_mtime_ns
    messages = []
    assert tiny_clip.ensure_tiny_clip(log=messages.append) == tiny_clip_checkpoint
    assert tiny_clip_checkpoint.stat().st_mtime_ns == mtime
    assert messages == []


def test_settings_and_cache_dir_choose_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAMINGO_CORPUS_CACHE", str(tmp_path))
    assert tiny_clip.default_cache_dir() == tmp_path
    quick = tiny_clip.checkpoint_path(tmp_path, QUICK_SETTINGS)
    assert quick == tiny_clip.checkpoint_path(tmp_path, QUICK_SETTINGS)
    assert quick != tiny_clip.checkpoint_path(tmp_path, tiny_clip.DEFAULT_SETTINGS)
    assert quick.parent == tmp_path


def _ensure_in_subprocess(cache_dir, barrier, results) -> None:
    """Child process: start together with the others, build the checkpoint, report back."""
    messages = []
    barrier.wait()
    path = tiny_clip.ensure_tiny_clip(cache_dir, log=messages.append, settings=QUICK_SETTINGS)
    results.put((str(path), messages))


def test_concurrent_callers_train_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
    callers = 2
    barrier, results = ctx.Barrier(callers), ctx.Queue()
    processes = [ctx.Process(target=_ensure_in_subprocess, args=(tmp_path, barrier, results)) for _ in range(callers)]
    for p in processes:
        p.start()
    try:
        outcomes = [results.get(timeout=300) for _ in processes]
    except queue.Empty:
        pytest.fail("a caller did not finish")
    finally:
        for p in processes:
            p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * callers

    paths = {path for path, _ in outcomes}
    assert paths == {str(tiny_clip.checkpoint_path(tmp_path, QUICK_SETTINGS))}
    trainers = [messages for _, messages in outcomes if any(m.startswith("training ") for m in messages)]
    assert len(trainers) == 1
    assert not list(tmp_path.rglob(".*"))  # no temp files left behind
    tiny_clip.register_tiny_config()
    model, _, _ = open_clip.create_model_and_transforms(tiny_clip.TINY_MODEL_NAME, pretrained=paths.pop())
    assert isinstance(model, open_clip.CLIP)
