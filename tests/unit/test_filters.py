"""The pure filter functions: pass/fail, thresholds exactly at the boundary, None/NaN, URL forms."""

from __future__ import annotations

import math
import os

import pytest

from flamingo_corpus.filters import image as image_filter
from flamingo_corpus.filters import language as language_filter
from flamingo_corpus.filters import safety, text
from flamingo_corpus.filters import url as url_filter

NAN = float("nan")
HTTP = ("http", "https")


# ---------------------------------------------------------------- text


def test_normalize_caption_collapses_whitespace_and_composes_unicode():
    decomposed = "Cafe\u0301  au\tlait\n\n "
    out = text.normalize_caption(decomposed)
    assert out == "Caf\u00e9 au lait"
    assert len(out) == 12


@pytest.mark.parametrize("caption", [None, "", "   \n\t", 42, NAN])
def test_caption_missing(caption):
    assert text.caption_length(caption, 5, 100, 2) == "no_caption"


def test_caption_length_boundaries_in_characters():
    assert text.caption_length("a b c", 5, 100) is None  # exactly min_chars
    assert text.caption_length("a bc", 5, 100) == "caption_too_short"
    assert text.caption_length("x" * 10, 1, 10) is None  # exactly max_chars
    assert text.caption_length("x" * 11, 1, 10) == "caption_too_long"


def test_caption_length_counts_the_normalised_text():
    # 3 visible characters padded with whitespace: too short once normalised
    assert text.caption_length("  a  b  ", 4, 100) == "caption_too_short"
    # whitespace runs do not push a caption over the limit
    assert text.caption_length("a" + " " * 50 + "b", 1, 3) is None
    # a decomposed accent counts as one character after NFC
    assert text.caption_length("e\u0301" * 5, 1, 5) is None
    assert text.caption_length("e\u0301" * 6, 1, 5) == "caption_too_long"


def test_caption_word_count_boundary():
    assert text.caption_length("two words", 1, 100, min_words=2) is None
    assert text.caption_length("oneword", 1, 100, min_words=2) == "caption_too_short"
    assert text.caption_length("one\n\n  word", 1, 100, min_words=2) is None
    assert text.caption_length("a b c", 1, 100, min_words=4) == "caption_too_short"


# ---------------------------------------------------------------- url: schemes


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.jpg",
        "https://example.com/a.jpg?x=1",
        "HTTPS://Example.com/A.JPG",
        "  https://example.com/padded.png  ",
        "http://127.0.0.1:8741/img/1.jpg",
    ],
)
def test_url_scheme_accepts_http_and_https(url):
    assert url_filter.url_scheme(url, HTTP) is None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "gopher://example.com/",
        "example.com/a.jpg",  # no scheme at all
    ],
)
def test_url_scheme_rejects_other_schemes(url):
    assert url_filter.url_scheme(url, HTTP) == "bad_scheme"


def test_url_scheme_follows_the_allowed_list():
    assert url_filter.url_scheme("ftp://example.com/a.jpg", ("http", "https", "ftp")) is None
    assert url_filter.url_scheme("http://example.com/a.jpg", ("https",)) == "bad_scheme"


@pytest.mark.parametrize("url", [None, "", "   ", 123, NAN])
def test_url_scheme_missing(url):
    assert url_filter.url_scheme(url, HTTP) == "no_url"


@pytest.mark.parametrize(
    "url",
    [
        "http:///path-without-host.jpg",
        "http://[::1/broken-ipv6",
        "http://example.com:abc/a.jpg",  # a port that is no number
        "http://example.com:99999/a.jpg",  # a port out of range
    ],
)
def test_url_scheme_rejects_malformed_urls(url):
    assert url_filter.url_scheme(url, HTTP) == "bad_url"


def test_every_url_that_passes_the_scheme_filter_can_be_normalised():
    """FilterMetadata keys rows by normalize_url after url_scheme passed them: it must not raise."""
    urls = [
        "http://example.com:abc/a.jpg",
        "http://example.com:99999/a.jpg",
        "http://[::1]:8080/x",
        "https://user@Example.com:443/x",
        "http://a.com:0/x",
        "http://[::1/x",
        "http://a.com/%zz",
    ]
    for u in urls:
        if url_filter.url_scheme(u, HTTP) is None:
            url_filter.normalize_url(u)


# ---------------------------------------------------------------- url: normalisation


def test_normalize_url_lowercases_scheme_and_host_but_not_path():
    assert url_filter.normalize_url("HTTP://Example.COM/Path/IMG.jpg?Q=A") == "http://example.com/Path/IMG.jpg?Q=A"


