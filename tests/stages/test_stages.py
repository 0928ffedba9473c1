"""The Beam stages on their own: metadata filters, download, CLIP scoring, exact dedup."""

from __future__ import annotations

import random
import threading

import apache_beam as beam
import pytest

from flamingo_corpus.clip.stage import ScoreWithClip
from flamingo_corpus.dedup.exact import DedupExactImages
from flamingo_corpus.download.fetch import FetchResult
from flamingo_corpus.download.stage import DownloadImages
from flamingo_corpus.laion.metadata import FilterMetadata
from flamingo_corpus.recipe import ClipConfig, DownloadConfig, MetadataFilterConfig
from flamingo_corpus.records import Sample
from flamingo_corpus.sample import synthetic
from flamingo_corpus.sample.web import SampleWeb

from ..beam_util import run_collect
from ..loopback_build import jpeg_bytes


def _sample(i, url="http://example.com/a.jpg", caption="a red circle on the left", **kw):
    return Sample(id=f"in:{i}", source_index=0, row=i, url=url, caption=caption, **kw)


def _stage(samples, transform):
    def build(p):
        kept, dropped = p | beam.Create(samples) | transform
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    return out["kept"], out["dropped"]


def test_metadata_filters_and_url_dedup():
    samples = [
        _sample(0, "http://example.com/x.jpg", "a blue square at the top of a plain background"),
        _sample(1, "HTTP://EXAMPLE.com:80/x.jpg#frag", "a blue square at the top of a plain background"),
        _sample(2, "http://example.com/y.jpg", "ein blauer Hund spielt im Garten mit einem Ball"),
        _sample(3, "ftp://example.com/z.jpg", "a green star in the centre"),
        _sample(4, "http://example.com/w.jpg", "hi"),
        _sample(5, "http://example.com/v.jpg", "a white ring on the right", meta={"punsafe": 0.99}),
    ]
    kept, dropped = _stage(samples, FilterMetadata(MetadataFilterConfig()))
    assert [s.id for s in kept] == ["in:0"] and kept[0].language == "en"
    reasons = {d.id: (d.reason, d.duplicate_of) for d in dropped}
    assert reasons == {
        "in:1": ("duplicate_url", "in:0"),
        "in:2": ("wrong_language", None),
        "in:3": ("bad_scheme", None),
        "in:4": ("caption_too_short", None),
        "in:5": ("unsafe", None),
    }


@pytest.mark.timeout(120)
def test_download_keeps_every_sample_accounted_for(tmp_path):
    (tmp_path / "img").mkdir()
    synthetic.render(synthetic.random_scene(random.Random(1)), 64, 48).save(tmp_path / "img" / "a.jpg")
    with SampleWeb(tmp_path) as web:
        urls = [
            f"{web.url}/img/a.jpg",
            f"{web.url}/missing.jpg",
            f"{web.url}/noai/img/a.jpg",
            f"{web.url}/slow/6/img/a.jpg",
            f"{web.url}/as-html/img/a.jpg",
        ] * 8
        samples = [_sample(i, u) for i, u in enumerate(urls)]
        # A timeout far below the slow path's 6 s but generous for a loaded 2-core CI machine.
        cfg = DownloadConfig(threads=8, timeout_s=2.0, deadline_s=4, retries=0, allow_private=True)
        kept, dropped = _stage(samples, DownloadImages(cfg))
    assert len(kept) + len(dropped) == len(samples)
    data = (tmp_path / "img" / "a.jpg").read_bytes()
    assert {s.url for s in kept} == {urls[0]} and all(s.image_bytes == data for s in kept)
    by_url = {}
    for d in dropped:
        by_url.setdefault(d.url, set()).add(d.reason)
    assert by_url == {
        urls[1]: {"http_404"},
        urls[2]: {"robots_disallowed"},
        urls[3]: {"timeout"},
        urls[4]: {"not_image"},
    }


