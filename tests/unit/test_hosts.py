"""The per-host gate (download/hosts.py): concurrency, pacing, backoff, recovery, cut-off and
figures, on an injected clock (no sleeps); and the fetcher's retries going through it."""

from __future__ import annotations

import math
import random
import socket
import threading
import time

import pytest

from flamingo_corpus.download.fetch import Fetcher, FetchPolicy
from flamingo_corpus.download.hosts import (
    DEAD,
    GO,
    NXDOMAIN,
    OK,
    SLOW,
    THROTTLED,
    TOTAL,
    UNREACHABLE,
    WAIT,
    HostGate,
    HostLimits,
    host_key,
    merge_figures,
    outcome_of,
)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def gate(share: float = 1.0, **limits) -> tuple[HostGate, Clock]:
    clock = Clock()
    return HostGate(HostLimits(**limits), share=share, clock=clock), clock


def test_host_key_is_the_lower_case_idna_host_name():
    assert host_key("https://IMG.Example.com:8443/a.jpg?x#y") == "img.example.com"
    assert host_key("http://bücher.de/x.jpg") == "xn--bcher-kva.de"
    assert host_key("http://[::1]:80/x") == "::1"
    assert host_key("not a url") is None and host_key(None) is None and host_key("http:///x") is None


def test_a_scheduler_that_asks_late_still_gets_the_rate_and_no_window_sees_more():
    # the scheduler's passes come at irregular times after a host's turn (the worker is busy):
    # the host must still get its rate, and no one-second window more than rate + 1 starts
    g, clock = gate(max_concurrent=0, max_requests_per_s=20)
    rng, starts = random.Random(3), []
    while clock.t < 1030.0:
        if g.try_start("a")[0] == GO:
            starts.append(clock.t)
        clock.t += rng.uniform(0.0, 0.02)  # passes 0-20 ms apart; the interval is 50 ms
    assert len(starts) >= 0.97 * 20 * 30  # a schedule restarted at every late start: ~17/s
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.025 - 1e-9  # never closer than half an interval
    most = max(sum(1 for t in starts[i:] if t < s + 1.0) for i, s in enumerate(starts))
    assert most <= 21


def test_concurrency_is_held_and_freed():
    g, _ = gate(max_concurrent=2, max_requests_per_s=0)
    assert g.try_start("a")[0] == GO and g.try_start("a")[0] == GO
    assert g.try_start("a") == (WAIT, math.inf)
    assert g.try_start("b")[0] == GO  # another host is not held up
    g.finish("a")
    assert g.try_start("a")[0] == GO


def test_requests_are_paced_one_interval_apart():
    g, clock = gate(max_concurrent=0, max_requests_per_s=10)
    assert g.try_start("a")[0] == GO
    verdict, when = g.try_start("a")
    assert verdict == WAIT and when == pytest.approx(clock.t + 0.1)
    clock.t += 0.099
    assert g.try_start("a")[0] == WAIT
    clock.t += 0.002
    assert g.try_start("a")[0] == GO
    # over 10 s of asking all the time, at most rate * 10 + 1 requests start
    started, t0 = 0, clock.t
    while clock.t < t0 + 10:
        started += g.try_start("a")[0] == GO
        clock.t += 0.001
    assert 99 <= started <= 101


def test_share_scales_concurrency_and_rate_with_at_least_one_slot():
    g, clock = gate(share=0.25, max_concurrent=16, max_requests_per_s=40)
    assert g.concurrency("a") == 4 and g.rate("a") == pytest.approx(10)
    tiny, _ = gate(share=0.01, max_concurrent=16, max_requests_per_s=40)
    assert tiny.concurrency("a") == 1
    # a share given with a request is that host's from then on
    assert g.try_start("big", share=0.5)[0] == GO
    assert g.concurrency("big") == 8 and g.rate("big") == pytest.approx(20)
    with pytest.raises(ValueError):
        HostGate(HostLimits(), share=0)
    with pytest.raises(ValueError):
        g.try_start("a", share=1.5)


def test_zero_means_unlimited():
    g, _ = gate(max_concurrent=0, max_requests_per_s=0)
    assert all(g.try_start("a")[0] == GO for _ in range(10_000))
    assert g.concurrency("a") == math.inf and g.rate("a") == math.inf


def test_a_429_pauses_the_host_for_its_retry_after_and_halves_its_rate():
    g, clock = gate(max_concurrent=4, max_requests_per_s=8)
    assert g.try_start("a")[0] == GO
    g.record("a", THROTTLED, status=429, retry_after=2.0)
    verdict, when = g.try_start("a")
    assert verdict == WAIT and when == pytest.approx(clock.t + 2.0)
    assert g.rate("a") == pytest.approx(4) and g.concurrency("a") == 2
    clock.t += 1.999
    assert g.try_start("a")[0] == WAIT
    clock.t += 0.002
    assert g.try_start("a")[0] == GO
    assert g.try_start("other")[0] == GO  # other hosts never waited


