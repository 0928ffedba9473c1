"""Politeness per host: how many requests one host gets at once and per second, how it is slowed
down when it pushes back, and when it is given up for the run.

``HostGate`` is the bookkeeping, shared by the threads of one worker process (``shared_gate``) and
driven by two callers:

- the scheduler (``store/fetch.py``) asks ``try_start(host)`` before it submits a row's fetch: the
  answer is go (a concurrency slot and a request slot in the pacing were taken), wait until a time
  (the host is at its concurrency, paced, or paused), or dead (the host was cut off: the row is
  dropped as ``host_unavailable`` without a request).  ``finish(host)`` gives the slot back.
- the fetcher (``Fetcher(..., gate=...)``) reports the outcome of every request it makes,
  retries included (``record``), and asks ``reserve_retry`` before a retry, so that its own
  retries wait for the host's pause and take their place in the host's pacing.

The limits of a host (``HostLimits``) are scaled by ``share`` (in (0, 1]): a worker that fetches a
host together with other workers holds ``share`` of the host's limits, so the shares of all the
workers that fetch one host add up to the host's limits.  Concurrency is ``max_concurrent * share``
(at least 1) and the rate ``max_requests_per_s * share``, both times the host's current
``fraction``.

Pacing: requests to one host follow a schedule ``1 / rate`` seconds apart (GCRA, the virtual
scheduling form of a token bucket).  A request that starts late, because the scheduler's pass came
after its turn, keeps its place in the schedule when it is less than half an interval late (else
the schedule restarts from it): so requests start at least half an interval
apart and no one-second window of one worker sees more than ``rate + 1`` starts (in a window, the
k-th start is at least ``k - 1/2`` intervals after the first), while a host held to its rate gets
its rate, not the rate less the scheduler's lateness (a schedule restarted at each late start made
a host paced at 100/s get 60-70/s from a busy worker).  A bucket with room for a burst would let
a host see twice its rate in the first second.

Backoff (additive increase, multiplicative decrease, as TCP's congestion control): a 429 or 503
pauses the host until its ``Retry-After`` has passed (``pause_s`` when it names none, doubling
while they go on; ``max_pause_s`` at most) and halves its ``fraction`` (not below
``min_rate_fraction``); so does a run of ``slow_after_failures`` timeouts, resets or other 5xx
(without the pause).  Each answer that is not one of those gives ``recovery_per_success`` of the
limits back.  Halving on trouble and adding back slowly is the scheme that lets many independent
senders share one bottleneck without overloading it (Chiu and Jain, 1989); a fixed pause alone
would hit the host again at full speed after each pause.

Cut-off: a name that does not exist (NXDOMAIN), ``dead_after_failures`` connection failures
(refused, unreachable, connect timeouts, DNS timeouts) in a row, or a ``Retry-After`` longer than
``max_pause_s`` cut the host off for the run: its remaining rows are not requested.

The key is the host name, lower case, as it goes on the wire (IDNA), not the registrable domain:
the host name is what a server (or a CDN's edge for it) answers for, and what a 429 or a dead
address is about.  Grouping by registrable domain would need the public suffix list (the
``tldextract`` package bundles one, not a dependency here), and would hold the many independent
sites of a hosting platform (``*.blogspot.com``, ``*.wordpress.com``, ...) to one site's limits.
The cost: one operator's many host names (``img1.example.com``, ``img2.example.com``) each get the
full limits.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

__all__ = ["HostLimits", "HostGate", "host_key", "shared_gate", "GO", "WAIT", "DEAD"]

GO, WAIT, DEAD = "go", "wait", "dead"

# What one request's outcome means for its host (``outcome_of``).
OK = "ok"  # an answer that is not 429/503/5xx: the host is alive and willing
THROTTLED = "throttled"  # 429, 503: the host asks us to slow down
SLOW = "slow"  # a timeout, a reset, another 5xx: the host may be struggling
UNREACHABLE = "unreachable"  # refused, unreachable, connect timeout, DNS timeout
NXDOMAIN = "nxdomain"  # the name does not exist

_SLOW_REASONS = frozenset({"timeout", "connection_reset", "truncated", "read_error"})
_UNREACHABLE_REASONS = frozenset({"connect_error", "timeout", "dns_timeout"})
# Hosts whose state is kept before idle, healthy ones are forgotten (their next request starts
# afresh): a worker that meets millions of hosts keeps only the ones that matter.
MAX_HOSTS = 100_000
# Hosts whose figures one ``drain_figures`` returns at most (the busiest and the ones cut off).
TOP_HOSTS = 100


@dataclass(frozen=True)
class HostLimits:
    """The politeness settings of a build (``recipe.PerHostConfig``), for one whole host."""

    max_concurrent: int = 16  # 0: unlimited
    max_requests_per_s: float = 100.0  # 0: unlimited
    pause_s: float = 1.0
    max_pause_s: float = 60.0
    min_rate_fraction: float = 0.05
    recovery_per_success: float = 0.05
    slow_after_failures: int = 3  # 0: never
    dead_after_failures: int = 5  # 0: never

    @classmethod
    def from_config(cls, cfg) -> "HostLimits":
        """From ``recipe.PerHostConfig`` (or anything with the same attributes)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


