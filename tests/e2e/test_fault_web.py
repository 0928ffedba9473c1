"""The fault web end to end: every misbehaviour ends as a recorded reason, never a crash.

Each fault of the loopback fault web (pipeline/sample/web.py) is fetched through the Fetcher,
which must give its exact reason token; then all of them together go through a small LAION build
(tests/loopback_build.py), where every input row must end in the index exactly once with a status
and, when dropped, the stage and reason, and the manifest's counts must add up to the input.
"""

from __future__ import annotations

import collections
import json
import re
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flamingo_corpus.download.fetch import REASONS, TRANSIENT, Fetcher, FetchPolicy, known_reason
from flamingo_corpus.sample.web import SampleWeb

from ..helpers import index_rows
from ..loopback_build import build_over_loopback, jpeg_bytes, smooth_photo

pytestmark = pytest.mark.timeout(300)

HTML = b"<!doctype html><html><body><h1>Not found</h1> but 200 OK</body></html>\n"
OTHER_HOST = "127.0.0.2"  # a second server, on another loopback address: "another host"

# (name, path on the fault web, reason through the Fetcher, (stage, reason) in a build).  {f} is
# the row's own picture (a distinct one per row, so exact dedup keeps every good row), {other}
# the other host's URL.  A fetch reason of None means the fetch succeeds.
FAULTS = [
    ("good", "/{f}", None, (None, None)),
    ("404", "/status/404/{f}", "http_404", ("download", "http_404")),
    ("403", "/status/403/{f}", "http_403", ("download", "http_403")),
    ("410", "/status/410/{f}", "http_410", ("download", "http_410")),
    ("500", "/status/500/{f}", "http_500", ("download", "http_500")),
    ("503", "/status/503/{f}", "http_503", ("download", "http_503")),
    ("429", "/status/429/{f}?retry_after=0", "http_429", ("download", "http_429")),
    ("flaky", "/flaky/1/{f}", None, (None, None)),  # one 503, then the picture
    ("reset", "/reset/99/{f}", "connection_reset", ("download", "connection_reset")),
    ("reset-once", "/reset/1/{f}", None, (None, None)),
    ("timeout", "/slow/20/{f}", "timeout", ("download", "timeout")),
    ("drip", "/drip/0.2/{f}", "deadline", ("download", "deadline")),
    ("truncated", "/truncated/99/{f}", "truncated", ("download", "truncated")),
    ("truncated-once", "/truncated/1/{f}", None, (None, None)),
    ("extra", "/extra/{f}", "extra_bytes", ("download", "extra_bytes")),
    ("huge-length", "/huge/{f}", "too_large", ("download", "too_large")),
    ("endless", "/endless/{f}", "too_large", ("download", "too_large")),
    ("wrong-type", "/type/text%2Fplain/{f}", "not_image", ("download", "not_image")),
    ("no-type", "/no-type/{f}", "not_image", ("download", "not_image")),
    ("html-page", "/html/{f}", "not_image", ("download", "not_image")),
    ("image-as-html", "/as-html/{f}", "not_image", ("download", "not_image")),
    ("html-as-jpeg", "/page-{f}", None, ("image", "not_an_image")),
    ("corrupt-jpeg", "/corrupt/{f}", None, ("image", "decode_error")),
    ("png-bomb", "/png-bomb/10000/{f}", None, ("image", "decompression_bomb")),
    ("gzip", "/gzip/{f}", None, (None, None)),
    ("gzip-bomb", "/gzip-bomb/64/{f}", "too_large", ("download", "too_large")),
    ("bad-encoding", "/encoding/br/{f}", "bad_encoding", ("download", "bad_encoding")),
    ("noai", "/noai/{f}", "robots_disallowed", ("download", "robots_disallowed")),
    ("redirect-chain", "/redirect/3/{f}", None, (None, None)),
    ("redirect-chain-too-long", "/redirect/9/{f}", "too_many_redirects", ("download", "too_many_redirects")),
    ("redirect-loop", "/redirect-loop/{f}", "redirect_loop", ("download", "redirect_loop")),
    ("redirect-other-host", "/redirect-to?url={other}", None, (None, None)),
    (
        "redirect-to-file",
        "/redirect-to?url=file%3A%2F%2F%2Fetc%2Fpasswd&r={f}",
        "bad_scheme",
        ("download", "bad_scheme"),
    ),
]
# Rows refused by the metadata filters before any download.
BAD_URLS = [
    ("file-url", "file:///etc/passwd", "bad_scheme"),
    ("ftp-url", "ftp://127.0.0.1/a.jpg", "bad_scheme"),
    ("data-url", "data:image/png;base64,iVBORw0KGgo=", "bad_scheme"),
    ("no-host", "http:///a.jpg", "bad_url"),
]
# Generous for a loaded machine, short enough for the slow faults to end fast.
DOWNLOAD = dict(timeout_s=2.0, deadline_s=8.0, retries=1, backoff_s=0.05, max_backoff_s=0.2, max_bytes=5_000_000)


