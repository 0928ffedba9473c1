"""Fetcher against a real SampleWeb on 127.0.0.1: reason tokens, retries, caps, threads, address
pinning, bounded DNS and body decoding.  (tests/test_fault_web.py walks the whole fault web.)

No traffic leaves loopback: address checks are tested on literals, a fake resolver stands in for
DNS, and a hook lets 127.0.0.1 stand in for a public address where a test needs one.
"""

import builtins
import email.utils
import gzip
import socket
import threading
import time
import tracemalloc
import zlib
from urllib.parse import quote

import numpy as np
import pytest
import urllib3
from PIL import Image

from flamingo_corpus.download import fetch as fetch_module
from flamingo_corpus.download.fetch import Fetcher, FetchPolicy, is_private_address, robots_disallowed
from flamingo_corpus.sample.web import SampleWeb

from ..helpers import one_connection_servers

pytestmark = pytest.mark.timeout(60)

# Loopback allowed, short waits: every test stays well under a second unless it tests a wait.
FAST = dict(allow_private=True, timeout_s=2.0, deadline_s=10.0, backoff_s=0.01, max_backoff_s=0.05)
BIG_PNG_SIDE = 96  # random noise barely compresses: about 27 KB


@pytest.fixture
def site(tmp_path):
    """A folder of small images (plus an empty file and a non-image) for the web to serve."""
    root = tmp_path / "site"
    root.mkdir()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(root / "a.jpg")
    Image.new("RGB", (10, 10), (30, 200, 30)).save(root / "b.png")
    noise = np.random.default_rng(0).integers(0, 256, (BIG_PNG_SIDE, BIG_PNG_SIDE, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "big.png")
    for i in range(8):
        Image.new("RGB", (4, 4), (i * 30, 0, 0)).save(root / f"img{i}.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "data.bin").write_bytes(b"\x00\x01\x02")
    return root


@pytest.fixture
def web(site):
    with SampleWeb(site) as server:
        yield server


@pytest.fixture
def make_fetcher():
    """Build fetchers from FAST plus overrides; all are closed after the test."""
    made = []

    def make(**overrides):
        made.append(Fetcher(FetchPolicy(**{**FAST, **overrides})))
        return made[-1]

    yield make
    for fetcher in made:
        fetcher.close()


@pytest.fixture
def fetcher(make_fetcher):
    return make_fetcher()


def stand_in(address):
    """The address check with 127.0.0.1 standing in for a public address."""
    return address != "127.0.0.1" and is_private_address(address)


# -- success ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, content_type", [("a.jpg", "image/jpeg"), ("b.png", "image/png")])
def test_fetch_returns_the_file(fetcher, web, site, name, content_type):
    result = fetcher.fetch(f"{web.url}/{name}")
    assert result.ok and result.reason is None and result.detail is None
    assert result.data == (site / name).read_bytes()
    assert result.content_type == content_type
    assert result.status == 200
    assert result.attempts == 1
    assert result.final_url == f"{web.url}/{name}"
    assert result.elapsed_s >= 0


def test_fetch_sends_our_user_agent(fetcher, web):
    fetcher.fetch(web.url + "/a.jpg")
    assert web.last_headers("/a.jpg")["User-Agent"] == FetchPolicy().user_agent


def test_the_user_agent_token_is_the_product_name():
    assert FetchPolicy().user_agent_token == "flamingo-corpus"


# -- HTTP statuses and retries ----------------------------------------------------------------


def test_404_is_not_retried(fetcher, web):
    result = fetcher.fetch(web.url + "/missing.jpg")
    assert (result.ok, result.reason, result.status, result.attempts) == (False, "http_404", 404, 1)
    assert result.data is None
    assert web.count("/missing.jpg") == 1


def test_500_is_reported_after_the_retries(make_fetcher, web):
    result = make_fetcher(retries=2).fetch(web.url + "/status/500/x")
    assert (result.reason, result.status, result.attempts) == ("http_500", 500, 3)
    assert web.count("/status/500/x") == 3


def test_flaky_url_recovers_within_the_retries(make_fetcher, web, site):
    result = make_fetcher(retries=2).fetch(web.url + "/flaky/2/a.jpg")
    assert result.ok and result.attempts == 3
    assert result.data == (site / "a.jpg").read_bytes()


def test_flaky_url_fails_when_the_retries_run_out(make_fetcher, web):
    result = make_fetcher(retries=1).fetch(web.url + "/flaky/5/a.jpg")
    assert (result.reason, result.attempts) == ("http_503", 2)
    assert web.count("/flaky/5/a.jpg") == 2


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_are_retried(make_fetcher, web, status):
    result = make_fetcher(retries=2).fetch(f"{web.url}/status/{status}/x?retry_after=0")
    assert (result.reason, result.attempts) == (f"http_{status}", 3)
    assert web.count(f"/status/{status}/x") == 3


def test_retry_after_is_honoured(make_fetcher, web):
    result = make_fetcher(retries=1, max_backoff_s=5.0).fetch(web.url + "/status/429/x?retry_after=1")
    assert (result.reason, result.attempts) == ("http_429", 2)
    assert result.elapsed_s >= 0.9


def test_retry_after_is_capped_by_max_backoff(make_fetcher, web):
    result = make_fetcher(retries=1, max_backoff_s=0.1).fetch(web.url + "/status/503/x?retry_after=30")
    assert (result.reason, result.attempts) == ("http_503", 2)
    assert result.elapsed_s < 2


def test_no_retry_when_the_wait_would_pass_the_deadline(make_fetcher, web):
    fetcher = make_fetcher(retries=3, max_backoff_s=5.0, deadline_s=1.0)
    result = fetcher.fetch(web.url + "/status/503/x?retry_after=5")
    assert (result.reason, result.attempts) == ("http_503", 1)
    assert result.elapsed_s < 1


# -- time limits --------------------------------------------------------------------------------


def test_slow_answer_times_out(make_fetcher, web):
    result = make_fetcher(timeout_s=0.3, retries=0).fetch(web.url + "/slow/5/a.jpg")
    assert (result.reason, result.status, result.attempts) == ("timeout", None, 1)
    assert result.elapsed_s < 2


def test_timeouts_are_retried(make_fetcher, web):
    result = make_fetcher(timeout_s=0.3, retries=1).fetch(web.url + "/slow/5/a.jpg")
    assert (result.reason, result.attempts) == ("timeout", 2)
    assert web.count("/slow/5/a.jpg") == 2


def test_deadline_bounds_the_whole_fetch(make_fetcher, web):
    result = make_fetcher(timeout_s=5.0, deadline_s=0.5, retries=2).fetch(web.url + "/slow/5/a.jpg")
    assert (result.reason, result.attempts) == ("deadline", 1)
    assert result.elapsed_s < 2


# -- headers and content ------------------------------------------------------------------------


def test_noai_header_is_refused(fetcher, web):
    result = fetcher.fetch(web.url + "/noai/a.jpg")
    assert (result.ok, result.reason, result.status, result.data) == (False, "robots_disallowed", 200, None)


@pytest.mark.parametrize(
    "tag, ok",
    [
        ("otherbot: noindex", True),
        ("flamingo-corpus: noimageai", False),
        ("*: noai", False),
        ("nofollow", True),
    ],
)
def test_robots_header_applies_to_us_or_everyone_only(fetcher, web, tag, ok):
    result = fetcher.fetch(f"{web.url}/robots/{quote(tag, safe='')}/a.jpg")
    assert result.ok is ok
    assert result.reason == (None if ok else "robots_disallowed")


@pytest.mark.parametrize(
    "values, disallowed",
    [
        (["noindex"], True),
        (["NoAI"], True),
        (["nofollow, noimageindex"], True),
        (["otherbot: noindex, noai"], False),
        (["otherbot: noindex", "noai"], True),  # two headers: the second one is for everyone
        (["otherbot: noindex, flamingo-corpus: noai"], True),
        (["max-image-preview: large, noimageai"], True),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False),
        (["none"], True),  # "none" is "noindex, nofollow"
        ([], False),
    ],
)
def test_robots_disallowed_parses_agents_and_directives(values, disallowed):
    assert robots_disallowed(values, "flamingo-corpus", FetchPolicy().disallowed_robots) is disallowed


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/as-html/a.jpg", "text/html"),
        ("/data.bin", "application/octet-stream"),
    ],
)
def test_non_image_content_type_is_refused(fetcher, web, path, content_type):
    result = fetcher.fetch(web.url + path)
    assert (result.reason, result.content_type, result.data) == ("not_image", content_type, None)


