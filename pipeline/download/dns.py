"""Name resolution for the fetcher: a per-worker cache, and the test-only hosts file.

``CachingResolver`` wraps a resolver (``fetch.Resolver``: ``(host, port) -> addresses``) with a
cache: an answer is reused for ``ttl_s`` seconds, a name that does not exist (NXDOMAIN) is not
asked again for ``negative_ttl_s`` seconds, and concurrent lookups of one name wait for a single
lookup (without that, the 16 threads that start on a new host at once would all ask).  Other
failures (a resolver that timed out or answered SERVFAIL, ``EAI_AGAIN``) are not cached: the next
row asks again.  The standard library has no DNS cache and the system's (nscd, systemd-resolved)
is often absent in containers, which is why one is written here: img2dataset's users are told to
set up a caching resolver themselves.

The cache sits below the fetcher's address checks: the fetcher checks every address it gets,
cached or not, and connects to the address it checked, so the SSRF guard is as strong as without
the cache.  One fixed time-to-live is used rather than the records' own TTLs, which getaddrinfo
does not report; an address that changes within the TTL is still checked before it is used.

``hosts_file_resolver`` (tests and benchmarks only): the environment variable
``FLAMINGO_CORPUS_TEST_HOSTS`` names a JSON file ``{"hosts": {name: address or null}, "log":
path}``; the workers, separate processes, resolve the listed names by it (null: NXDOMAIN), and
only to loopback addresses (127.0.0.0/8; any other address makes the file an error), and append
``<pid> <name>`` to ``log`` for each lookup they make (the cache's misses), so a test can count
lookups per worker.  Names it does not list resolve as usual.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import os
import socket
import threading
import time
from typing import Callable, Dict, Optional, Sequence

__all__ = [
    "CachingResolver",
    "HOSTS_ENV",
    "NameNotFound",
    "is_nxdomain",
    "hosts_file_resolver",
    "resolver_from_env",
    "shared_resolver",
]

Resolver = Callable[[str, int], Sequence[str]]
HOSTS_ENV = "FLAMINGO_CORPUS_TEST_HOSTS"
# Names one worker keeps answers for (least recently stored dropped first).
MAX_NAMES = 200_000
_NXDOMAIN_ERRNOS = frozenset(e for e in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if e)


class NameNotFound(socket.gaierror):
    """The name does not exist (NXDOMAIN), as ``getaddrinfo`` says it: ``EAI_NONAME``."""

    def __init__(self, host: str):
        super().__init__(socket.EAI_NONAME, f"Name or service not known: {host}")


def is_nxdomain(exc: BaseException) -> bool:
    """True when ``exc`` says the name does not exist (not that the lookup failed)."""
    return isinstance(exc, socket.gaierror) and exc.errno in _NXDOMAIN_ERRNOS


class _Pending:
    """A lookup in progress that other threads wait for."""

    def __init__(self):
        self.done = threading.Event()
        self.result: Optional[list] = None
        self.error: Optional[BaseException] = None


class CachingResolver:
    """``resolver`` with a time-to-live cache, negative caching and one lookup at a time per
    name; thread-safe.  ``ttl_s`` 0 switches caching off (every call asks ``resolver``)."""

    def __init__(
        self,
        resolver: Resolver,
        ttl_s: float = 300.0,
        negative_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_names: int = MAX_NAMES,
    ):
        self.resolver, self.ttl_s, self.negative_ttl_s, self.clock = resolver, ttl_s, negative_ttl_s, clock
        self.max_names = max_names
        # (host, port) -> (expires, addresses or the NXDOMAIN error)
        self._cache: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
        self._pending: Dict[tuple, _Pending] = {}
        self._lock = threading.Lock()
        self.lookups = 0  # calls of ``resolver``: the cache's misses

    def __call__(self, host: str, port: int) -> list:
        key = (host.lower(), port)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                if hit[0] > self.clock():
                    return _answer(hit[1])
                del self._cache[key]
            found_pending = self._pending.get(key)
            mine = found_pending is None
            pending = self._pending[key] = _Pending() if found_pending is None else found_pending
        if not mine:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return list(pending.result or [])
        try:
            self.lookups += 1
            found = list(self.resolver(host, port))
        except BaseException as exc:
            pending.error = exc
            if is_nxdomain(exc) and self.negative_ttl_s > 0:
                self._store(key, exc, self.negative_ttl_s)
            raise
        else:
            pending.result = found
            if self.ttl_s > 0:
                self._store(key, found, self.ttl_s)
            return list(found)
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.done.set()

    def _store(self, key: tuple, value, ttl: float) -> None:
        with self._lock:
            self._cache[key] = (self.clock() + ttl, value)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_names:
                self._cache.popitem(last=False)


def _answer(value):
    if isinstance(value, socket.gaierror):  # a fresh error per caller: threads share no traceback
        raise socket.gaierror(value.errno, value.strerror)
    return list(value)


# -- the test-only hosts file ---------------------------------------------------------------------

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def hosts_file_resolver(path: str, fallback: Optional[Resolver] = None) -> Resolver:
    """A resolver that answers the names of the hosts file at ``path`` (see the module docstring)
    and asks ``fallback`` (default: the system) for the others; ``ValueError`` when the file maps
    a name to anything but a loopback address."""
    from .fetch import system_resolver

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, dict):
        raise ValueError(f"{path}: expected {{'hosts': {{name: address or null}}, 'log': path}}")
    table: Dict[str, Optional[str]] = {}
    for name, address in hosts.items():
        if address is not None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{path}: {name!r} maps to {address!r}, not an IP address") from None
            if ip.version != 4 or ip not in _LOOPBACK:
                raise ValueError(f"{path}: {name!r} maps to {address}, outside 127.0.0.0/8: refused")
        table[str(name).lower()] = address
    log = data.get("log")
    fallback = fallback or system_resolver
    lock = threading.Lock()

    def resolve(host: str, port: int) -> list:
        if log:
            with lock, open(log, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {host}\n")
        name = host.lower()
        if name not in table:
            return list(fallback(host, port))
        address = table[name]
        if address is None:
            raise NameNotFound(host)
        return [address]

    return resolve


def resolver_from_env() -> Optional[Resolver]:
    """The hosts-file resolver when ``FLAMINGO_CORPUS_TEST_HOSTS`` names a file, else None."""
    path = os.environ.get(HOSTS_ENV)
    return hosts_file_resolver(path) if path else None


_SHARED: Dict[tuple, CachingResolver] = {}
_SHARED_LOCK = threading.Lock()


def shared_resolver(ttl_s: float, negative_ttl_s: float) -> CachingResolver:
    """This worker process's cached resolver (the system's, or the test hosts file's): one per
    process and TTLs, shared by every DoFn instance and thread of the process."""
    from .fetch import system_resolver

    key = (ttl_s, negative_ttl_s, os.getpid(), os.environ.get(HOSTS_ENV))
    with _SHARED_LOCK:
        cached = _SHARED.get(key)
        if cached is None:
            cached = _SHARED[key] = CachingResolver(resolver_from_env() or system_resolver, ttl_s, negative_ttl_s)
        return cached