def host_key(url: object) -> Optional[str]:
    """The host a URL's request goes to, as the gate keys it: the host name in lower case and
    IDNA (an IP literal as written); None when there is none (the fetcher drops such a URL)."""
    if not isinstance(url, str):
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return host.lower()


def outcome_of(reason: Optional[str], status: Optional[int], nxdomain: bool = False) -> Optional[str]:
    """What one request's result says about its host: ``OK``, ``THROTTLED``, ``SLOW``,
    ``UNREACHABLE``, ``NXDOMAIN``, or None when it says nothing (refused before any request:
    a bad URL, a private address, ...; or an answer judged on its content)."""
    if reason is None:
        return OK
    if reason == "dns_error":
        return NXDOMAIN if nxdomain else None
    if reason in ("http_429", "http_503"):
        return THROTTLED
    if reason.startswith("http_5"):
        return SLOW
    if reason in _UNREACHABLE_REASONS:
        return UNREACHABLE
    if reason in _SLOW_REASONS:
        return SLOW
    if status is not None:  # an answer came: the host is there (404, not an image, too large, ...)
        return OK
    return None


@dataclass
class _Host:
    """One host's state in one worker."""

    active: int = 0  # requests in flight
    next_start: float = -math.inf  # earliest start of the next request (pacing)
    paused_until: float = -math.inf  # a 429/503 pause
    fraction: float = 1.0  # share of the limits in force (AIMD)
    throttles: int = 0  # 429/503 in a row (the pause doubles)
    slow_run: int = 0  # timeouts, resets, 5xx in a row
    fail_run: int = 0  # connection failures in a row
    dead: Optional[str] = None  # why the host was cut off
    share: float = 1.0  # this worker's share of the host's limits


@dataclass
class HostFigures:
    """What one worker did to one host (summed over workers by ``merge_figures``)."""

    requests: int = 0
    http_429: int = 0
    http_5xx: int = 0
    rows_cut_off: int = 0  # rows dropped as host_unavailable
    cut_off: Optional[str] = None
    peak_rps: int = 0  # most requests started in one clock second
    second: int = -1  # the clock second being counted
    in_second: int = 0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "http_429": self.http_429,
            "http_5xx": self.http_5xx,
            "rows_cut_off": self.rows_cut_off,
            "cut_off": self.cut_off,
            "peak_rps": self.peak_rps,
        }