def test_empty_body_is_refused(fetcher, web):
    assert fetcher.fetch(web.url + "/empty.jpg").reason == "empty_body"


# -- size -------------------------------------------------------------------------------------


def test_huge_content_length_is_refused_by_header(fetcher, web):
    result = fetcher.fetch(web.url + "/huge/a.jpg")
    assert (result.reason, result.status) == ("too_large", 200)
    assert "Content-Length" in result.detail


def test_file_over_the_cap_is_refused(make_fetcher, web, site):
    cap = (site / "big.png").stat().st_size - 1
    assert make_fetcher(max_bytes=cap).fetch(web.url + "/big.png").reason == "too_large"


def test_cap_holds_without_content_length(make_fetcher, web, site):
    size = (site / "big.png").stat().st_size
    refused = make_fetcher(max_bytes=size - 1).fetch(web.url + "/no-length/big.png")
    assert refused.reason == "too_large" and "body exceeds" in refused.detail
    fetched = make_fetcher(max_bytes=size).fetch(web.url + "/no-length/big.png")
    assert fetched.ok and fetched.data == (site / "big.png").read_bytes()


def test_body_shorter_than_content_length_is_truncated(make_fetcher, web):
    result = make_fetcher(max_bytes=10**11, retries=1).fetch(web.url + "/huge/a.jpg")
    assert (result.reason, result.data, result.attempts) == ("truncated", None, 2)