def test_pause_without_retry_after_doubles_and_is_capped():
    g, clock = gate(pause_s=1.0, max_pause_s=3.0, max_requests_per_s=0)
    pauses = []
    for _ in range(4):
        g.record("a", THROTTLED, status=503)
        pauses.append(g.try_start("a")[1] - clock.t)
        clock.t += 10
    assert pauses == pytest.approx([1.0, 2.0, 3.0, 3.0])


def test_a_retry_after_longer_than_max_pause_cuts_the_host_off():
    g, _ = gate(max_pause_s=60)
    g.record("a", THROTTLED, status=429, retry_after=3600)
    verdict, why = g.try_start("a")
    assert verdict == DEAD and "3600 s (Retry-After)" in why and "max_pause_s" in why


def test_rate_recovers_additively_after_successes_and_never_drops_below_the_floor():
    g, _ = gate(max_concurrent=0, max_requests_per_s=100, min_rate_fraction=0.1, recovery_per_success=0.1)
    for _ in range(10):
        g.record("a", THROTTLED, status=429, retry_after=0)
    assert g.rate("a") == pytest.approx(10)  # floor: 0.1 of 100
    rates = []
    for _ in range(10):
        g.record("a", OK, status=200)
        rates.append(round(g.rate("a")))
    assert rates == [20, 30, 40, 50, 60, 70, 80, 90, 100, 100]


def test_a_run_of_timeouts_or_resets_halves_the_rate():
    g, _ = gate(max_requests_per_s=50, slow_after_failures=3, dead_after_failures=0)
    g.record("a", SLOW)
    g.record("a", SLOW)
    assert g.rate("a") == pytest.approx(50)
    g.record("a", SLOW)
    assert g.rate("a") == pytest.approx(25)
    g.record("a", OK, status=200)  # a success breaks the run (and gives some back)
    g.record("a", SLOW)
    g.record("a", SLOW)
    assert g.rate("a") == pytest.approx(25 + 50 * 0.05)


def test_consecutive_connection_failures_cut_the_host_off_and_a_success_resets_the_run():
    g, _ = gate(dead_after_failures=3, slow_after_failures=0)
    for _ in range(2):
        g.record("a", UNREACHABLE, detail="connect_error: refused")
    g.record("a", OK, status=404)  # an answer, even a 404, says the host is there
    for _ in range(2):
        g.record("a", UNREACHABLE)
    assert g.try_start("a")[0] == GO
    g.record("a", UNREACHABLE, detail="connect_error: refused")
    verdict, why = g.try_start("a")
    assert verdict == DEAD and why == "host a cut off after 3 consecutive connection failures (connect_error: refused)"
    assert g.reserve_retry("a", 0.0)[0] == DEAD


def test_nxdomain_cuts_the_host_off_at_once():
    g, _ = gate()
    g.record("gone.example", NXDOMAIN)
    verdict, why = g.try_start("gone.example")
    assert verdict == DEAD and "NXDOMAIN" in why and "gone.example" in why


def test_outcome_of_classifies_what_a_request_says_about_its_host():
    assert outcome_of(None, 200) == OK
    assert outcome_of("http_404", 404) == OK and outcome_of("not_image", 200) == OK
    assert outcome_of("http_429", 429) == THROTTLED and outcome_of("http_503", 503) == THROTTLED
    assert outcome_of("http_500", 500) == SLOW and outcome_of("connection_reset", None) == SLOW
    assert outcome_of("connect_error", None) == UNREACHABLE and outcome_of("timeout", None) == UNREACHABLE
    assert outcome_of("dns_error", None, nxdomain=True) == NXDOMAIN
    assert outcome_of("dns_error", None) is None  # SERVFAIL and friends: not definitive
    assert outcome_of("bad_url", None) is None and outcome_of("private_address", None) is None


def test_a_retry_waits_for_the_pause_and_takes_its_turn_in_the_pacing():
    g, clock = gate(max_requests_per_s=10)
    assert g.try_start("a")[0] == GO
    g.record("a", THROTTLED, status=429, retry_after=2)
    verdict, when = g.reserve_retry("a", clock.t + 0.5)
    assert verdict == GO and when == pytest.approx(clock.t + 2)
    # the next request after the retry comes one interval (of the halved rate) later
    assert g.try_start("a", now=clock.t + 2.01) == (WAIT, pytest.approx(clock.t + 2 + 1 / 5))


