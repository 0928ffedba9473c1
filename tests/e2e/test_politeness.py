"""Politeness at build scale, counted by the server: a LAION build on two worker processes, 16
threads each, over a multi-host loopback web (sample/hosts_web.py) whose names the workers
resolve through the test hosts file (download/dns.py)."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flamingo_corpus.build import run_build, summary
from flamingo_corpus.download.dns import HOSTS_ENV
from flamingo_corpus.recipe import recipe_from_dict
from flamingo_corpus.sample.hosts_web import Host, HostWeb
from flamingo_corpus.stats import compute as stats_compute
from flamingo_corpus.stats import report

from ..helpers import index_rows
from ..loopback_build import jpeg_bytes, smooth_photo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKERS = 2
MAX_CONCURRENT, MAX_RPS = 4, 20.0
RETRY_AFTER = 2.0
# A request already on its way when a 429 was sent reaches the server just after it: the client
# cannot have known.  Requests within this long after a 429 are counted as those.
IN_FLIGHT_S = 0.25


def _rows(web: HostWeb) -> list:
    """(url, caption) rows: one busy slow host, a throttling host, a dead domain and a refusing
    host spread over the input, and a long tail."""
    throttled = [web.url("throttle.test", f"t{i}.jpg") for i in range(15)]
    rest = [web.url("big.test", f"b{i}.jpg") for i in range(80)]
    rest += [web.url("gone.test", f"g{i}.jpg") for i in range(20)]
    rest += [web.url("refused.test", f"r{i}.jpg") for i in range(10)]
    rest += [web.url(f"small{h}.test", f"s{i}.jpg") for h in range(40) for i in range(2)]
    random.Random(7).shuffle(rest)
    return throttled + rest


def test_limits_hold_across_two_workers_as_the_server_counts_them(tmp_path, monkeypatch):
    hosts = [
        Host("big.test", "slow", latency_s=0.03),
        Host("throttle.test", "throttle", retry_after_s=RETRY_AFTER, every=5),
        Host("gone.test", "dead"),
        Host("refused.test", "refused"),
        *[Host(f"small{h}.test") for h in range(40)],
    ]
    images = [jpeg_bytes(smooth_photo(i)) for i in range(4)]
    log = tmp_path / "lookups.log"
    with HostWeb(hosts, images) as web:
        web.write_hosts_file(str(tmp_path / "hosts.json"), log=str(log))
        monkeypatch.setenv(HOSTS_ENV, str(tmp_path / "hosts.json"))
        # no share is set: the routing (download/lanes.py) gives each worker its part of a host
        urls = _rows(web)
        pq.write_table(
            pa.table({"URL": urls, "TEXT": [f"picture number {i} of the web" for i in range(len(urls))]}),
            tmp_path / "rows.parquet",
        )
        recipe = recipe_from_dict(
            {
                "name": "polite",
                "input": {"path": str(tmp_path / "rows.parquet")},
                "filters": {"language": {"enabled": False}},
                "download": {
                    "allow_private": True,
                    "threads": 16,
                    "timeout_s": 5,
                    "backoff_s": 0.1,
                    "max_backoff_s": 0.2,
                    "per_host": {
                        "max_concurrent": MAX_CONCURRENT,
                        "max_requests_per_s": MAX_RPS,
                        "dead_after_failures": 3,
                        "dns_ttl_s": 300,
                        "dns_negative_ttl_s": 300,
                    },
                },
                "clip": {"enabled": False},
                "dedup": {"exact": False},  # the web serves four pictures
                "store": {"block_rows": 50},
                "shard": {"samples_per_shard": 100},
            }
        )
        beam = ["--direct_running_mode=multi_processing", f"--direct_num_workers={WORKERS}"]
        result = run_build(recipe, str(tmp_path / "out"), beam)
        stats = web.stats()

    big, throttle = stats["big.test"], stats["throttle.test"]
    print(
        f"big.test: {big.requests} requests, peak {big.peak_concurrent} at once, at most "
        f"{big.max_in_window(2.0)} in 2 s; throttle.test: {len(throttle.throttled)} 429s; "
        f"lookups of gone.test: {log.read_text().split().count('gone.test')}"
    )
    print(summary(result))

    # every input row is in the index exactly once
    index = index_rows(tmp_path / "out")
    assert sorted(r["url"] for r in index) == sorted(urls)
    assert len({r["id"] for r in index}) == len(urls)

    # the busy host: never more than max_concurrent at once, and its rate within the limit
    assert big.requests == 80
    assert big.peak_concurrent <= MAX_CONCURRENT
    window = 2.0
    assert big.max_in_window(window) <= MAX_RPS * window * 1.1, big.max_in_window(window)
    # the build did press the host: otherwise the limits were never tested
    assert big.max_in_window(window) >= MAX_RPS * window * 0.5

    # the throttling host: nothing in the Retry-After after each 429 but what was already on its way
    assert throttle.throttled, "the host never answered 429"
    for sent in throttle.throttled:
        during = [t - sent for t in throttle.times if sent + IN_FLIGHT_S < t < sent + RETRY_AFTER]
        assert not during, f"requests {during} s after a 429 with Retry-After: {RETRY_AFTER:g}"
    throttled_rows = [
        (r["reason"], r["detail"]) for r in index if "throttle.test" in r["url"] and r["status"] != "kept"
    ]
    assert not throttled_rows  # each retried in time

    # the dead domain: looked up at most once per worker, never connected to, its rows dropped
    lookups = collections.Counter(
        line.split()[0] for line in log.read_text().splitlines() if line.endswith(" gone.test")
    )
    assert 1 <= len(lookups) <= WORKERS and max(lookups.values()) == 1, lookups
    gone = [r for r in index if "gone.test" in r["url"]]
    assert {r["reason"] for r in gone} <= {"dns_error", "host_unavailable"}
    unavailable = [r for r in gone if r["reason"] == "host_unavailable"]
    assert len(unavailable) >= len(gone) - WORKERS * MAX_CONCURRENT
    assert all("NXDOMAIN" in r["detail"] for r in unavailable)
    assert stats["gone.test"].requests == 0

    # the refusing host: cut off after its run of failures in each worker
    refused = [r for r in index if "refused.test" in r["url"]]
    assert {r["reason"] for r in refused} <= {"connect_error", "host_unavailable"}
    assert any(r["reason"] == "host_unavailable" for r in refused)
    assert all("3 consecutive connection failures" in r["detail"] for r in refused if r["reason"] == "host_unavailable")

    # the long tail was fetched whole
    assert all(r["status"] == "kept" for r in index if ".test/s" in r["url"] and "small" in r["url"])

    # the build's own per-host figures: requests per host, 429s, hosts cut off
    hosts = result.hosts["hosts"]
    assert hosts["big.test"]["requests"] == 80
    assert hosts["throttle.test"]["http_429"] == len(throttle.throttled)
    assert hosts["gone.test"]["cut_off"] and hosts["refused.test"]["cut_off"]
    manifest = json.loads((Path(tmp_path / "out") / "manifest.json").read_text())
    assert manifest["hosts"]["busiest"][0]["host"] == "big.test"

    # ... and in the stats report
    table, totals = stats_compute.politeness(tmp_path / "out")
    rows = table.to_pylist()
    assert rows[0]["host"] == "big.test" and rows[0]["requests"] == 80
    assert totals["http_429"] == len(throttle.throttled)
    assert {r["host"] for r in rows if r["cut_off"]} == {"gone.test", "refused.test"}
    assert "politeness" in [s.name for s in report.sections(str(tmp_path / "out"), samples=0)]