# -- redirects --------------------------------------------------------------------------------


def test_redirects_are_followed(fetcher, web, site):
    result = fetcher.fetch(web.url + "/redirect/3/a.jpg")
    assert result.ok and result.data == (site / "a.jpg").read_bytes()
    assert result.final_url == web.url + "/redirect/0/a.jpg"
    assert result.attempts == 1


@pytest.mark.parametrize("max_redirects, hops", [(5, 6), (0, 1)])
def test_too_many_redirects(make_fetcher, web, max_redirects, hops):
    result = make_fetcher(max_redirects=max_redirects).fetch(f"{web.url}/redirect/{hops}/a.jpg")
    assert (result.reason, result.status) == ("too_many_redirects", 302)
    assert web.count("/redirect/0/a.jpg") == 0


@pytest.fixture
def endless_redirect(web):
    """A bare server on 127.0.0.1 answering once: a 302 to ``web``'s a.jpg whose body trickles on
    for 10 s (or until the client hangs up)."""

    def handle(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(f"HTTP/1.1 302 Found\r\nLocation: {web.url}/a.jpg\r\n\r\n".encode())
        for _ in range(200):  # until the client hangs up: the send fails
            connection.sendall(b"x" * 1024)
            time.sleep(0.05)

    with one_connection_servers() as serve:
        yield serve(handle).replace("/a.jpg", "/start")


def test_redirect_body_is_not_read(fetcher, endless_redirect, site):
    result = fetcher.fetch(endless_redirect)
    assert result.ok and result.data == (site / "a.jpg").read_bytes()
    assert result.elapsed_s < 2


def test_redirect_to_another_server_is_followed(fetcher, web, site):
    with SampleWeb(site) as elsewhere:
        target = elsewhere.url + "/b.png"
        result = fetcher.fetch(f"{web.url}/redirect-to?url={quote(target, safe='')}")
        assert result.ok and result.final_url == target
        assert elsewhere.count("/b.png") == 1


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/a.jpg"])
def test_redirect_to_a_bad_scheme_is_refused(fetcher, web, target):
    result = fetcher.fetch(f"{web.url}/redirect-to?url={quote(target, safe='')}")
    assert (result.reason, result.final_url) == ("bad_scheme", web.url + "/redirect-to?url=" + quote(target, safe=""))


def test_every_redirect_hop_is_address_checked(web, site):
    # 127.0.0.1 stands in for a public address, so the first hop passes the check.
    with (
        SampleWeb(site, host="127.0.0.2") as private,
        Fetcher(FetchPolicy(**{**FAST, "allow_private": False}), forbidden_address=stand_in) as fetcher,
    ):
        target = private.url + "/a.jpg"
        result = fetcher.fetch(f"{web.url}/redirect-to?url={quote(target, safe='')}")
        assert (result.reason, result.status) == ("private_address", 302)
        assert web.counts() == {"/redirect-to": 1}
        assert private.counts() == {}


# -- addresses, URLs and schemes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.1.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_private_addresses(address):
    assert is_private_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses(address):
    assert not is_private_address(address)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_host_is_refused_before_any_request(make_fetcher, web, host):
    result = make_fetcher(allow_private=False).fetch(f"http://{host}:{web.port}/a.jpg")
    assert (result.reason, result.attempts, result.status) == ("private_address", 0, None)
    assert web.counts() == {}


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "data:image/png;base64,AAAA", "javascript:alert(1)"]
)
def test_bad_schemes_are_refused_without_touching_anything(fetcher, monkeypatch, url):
    def forbidden(*args, **kwargs):
        raise AssertionError("a refused URL must not be opened")

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", forbidden)
        patch.setattr(urllib3.HTTPConnectionPool, "urlopen", forbidden)
        patch.setattr(urllib3.util.connection, "create_connection", forbidden)
        patch.setattr(socket, "getaddrinfo", forbidden)
        patch.setattr(socket, "create_connection", forbidden)
        result = fetcher.fetch(url)
    assert (result.ok, result.reason, result.attempts) == (False, "bad_scheme", 0)


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "   ",
        42,
        "not a url",
        "http://",
        "http://[::1/a.jpg",
        "http://[::1/a.jpg#frag",
        "http://example.com:99999/a.jpg",
    ],
)
def test_bad_urls(fetcher, url):
    result = fetcher.fetch(url)
    assert (result.ok, result.reason, result.attempts) == (False, "bad_url", 0)