def test_normalize_url_drops_default_ports_only():
    assert url_filter.normalize_url("http://example.com:80/a") == url_filter.normalize_url("http://example.com/a")
    assert url_filter.normalize_url("https://example.com:443/a") == "https://example.com/a"
    assert url_filter.normalize_url("http://example.com:8080/a") == "http://example.com:8080/a"
    # 443 is only the default for https
    assert url_filter.normalize_url("http://example.com:443/a") == "http://example.com:443/a"


def test_normalize_url_drops_fragment_keeps_query():
    assert url_filter.normalize_url("https://a.com/x.jpg?size=2#top") == "https://a.com/x.jpg?size=2"
    assert url_filter.normalize_url("https://a.com/x.jpg?size=2") != url_filter.normalize_url(
        "https://a.com/x.jpg?size=3"
    )


def test_normalize_url_empty_path_is_root_and_whitespace_stripped():
    assert url_filter.normalize_url(" https://A.com ") == url_filter.normalize_url("https://a.com/")


def test_normalize_url_distinct_urls_stay_distinct():
    assert url_filter.normalize_url("https://a.com/x") != url_filter.normalize_url("http://a.com/x")
    assert url_filter.normalize_url("https://a.com/x") != url_filter.normalize_url("https://a.com/X")


def test_normalize_url_keeps_ipv6_brackets():
    a = url_filter.normalize_url("http://[::1]:8080/a")
    b = url_filter.normalize_url("http://[::1:8080]/a")
    assert a == "http://[::1]:8080/a"
    assert a != b
    assert url_filter.normalize_url("http://[FE80::1]:80/") == "http://[fe80::1]/"


# ---------------------------------------------------------------- url: mmc4 rules


@pytest.mark.parametrize(
    "url",
    [
        "https://a.com/photo.jpg",
        "https://a.com/dir.v2/photo.JPEG",
        "https://a.com/photo.png?w=300#frag",
    ],
)
def test_url_extension_allowed(url):
    assert url_filter.url_extension(url, url_filter.EXTENSIONS_MMC4) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://a.com/photo.gif",
        "https://a.com/photo.webp",
        "https://a.com/photo",  # no extension
        "https://a.com/dir.jpg/photo",  # the dot is in a folder, not the file
        "https://a.com/image.php?file=photo.jpg",  # the extension is in the query
        "https://a.com/photo.jpg/",
    ],
)
def test_url_extension_rejected(url):
    assert url_filter.url_extension(url, url_filter.EXTENSIONS_MMC4) == "bad_extension"


def test_url_extension_uses_the_given_list():
    assert url_filter.url_extension("https://a.com/x.gif", ("gif",)) is None
    assert url_filter.url_extension("https://a.com/x.jpg", ("gif",)) == "bad_extension"


@pytest.mark.parametrize("word", url_filter.URL_WORDS_MMC4)
def test_url_words_blocklist(word):
    assert (
        url_filter.url_words(f"https://a.com/img/site-{word}.png", url_filter.URL_WORDS_MMC4) == "url_blocklisted_word"
    )
    assert (
        url_filter.url_words(f"https://a.com/{word.upper()}s/x.png", url_filter.URL_WORDS_MMC4)
        == "url_blocklisted_word"
    )


def test_url_words_pass_and_custom_list():
    assert url_filter.url_words("https://a.com/photos/beach.jpg", url_filter.URL_WORDS_MMC4) is None
    assert url_filter.url_words("https://a.com/photos/beach.jpg", ("beach",)) == "url_blocklisted_word"
    assert url_filter.url_words("https://a.com/logo.jpg", ()) is None


# ---------------------------------------------------------------- safety (LAION score columns)


@pytest.mark.parametrize("fn,reason", [(safety.punsafe, "unsafe"), (safety.pwatermark, "watermark")])
def test_probability_thresholds(fn, reason):
    assert fn(0.49, 0.5) is None
    assert fn(0.5, 0.5) is None  # exactly at the maximum passes
    assert fn(0.5000001, 0.5) == reason
    assert fn(1.0, 0.5) == reason
    assert fn(1, 0.5) == reason  # ints work
    assert fn(None, 0.5) is None  # missing value passes
    assert fn(NAN, 0.5) is None  # null read from parquet as NaN passes
    assert fn(0.99, None) is None  # no threshold: filter off


def test_metadata_similarity_threshold():
    f = safety.metadata_similarity
    assert f(0.28, 0.28) is None  # exactly at the minimum passes
    assert f(0.2799, 0.28) == "low_metadata_similarity"
    assert f(0.9, 0.28) is None
    assert f(None, 0.28) is None
    assert f(NAN, 0.28) is None
    assert f(0.0, None) is None


# ---------------------------------------------------------------- image geometry


