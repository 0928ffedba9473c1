"""Fetching one image URL safely: timeouts, retries, size caps, redirects and address checks.

``Fetcher.fetch(url)`` never raises for network, HTTP or input problems: it returns a
``FetchResult`` whose ``reason`` is ``None`` when the image was fetched, or one of the stable tokens
listed in ``REASONS`` (they end up in the per-row dataset index, so do not rename them).

What the fetcher guarantees, whatever the server does:

- Only the policy's schemes (``http``, ``https``) are ever requested; ``file:``, ``ftp:``,
  ``data:`` and the rest are refused before anything is resolved or opened, in the URL and in
  every redirect target.
- Unless ``allow_private`` is on, no request goes to an address that is not global (private,
  loopback, link-local, shared, reserved, multicast, unspecified, documentation, benchmarking), nor
  to one that wraps such an address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo). The
  fetcher resolves each host itself, checks every address the name resolves to, and then connects
  to a checked address: the name is never resolved a second time (by urllib3 or the OS), so a DNS
  answer that changes between the check and the connection (DNS rebinding) cannot steer the request
  inside. The Host header, TLS SNI and the certificate check still use the host name. Every
  redirect hop is resolved and checked the same way before it is requested.
- Time is bounded: resolving runs on a small thread pool and is waited for at most ``timeout_s``;
  each socket operation waits at most ``timeout_s``; and a watchdog shuts the connection down when
  the URL's ``deadline_s`` passes, whatever the fetch is waiting for then (the TLS handshake, the
  status line, headers, chunk framing or the body), so a server that drips a byte now and then
  cannot hold a fetch past its deadline.
- Bytes are bounded: a Content-Length over ``max_bytes`` is refused before reading; the bytes
  received and, for gzip or deflate bodies, the decoded bytes are counted as they come and the
  fetch stops at ``max_bytes``.  Decoding is done here with zlib's ``max_length``, so a small
  compressed body (a gzip bomb) never expands past the cap in memory.
- Framing is checked: a body shorter than its Content-Length is ``truncated``, one that goes on
  past it is ``extra_bytes``.

Retried (``retries`` extra tries, exponential backoff with jitter, ``Retry-After`` honoured up to
``max_backoff_s`` and never past the deadline): the reasons in ``TRANSIENT`` and HTTP 429 and 5xx.
Permanent failures (other 4xx, content, size, robots, addresses, schemes) are never retried.
A retry resumes from the URL that failed, so redirects already followed are not requested again.

Why urllib3 and not requests: requests resolves the host again when it connects, which is what
the address pinning must prevent, and it reads a redirect's whole body to prepare the next hop.
The fetcher uses urllib3's connection pools, TLS and HTTP parsing as they are, and adds a
connection class that connects to the checked addresses (``_PinnedHTTPConnection``).
"""

from __future__ import annotations

import collections
import email.utils
import heapq
import http.client
import ipaddress
import itertools
import random
import re
import socket
import threading
import time
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union
from urllib.parse import urldefrag, urljoin, urlsplit

import urllib3
import urllib3.exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util import connection as urllib3_connection
from urllib3.util import parse_url

from .dns import is_nxdomain
from .hosts import DEAD, host_key, outcome_of

try:  # Mozilla's CA bundle (certifi, a dependency); the system store when it is missing
    import certifi

    _CA_CERTS: Optional[str] = certifi.where()
except ImportError:  # pragma: no cover - certifi is in install_requires
    _CA_CERTS = None

# Every reason token ``Fetcher.fetch`` can return, with what it means.  Short, stable, distinct:
# they are the ``reason`` column of the dataset index.
REASONS: dict[str, str] = {
    "bad_url": "the URL is empty, None, not a string, unparsable, relative or has no host",
    "bad_scheme": "the scheme of the URL or of a redirect target is not allowed (file:, ftp:, data:, ...)",
    "private_address": "the host resolves to a private, loopback, link-local, reserved, multicast or "
    "unspecified address (only when allow_private is off)",
    "dns_error": "the host name does not resolve",
    "dns_timeout": "resolving the host name took longer than timeout_s (not retried)",
    "connect_error": "no connection could be made: refused, unreachable, or the TLS handshake failed",
    "connection_reset": "the server reset or closed the connection before its answer was complete",
    "timeout": "connecting or one read took longer than timeout_s (after the retries)",
    "deadline": "the URL used up deadline_s, retries, redirects and backoff included",
    "http_<code>": "the last answer had a non-2xx status, e.g. http_404; http_503 after the retries",
    "too_many_redirects": "more than max_redirects redirects",
    "redirect_loop": "a redirect led back to a URL already requested on this try",
    "too_large": "the body is, or says by Content-Length it is, larger than max_bytes (decoded or not)",
    "not_image": "the Content-Type is missing or does not start with an accepted prefix",
    "robots_disallowed": "an X-Robots-Tag header forbids us (noai, noindex, ...)",
    "bad_encoding": "the Content-Encoding is not gzip, deflate or identity, or the body does not decode",
    "truncated": "the body ended before its Content-Length (or its chunked framing) said it would",
    "extra_bytes": "the body went on past its Content-Length",
    "read_error": "reading the body failed for another reason",
    "empty_body": "the server answered 2xx with no bytes",
    "host_unavailable": "not requested: the host was cut off for this run (NXDOMAIN, a run of connection "
    "failures, or a Retry-After longer than download.per_host.max_pause_s); the detail says which",
}
# Reasons worth another try (HTTP 429 and 5xx are retried too).
TRANSIENT = frozenset({"timeout", "connect_error", "connection_reset", "truncated", "read_error"})
_HTTP_REASON = re.compile(r"http_[1-5]\d\d")