@pytest.mark.parametrize("allow_private", [False, True])
def test_unresolvable_host_is_a_dns_error(make_fetcher, monkeypatch, allow_private):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    result = make_fetcher(allow_private=allow_private).fetch("http://no-such-host.invalid/a.jpg")
    assert (result.ok, result.reason, result.status) == (False, "dns_error", None)


def test_refused_connection_is_retried_then_a_connect_error(make_fetcher, site):
    with SampleWeb(site) as stopped:
        url = stopped.url + "/a.jpg"
    result = make_fetcher(retries=2).fetch(url)
    assert (result.reason, result.status, result.attempts) == ("connect_error", None, 3)


# -- many URLs ----------------------------------------------------------------------------------


def test_fetch_many_keeps_the_input_order(fetcher, web, site):
    urls = [web.url + "/a.jpg", None, web.url + "/missing.jpg", web.url + "/b.png", "ftp://x/y"]
    results = fetcher.fetch_many(urls, threads=4)
    assert [r.reason for r in results] == [None, "bad_url", "http_404", None, "bad_scheme"]
    assert results[3].data == (site / "b.png").read_bytes()


def test_fetch_many_runs_in_parallel(fetcher, web, site):
    urls = [f"{web.url}/slow/0.5/img{i}.png" for i in range(8)]
    started = time.monotonic()
    results = fetcher.fetch_many(urls, threads=8)
    assert time.monotonic() - started < 3  # serially it would take 4 s
    assert [r.data for r in results] == [(site / f"img{i}.png").read_bytes() for i in range(8)]


def test_fetch_many_can_be_called_again_with_other_thread_counts(fetcher, web):
    for threads in (2, 2, 5, 1):
        results = fetcher.fetch_many([web.url + "/a.jpg"] * 5, threads=threads)
        assert all(r.ok for r in results)
    assert web.count("/a.jpg") == 20


