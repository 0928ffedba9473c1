"""Every drop these stages write carries a detail: the value that was seen and the recipe key (or
rule) that decided it.  Each (stage, reason) of the registry that the metadata, image, CLIP and
exact-dedup stages (and the MMC4 image URL rules) emit is produced by a real sample here."""

from __future__ import annotations

import io

import apache_beam as beam
from PIL import Image

from flamingo_corpus.clip.stage import _SimilarityThreshold
from flamingo_corpus.dedup.exact import EXACT_IMAGES, DedupExactImages
from flamingo_corpus.images.process import _ProcessImage
from flamingo_corpus.laion.metadata import FilterMetadata, _FilterMetadata
from flamingo_corpus.mmc4.documents import image_checks
from flamingo_corpus.mmc4.image_details import image_check_detail
from flamingo_corpus.output.reasons import lookup
from flamingo_corpus.output.shard import _RankBlock
from flamingo_corpus.recipe import ImageConfig, LanguageConfig, MetadataFilterConfig, Mmc4Config
from flamingo_corpus.records import Sample

from ..beam_util import run_collect
from ..loopback_build import jpeg_bytes

# (stage, reason) -> what its detail must name: the recipe key or the rule.
RULES = {
    ("metadata", "no_url"): "needs one",
    ("metadata", "bad_url"): "does not parse",
    ("metadata", "bad_scheme"): "filters.url_schemes",
    ("metadata", "no_caption"): "needs one",
    ("metadata", "caption_too_short"): "filters.min_caption_",
    ("metadata", "caption_too_long"): "filters.max_caption_chars",
    ("metadata", "unsafe"): "filters.max_punsafe",
    ("metadata", "watermark"): "filters.max_pwatermark",
    ("metadata", "low_metadata_similarity"): "filters.min_metadata_similarity",
    ("metadata", "wrong_language"): "filters.language.allowed",
    ("metadata", "uncertain_language"): "filters.language.min_score",
    ("metadata", "duplicate_url"): "same URL as in:",
    ("image", "empty_body"): "0 bytes",
    ("image", "not_an_image"): "the bytes begin",
    ("image", "decode_error"): "",
    ("image", "decompression_bomb"): "image.max_pixels",
    ("image", "too_small"): "image.min_side",
    ("image", "bad_aspect_ratio"): "image.max_aspect_ratio",
    ("image", "too_few_bytes"): "image.min_encoded_bytes",
    ("clip", "low_similarity"): "clip.min_similarity",
    ("clip", "no_similarity"): "clip.min_similarity",
    ("dedup", "duplicate_image"): "same sha256 as in:",
}
MMC4_RULES = {
    "no_url": "needs one",
    "bad_url": "does not parse",
    "bad_scheme": "image URL schemes http, https",
    "bad_extension": "mmc4.image_extensions png, jpg, jpeg",
    "url_blocklisted_word": "(mmc4.url_words)",
}


def _sample(i, url="http://example.com/a.jpg", caption="a red circle on the left of the picture", **kw):
    return Sample(id=f"in:{i}", source_index=0, row=i, url=url, caption=caption, **kw)


def _drops(dofn, samples, *args):
    """The IndexRows ``dofn`` drops of ``samples``, called as the runner calls it."""
    if hasattr(dofn, "setup"):
        dofn.setup()
    out = []
    for s in samples:
        out += [o.value for o in dofn.process(s, *args) if isinstance(o, beam.pvalue.TaggedOutput)]
    return out