def test_figures_count_requests_429s_5xx_cut_offs_and_the_peak_second():
    g, clock = gate(max_concurrent=0, max_requests_per_s=0)
    for _ in range(7):
        g.try_start("a")
    clock.t += 1
    for _ in range(3):
        g.try_start("a")
    g.record("a", THROTTLED, status=429, retry_after=0)
    g.record("a", SLOW, status=502)
    g.record("dead.example", NXDOMAIN)
    g.cut_off_row("dead.example")
    g.cut_off_row("dead.example")
    f = g.drain_figures()
    assert f["a"] == {
        "requests": 10,
        "http_429": 1,
        "http_5xx": 1,
        "rows_cut_off": 0,
        "cut_off": None,
        "peak_rps": 7,
    }
    assert f["dead.example"]["rows_cut_off"] == 2 and "NXDOMAIN" in f["dead.example"]["cut_off"]
    assert f[TOTAL]["hosts"] == 2 and f[TOTAL]["hosts_cut_off"] == 1 and f[TOTAL]["requests"] == 10
    assert g.drain_figures() == {}  # drained


def test_merged_figures_add_counts_and_the_peaks_of_different_workers():
    one = {
        "worker": "w1",
        "hosts": {
            "a": {"requests": 5, "http_429": 1, "http_5xx": 0, "rows_cut_off": 0, "cut_off": None, "peak_rps": 4}
        },
    }
    again = {
        "worker": "w1",
        "hosts": {
            "a": {"requests": 2, "http_429": 0, "http_5xx": 0, "rows_cut_off": 0, "cut_off": None, "peak_rps": 3}
        },
    }
    two = {
        "worker": "w2",
        "hosts": {
            "a": {"requests": 1, "http_429": 0, "http_5xx": 1, "rows_cut_off": 0, "cut_off": None, "peak_rps": 1}
        },
    }
    merged = merge_figures(merge_figures(one, again), two)
    a = merged["hosts"]["a"]
    assert (a["requests"], a["http_429"], a["http_5xx"]) == (8, 1, 1)
    assert a["peak_rps"] == 4 + 1  # the same worker's peaks: the larger; two workers: added
    # merging in any grouping gives the same
    assert merge_figures(one, merge_figures(again, two))["hosts"]["a"] == a


def test_idle_healthy_hosts_are_forgotten_past_max_hosts_but_not_dead_or_busy_ones():
    clock = Clock()
    g = HostGate(HostLimits(max_requests_per_s=0), clock=clock, max_hosts=3)
    g.record("dead", NXDOMAIN)
    g.try_start("busy")
    g.try_start("idle")
    g.finish("idle")
    g.try_start("new")  # the 4th host: "idle" goes
    assert set(g._hosts) == {"dead", "busy", "new"}


# -- the fetcher's retries go through the gate ---------------------------------------------------


class _Counting:
    """A loopback server answering 429 with Retry-After to the first ``throttled`` requests."""

    def __init__(self, throttled: int, retry_after: float):
        self.times: list[float] = []
        self.throttled, self.retry_after = throttled, retry_after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(10)
        try:
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.recv(65536)
                    self.times.append(time.monotonic())
                    if len(self.times) <= self.throttled:
                        conn.sendall(
                            f"HTTP/1.0 429 Too Many\r\nRetry-After: {self.retry_after:g}\r\n"
                            "Content-Length: 0\r\n\r\n".encode()
                        )
                    else:
                        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 3\r\n\r\nabc")
        except OSError:
            return

    def close(self):
        self.sock.close()


def test_the_fetchers_retry_of_a_429_waits_for_the_gates_pause():
    """The fetcher's own backoff would retry after 0.05 s; the host's Retry-After (0.6 s, seen by
    the gate) holds the retry back."""
    server = _Counting(throttled=1, retry_after=0.6)
    try:
        g = HostGate(HostLimits(max_concurrent=1, max_requests_per_s=0))
        policy = FetchPolicy(allow_private=True, retries=2, backoff_s=0.05, max_backoff_s=0.05, timeout_s=5)
        with Fetcher(policy, gate=g) as fetcher:
            assert g.try_start("127.0.0.1")[0] == GO
            r = fetcher.fetch(f"http://127.0.0.1:{server.port}/a.jpg")
            g.finish("127.0.0.1")
        assert r.ok and r.attempts == 2
        assert server.times[1] - server.times[0] >= 0.6
        f = g.drain_figures()["127.0.0.1"]
        assert f["requests"] == 2 and f["http_429"] == 1
    finally:
        server.close()


def test_the_fetcher_gives_up_retrying_a_host_the_gate_cut_off():
    g = HostGate(HostLimits(dead_after_failures=1))
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: refused
    policy = FetchPolicy(allow_private=True, retries=5, backoff_s=0.01, max_backoff_s=0.01, timeout_s=2)
    with Fetcher(policy, gate=g) as fetcher:
        r = fetcher.fetch(f"http://127.0.0.1:{port}/a.jpg")
    assert r.reason == "connect_error" and r.attempts == 1  # no retry of a host cut off
    assert g.try_start("127.0.0.1")[0] == DEAD