# -- broken connections: retried; permanent failures: not ----------------------------------------


@pytest.mark.parametrize("fault", ["reset", "truncated"])
def test_broken_answers_are_retried_until_they_recover(make_fetcher, web, site, fault):
    result = make_fetcher(retries=2).fetch(f"{web.url}/{fault}/2/a.jpg")
    assert result.ok and result.attempts == 3
    assert result.data == (site / "a.jpg").read_bytes()


@pytest.mark.parametrize("fault, reason", [("reset", "connection_reset"), ("truncated", "truncated")])
def test_broken_answers_fail_when_the_retries_run_out(make_fetcher, web, fault, reason):
    result = make_fetcher(retries=1).fetch(f"{web.url}/{fault}/9/a.jpg")
    assert (result.reason, result.attempts, result.data) == (reason, 2, None)
    assert web.count(f"/{fault}/9/a.jpg") == 2


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/missing.jpg", "http_404"),
        ("/status/403/x", "http_403"),
        ("/status/410/x", "http_410"),
        ("/extra/a.jpg", "extra_bytes"),
        ("/encoding/br/a.jpg", "bad_encoding"),
        ("/as-html/a.jpg", "not_image"),
        ("/noai/a.jpg", "robots_disallowed"),
        ("/huge/a.jpg", "too_large"),
        ("/empty.jpg", "empty_body"),
    ],
)
def test_permanent_failures_are_not_retried(make_fetcher, web, path, reason):
    result = make_fetcher(retries=3).fetch(web.url + path)
    assert (result.reason, result.attempts) == (reason, 1)
    assert web.count(path) == 1


def test_retry_after_may_be_an_http_date():
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 60 < fetch_module._retry_after({"Retry-After": when}) <= 120
    assert fetch_module._retry_after({"Retry-After": "soon"}) is None
    assert fetch_module._retry_after({}) is None


# -- time and byte bounds -----------------------------------------------------------------------


def test_a_slow_drip_is_cut_off_at_the_deadline(make_fetcher, web, site):
    # Every byte comes well within timeout_s: only the deadline can end this body (27 KB at 20 B/s).
    result = make_fetcher(timeout_s=5.0, deadline_s=1.0, retries=0).fetch(web.url + "/drip/0.05/big.png")
    assert (result.reason, result.status, result.data) == ("deadline", 200, None)
    assert web.bytes_sent("/drip/0.05/big.png") < (site / "big.png").stat().st_size


def test_an_endless_body_stops_at_the_cap(make_fetcher, web):
    result = make_fetcher(max_bytes=1 << 20).fetch(web.url + "/endless/x")
    assert (result.reason, result.status) == ("too_large", 200)
    assert "body exceeds" in result.detail


def test_gzip_bodies_are_decoded(fetcher, web, site):
    result = fetcher.fetch(web.url + "/gzip/big.png")
    assert result.ok and result.content_type == "image/png"
    assert result.data == (site / "big.png").read_bytes()
    assert web.last_headers("/gzip/big.png")["Accept-Encoding"] == "gzip, deflate"


def test_a_gzip_bomb_is_stopped_at_the_cap_on_its_decoded_size(make_fetcher, web):
    from flamingo_corpus.sample.web import gzip_bomb

    cap = 1 << 20
    assert len(gzip_bomb(256)) < cap  # on the wire it is well under the cap: only decoding shows it
    fetcher = make_fetcher(max_bytes=cap)
    tracemalloc.start()
    try:
        result = fetcher.fetch(web.url + "/gzip-bomb/256/x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.reason, result.status) == ("too_large", 200)
    assert "decoded body exceeds" in result.detail
    # Decoding it whole would take 256 MiB, decoding one 64 KiB chunk unbounded 64 MiB.
    assert peak < 16 * cap


DATA = bytes(range(256)) * 200


def _raw_deflate(data):
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    "encoding, wire",
    [
        ("gzip", gzip.compress(DATA)),
        ("x-gzip", gzip.compress(DATA)),
        ("gzip", gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:])),  # two members
        ("deflate", zlib.compress(DATA)),  # zlib-wrapped, as the RFC says
        ("deflate", _raw_deflate(DATA)),  # raw, as some servers send it
        ("identity", DATA),
        ("", DATA),
    ],
)
def test_decoder_undoes_content_encodings(encoding, wire):
    decoder = fetch_module._Decoder(encoding, cap=len(DATA))
    for i in range(0, len(wire), 1000):
        decoder.feed(wire[i : i + 1000])
    assert decoder.finish() == DATA