def _png(width, height, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def _metadata_drops():
    cfg = MetadataFilterConfig(
        max_caption_chars=60,
        min_metadata_similarity=0.28,
        language=LanguageConfig(enabled=True, allowed=("en",), min_score=0.5),
    )
    samples = [
        _sample(0, url=None),
        _sample(1, url="http://exa mple.com:99999/a.jpg"),
        _sample(2, url="ftp://example.com/a.jpg"),
        _sample(3, caption="   "),
        _sample(4, caption="hi"),
        _sample(5, caption="circles"),
        _sample(6, caption="a long caption " * 10),
        _sample(7, meta={"punsafe": 0.91}),
        _sample(8, meta={"pwatermark": 0.95}),
        _sample(9, meta={"similarity": 0.2133}),
        _sample(10, caption="ein blauer Hund spielt im Garten mit einem Ball"),
    ]
    drops = _drops(_FilterMetadata(cfg), samples)
    strict = MetadataFilterConfig(language=LanguageConfig(enabled=True, allowed=("en",), min_score=0.99999))
    drops += _drops(_FilterMetadata(strict), [_sample(11, caption="ok ok ok ok")])
    return drops


def _image_drops():
    cfg = ImageConfig(min_side=150, max_aspect_ratio=2.0, max_pixels=2_000_000, min_encoded_bytes=11_000)
    photo = jpeg_bytes(Image.effect_noise((300, 300), 60).convert("RGB"))
    samples = [
        _sample(20, image_bytes=b""),
        _sample(21, image_bytes=b"<html>not found</html>"),
        _sample(22, image_bytes=photo[: len(photo) // 2]),
        _sample(23, image_bytes=_png(2000, 1100)),
        _sample(24, image_bytes=_png(48, 40)),
        _sample(25, image_bytes=_png(600, 160)),
        _sample(26, image_bytes=_png(300, 300)),  # one colour: a few hundred bytes as JPEG
    ]
    return _drops(_ProcessImage(cfg), samples)


def _dedup_drops():
    """duplicate_url through FilterMetadata, duplicate_image through the stage of its own and
    through the shard numbering's dedup (the LAION path's usual one)."""
    cfg = MetadataFilterConfig(language=LanguageConfig(enabled=False))
    urls = [_sample(30, url="http://example.com/x.jpg"), _sample(31, url="HTTP://EXAMPLE.com:80/x.jpg#f")]
    images = [_sample(32, sha256="ab" * 32, similarity=0.9), _sample(33, sha256="ab" * 32, similarity=0.5)]

    def build(p):
        _, url_drops = p | "URLs" >> beam.Create(urls) | FilterMetadata(cfg)
        _, image_drops = p | "Images" >> beam.Create(images) | DedupExactImages()
        return {"urls": url_drops, "images": image_drops}

    out = run_collect(build)
    numbering = _drops(_RankBlock(EXACT_IMAGES), [("b", [images[1]])], {}, {"b": [("in:33", "in:32")]})
    assert [d.detail for d in numbering] == ["same sha256 as in:32"]
    return out["urls"] + out["images"] + numbering


def test_every_drop_of_these_stages_names_its_value_and_rule():
    drops = _metadata_drops() + _image_drops() + _dedup_drops()
    drops += _drops(_SimilarityThreshold(0.28), [_sample(40, similarity=0.2133), _sample(41, similarity=None)])
    seen = {}
    for d in drops:
        seen.setdefault((d.stage, d.reason), d.detail)
    assert set(seen) == set(RULES), set(seen) ^ set(RULES)
    for (stage, reason), detail in seen.items():
        assert lookup(stage, reason) is not None, (stage, reason)
        assert detail and RULES[stage, reason] in detail, (stage, reason, detail)


def test_the_details_read_as_documented():
    by_id = {d.id: d.detail for d in _metadata_drops() + _image_drops()}
    assert by_id["in:4"] == "2 characters, filters.min_caption_chars is 5"
    assert by_id["in:5"] == "1 word, filters.min_caption_words is 2"
    assert by_id["in:7"] == "punsafe 0.91 > filters.max_punsafe 0.5"
    assert by_id["in:9"] == "similarity 0.2133 < filters.min_metadata_similarity 0.28"
    assert by_id["in:2"] == "scheme ftp is not one of filters.url_schemes http, https"
    assert by_id["in:24"] == "48x40: a side under image.min_side 150"
    assert by_id["in:25"] == "600x160: aspect ratio 3.75 > image.max_aspect_ratio 2"
    (low,) = _drops(_SimilarityThreshold(0.28), [_sample(40, similarity=0.2133)])
    assert low.detail == "similarity 0.2133 < clip.min_similarity 0.28"


def test_mmc4_image_url_rules_name_their_rule():
    cfg = Mmc4Config()
    urls = {
        None: "no_url",
        "http://[broken/a.jpg": "bad_url",
        "data:image/png;base64,AAAA": "bad_scheme",
        "http://example.com/cat.gif": "bad_extension",
        "http://example.com/site-logo.png": "url_blocklisted_word",
    }
    for url, want in urls.items():
        reason = next((r for r in image_checks(url, cfg) if r), None)
        assert reason == want and lookup("metadata", reason) is not None, (url, reason)
        detail = image_check_detail(reason, url, cfg)
        assert MMC4_RULES[reason] in detail, (url, detail)
    assert image_check_detail("bad_extension", "http://example.com/cat.gif", cfg) == (
        "extension .gif is not one of mmc4.image_extensions png, jpg, jpeg"
    )
    assert image_check_detail("url_blocklisted_word", "http://x.org/logo.png", cfg) == (
        "the URL holds 'logo' (mmc4.url_words)"
    )