# Connection pools to distinct hosts that each thread keeps open (least recently used closed
# first).  One connection per pool is enough: a thread's pools are used by that thread only.
_HOSTS_PER_THREAD = 16
_CHUNK_BYTES = 64 * 1024
_RESOLVER_THREADS = 16
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# IPv6 prefixes whose addresses carry an IPv4 address (the embedded one is checked too).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
# X-Robots-Tag directives that take a "name: value" form and therefore are not user-agent names.
_VALUED_ROBOTS_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
# X-Robots-Tag directives that stand for others ("none" is "noindex, nofollow").
_ROBOTS_SHORTHANDS = {"none": {"none", "noindex", "nofollow"}}
# Everything urllib3, http.client or sockets raise for network or input trouble.
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError)

Resolver = Callable[[str, int], Sequence[str]]


def known_reason(token: str) -> bool:
    """True when ``token`` is one of ``REASONS`` (``http_<code>`` standing for every status)."""
    return token in REASONS or bool(_HTTP_REASON.fullmatch(token))


@dataclass(frozen=True)
class FetchPolicy:
    """How patient, how trusting and how greedy a ``Fetcher`` is."""

    timeout_s: float = 10.0  # per request: resolving, connecting, and each read
    deadline_s: float = 30.0  # per URL, all tries, redirects and backoff included
    retries: int = 2  # extra tries after the TRANSIENT reasons, 429 and 5xx
    backoff_s: float = 0.5  # first backoff; doubles per try, with jitter
    max_backoff_s: float = 10.0  # cap on one backoff, Retry-After included
    max_bytes: int = 20_000_000  # cap on the bytes of one image, received and decoded
    user_agent: str = "flamingo-corpus/0.1 (+https://github.com/flamingo-corpus/flamingo-corpus)"
    allow_private: bool = False  # allow hosts on private, loopback, ... addresses (tests, local builds)
    max_redirects: int = 5
    disallowed_robots: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    content_types: tuple[str, ...] = ("image/",)  # accepted Content-Type prefixes
    schemes: tuple[str, ...] = ("http", "https")

    @property
    def user_agent_token(self) -> str:
        """The product token of ``user_agent`` ("flamingo-corpus"), as X-Robots-Tag names it."""
        return self.user_agent.split("/", 1)[0].strip().lower()


@dataclass
class FetchResult:
    """What fetching one URL gave: the bytes, or a reason token saying why not."""

    ok: bool
    data: Optional[bytes]  # the body, decoded when it came gzip- or deflate-encoded
    content_type: Optional[str]  # media type without parameters, lower case, e.g. "image/jpeg"
    status: Optional[int]  # the last HTTP status seen, None when no answer came
    reason: Optional[str]  # None when ok, else a token from ``REASONS``
    detail: Optional[str]  # text for humans
    attempts: int  # tries made; 0 when the URL was refused before any request
    final_url: Optional[str]  # the last URL requested (after redirects)
    elapsed_s: float


class _Drop(Exception):
    """Ends a fetch (or, when ``transient``, one try of it) with a reason token."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        transient: Optional[bool] = None,
        retry_after: Optional[float] = None,
        nxdomain: bool = False,
    ):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.transient = reason in TRANSIENT if transient is None else transient
        self.retry_after = retry_after
        self.nxdomain = nxdomain  # a dns_error saying the name does not exist (not that the lookup failed)


@dataclass(frozen=True)
class _Target:
    """A URL ready to request: where to connect (checked addresses) and what to ask for."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal: the Host header, SNI and certificate name
    port: int
    path: str  # the request target: path and query
    addresses: tuple[str, ...]  # the addresses the host resolved to, all checked; tried in order