@pytest.mark.parametrize(
    "encoding, wire, reason",
    [
        ("gzip", gzip.compress(DATA)[:-30], "bad_encoding"),  # stops half-way
        ("gzip", DATA, "bad_encoding"),  # not gzip at all
        ("br", DATA, "bad_encoding"),  # not one we asked for
        ("gzip, gzip", DATA, "bad_encoding"),
        ("gzip", gzip.compress(DATA + b"x"), "too_large"),
    ],
)
def test_decoder_refuses_bad_or_oversized_streams(encoding, wire, reason):
    with pytest.raises(fetch_module._Drop) as refused:
        decoder = fetch_module._Decoder(encoding, cap=len(DATA))
        decoder.feed(wire)
        decoder.finish()
    assert refused.value.reason == reason


@pytest.fixture
def answer_once():
    """A bare HTTP/1.1 server on 127.0.0.1 that answers one request with the given bytes, then
    keeps the connection open (keep-alive) until the client closes it."""
    with one_connection_servers() as serve:

        def answering(answer: bytes) -> str:
            def handle(connection: socket.socket) -> None:
                connection.settimeout(10)
                connection.recv(65536)
                connection.sendall(answer)
                connection.recv(1)  # until the client hangs up

            return serve(handle)

        yield answering


def _http11(body: bytes, declared: int) -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {declared}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body


def test_extra_bytes_are_found_on_a_kept_alive_connection(fetcher, answer_once, site):
    body = (site / "a.jpg").read_bytes()
    assert fetcher.fetch(answer_once(_http11(body + b"more", len(body)))).reason == "extra_bytes"


def test_an_exact_body_on_a_kept_alive_connection_is_accepted(fetcher, answer_once, site):
    body = (site / "a.jpg").read_bytes()
    result = fetcher.fetch(answer_once(_http11(body, len(body))))
    assert result.ok and result.data == body


def test_a_kept_alive_connection_is_reused_for_the_next_image_of_the_host(fetcher, site):
    """A body read to its end leaves its connection open for the thread's next request to the
    same host; a redirect (whose body is never read) costs its connection."""
    body = (site / "a.jpg").read_bytes()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    connections = []

    def answer(connection):
        with connection:
            connection.settimeout(10)
            pending = b""
            try:
                while True:
                    while b"\r\n\r\n" not in pending:
                        got = connection.recv(65536)
                        if not got:
                            return
                        pending += got
                    request, pending = pending.split(b"\r\n\r\n", 1)
                    if request.startswith(b"GET /moved"):
                        connection.sendall(
                            f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/b.jpg\r\n"
                            f"Content-Length: 5\r\n\r\nmoved".encode()
                        )
                    else:
                        connection.sendall(_http11(body, len(body)))
            except OSError:
                pass

    def run():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=run, daemon=True).start()
    try:
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            result = fetcher.fetch(f"http://127.0.0.1:{port}/{name}")
            assert result.ok and result.data == body
        assert len(connections) == 1
        result = fetcher.fetch(f"http://127.0.0.1:{port}/moved")
        assert result.ok and result.final_url.endswith("/b.jpg")
        assert len(connections) == 2  # the redirect's connection was closed, not reused
    finally:
        listener.close()


# -- address pinning and the resolver -----------------------------------------------------------


def _numeric_only(real):
    """getaddrinfo that refuses to look up names: proves nobody resolves behind the fetcher's back."""

    def getaddrinfo(host, *args, **kwargs):
        if fetch_module._ip_literal(str(host)) is None:
            raise AssertionError(f"{host} was resolved outside the fetcher's resolver")
        return real(host, *args, **kwargs)

    return getaddrinfo