class HostGate:
    """Per-host concurrency, pacing, backoff and cut-off for one worker; thread-safe.

    ``share`` in (0, 1] scales the limits (see the module docstring); ``clock`` returns seconds
    (monotonic) and is injected by tests.
    """

    def __init__(
        self,
        limits: HostLimits = HostLimits(),
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_hosts: int = MAX_HOSTS,
    ):
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self.limits, self.share, self.clock = limits, share, clock
        self.max_hosts = max_hosts
        self._hosts: Dict[str, _Host] = {}
        self._figures: Dict[str, HostFigures] = {}
        self._lock = threading.Lock()

    # -- limits in force --

    def concurrency(self, host: str) -> float:
        """Requests ``host`` may have in flight now (inf: unlimited)."""
        with self._lock:
            return self._concurrency(self._hosts.get(host) or _Host(share=self.share))

    def rate(self, host: str) -> float:
        """Requests per second ``host`` may get now (inf: unlimited)."""
        with self._lock:
            return self._rate(self._hosts.get(host) or _Host(share=self.share))

    def cut_off(self, host: str) -> Optional[str]:
        """Why ``host`` was cut off, None when it was not."""
        with self._lock:
            h = self._hosts.get(host)
            return h.dead if h is not None else None

    def _concurrency(self, h: _Host) -> float:
        if not self.limits.max_concurrent:
            return math.inf
        return max(1, math.floor(self.limits.max_concurrent * h.share * h.fraction + 1e-9))

    def _rate(self, h: _Host) -> float:
        if not self.limits.max_requests_per_s:
            return math.inf
        return self.limits.max_requests_per_s * h.share * h.fraction

    # -- the scheduler's side --

    def try_start(
        self, host: Optional[str], now: Optional[float] = None, share: Optional[float] = None
    ) -> Tuple[str, object]:
        """``(GO, None)`` after taking a slot and a place in the pacing for a request to
        ``host``; ``(WAIT, when)`` when it may not start before ``when`` (or, at its concurrency,
        before one of its requests finishes: ``when`` is then ``inf``); ``(DEAD, why)`` when the
        host is cut off.  A URL without a host (None) always goes.  ``share``, when given, is
        this worker's share of this host's limits from now on (else the gate's ``share``)."""
        if host is None:
            return GO, None
        now = self.clock() if now is None else now
        with self._lock:
            h = self._host(host)
            if share is not None:
                if not 0 < share <= 1:
                    raise ValueError(f"share must be in (0, 1], got {share!r}")
                h.share = share
            if h.dead is not None:
                return DEAD, h.dead
            ready = max(h.next_start, h.paused_until)
            if ready > now:
                return WAIT, ready
            if h.active >= self._concurrency(h):
                return WAIT, math.inf
            h.active += 1
            self._take_turn(host, h, now)
            return GO, None

    def finish(self, host: Optional[str]) -> None:
        """A request ``try_start`` let go is over (whatever its outcome)."""
        if host is None:
            return
        with self._lock:
            h = self._hosts.get(host)
            if h is not None and h.active > 0:
                h.active -= 1

    def cut_off_row(self, host: str) -> None:
        """Count a row of ``host`` dropped because the host is cut off."""
        with self._lock:
            self._figure(host).rows_cut_off += 1

    # -- the fetcher's side --

    def reserve_retry(self, host: Optional[str], earliest: float) -> Tuple[str, object]:
        """A retry of a request to ``host`` (its slot still held) wants to go at ``earliest``:
        ``(GO, when)`` with the time it may go (after the host's pause, in its place in the
        pacing, which it takes), or ``(DEAD, why)``."""
        if host is None:
            return GO, earliest
        with self._lock:
            h = self._host(host)
            if h.dead is not None:
                return DEAD, h.dead
            when = max(earliest, h.next_start, h.paused_until)
            self._take_turn(host, h, when)
            return GO, when

    def record(
        self,
        host: Optional[str],
        outcome: Optional[str],
        *,
        status: Optional[int] = None,
        retry_after: Optional[float] = None,
        detail: str = "",
        now: Optional[float] = None,
    ) -> None:
        """The outcome (``outcome_of``) of one request to ``host``; ``status`` the HTTP status
        when an answer came, ``retry_after`` its Retry-After in seconds."""
        if host is None or outcome is None:
            return
        now = self.clock() if now is None else now
        lim = self.limits
        with self._lock:
            h = self._host(host)
            fig = self._figure(host)
            if status == 429:
                fig.http_429 += 1
            elif status is not None and 500 <= status < 600:
                fig.http_5xx += 1
            if outcome == OK:
                h.fail_run = h.slow_run = h.throttles = 0
                h.fraction = min(1.0, h.fraction + lim.recovery_per_success)
            elif outcome == THROTTLED:
                h.fail_run = 0
                pause = retry_after if retry_after is not None else lim.pause_s * 2**h.throttles
                if retry_after is not None and retry_after > lim.max_pause_s:
                    self._cut_off(
                        host,
                        h,
                        f"host {host} cut off: asked to wait {retry_after:g} s (Retry-After), "
                        f"more than download.per_host.max_pause_s ({lim.max_pause_s:g} s)",
                    )
                    return
                h.throttles += 1
                h.paused_until = max(h.paused_until, now + min(pause, lim.max_pause_s))
                self._slow_down(h)
            elif outcome == NXDOMAIN:
                self._cut_off(host, h, f"host {host} cut off: the name does not exist (NXDOMAIN)")
            else:  # SLOW or UNREACHABLE
                if outcome == UNREACHABLE:
                    h.fail_run += 1
                elif status is not None:  # a 5xx: the host answered
                    h.fail_run = 0
                if lim.dead_after_failures and h.fail_run >= lim.dead_after_failures:
                    self._cut_off(
                        host,
                        h,
                        f"host {host} cut off after {h.fail_run} consecutive connection failures{_why(detail)}",
                    )
                    return
                h.slow_run += 1
                if lim.slow_after_failures and h.slow_run >= lim.slow_after_failures:
                    h.slow_run = 0
                    self._slow_down(h)

    # -- figures --

    def drain_figures(self, top: int = TOP_HOSTS) -> Dict[str, dict]:
        """The per-host figures since the last drain (the ``top`` busiest hosts and up to ``top``
        hosts cut off), and forget them; the peak rates restart too."""
        with self._lock:
            figures, self._figures = self._figures, {}
        busiest = sorted(figures.items(), key=lambda kv: (-kv[1].requests, kv[0]))[:top]
        cut = sorted(((k, f) for k, f in figures.items() if f.cut_off), key=lambda kv: (-kv[1].rows_cut_off, kv[0]))
        chosen = dict(busiest + cut[:top])
        totals = HostFigures()
        for f in figures.values():
            totals.requests += f.requests
            totals.http_429 += f.http_429
            totals.http_5xx += f.http_5xx
            totals.rows_cut_off += f.rows_cut_off
        out = {k: f.as_dict() for k, f in chosen.items()}
        if figures:
            out[TOTAL] = {
                **totals.as_dict(),
                "hosts": len(figures),
                "hosts_cut_off": sum(1 for f in figures.values() if f.cut_off),
                "peak_rps": max(f.peak_rps for f in figures.values()),
            }
        return out

    # -- internals (under the lock) --

    def _host(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            if len(self._hosts) >= self.max_hosts:
                self._forget_idle()
            h = self._hosts[host] = _Host(share=self.share)
        return h

    def _figure(self, host: str) -> HostFigures:
        f = self._figures.get(host)
        if f is None:
            f = self._figures[host] = HostFigures()
        return f

    def _take_turn(self, host: str, h: _Host, when: float) -> None:
        """A request to ``h`` starts at ``when``: the next may start one interval after this
        one's turn in the schedule when it came less than half an interval late, else one
        interval after ``when`` (see Pacing)."""
        rate = self._rate(h)
        interval = 1.0 / rate if rate != math.inf else 0.0
        # less than half an interval late (never early: a start waits for its turn): the schedule holds
        on_schedule = when - h.next_start < interval / 2
        h.next_start = (h.next_start if on_schedule else when) + interval
        fig = self._figure(host)
        fig.requests += 1
        second = math.floor(when)
        if second != fig.second:
            fig.second, fig.in_second = second, 0
        fig.in_second += 1
        fig.peak_rps = max(fig.peak_rps, fig.in_second)

    def _slow_down(self, h: _Host) -> None:
        h.fraction = max(self.limits.min_rate_fraction, h.fraction / 2)

    def _cut_off(self, host: str, h: _Host, why: str) -> None:
        if h.dead is None:
            h.dead = why
            self._figure(host).cut_off = why

    def _forget_idle(self) -> None:
        """Drop the state of hosts with nothing to remember: no request in flight, not paced or
        paused any more, at full rate, not cut off."""
        now = self.clock()
        idle = [
            k
            for k, h in self._hosts.items()
            if h.active == 0
            and h.dead is None
            and h.fraction >= 1.0
            and max(h.next_start, h.paused_until) <= now
            and not (h.fail_run or h.slow_run or h.throttles)
        ]
        for k in idle:
            del self._hosts[k]


TOTAL = "*"  # the key of the totals in ``drain_figures`` and ``merge_figures``


def _why(detail: str) -> str:
    return f" ({detail[:160]})" if detail else ""


def merge_figures(a: dict, b: dict, top: int = TOP_HOSTS) -> dict:
    """Two sets of per-host figures (``drain_figures``, or merged ones) added up: requests and
    counts add, peaks of different workers add (an upper bound of what the host saw: the workers'
    busiest seconds need not coincide), the first cut-off reason is kept; trimmed to the ``top``
    busiest hosts and ``top`` cut off.  Each set is ``{"worker": id, "hosts": {...}}`` or, merged,
    ``{"workers": {id: {host: peak}}, "hosts": {...}}``."""
    hosts: Dict[str, dict] = {}
    peaks: Dict[str, Dict[str, int]] = {}  # worker -> host -> its peak
    for side in (a, b):
        for worker, by_host in _peaks(side).items():
            mine = peaks.setdefault(worker, {})
            for host, p in by_host.items():
                mine[host] = max(mine.get(host, 0), p)
        for host, f in (side.get("hosts") or {}).items():
            have = hosts.get(host)
            if have is None:
                hosts[host] = dict(f)
                continue
            for k, v in f.items():
                if k == "cut_off":
                    have[k] = have.get(k) or v
                elif k != "peak_rps":
                    have[k] = have.get(k, 0) + v
    for host, f in hosts.items():
        f["peak_rps"] = sum(by_host.get(host, 0) for by_host in peaks.values())
    total = hosts.pop(TOTAL, None)
    busiest = sorted(hosts.items(), key=lambda kv: (-kv[1].get("requests", 0), kv[0]))[:top]
    cut = sorted(
        ((k, f) for k, f in hosts.items() if f.get("cut_off")), key=lambda kv: (-kv[1].get("rows_cut_off", 0), kv[0])
    )[:top]
    kept = dict(busiest + cut)
    if total is not None:
        kept[TOTAL] = total
    return {"workers": {w: {h: p for h, p in ps.items() if h in kept} for w, ps in peaks.items()}, "hosts": kept}


def _peaks(side: dict) -> Dict[str, Dict[str, int]]:
    if "workers" in side:
        return side["workers"]
    if "worker" in side:
        return {side["worker"]: {h: f.get("peak_rps", 0) for h, f in (side.get("hosts") or {}).items()}}
    return {}


# -- one gate per worker process ------------------------------------------------------------------

_SHARED: Dict[tuple, HostGate] = {}
_SHARED_LOCK = threading.Lock()
_WORKER_IDS: Dict[int, str] = {}


def worker_id() -> str:
    """A name for this worker process in the per-host figures (a forked child gets its own)."""
    pid = os.getpid()
    if pid not in _WORKER_IDS:
        _WORKER_IDS[pid] = f"{pid}-{uuid.uuid4().hex[:6]}"
    return _WORKER_IDS[pid]


def shared_gate(limits: HostLimits, share: float = 1.0) -> HostGate:
    """The gate of this process for ``limits`` and ``share``: every DoFn instance (and bundle
    thread) of one worker process uses the same one, so the process as a whole keeps the limits."""
    key = (limits, share, os.getpid())
    with _SHARED_LOCK:
        gate = _SHARED.get(key)
        if gate is None:
            gate = _SHARED[key] = HostGate(limits, share)
        return gate


# -- in the manifest and the build summary --------------------------------------------------------

# Hosts listed by name in the manifest and the summary (the busiest, and those cut off).
LISTED_HOSTS = 10


def politeness_section(figures: Optional[dict], top: int = LISTED_HOSTS) -> Optional[dict]:
    """The manifest's ``hosts`` section from a run's merged per-host figures (``_build/hosts.json``):
    totals, the ``top`` busiest hosts and the ``top`` hosts cut off.  Hosts fetched by several
    workers are counted once per worker in ``hosts`` and ``hosts_cut_off``, and their
    ``peak_rps`` is the sum of the workers' busiest seconds (an upper bound)."""
    if not figures or not figures.get("hosts"):
        return None
    hosts = dict(figures["hosts"])
    total = hosts.pop(TOTAL, {})
    ranked = sorted(hosts.items(), key=lambda kv: (-kv[1].get("requests", 0), kv[0]))
    cut = sorted(
        ((k, f) for k, f in hosts.items() if f.get("cut_off")), key=lambda kv: (-kv[1].get("rows_cut_off", 0), kv[0])
    )
    return {
        "requests": total.get("requests", 0),
        "http_429": total.get("http_429", 0),
        "http_5xx": total.get("http_5xx", 0),
        "hosts": total.get("hosts", len(hosts)),
        "hosts_cut_off": total.get("hosts_cut_off", len(cut)),
        "rows_cut_off": total.get("rows_cut_off", 0),
        "peak_rps": max((f.get("peak_rps", 0) for f in hosts.values()), default=0),
        "busiest": [
            {"host": k, **{n: f.get(n, 0) for n in ("requests", "http_429", "http_5xx", "peak_rps")}}
            for k, f in ranked[:top]
        ],
        "cut_off": [{"host": k, "rows": f.get("rows_cut_off", 0), "why": f["cut_off"]} for k, f in cut[:top]],
    }


def summary_lines(section: Optional[dict], top: int = 5) -> list:
    """The build summary's lines about politeness (``politeness_section``)."""
    if not section or not section.get("requests"):
        return []
    lines = [
        f"  requests       {section['requests']:>10,} to {section['hosts']:,} hosts; "
        f"{section['http_429']:,} answered 429, {section['http_5xx']:,} 5xx; "
        f"busiest second of one host: {section['peak_rps']:,} requests",
    ]
    busiest = ", ".join(
        f"{b['host']} {b['requests']:,}" + (f" ({b['http_429']:,} x 429)" if b["http_429"] else "")
        for b in section["busiest"][:top]
    )
    if busiest:
        lines.append(f"  busiest hosts  {busiest}")
    if section.get("hosts_cut_off"):
        lines.append(
            f"  hosts cut off  {section['hosts_cut_off']:>10,} ({section['rows_cut_off']:,} rows not requested: "
            "download/host_unavailable)"
        )
        lines += [f"    {c['host']}: {c['why']}" for c in section["cut_off"][:top]]
    return lines