@dataclass
class _Progress:
    """The mutable state of one fetch, turned into a ``FetchResult`` at the end."""

    url: Optional[str]
    target: Optional[_Target] = None
    attempts: int = 0
    redirects: int = 0
    status: Optional[int] = None
    content_type: Optional[str] = None

    def result(self, started: float, data: Optional[bytes] = None, drop: Optional[_Drop] = None) -> FetchResult:
        """The result of the fetch: ``data`` when it succeeded, else ``drop``."""
        return FetchResult(
            ok=drop is None,
            data=data,
            content_type=self.content_type,
            status=self.status,
            reason=drop.reason if drop else None,
            detail=drop.detail if drop else None,
            attempts=self.attempts,
            final_url=self.url,
            elapsed_s=time.monotonic() - started,
        )


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped (``::ffff:a.b.c.d``), the deprecated
    IPv4-compatible form (``::a.b.c.d``), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16)
    and Teredo (2001::/32: the server and the client's obfuscated address)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    value = int(ip)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d (:: and ::1 are themselves not global)
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def is_private_address(address: Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]) -> bool:
    """True when ``address`` (an IP literal) is not a global unicast address of the public
    internet (private, loopback, link-local, shared 100.64/10, reserved, multicast, unspecified,
    documentation, benchmarking, ...: ``ipaddress``'s ``is_global``), or is an IPv6 address that
    wraps an IPv4 address that is."""
    ip = ipaddress.ip_address(address)
    if ip.is_multicast or not ip.is_global:
        return True
    if ip.version == 6:
        return any(is_private_address(inner) for inner in embedded_ipv4(ip))
    return False


def is_link_local_address(address: Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]) -> bool:
    """True for link-local addresses (169.254.0.0/16, fe80::/10), where cloud metadata services
    answer (169.254.169.254): refused even when ``allow_private`` lets a local build use loopback."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        return ip.is_link_local or any(inner.is_link_local for inner in embedded_ipv4(ip))
    return ip.is_link_local


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (``getaddrinfo`` order, duplicates removed)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(sockaddr[0] for *_, sockaddr in infos))


def robots_disallowed(values: Iterable[str], user_agent_token: str, disallowed: Iterable[str]) -> bool:
    """True when an ``X-Robots-Tag`` header value carries a ``disallowed`` directive for everyone
    (bare, or for the agent ``*``) or for ``user_agent_token``.

    Each value is a comma-separated list; ``name: directive`` starts the part of the list that
    applies to the agent ``name`` only, e.g. ``otherbot: noindex, nofollow``.
    """
    banned = {directive.lower() for directive in disallowed}
    for value in values:
        agent = None
        for part in value.split(","):
            agent, directive = _robots_part(part, agent)
            meant = _ROBOTS_SHORTHANDS.get(directive, {directive})
            if meant & banned and agent in (None, "*", user_agent_token):
                return True
    return False


def _robots_part(part: str, agent: Optional[str]) -> tuple[Optional[str], str]:
    """Split one X-Robots-Tag list item into (the agent it applies to, the directive)."""
    name, colon, rest = part.partition(":")
    name = name.strip().lower()
    if colon and name not in _VALUED_ROBOTS_DIRECTIVES:
        return name, rest.strip().lower()
    return agent, part.strip().lower()


def _checked_url(url: object, schemes: tuple[str, ...]) -> str:
    """``url`` stripped of spaces and fragment, when it is an absolute URL with an allowed scheme
    and a host."""
    if not isinstance(url, str) or not url.strip():
        raise _Drop("bad_url", f"not a URL: {url!r}")
    try:
        url = urldefrag(url.strip()).url
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        raise _Drop("bad_url", f"unparsable URL: {exc}") from exc
    if not parts.scheme:
        raise _Drop("bad_url", f"not an absolute URL: {url!r}")
    if parts.scheme.lower() not in schemes:
        raise _Drop("bad_scheme", f"scheme {parts.scheme!r} is not one of {', '.join(schemes)}")
    if not parts.hostname:
        raise _Drop("bad_url", "URL has no host")
    return url


def _ip_literal(host: str) -> Optional[str]:
    """``host`` as a normalised IP address, None when it is a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _ascii_host(host: str) -> str:
    """The host name as it goes on the wire (IDNA for non-ASCII names)."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise _Drop("bad_url", f"bad host name {host!r}: {exc}") from exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (``__cause__``, urllib3's ``reason``, exception args)."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))


def _is_timeout(exc: BaseException) -> bool:
    """True for connect and read timeouts (urllib3 files refused connections under timeouts too)."""
    timeouts = (urllib3.exceptions.TimeoutError, TimeoutError)
    return isinstance(exc, timeouts) and not isinstance(exc, urllib3.exceptions.NewConnectionError)


def _network_drop(exc: BaseException, *, reading: bool, deadline_bound: bool) -> _Drop:
    """The ``_Drop`` for an exception raised while sending a request or reading its answer.

    ``deadline_bound``: the timeout in force was cut short by the deadline, so a timeout means the
    deadline has passed.
    """
    causes = list(_causes(exc))
    detail = f"{type(exc).__name__}: {exc}"

    def caused_by(*types: type) -> bool:
        return any(isinstance(cause, types) for cause in causes)

    if any(_is_timeout(cause) for cause in causes):
        return _Drop("deadline" if deadline_bound else "timeout", detail)

    if caused_by(http.client.IncompleteRead):  # urllib3's IncompleteRead is one too
        return _Drop("truncated", detail)
    if caused_by(ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return _Drop("connection_reset", detail)  # RemoteDisconnected is a ConnectionResetError
    if caused_by(urllib3.exceptions.SSLError):
        return _Drop("connect_error", detail, transient=False)  # retrying gives the same certificate
    if reading:
        return _Drop("read_error", detail)
    if caused_by(urllib3.exceptions.LocationValueError, http.client.InvalidURL):
        return _Drop("bad_url", detail)
    return _Drop("connect_error", detail)


def _retry_after(headers) -> Optional[float]:
    """The ``Retry-After`` header in seconds from now (given as seconds or as an HTTP date)."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
        return max(seconds, 0.0)
    return seconds if seconds >= 0 else None