def picture(name: str) -> str:
    return f"{name}.jpg"


def site_files() -> dict:
    """Every row's own picture, plus the HTML served as a JPEG."""
    files = {picture(name): jpeg_bytes(smooth_photo(i)) for i, (name, *_) in enumerate(FAULTS)}
    files[f"page-{picture('html-as-jpeg')}"] = HTML
    return files


def fault_urls(base: str, other: str) -> dict:
    """Each fault's URL, by name."""
    urls = {}
    for name, path, _, _ in FAULTS:
        other_url = quote(f"{other}/{picture(name)}", safe="")
        urls[name] = base + path.format(f=picture(name), other=other_url)
    return urls


@pytest.fixture(scope="module")
def fault_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-site")
    for name, data in site_files().items():
        (root / name).write_bytes(data)
    with SampleWeb(root) as web, SampleWeb(root, host=OTHER_HOST) as other:
        yield web, other


def test_reason_tokens_are_short_distinct_and_listed_once():
    assert all(re.fullmatch(r"[a-z]+(_[a-z<>]+)*", token) and len(token) <= 20 for token in REASONS)
    assert TRANSIENT <= set(REASONS)
    reasons = [reason for _, _, reason, _ in FAULTS if reason]
    assert all(known_reason(reason) for reason in reasons)
    assert not known_reason("http_99") and not known_reason("something_else")