def test_min_side_boundary():
    assert image_filter.min_side(150, 400, 150) is None
    assert image_filter.min_side(400, 150, 150) is None
    assert image_filter.min_side(149, 400, 150) == "too_small"
    assert image_filter.min_side(400, 149, 150) == "too_small"
    assert image_filter.min_side(1, 1, 0) is None


def test_aspect_ratio_boundary_is_symmetric():
    assert image_filter.aspect_ratio(200, 100, 2.0) is None  # exactly 2 passes (mmc4: [0.5, 2])
    assert image_filter.aspect_ratio(100, 200, 2.0) is None  # exactly 0.5 passes
    assert image_filter.aspect_ratio(201, 100, 2.0) == "bad_aspect_ratio"
    assert image_filter.aspect_ratio(100, 201, 2.0) == "bad_aspect_ratio"
    assert image_filter.aspect_ratio(5000, 1, None) is None
    assert image_filter.aspect_ratio(0, 100, 2.0) == "bad_aspect_ratio"


def test_clip_similarity_threshold():
    f = image_filter.similarity
    assert f(0.28, 0.28) is None
    assert f(0.2799, 0.28) == "low_similarity"
    assert f(-1.0, 0.28) == "low_similarity"
    assert f(None, 0.28) == "no_similarity"
    assert f(None, None) is None
    assert f(0.0, None) is None


def test_nan_clip_similarity_does_not_pass_a_minimum():
    assert image_filter.similarity(NAN, 0.28) == "no_similarity"
    assert image_filter.similarity(float(math.nan), -1.0) == "no_similarity"
    assert image_filter.similarity(NAN, None) is None


def test_encoded_size_matches_openflamingo_loader_rule():
    minimum = 11_000
    assert image_filter.encoded_size(11_000, minimum) is None
    assert image_filter.encoded_size(10_999, minimum) == "too_few_bytes"
    for n in (0, 999, 10_000, 10_999, 11_000, 11_001, 50_000):
        loader_keeps = not (n // 1000 <= 10)  # OpenFlamingo's MMC4 loader
        assert (image_filter.encoded_size(n, minimum) is None) == loader_keeps
    assert image_filter.encoded_size(0, 0) is None


# ---------------------------------------------------------------- language


@pytest.fixture(scope="module")
def lid():
    return language_filter.LanguageIdentifier()


def test_default_model_is_the_shipped_lid176():
    path = language_filter.default_model_path()
    assert os.path.basename(path) == "lid.176.ftz"
    assert os.path.getsize(path) > 100_000


@pytest.mark.parametrize(
    "sentence,code",
    [
        ("The quick brown fox jumps over the lazy dog near the river bank.", "en"),
        ("A photograph of a red bicycle leaning against an old brick wall.", "en"),
        ("Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.", "de"),
        ("Ein Foto von einem roten Fahrrad, das an einer alten Mauer lehnt.", "de"),
        ("Le renard brun rapide saute par-dessus le chien paresseux près de la rivière.", "fr"),
        ("Une photo d'un vélo rouge appuyé contre un vieux mur de briques.", "fr"),
    ],
)
def test_identify_real_sentences(lid, sentence, code):
    lang, score = lid.identify(sentence)
    assert lang == code
    assert 0.5 < score <= 1.0


def test_identify_ignores_newlines(lid):
    lang, _ = lid.identify("Ein Foto von einem roten Fahrrad,\ndas an einer alten Mauer lehnt.")
    assert lang == "de"


def test_identify_then_filter(lid):
    de = lid.identify("Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.")
    en = lid.identify("The quick brown fox jumps over the lazy dog near the river bank.")
    assert language_filter.language(*en, allowed=("en",), min_score=0.5) is None
    assert language_filter.language(*de, allowed=("en",), min_score=0.5) == "wrong_language"
    assert language_filter.language(*de, allowed=("en", "de"), min_score=0.5) is None
    assert language_filter.language(*en, allowed=("en",), min_score=en[1] + 1e-6) == "uncertain_language"


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ftz"):
        language_filter.LanguageIdentifier(str(tmp_path / "nope.ftz"))


def test_language_rule():
    f = language_filter.language
    assert f("en", 0.5, ("en",), 0.5) is None  # exactly min_score passes
    assert f("en", 0.4999, ("en",), 0.5) == "uncertain_language"
    assert f("en", None, ("en",), 0.5) == "uncertain_language"
    assert f("de", 0.99, ("en",), 0.5) == "wrong_language"
    assert f(None, 0.99, ("en",), 0.5) == "wrong_language"
    assert f("de", 0.1, (), 0.5) is None  # empty allowed list: any language
    assert f(None, None, (), 0.5) is None