class _GatedFetcher:
    """A Fetcher whose ``slow`` URLs wait until ``gate`` opens; the others answer at once."""

    gate = threading.Event()

    def __init__(self, policy):
        pass

    def fetch(self, url):
        if "slow" in url:
            self.gate.wait(30)
        return FetchResult(True, url.encode(), "image/jpeg", 200, None, None, 1, url, 0.0)

    def close(self):
        pass


def test_download_streams_past_a_slow_url_and_bounds_what_is_in_flight(monkeypatch):
    """Finished downloads leave in the order they finish (a slow URL holds one thread, not the
    URLs behind it), at most about two pools' worth is in flight, and the bundle's end waits for
    the rest."""
    from apache_beam.utils.windowed_value import WindowedValue

    from flamingo_corpus.download import stage as download

    monkeypatch.setattr(download, "Fetcher", _GatedFetcher)
    _GatedFetcher.gate.clear()
    fn = download._Download(DownloadConfig(threads=2))
    fn.setup()
    try:
        fn.start_bundle()
        urls = ["http://example.com/slow.jpg"] + [f"http://example.com/{i}.jpg" for i in range(30)]
        emitted, most = [], 0
        for i, url in enumerate(urls):
            emitted += [s.url for s in fn.process(_sample(i, url))]
            most = max(most, fn._in_flight)
        assert most <= 2 * 2 + 1
        assert len(emitted) >= 30 - most and "http://example.com/slow.jpg" not in emitted
        _GatedFetcher.gate.set()
        rest = list(fn.finish_bundle())
        assert all(isinstance(w, WindowedValue) for w in rest)
        emitted += [w.value.url for w in rest]
        assert sorted(emitted) == sorted(urls) and fn._in_flight == 0
    finally:
        _GatedFetcher.gate.set()
        fn.teardown()


def test_clip_scores_true_captions_above_wrong_ones(tiny_clip_checkpoint):
    rng = random.Random(99)
    scenes = [synthetic.random_scene(rng) for _ in range(24)]
    samples = []
    for i, scene in enumerate(scenes):
        data = jpeg_bytes(synthetic.render(scene, 160, 120))
        samples.append(_sample(2 * i, caption=synthetic.caption(scene, rng), image_bytes=data))
        samples.append(_sample(2 * i + 1, caption=synthetic.wrong_caption(scene, rng), image_bytes=data))
    cfg = ClipConfig(
        model="flamingo-tiny-clip", pretrained=str(tiny_clip_checkpoint), batch_size=8, min_similarity=None
    )
    kept, dropped = _stage(samples, ScoreWithClip(cfg))
    assert dropped == [] and len(kept) == len(samples)
    sim = {s.row: s.similarity for s in kept}
    better = sum(sim[2 * i] > sim[2 * i + 1] for i in range(len(scenes)))
    assert better >= 0.9 * len(scenes)
    for s in kept:
        assert s.image_embedding.shape == s.text_embedding.shape
        assert abs(float((s.image_embedding**2).sum()) - 1) < 1e-4

    threshold = sorted(sim.values())[len(sim) // 2]
    kept2, dropped2 = _stage(
        samples,
        ScoreWithClip(
            ClipConfig(model="flamingo-tiny-clip", pretrained=str(tiny_clip_checkpoint), min_similarity=threshold)
        ),
    )
    assert {s.row for s in kept2} == {r for r, v in sim.items() if v >= threshold}
    assert {d.reason for d in dropped2} == {"low_similarity"}


def test_exact_dedup_keeps_the_best_and_earliest():
    same, other = "a" * 64, "b" * 64
    samples = [
        _sample(5, sha256=same, similarity=0.30),
        _sample(2, sha256=same, similarity=0.35),
        _sample(1, sha256=same, similarity=0.35),
        _sample(7, sha256=other, similarity=0.1),
    ]
    kept, dropped = _stage(samples, DedupExactImages())
    assert sorted(s.row for s in kept) == [1, 7]
    assert sorted((d.row, d.reason, d.duplicate_of) for d in dropped) == [
        (2, "duplicate_image", "in:1"),
        (5, "duplicate_image", "in:1"),
    ]
