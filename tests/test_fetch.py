"""Fetcher against a real SampleWeb on 127.0.0.1: every reason token, retries, caps and threads.

No traffic leaves loopback: address checks are tested on literals, and DNS failures are simulated.
"""
import builtins
import socket
import threading
import time
from urllib.parse import quote

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline import fetch as fetch_module
from pipeline.fetch import FetchPolicy, Fetcher, is_private_address, robots_disallowed
from pipeline.sample_web import SampleWeb

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


@pytest.mark.parametrize("tag, ok", [
    ("otherbot: noindex", True),
    ("flamingo-corpus: noimageai", False),
    ("*: noai", False),
    ("nofollow", True),
])
def test_robots_header_applies_to_us_or_everyone_only(fetcher, web, tag, ok):
    result = fetcher.fetch(f"{web.url}/robots/{quote(tag, safe='')}/a.jpg")
    assert result.ok is ok
    assert result.reason == (None if ok else "robots_disallowed")


@pytest.mark.parametrize("values, disallowed", [
    (["noindex"], True),
    (["NoAI"], True),
    (["nofollow, noimageindex"], True),
    (["otherbot: noindex, noai"], False),
    (["otherbot: noindex", "noai"], True),  # two headers: the second one is for everyone
    (["otherbot: noindex, flamingo-corpus: noai"], True),
    (["max-image-preview: large, noimageai"], True),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False),
    (["none"], False),
    ([], False),
])
def test_robots_disallowed_parses_agents_and_directives(values, disallowed):
    assert robots_disallowed(values, "flamingo-corpus", FetchPolicy().disallowed_robots) is disallowed


@pytest.mark.parametrize("path, content_type", [
    ("/as-html/a.jpg", "text/html"),
    ("/data.bin", "application/octet-stream"),
])
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


def test_body_shorter_than_content_length_is_a_read_error(make_fetcher, web):
    result = make_fetcher(max_bytes=10**11).fetch(web.url + "/huge/a.jpg")
    assert (result.reason, result.data) == ("read_error", None)


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
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_once():
        try:
            connection, _ = listener.accept()
        except OSError:  # closed before anyone came
            return
        with connection:
            connection.recv(65536)
            connection.sendall(f"HTTP/1.1 302 Found\r\nLocation: {web.url}/a.jpg\r\n\r\n".encode())
            for _ in range(200):
                try:
                    connection.sendall(b"x" * 1024)
                except OSError:
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/start"
    listener.close()
    thread.join(timeout=15)


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


def test_every_redirect_hop_is_address_checked(make_fetcher, web, monkeypatch):
    # Pretend that only 127.0.0.2 is private, so the first hop (127.0.0.1) passes the check.
    monkeypatch.setattr(fetch_module, "is_private_address", lambda address: address == "127.0.0.2")
    target = f"http://127.0.0.2:{web.port}/a.jpg"
    result = make_fetcher(allow_private=False, timeout_s=0.5, retries=0).fetch(
        f"{web.url}/redirect-to?url={quote(target, safe='')}")
    assert (result.reason, result.status) == ("private_address", 302)
    assert web.counts() == {"/redirect-to": 1}


# -- addresses, URLs and schemes ----------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.1.1", "0.0.0.0", "224.0.0.1",
    "240.0.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
])
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


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "data:image/png;base64,AAAA",
                                 "javascript:alert(1)"])
def test_bad_schemes_are_refused_without_touching_anything(fetcher, monkeypatch, url):
    def forbidden(*args, **kwargs):
        raise AssertionError("a refused URL must not be opened")

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", forbidden)
        patch.setattr(requests.Session, "request", forbidden)
        patch.setattr(socket, "getaddrinfo", forbidden)
        result = fetcher.fetch(url)
    assert (result.ok, result.reason, result.attempts) == (False, "bad_scheme", 0)


@pytest.mark.parametrize("url", [None, "", "   ", 42, "not a url", "http://", "http://[::1/a.jpg",
                                 "http://example.com:99999/a.jpg"])
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
