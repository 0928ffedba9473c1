"""The DNS cache (download/dns.py): TTL, negative TTL, one lookup per name at a time, the SSRF
guard still applied to cached addresses; and the test-only hosts file."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from flamingo_corpus.download.dns import (
    CachingResolver,
    NameNotFound,
    hosts_file_resolver,
    is_nxdomain,
)
from flamingo_corpus.download.fetch import Fetcher, FetchPolicy


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Answers:
    """A resolver that counts its calls; ``answers[host]`` is a list of addresses or an exception."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, host, port):
        self.calls.append(host)
        answer = self.answers[host]
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)


def test_an_answer_is_reused_for_its_ttl_then_asked_again():
    clock, upstream = Clock(), Answers({"a.example": ["93.184.216.34"]})
    cache = CachingResolver(upstream, ttl_s=300, negative_ttl_s=60, clock=clock)
    for _ in range(5):
        assert cache("a.example", 443) == ["93.184.216.34"]
    assert upstream.calls == ["a.example"]
    clock.t = 299.9
    cache("A.EXAMPLE", 443)  # names are case-insensitive
    assert len(upstream.calls) == 1
    clock.t = 300.1
    cache("a.example", 443)
    assert len(upstream.calls) == 2 and cache.lookups == 2


def test_nxdomain_is_cached_for_the_negative_ttl_and_other_failures_are_not():
    clock = Clock()
    upstream = Answers(
        {"gone.example": NameNotFound("gone.example"), "flaky.example": socket.gaierror(socket.EAI_AGAIN, "try again")}
    )
    cache = CachingResolver(upstream, ttl_s=300, negative_ttl_s=60, clock=clock)
    for _ in range(3):
        with pytest.raises(socket.gaierror) as e:
            cache("gone.example", 80)
        assert is_nxdomain(e.value)
    assert upstream.calls == ["gone.example"]
    clock.t = 60.1
    with pytest.raises(socket.gaierror):
        cache("gone.example", 80)
    assert upstream.calls == ["gone.example"] * 2
    for _ in range(3):
        with pytest.raises(socket.gaierror) as e:
            cache("flaky.example", 80)
        assert not is_nxdomain(e.value)
    assert upstream.calls.count("flaky.example") == 3


def test_ttl_zero_caches_nothing():
    upstream = Answers({"a.example": ["93.184.216.34"]})
    cache = CachingResolver(upstream, ttl_s=0, negative_ttl_s=0)
    cache("a.example", 80)
    cache("a.example", 80)
    assert len(upstream.calls) == 2


def test_threads_asking_for_one_name_at_once_share_one_lookup():
    release = threading.Event()

    def slow(host, port):
        calls.append(host)
        release.wait(5)
        return ["93.184.216.34"]

    calls: list = []
    cache = CachingResolver(slow)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(cache("a.example", 80))) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == ["a.example"] and results == [["93.184.216.34"]] * 16


def test_cached_private_addresses_are_still_refused_by_the_fetcher():
    """A name whose cached answer is private is refused on every fetch, from the cache or not:
    the guard sits above the cache."""
    upstream = Answers({"inside.example": ["10.0.0.7"], "meta.example": ["169.254.169.254"]})
    cache = CachingResolver(upstream)
    with Fetcher(FetchPolicy(timeout_s=2), resolver=cache) as fetcher:
        for _ in range(3):
            r = fetcher.fetch("http://inside.example/a.jpg")
            assert r.reason == "private_address" and r.attempts == 0
    with Fetcher(FetchPolicy(timeout_s=2, allow_private=True), resolver=cache) as fetcher:
        for _ in range(2):
            assert fetcher.fetch("http://meta.example/a.jpg").reason == "private_address"
    assert upstream.calls == ["inside.example", "meta.example"]


def test_the_fetcher_connects_to_the_cached_address_it_checked(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    upstream = Answers({"pics.example": ["127.0.0.1"]})
    with Fetcher(FetchPolicy(timeout_s=5, allow_private=True), resolver=CachingResolver(upstream)) as fetcher:
        assert fetcher.fetch(f"http://pics.example:{port}/1.jpg").ok
        assert fetcher.fetch(f"http://pics.example:{port}/2.jpg").ok
    server.close()
    assert upstream.calls == ["pics.example"]


def test_nxdomain_reaches_the_fetcher_as_dns_error():
    cache = CachingResolver(Answers({"gone.example": NameNotFound("gone.example")}))
    with Fetcher(FetchPolicy(timeout_s=2), resolver=cache) as fetcher:
        r = fetcher.fetch("http://gone.example/a.jpg")
    assert r.reason == "dns_error" and r.attempts == 0


# -- the hosts file ------------------------------------------------------------------------------


def test_hosts_file_maps_names_to_loopback_logs_lookups_and_answers_nxdomain(tmp_path):
    log = tmp_path / "lookups.log"
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"hosts": {"a.test": "127.1.0.1", "Dead.test": None}, "log": str(log)}))
    resolve = hosts_file_resolver(str(path), fallback=Answers({"other.test": ["127.0.0.1"]}))
    assert resolve("a.test", 80) == ["127.1.0.1"]
    with pytest.raises(socket.gaierror) as e:
        resolve("dead.test", 80)
    assert is_nxdomain(e.value)
    assert resolve("other.test", 80) == ["127.0.0.1"]  # not listed: the fallback answers
    lines = log.read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["a.test", "dead.test", "other.test"]


@pytest.mark.parametrize("address", ["10.0.0.1", "8.8.8.8", "::1", "169.254.169.254", "localhost"])
def test_hosts_file_refuses_anything_but_loopback_ipv4(tmp_path, address):
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"hosts": {"a.test": address}}))
    with pytest.raises(ValueError, match="a.test"):
        hosts_file_resolver(str(path))