@pytest.mark.parametrize("name, path, reason, in_build", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_gives_its_reason_through_the_fetcher(fault_site, name, path, reason, in_build):
    web, other = fault_site
    with Fetcher(FetchPolicy(allow_private=True, **DOWNLOAD)) as fetcher:
        result = fetcher.fetch(fault_urls(web.url, other.url)[name])
    assert result.reason == reason, result.detail
    assert result.ok is (reason is None)
    if result.ok:
        assert result.data and result.content_type.startswith("image/")
    else:
        assert result.data is None and known_reason(result.reason)


def _random_urls(rng, base_port, count):
    """URLs made of pieces of good and bad URLs: schemes, hosts, ports, fault paths, odd bytes."""
    schemes = ["http", "https", "HTTP", "ftp", "file", "data", "javascript", "", "http:", "gopher"]
    hosts = [
        "127.0.0.1",
        "images.example",
        "[::1]",
        "10.0.0.1",
        "169.254.169.254",
        "0",
        "[::ffff:10.0.0.1]",
        "xn--bcher-kva.example",
        "b\u00fccher.example",
        "a..b",
        "",
        "user:pw@127.0.0.1",
        "%00",
        "[::1",
    ]
    ports = [f":{base_port}", "", ":0", ":99999", ":abc", f":{base_port}"]
    paths = [path.split("?")[0] for _, path, _, _ in FAULTS] + ["/", "", "/%zz", "/a b.jpg", "/\x00", "/..%2f..%2f"]
    tails = ["", "?x=1", "#frag", "?url=file%3A%2F%2F%2Fetc%2Fpasswd", "\r\nX-Injected: 1", " "]
    for _ in range(count):
        path = rng.choice(paths).format(f=rng.choice(["good.jpg", "404.jpg", "missing.jpg"]), other="")
        yield f"{rng.choice(schemes)}://{rng.choice(hosts)}{rng.choice(ports)}{path}{rng.choice(tails)}"
    yield from [None, 42, b"http://127.0.0.1/", "", "   ", "http://", "//127.0.0.1/a.jpg", "\u2603"]


def test_no_url_makes_the_fetcher_raise(fault_site):
    """Random and hostile URLs: each ends as an image or a listed reason.  Every name resolves to
    127.0.0.1 and only 127.0.0.1 passes the address check, so nothing leaves loopback."""
    import random

    web, _ = fault_site
    policy = FetchPolicy(**{**DOWNLOAD, "allow_private": False, "timeout_s": 1.0, "deadline_s": 2.0})
    with Fetcher(
        policy, resolver=lambda host, port: ["127.0.0.1"], forbidden_address=lambda address: address != "127.0.0.1"
    ) as fetcher:
        urls = list(_random_urls(random.Random(7), web.port, 300))
        results = fetcher.fetch_many(urls, threads=16)
    assert len(results) == len(urls)
    for url, result in zip(urls, results):
        assert result.ok or known_reason(result.reason), (url, result.reason, result.detail)
        assert result.ok is (result.reason is None)
    reasons = collections.Counter(result.reason for result in results)
    assert reasons[None] and reasons["bad_scheme"] and reasons["bad_url"] and reasons["private_address"]


def _rewrite_rows(path, urls):
    pq.write_table(
        pa.table(
            {
                "URL": pa.array(urls, pa.string()),
                "TEXT": [f"picture number {i} of the fault web" for i in range(len(urls))],
            }
        ),
        path,
    )


@pytest.mark.slow
def test_no_fault_stops_the_build_and_every_row_is_accounted_for(tmp_path):
    expected = {}  # URL -> (stage, reason) it must end with; (None, None): kept

    # The other host serves tmp_path, where the helper puts the pictures under web/.
    with SampleWeb(tmp_path, host=OTHER_HOST) as other:

        def prepare(base):
            # The helper wrote one plain row per file; the build reads the fault URLs instead.
            urls = fault_urls(base, other.url + "/web")
            for name, _, _, (stage, reason) in FAULTS:
                expected[urls[name]] = (stage, reason)
            for _, url, reason in BAD_URLS:
                expected[url] = ("metadata", reason)
            _rewrite_rows(tmp_path / "rows.parquet", list(expected))

        _, result = build_over_loopback(
            tmp_path, site_files(), {"download": {**DOWNLOAD, "threads": 8}}, prepare=prepare
        )
        assert other.count(f"/web/{picture('redirect-other-host')}") == 1
    index = index_rows(tmp_path / "out")
    by_url = {r["url"]: r for r in index}
    assert len(index) == len(by_url) == len(expected)  # every row exactly once
    for url, (stage, reason) in expected.items():
        row = by_url[url]
        if reason is None:
            assert (row["status"], row["reason"]) == ("kept", None), (url, row["reason"], row["detail"])
        else:
            assert (row["status"], row["stage"], row["reason"]) == ("dropped", stage, reason), (url, row["detail"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["rows_in"] == totals["accounted"] == len(expected) == result.rows_in
    assert totals["kept"] + sum(manifest["drops"].values()) == totals["rows_in"]
    wanted = collections.Counter(f"{stage}/{reason}" for stage, reason in expected.values() if reason)
    assert manifest["drops"] == dict(wanted)


@pytest.mark.slow
def test_a_build_that_forbids_private_addresses_requests_nothing_there(tmp_path):
    files = {f"{i}.jpg": jpeg_bytes(smooth_photo(i)) for i in range(3)}
    with SampleWeb(tmp_path) as web:  # the rows point here; it must see no request at all
        urls = [
            f"{web.url}/web/0.jpg",
            f"{web.url}/redirect/2/web/1.jpg",
            f"http://localhost:{web.port}/web/2.jpg",
            f"http://[::1]:{web.port}/web/2.jpg",
        ]
        _, result = build_over_loopback(
            tmp_path,
            files,
            {"download": {**DOWNLOAD, "allow_private": False}},
            prepare=lambda base: _rewrite_rows(tmp_path / "rows.parquet", urls),
        )
        assert web.counts() == {}
    index = index_rows(tmp_path / "out")
    assert sorted(r["url"] for r in index) == sorted(urls)
    assert {(r["status"], r["stage"], r["reason"]) for r in index} == {("dropped", "download", "private_address")}
    assert result.kept == 0 and result.drops == {"download/private_address": len(urls)}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_sample_build_records_its_fault_rows(sample_build):
    from flamingo_corpus.sample.laion_data import BASE_URL, FAULT_URLS

    out, _ = sample_build
    by_url = {r["url"]: r for r in index_rows(out)}
    for url, reason in FAULT_URLS:
        row = by_url[url.format(base=BASE_URL)]
        assert (row["status"], row["reason"]) == ("dropped", reason), row["detail"]