def _content_length(headers) -> Optional[int]:
    """The declared Content-Length, or None when absent or unreadable."""
    try:
        return int(headers.get("Content-Length", ""))
    except ValueError:
        return None


def _media_type(headers) -> str:
    """The Content-Type without parameters, in lower case; "" when missing."""
    return headers.get("Content-Type", "").split(";")[0].strip().lower()


def _redirect_location(response: urllib3.HTTPResponse) -> Optional[str]:
    """The Location of a redirect answer, None for any other answer."""
    if response.status in _REDIRECT_STATUSES:
        return response.headers.get("Location") or None
    return None


# -- the deadline: a watchdog that shuts a connection down when its fetch runs out of time -------


class _Watchdog:
    """Shuts down the sockets of fetches whose deadline has passed.

    A per-operation socket timeout cannot bound a whole exchange: a server that sends the status
    line, the headers, the chunk sizes or the TLS handshake a byte at a time, each byte inside the
    timeout, could hold a fetch for as long as it liked. Every socket a fetch connects or waits on
    is registered here with the fetch's deadline; one daemon thread, shared by every fetcher,
    shuts the socket down at that moment (the blocked operation then returns or fails at once),
    unless the fetch released it first. Whether it fired is recorded, so that a body that ended
    because its socket was shut is never taken for a complete one.
    """

    def __init__(self):
        self._heap: list = []  # [deadline, sequence number, socket, state]; state: watching, released, fired
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def watch(self, sock: socket.socket, deadline: float) -> list:
        entry = [deadline, next(self._seq), sock, "watching"]
        with self._cv:
            # The thread sleeps until the earliest deadline: wake it only when this one is earlier
            # (deadlines mostly come in order, so almost never; waking it for every socket made
            # the fetch threads queue for this lock).  Released entries leave the heap when their
            # deadline comes round.
            earliest = not self._heap or entry < self._heap[0]
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fetch-deadline", daemon=True)
                self._thread.start()
            if earliest:
                self._cv.notify()
        return entry

    def release(self, entry: list) -> bool:
        """Stop watching; True when the deadline had already fired for this entry."""
        with self._cv:
            fired = entry[3] == "fired"
            entry[3] = "released"
            entry[2] = None  # let the socket go now, not when its deadline comes round
            return fired

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._heap and self._heap[0][3] == "released":
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                entry = heapq.heappop(self._heap)
                sock, entry[3] = entry[2], "fired"
            try:  # the plain socket's shutdown: an SSL socket's would touch its SSL state from this thread
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


_WATCHDOG = _Watchdog()
# The fetch this thread is making: its deadline and the watchdog entries of its sockets. A thread
# makes one fetch at a time, and its connection pools are its own (``_Pools``).
_CURRENT = threading.local()


def _watch_socket(sock: socket.socket) -> None:
    """Put ``sock`` under the deadline of the fetch this thread is making (if any)."""
    deadline = getattr(_CURRENT, "deadline", None)
    if deadline is not None:
        _CURRENT.entries.append(_WATCHDOG.watch(sock, deadline))


def _check_deadline(deadline: float, exc: Optional[BaseException] = None) -> None:
    """``deadline`` when the fetch's time is up or the watchdog shut one of its sockets: whatever
    failed then (a reset, a short read) failed because of that."""
    fired = any(entry[3] == "fired" for entry in getattr(_CURRENT, "entries", []))
    if fired or time.monotonic() >= deadline:
        why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        raise _Drop("deadline", f"the URL's deadline passed{why}")


def _release_sockets() -> bool:
    """Release this thread's watched sockets; True when the deadline fired for any of them."""
    entries = getattr(_CURRENT, "entries", [])
    fired = [_WATCHDOG.release(entry) for entry in entries]
    entries.clear()
    return any(fired)


# -- the connection: pinned addresses, bounded reads, framing checks ----------------------------