def test_the_host_is_resolved_once_and_the_checked_address_connected_to(web, site, monkeypatch):
    looked_up = []

    def resolver(host, port):
        looked_up.append((host, port))
        return ["127.0.0.1"]

    monkeypatch.setattr(socket, "getaddrinfo", _numeric_only(socket.getaddrinfo))
    policy = FetchPolicy(**{**FAST, "allow_private": False})
    with Fetcher(policy, resolver=resolver, forbidden_address=stand_in) as fetcher:
        result = fetcher.fetch(f"http://Images.Example:{web.port}/a.jpg")
    assert result.ok and result.data == (site / "a.jpg").read_bytes()
    assert looked_up == [("images.example", web.port)]
    assert web.last_headers("/a.jpg")["Host"] == f"images.example:{web.port}"


def test_dns_rebinding_cannot_reach_a_private_address(web, site, monkeypatch):
    # The fetcher's resolver answers "public" (127.0.0.1 standing in) when the name is checked;
    # the system resolver answers 127.0.0.2, as a rebinding DNS server would on a second lookup.
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *args, **kwargs: real("127.0.0.2" if host == "rebind.example" else host, *args, **kwargs),
    )
    policy = FetchPolicy(**{**FAST, "allow_private": False})
    with (
        SampleWeb(site, host="127.0.0.2", port=web.port) as private,
        Fetcher(policy, resolver=lambda host, port: ["127.0.0.1"], forbidden_address=stand_in) as fetcher,
    ):
        result = fetcher.fetch(f"http://rebind.example:{web.port}/a.jpg")
        assert result.ok and result.data == (site / "a.jpg").read_bytes()
        assert web.count("/a.jpg") == 1 and private.counts() == {}


def test_a_later_private_answer_is_refused(web, site):
    answers = iter(["127.0.0.1"])
    policy = FetchPolicy(**{**FAST, "allow_private": False})
    with Fetcher(
        policy, resolver=lambda host, port: [next(answers, "127.0.0.2")], forbidden_address=stand_in
    ) as fetcher:
        first = fetcher.fetch(f"http://rebind.example:{web.port}/a.jpg")
        second = fetcher.fetch(f"http://rebind.example:{web.port}/a.jpg")
    assert first.ok
    assert (second.reason, second.attempts) == ("private_address", 0)
    assert web.count("/a.jpg") == 1


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.jpg",
        "http://167772161/a.jpg",  # 10.0.0.1 written as one number
        "http://[::ffff:10.0.0.1]/a.jpg",
        "http://[fe80::1]/a.jpg",
        "http://127.0.0.2:{port}/a.jpg",
        "http://[::1]:{port}/a.jpg",
    ],
)
def test_redirects_to_private_addresses_are_refused_before_connecting(web, monkeypatch, target):
    connected = []
    real = urllib3.util.connection.create_connection

    def guarded(address, *args, **kwargs):
        connected.append(address[0])
        if address[0] != "127.0.0.1":  # never let a broken check reach a real private address
            raise OSError(f"test: {address[0]} may not be reached")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    target = target.format(port=web.port)
    policy = FetchPolicy(**{**FAST, "allow_private": False})
    with Fetcher(policy, forbidden_address=stand_in) as fetcher:
        result = fetcher.fetch(f"{web.url}/redirect-to?url={quote(target, safe='')}")
    assert (result.reason, result.status) == ("private_address", 302)
    assert connected == ["127.0.0.1"]


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/a.jpg"])
def test_link_local_is_refused_even_when_private_addresses_are_allowed(web, monkeypatch, target):
    """Cloud metadata services answer on link-local addresses: a local build that allows loopback
    must still never be redirected there."""
    connected = []
    real = urllib3.util.connection.create_connection

    def guarded(address, *args, **kwargs):
        connected.append(address[0])
        if address[0] != "127.0.0.1":
            raise OSError(f"test: {address[0]} may not be reached")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    with Fetcher(FetchPolicy(**FAST)) as fetcher:  # allow_private=True
        redirected = fetcher.fetch(f"{web.url}/redirect-to?url={quote(target, safe='')}")
        direct = fetcher.fetch(target)
    assert (redirected.reason, redirected.status) == ("private_address", 302)
    assert direct.reason == "private_address"
    assert connected == ["127.0.0.1"]


