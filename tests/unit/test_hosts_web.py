"""The multi-host loopback web (sample/hosts_web.py), fetched through the hosts file."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import pytest

from flamingo_corpus.download.dns import CachingResolver, hosts_file_resolver
from flamingo_corpus.download.fetch import Fetcher, FetchPolicy
from flamingo_corpus.sample.hosts_web import Host, HostWeb, loopback_address

from ..loopback_build import jpeg_bytes, smooth_photo

IMAGES = [jpeg_bytes(smooth_photo(i)) for i in range(3)]


def test_loopback_addresses_are_distinct_and_inside_127_8():
    seen = {loopback_address(i) for i in range(100_000)}
    assert len(seen) == 100_000
    assert all(a.startswith("127.") and not a.endswith((".0", ".255")) for a in seen)
    with pytest.raises(ValueError):
        Host("x.test", address="10.0.0.1")


@pytest.fixture
def web(tmp_path):
    hosts = [
        Host("ok.test"),
        Host("slow.test", "slow", latency_s=0.2),
        Host("busy.test", "throttle", retry_after_s=2, every=2),
        Host("down.test", "unavailable", every=1),
        Host("flaky.test", "flaky", every=2),
        Host("refused.test", "refused"),
        Host("gone.test", "dead"),
    ]
    with HostWeb(hosts, IMAGES) as server:
        server.write_hosts_file(str(tmp_path / "hosts.json"), log=str(tmp_path / "lookups.log"))
        yield server


def _fetcher(tmp_path, **policy):
    resolver = CachingResolver(hosts_file_resolver(str(tmp_path / "hosts.json")))
    return Fetcher(FetchPolicy(allow_private=True, timeout_s=5, retries=0, **policy), resolver=resolver)


def test_each_host_behaves_as_set_and_is_counted(web, tmp_path):
    with _fetcher(tmp_path) as f:
        r = f.fetch(web.url("ok.test", "a.jpg"))
        assert r.ok and r.content_type == "image/jpeg" and r.data in IMAGES
        started = time.monotonic()
        assert f.fetch(web.url("slow.test", "a.jpg")).ok
        assert time.monotonic() - started >= 0.2
        assert f.fetch(web.url("busy.test", "1.jpg")).ok
        throttled = f.fetch(web.url("busy.test", "2.jpg"))
        assert throttled.reason == "http_429"
        assert f.fetch(web.url("down.test", "1.jpg")).reason == "http_503"
        assert f.fetch(web.url("flaky.test", "1.jpg")).ok
        assert f.fetch(web.url("flaky.test", "2.jpg")).reason == "connection_reset"
        assert f.fetch(web.url("refused.test", "1.jpg")).reason == "connect_error"
        assert f.fetch(web.url("gone.test", "1.jpg")).reason == "dns_error"
    stats = web.stats()
    assert stats["ok.test"].requests == 1 and stats["busy.test"].statuses == {200: 1, 429: 1}
    assert len(stats["busy.test"].throttled) == 1
    assert stats["gone.test"].requests == 0 and stats["refused.test"].requests == 0
    # every host has an address of its own, the dead one none
    hosts = json.loads((tmp_path / "hosts.json").read_text())["hosts"]
    addresses = [a for a in hosts.values() if a is not None]
    assert hosts["gone.test"] is None and len(set(addresses)) == len(addresses) == 6
    lookups = (tmp_path / "lookups.log").read_text().split()
    assert lookups.count("gone.test") == 1


def test_peak_concurrency_and_request_times_are_counted_by_the_server(web, tmp_path):
    with _fetcher(tmp_path) as f, cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(f.fetch, [web.url("slow.test", f"{i}.jpg") for i in range(8)]))
    assert all(r.ok for r in results)
    s = web.stats()["slow.test"]
    assert s.requests == 8 and s.peak_concurrent == 4 and len(s.times) == 8
    assert s.connections <= 4 + 1  # keep-alive: each thread's connection is reused
    assert s.max_in_window(0.1) == 4  # the two rounds of four are 0.2 s apart