class _BodyResponse(http.client.HTTPResponse):
    """http.client's response, keeping its socket so that the fetcher can bound each read by the
    time left, and telling whether more bytes came than the Content-Length announced.

    http.client stops reading at the Content-Length and drops whatever follows; just before it
    lets go of the stream (``_close_conn``), this class looks for bytes beyond the body: waiting
    for them when the server is about to close the connection anyway, and only at what already
    arrived on a keep-alive connection (where waiting would wait for the server's idle timeout).
    """

    def __init__(self, sock, *args, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.socket = sock
        self.check_extra = False  # set by the fetcher for the bodies it reads
        self.extra_bytes = False

    def set_timeout(self, seconds: float) -> None:
        """The timeout of the socket operations to come (none come once the body is closed).
        Only set when it changes: ``settimeout`` is a system call that also gives up the
        interpreter lock, which 16 download threads then queue for again."""
        if self.fp is not None and self.socket.gettimeout() != seconds:
            self.socket.settimeout(seconds)

    def _close_conn(self) -> None:
        if self.check_extra and self.length == 0 and self.fp is not None:
            self.extra_bytes = self._more_bytes_waiting()
        super()._close_conn()

    def _more_bytes_waiting(self) -> bool:
        """True when bytes follow the declared body (buffered, or on the socket)."""
        timeout = self.socket.gettimeout()
        try:
            if not self.will_close:
                self.socket.settimeout(0)  # a non-blocking peek: only what already arrived
            return bool(self.fp.peek(1))
        except (OSError, ValueError):  # reset, closed, or (TLS) cannot tell without blocking
            return False
        finally:
            if not self.will_close:
                try:
                    self.socket.settimeout(timeout)
                except OSError:
                    pass


class _Pinned:
    """Connects to the addresses the fetcher checked, never resolving the host name again; the
    host name stays the connection's ``host`` (Host header, TLS SNI and certificate check)."""

    def __init__(self, *args, addresses: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.addresses = tuple(addresses)
        self.last_response: Optional[_BodyResponse] = None

    def _new_conn(self) -> socket.socket:
        """A socket to the first pinned address that accepts (as urllib3's own ``_new_conn``,
        which would resolve ``host`` instead)."""
        error: Optional[OSError] = None
        for address in self.addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
                _watch_socket(sock)  # from here on (TLS handshake included) the deadline holds
                return sock
            except socket.timeout as exc:
                raise urllib3.exceptions.ConnectTimeoutError(
                    self, f"connecting to {self.host} ({address}) timed out after {self.timeout}s"
                ) from exc
            except OSError as exc:
                error = exc
        raise urllib3.exceptions.NewConnectionError(
            self, f"cannot connect to {self.host} ({', '.join(self.addresses)}): {error}"
        ) from error

    def response_class(self, sock, *args, **kwargs) -> _BodyResponse:
        """The http.client response of the latest request (http.client calls this before it reads
        the status line): a reused connection's socket is put under this fetch's deadline here."""
        if not any(entry[2] is sock for entry in getattr(_CURRENT, "entries", [])):
            _watch_socket(sock)
        self.last_response = _BodyResponse(sock, *args, **kwargs)
        return self.last_response


class _PinnedHTTPConnection(_Pinned, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_Pinned, HTTPSConnection):
    pass


class _PinnedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class _Pools:
    """One thread's connection pools, one per (scheme, host, port, pinned addresses)."""

    def __init__(self):
        self._pools: collections.OrderedDict[tuple, urllib3.HTTPConnectionPool] = collections.OrderedDict()

    def get(self, target: _Target) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, target.host, target.port, target.addresses)
        pool = self._pools.pop(key, None)
        if pool is None:
            while len(self._pools) >= _HOSTS_PER_THREAD:
                self._pools.popitem(last=False)[1].close()
            common = dict(maxsize=1, block=False, retries=False, addresses=target.addresses)
            if target.scheme == "https":
                pool = _PinnedHTTPSPool(
                    target.host, target.port, cert_reqs="CERT_REQUIRED", ca_certs=_CA_CERTS, **common
                )
            else:
                pool = _PinnedHTTPPool(target.host, target.port, **common)
        self._pools[key] = pool
        return pool

    def close(self) -> None:
        while self._pools:
            self._pools.popitem()[1].close()


class _Decoder:
    """Undoes the Content-Encoding of a body as it streams in, with the cap applied to the
    decoded size.

    Hand-written rather than left to urllib3 so that the cap is enforced inside zlib
    (``max_length``): no single step can turn a small compressed chunk into more than the bytes
    still allowed, so a gzip bomb costs at most ``cap`` bytes of memory.
    """

    def __init__(self, encoding: str, cap: int):
        self.encoding = encoding.strip().lower()
        self.cap = cap
        self.out = bytearray()
        self._z: Optional["zlib._Decompress"] = None
        if self.encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise _Drop("bad_encoding", f"unsupported Content-Encoding {encoding!r}")

    def feed(self, chunk: bytes) -> None:
        """Decode ``chunk`` onto the output; ``too_large`` past the cap."""
        if self.encoding in ("", "identity"):
            self._append(chunk)
            return
        if self._z is None:
            self._z = self._decompressor(chunk)
        try:
            while chunk:
                self._append(self._z.decompress(chunk, self.cap - len(self.out) + 1))
                chunk = self._z.unconsumed_tail
                if self._z.eof and self._z.unused_data:  # gzip allows several members in a row
                    chunk, self._z = self._z.unused_data, self._decompressor(self._z.unused_data)
        except zlib.error as exc:
            raise _Drop("bad_encoding", f"{self.encoding} body does not decode: {exc}") from exc

    def finish(self) -> bytes:
        """The decoded body; ``bad_encoding`` when a compressed stream stopped half-way."""
        if self._z is not None and not self._z.eof:
            raise _Drop("bad_encoding", f"{self.encoding} stream ends before its end marker")
        return bytes(self.out)

    def _append(self, data: bytes) -> None:
        self.out += data
        if len(self.out) > self.cap:
            what = "decoded body" if self._z is not None else "body"
            raise _Drop("too_large", f"{what} exceeds {self.cap} bytes")

    def _decompressor(self, head: bytes) -> "zlib._Decompress":
        """gzip, or deflate: zlib-wrapped as the RFC says, or raw as some servers send it."""
        if self.encoding in ("gzip", "x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        zlib_wrapped = len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)


# -- the fetcher --------------------------------------------------------------------------------


class Fetcher:
    """Fetches image URLs under a ``FetchPolicy``; safe to use from many threads at once.

    Each thread keeps its own connection pools (reused across URLs of that thread); host names are
    resolved on a small pool of resolver threads shared by all.  ``fetch_many`` runs on a thread
    pool owned by the fetcher.  Call ``close()`` (or use it as a context manager) to release the
    pools and threads.

    ``resolver(host, port)`` returns the addresses of a host name (default: ``getaddrinfo``;
    ``dns.CachingResolver`` caches it); ``forbidden_address(ip)`` says whether an address is off
    limits when ``allow_private`` is off (default: ``is_private_address``).  Tests replace them to
    stand a loopback server in for a public host, without any real network.  Every address a
    resolver gives, cached or not, is checked before it is used.

    ``gate`` (a ``hosts.HostGate``), when given, hears the outcome of every request the fetcher
    makes to a URL's host (``record``), and each retry waits for the host's pause and takes its
    place in the host's pacing (``reserve_retry``): the fetcher's own retries never press a host
    that answered 429.  The first request of a URL is the caller's to clear with the gate
    (``try_start``), as the store's scheduler does.
    """

    def __init__(
        self,
        policy: Optional[FetchPolicy] = None,
        *,
        resolver: Optional[Resolver] = None,
        forbidden_address: Optional[Callable[[str], bool]] = None,
        gate=None,
    ):
        self.policy = policy or FetchPolicy()
        self._resolver = resolver or system_resolver
        self._forbidden = forbidden_address or is_private_address
        self._gate = gate
        self._headers = {
            "User-Agent": self.policy.user_agent,
            "Accept": "image/*, */*;q=0.5",
            "Accept-Encoding": "gzip, deflate",
        }
        self._local = threading.local()
        self._thread_pools: weakref.WeakSet[_Pools] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._executor_threads = 0
        self._resolvers: Optional[ThreadPoolExecutor] = None

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def fetch(self, url: Optional[str]) -> FetchResult:
        """Fetch one image URL; never raises for network, HTTP or input problems."""
        started = time.monotonic()
        progress = _Progress(url=url if isinstance(url, str) else None)
        _CURRENT.deadline, _CURRENT.entries = started + self.policy.deadline_s, []
        try:
            data = self._fetch(url, progress, started + self.policy.deadline_s)
        except _Drop as drop:
            return progress.result(started, drop=drop)
        finally:
            _release_sockets()
            _CURRENT.deadline = None
        return progress.result(started, data=data)

    def fetch_many(self, urls: Iterable[Optional[str]], threads: int = 8) -> list[FetchResult]:
        """Fetch ``urls`` on ``threads`` threads; the results are in the order of ``urls``."""
        with self._lock:  # submit under the lock so a concurrent resize cannot shut the pool first
            results = self._executor_for(threads).map(self.fetch, urls)
        return list(results)

    def close(self) -> None:
        """Stop the thread pools and close every thread's connections."""
        with self._lock:
            executor, self._executor = self._executor, None
            resolvers, self._resolvers = self._resolvers, None
        if executor is not None:
            executor.shutdown(wait=True)
        if resolvers is not None:  # a resolver stuck in getaddrinfo must not hold us up
            resolvers.shutdown(wait=False, cancel_futures=True)
        for pools in list(self._thread_pools):
            pools.close()

    def _executor_for(self, threads: int) -> ThreadPoolExecutor:
        """The fetcher's thread pool, (re)created with ``threads`` workers; call under the lock."""
        if self._executor is None or self._executor_threads != threads:
            if self._executor is not None:
                self._executor.shutdown(wait=False)  # work already submitted still runs
            self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")
            self._executor_threads = threads
        return self._executor

    def _pools(self) -> _Pools:
        """This thread's connection pools, made on first use."""
        pools = getattr(self._local, "pools", None)
        if pools is None:
            pools = self._local.pools = _Pools()
            self._thread_pools.add(pools)
        return pools

    def _resolver_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._resolvers is None:
                self._resolvers = ThreadPoolExecutor(_RESOLVER_THREADS, thread_name_prefix="resolve")
            return self._resolvers

    # -- one URL --

    def _fetch(self, url: object, progress: _Progress, deadline: float) -> bytes:
        """Check and resolve ``url``, then try it (following redirects) until it succeeds, fails
        for good, or runs out of retries or time."""
        host = host_key(url) if self._gate is not None else None
        try:
            progress.target = self._target(url, deadline)
        except _Drop as drop:
            self._tell_gate(host, progress, drop)
            raise
        progress.url = progress.target.url
        for attempt in itertools.count(1):
            progress.attempts = attempt
            try:
                data = self._try(progress, deadline)
            except _Drop as drop:
                self._tell_gate(host, progress, drop)
                if not drop.transient or attempt > self.policy.retries:
                    raise
                self._wait_before_retry(attempt, drop, deadline, host)
            else:
                self._tell_gate(host, progress, None)
                return data
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _tell_gate(self, host: Optional[str], progress: _Progress, drop: Optional[_Drop]) -> None:
        """Report one request's outcome to the gate.  A failure at a redirect hop on another host
        says nothing about this one (a success does: the host answered with its redirect)."""
        if self._gate is None or host is None:
            return
        if drop is None:
            self._gate.record(host, outcome_of(None, progress.status), status=progress.status)
            return
        target = progress.target
        if target is not None and target.host != host:
            return
        answered = drop.reason.startswith("http_")
        self._gate.record(
            host,
            outcome_of(drop.reason, progress.status if answered else None, drop.nxdomain),
            status=progress.status if answered else None,
            retry_after=drop.retry_after,
            detail=drop.reason,
        )

    def _target(self, url: object, deadline: float) -> _Target:
        """``url`` ready to request: allowed scheme, host resolved, every address checked."""
        url = _checked_url(url, self.policy.schemes)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        literal = _ip_literal(parts.hostname)
        host = literal or _ascii_host(parts.hostname)
        port = parts.port or _DEFAULT_PORTS[scheme]
        try:
            path = parse_url(url).request_uri
        except urllib3.exceptions.LocationParseError as exc:
            raise _Drop("bad_url", f"unparsable URL: {exc}") from exc
        addresses = (literal,) if literal else self._resolve(host, port, deadline)
        for address in addresses:  # cloud metadata services live there: never, whatever the recipe
            if is_link_local_address(address):
                raise _Drop("private_address", f"{host} resolves to link-local {address}")
        if not self.policy.allow_private:
            for address in addresses:
                if self._forbidden(address):
                    raise _Drop("private_address", f"{host} resolves to {address}")
        return _Target(url, scheme, host, port, path, addresses)

    def _resolve(self, host: str, port: int, deadline: float) -> tuple[str, ...]:
        """The addresses of ``host``, waiting at most the timeout (or what is left of the deadline)."""
        wait, deadline_bound = self._time_left(deadline)
        future = self._resolver_pool().submit(self._resolver, host, port)
        try:
            found = future.result(timeout=wait)
        except FutureTimeout:
            future.cancel()  # when still queued; a running lookup ends on its own
            raise _Drop(
                "deadline" if deadline_bound else "dns_timeout", f"resolving {host} took longer than {wait:.3g}s"
            ) from None
        except UnicodeError as exc:  # the IDNA codec refuses the name
            raise _Drop("bad_url", f"bad host name {host!r}: {exc}") from exc
        except OSError as exc:  # socket.gaierror and friends
            raise _Drop("dns_error", f"cannot resolve {host}: {exc}", nxdomain=is_nxdomain(exc)) from exc
        addresses = []
        for address in found:
            literal = _ip_literal(address.split("%", 1)[0])
            if literal is None:
                raise _Drop("dns_error", f"{host} resolved to {address!r}, not an address")
            addresses.append(address)
        if not addresses:
            raise _Drop("dns_error", f"{host} resolves to no address")
        return tuple(addresses)

    def _time_left(self, deadline: float) -> tuple[float, bool]:
        """(the timeout for the next operation, whether the deadline cut it short); ``deadline``
        when no time is left."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Drop("deadline", f"deadline of {self.policy.deadline_s}s passed")
        return min(self.policy.timeout_s, left), left < self.policy.timeout_s

    def _wait_before_retry(self, attempt: int, drop: _Drop, deadline: float, host: Optional[str] = None) -> None:
        """Sleep before try ``attempt + 1``, or give up with ``drop`` when that would pass the
        deadline (or when the gate has cut the host off); with a gate, the retry also waits for
        the host's pause and its turn in the host's pacing."""
        now = time.monotonic()
        when = now + self._backoff(attempt, drop.retry_after)
        if self._gate is not None and host is not None:
            verdict, info = self._gate.reserve_retry(host, when)
            if verdict == DEAD:
                raise drop
            when = float(info)
        if when >= deadline:
            raise drop
        time.sleep(max(0.0, when - now))

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds to wait after try ``attempt``: Retry-After when given, else exponential with jitter."""
        if retry_after is not None:
            return min(retry_after, self.policy.max_backoff_s)
        base = min(self.policy.max_backoff_s, self.policy.backoff_s * 2 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)

    def _try(self, progress: _Progress, deadline: float) -> bytes:
        """One try: request ``progress.target``, following (and checking) redirects, and read the image."""
        seen = {progress.url}
        while True:
            response = self._send(progress.target, deadline)
            try:
                progress.status = response.status
                location = _redirect_location(response)
                if location is None:
                    return self._accept(response, progress, deadline)
            finally:
                response.close()  # an unread body is not read: its connection is closed instead
                response.release_conn()
            self._follow(progress, location, deadline, seen)

    def _send(self, target: _Target, deadline: float) -> urllib3.HTTPResponse:
        """GET ``target`` on its pinned addresses, without reading the body or following redirects."""
        wait, deadline_bound = self._time_left(deadline)
        try:
            response = (
                self._pools()
                .get(target)
                .urlopen(
                    "GET",
                    target.path,
                    headers=self._headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    timeout=urllib3.Timeout(connect=wait, read=wait),
                    preload_content=False,
                    decode_content=False,
                    release_conn=False,
                )
            )
        except _NETWORK_ERRORS as exc:
            _check_deadline(deadline, exc)
            raise _network_drop(exc, reading=False, deadline_bound=deadline_bound) from exc
        try:  # headers cut short by the watchdog read as complete ones: not to be trusted
            _check_deadline(deadline)
        except _Drop:
            response.close()
            response.release_conn()
            raise
        return response

    def _follow(self, progress: _Progress, location: str, deadline: float, seen: set) -> None:
        """Move ``progress`` to the redirect target, when it is allowed, new on this try, and
        within the redirect budget."""
        progress.redirects += 1
        if progress.redirects > self.policy.max_redirects:
            raise _Drop("too_many_redirects", f"more than {self.policy.max_redirects} redirects")
        try:
            url = urldefrag(urljoin(progress.url, location.strip())).url
        except ValueError as exc:
            raise _Drop("bad_url", f"unparsable redirect target {location!r}: {exc}") from exc
        if url in seen:
            raise _Drop("redirect_loop", f"redirected back to {url}")
        progress.target = self._target(url, deadline)
        progress.url = progress.target.url
        seen.add(progress.url)

    def _accept(self, response: urllib3.HTTPResponse, progress: _Progress, deadline: float) -> bytes:
        """The body of a final (non-redirect) answer, when status, headers and size allow it."""
        status, headers = response.status, response.headers
        if not 200 <= status < 300:
            raise _Drop(
                f"http_{status}",
                f"HTTP {status} {response.reason}",
                transient=status == 429 or status >= 500,
                retry_after=_retry_after(headers),
            )
        if robots_disallowed(
            headers.getlist("X-Robots-Tag"), self.policy.user_agent_token, self.policy.disallowed_robots
        ):
            raise _Drop("robots_disallowed", "X-Robots-Tag: " + headers["X-Robots-Tag"])
        media_type = _media_type(headers)
        progress.content_type = media_type or None
        if not media_type.startswith(self.policy.content_types):
            raise _Drop("not_image", f"content type {media_type or 'missing'}")
        return self._read_body(response, deadline)

    def _read_body(self, response: urllib3.HTTPResponse, deadline: float) -> bytes:
        """Stream the body, one receive at a time, within ``max_bytes`` and the deadline."""
        cap = self.policy.max_bytes
        declared = _content_length(response.headers)
        if declared is not None and declared > cap:
            raise _Drop("too_large", f"Content-Length {declared} exceeds {cap} bytes")
        decoder = _Decoder(response.headers.get("Content-Encoding", ""), cap)
        body = response.connection.last_response
        body.check_extra = True
        received = 0
        while True:
            wait, deadline_bound = self._time_left(deadline)
            try:
                body.set_timeout(wait)
                chunk = response.read1(_CHUNK_BYTES, decode_content=False)
            except _NETWORK_ERRORS as exc:
                _check_deadline(deadline, exc)
                raise _network_drop(exc, reading=True, deadline_bound=deadline_bound) from exc
            if not chunk:
                break
            received += len(chunk)
            if received > cap:
                raise _Drop("too_large", f"body exceeds {cap} bytes")
            decoder.feed(chunk)
        _check_deadline(deadline)  # a body cut short by the watchdog must not pass for a whole one
        if body.extra_bytes:
            raise _Drop("extra_bytes", f"the body goes on past its Content-Length of {declared}")
        data = decoder.finish()
        if not data:
            raise _Drop("empty_body", "the answer has no body")
        return data