def test_private_redirects_are_followed_when_the_policy_allows_them(make_fetcher, web, site):
    with SampleWeb(site, host="127.0.0.2") as private:
        result = make_fetcher(allow_private=True).fetch(
            f"{web.url}/redirect-to?url={quote(private.url + '/a.jpg', safe='')}"
        )
        assert result.ok and private.count("/a.jpg") == 1


@pytest.fixture
def hung_resolver():
    """A resolver that hangs until the test ends; ``entered`` is set once a lookup started."""
    release, entered = threading.Event(), threading.Event()

    def resolve(host, port):
        entered.set()
        release.wait(30)
        return ["127.0.0.1"]

    resolve.entered = entered
    resolve.released = release
    yield resolve
    release.set()


@pytest.mark.parametrize("timeout_s, deadline_s, reason", [(0.3, 10.0, "dns_timeout"), (5.0, 0.3, "deadline")])
def test_a_hung_resolver_cannot_hold_a_fetch(hung_resolver, timeout_s, deadline_s, reason):
    policy = FetchPolicy(**{**FAST, "timeout_s": timeout_s, "deadline_s": deadline_s})
    with Fetcher(policy, resolver=hung_resolver) as fetcher:
        result = fetcher.fetch("http://slow-dns.example/a.jpg")
        # The fetch gave up while the lookup was still hanging.
        assert hung_resolver.entered.is_set() and not hung_resolver.released.is_set()
    assert (result.reason, result.attempts, result.status) == (reason, 0, None)


def test_resolver_answers_that_are_not_addresses_are_dns_errors(make_fetcher):
    with Fetcher(FetchPolicy(**FAST), resolver=lambda host, port: ["not-an-ip"]) as fetcher:
        assert fetcher.fetch("http://odd.example/a.jpg").reason == "dns_error"
    with Fetcher(FetchPolicy(**FAST), resolver=lambda host, port: []) as fetcher:
        assert fetcher.fetch("http://odd.example/a.jpg").reason == "dns_error"


def _certificates(tmp_path, name):
    """A test CA (its PEM file) and a server certificate for ``name`` signed by it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, *, ca, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flamingo test CA")])
    ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    leaf = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        ca_name,
        key.public_key(),
        ca_key,
        ca=False,
        san=name,
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(
        leaf.public_bytes(pem) + key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "ca.pem", tmp_path / "server.pem"


def test_https_checks_the_certificate_against_the_host_name_not_the_pinned_address(tmp_path, site, monkeypatch):
    pytest.importorskip("cryptography")
    import ssl

    ca, server_pem = _certificates(tmp_path, "images.example")
    monkeypatch.setattr(fetch_module, "_CA_CERTS", str(ca))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_pem)
    names, hosts = [], []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    body = (site / "a.jpg").read_bytes()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            with raw:
                try:
                    with context.wrap_socket(raw, server_side=True) as tls:
                        request = tls.recv(65536).decode("latin-1")
                        hosts.extend(line[6:] for line in request.split("\r\n") if line.startswith("Host: "))
                        tls.sendall(_http11(body, len(body)).replace(b"keep-alive", b"close"))
                except (OSError, ssl.SSLError):
                    pass

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    policy = FetchPolicy(**{**FAST, "allow_private": False, "retries": 2})
    try:
        with Fetcher(policy, resolver=lambda host, port: ["127.0.0.1"], forbidden_address=stand_in) as fetcher:
            good = fetcher.fetch(f"https://images.example:{port}/a.jpg")
            wrong = fetcher.fetch(f"https://other.example:{port}/a.jpg")
    finally:
        listener.close()
    assert good.ok and good.data == body
    assert names[0] == "images.example" and hosts == [f"images.example:{port}"]
    # Connected to the same address, but the certificate does not name the host: not retried.
    assert (wrong.reason, wrong.attempts) == ("connect_error", 1)
    assert "certificate" in wrong.detail.lower() or "hostname" in wrong.detail.lower()
