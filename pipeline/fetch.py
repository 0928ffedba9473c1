"""Fetching one image URL safely: timeouts, retries, size caps, redirects and address checks.

``Fetcher.fetch(url)`` never raises for network, HTTP or input problems: it returns a
``FetchResult`` whose ``reason`` is ``None`` when the image was fetched, or one of these stable
tokens (they end up in the per-row dataset index, so do not rename them):

``bad_url``            the URL is empty, None, not a string, unparsable, relative or has no host
``bad_scheme``         the scheme (of the URL or of a redirect target) is not allowed, e.g. ``file:``
``private_address``    the host resolves to a private, loopback, link-local, reserved, multicast or
                       unspecified address (only when ``allow_private`` is off)
``dns_error``          the host name does not resolve
``connect_error``      the connection failed or broke before a response (refused, reset, TLS)
``timeout``            connecting or reading took longer than ``timeout_s`` (after the retries)
``http_<code>``        the last answer had a non-2xx status, e.g. ``http_404``; ``http_503`` after retries
``too_many_redirects`` more than ``max_redirects`` redirects
``too_large``          the body is (or says it is, by Content-Length) larger than ``max_bytes``
``not_image``          the Content-Type is missing or does not start with an accepted prefix
``robots_disallowed``  an ``X-Robots-Tag`` header forbids us (``noai``, ``noindex``, ...)
``read_error``         the body broke off, or was shorter than its Content-Length
``empty_body``         the server answered 2xx with no bytes
``deadline``           the URL used up ``deadline_s``, retries and redirects included

Retried (``retries`` extra tries, exponential backoff with jitter, ``Retry-After`` honoured up to
``max_backoff_s``): HTTP 429 and 5xx, connection errors other than TLS errors, and timeouts.
A retry resumes from the URL that failed, so redirects already followed are not requested again.
"""
from __future__ import annotations

import http.client
import http.cookiejar
import ipaddress
import itertools
import random
import socket
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Union
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

# Connection pools to distinct hosts that each thread's session keeps open (least recently used
# dropped first).  One connection per host is enough: a session is only used by its own thread.
_HOSTS_PER_SESSION = 16
_CHUNK_BYTES = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# ipaddress flags that make an address unfit for fetching from the public web.
_FORBIDDEN_FLAGS = ("is_private", "is_loopback", "is_link_local", "is_reserved", "is_multicast",
                    "is_unspecified")
# X-Robots-Tag directives that take a "name: value" form and therefore are not user-agent names.
_VALUED_ROBOTS_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview",
                                       "max-video-preview"})
# Everything that requests, urllib3, http.client or sockets raise for network or input trouble.
_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                   OSError, ValueError)


@dataclass(frozen=True)
class FetchPolicy:
    """How patient, how trusting and how greedy a ``Fetcher`` is."""

    timeout_s: float = 10.0  # per request, for connecting and for each read
    deadline_s: float = 30.0  # per URL, all tries, redirects and backoff included
    retries: int = 2  # extra tries after 429, 5xx, connection errors and timeouts
    backoff_s: float = 0.5  # first backoff; doubles per try, with jitter
    max_backoff_s: float = 10.0  # cap on one backoff, Retry-After included
    max_bytes: int = 20_000_000  # cap on the bytes of one image
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
    data: Optional[bytes]
    content_type: Optional[str]  # media type without parameters, lower case, e.g. "image/jpeg"
    status: Optional[int]  # the last HTTP status seen, None when no answer came
    reason: Optional[str]  # None when ok, else a token from the module docstring
    detail: Optional[str]  # text for humans
    attempts: int  # tries made; 0 when the URL was refused before any request
    final_url: Optional[str]  # the last URL requested (after redirects)
    elapsed_s: float


class _Drop(Exception):
    """Ends a fetch (or, when ``transient``, one try of it) with a reason token."""

    def __init__(self, reason: str, detail: str, *, transient: bool = False,
                 retry_after: Optional[float] = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after


@dataclass
class _Progress:
    """The mutable state of one fetch, turned into a ``FetchResult`` at the end."""

    url: Optional[str]
    attempts: int = 0
    redirects: int = 0
    status: Optional[int] = None
    content_type: Optional[str] = None

    def result(self, started: float, data: Optional[bytes] = None,
               drop: Optional[_Drop] = None) -> FetchResult:
        """The result of the fetch: ``data`` when it succeeded, else ``drop``."""
        return FetchResult(
            ok=drop is None, data=data, content_type=self.content_type, status=self.status,
            reason=drop.reason if drop else None, detail=drop.detail if drop else None,
            attempts=self.attempts, final_url=self.url, elapsed_s=time.monotonic() - started,
        )


def is_private_address(address: Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]) -> bool:
    """True when ``address`` (an IP literal) is private, loopback, link-local, reserved, multicast
    or unspecified; an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is judged by its IPv4 part."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(getattr(ip, flag) for flag in _FORBIDDEN_FLAGS)


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
            if directive in banned and agent in (None, "*", user_agent_token):
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
    """``url`` stripped, when it is an absolute URL with an allowed scheme and a host."""
    if not isinstance(url, str) or not url.strip():
        raise _Drop("bad_url", f"not a URL: {url!r}")
    url = url.strip()
    try:
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


def _check_public_host(url: str) -> None:
    """Refuse ``url`` when any address its host resolves to is private (see ``is_private_address``).

    DNS rebinding: requests resolves the name again when it connects, so a hostile DNS server could
    answer differently the second time.  Closing that gap needs connecting to the checked address
    ourselves; the check here stops the ordinary cases (internal names, literal private IPs).
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Drop("dns_error", f"cannot resolve {parts.hostname}: {exc}") from exc
    except UnicodeError as exc:  # the IDNA codec refuses the name
        raise _Drop("bad_url", f"bad host name {parts.hostname!r}: {exc}") from exc
    for *_, sockaddr in infos:
        if is_private_address(sockaddr[0]):
            raise _Drop("private_address", f"{parts.hostname} resolves to {sockaddr[0]}")


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
    """True for read and connect timeouts (urllib3 files refused connections under timeouts too)."""
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    return isinstance(exc, timeouts) and not isinstance(exc, urllib3.exceptions.NewConnectionError)


def _network_drop(exc: BaseException, *, reading: bool, deadline_bound: bool) -> _Drop:
    """The ``_Drop`` for an exception raised while sending a request or reading its body.

    ``deadline_bound``: the timeout in force was cut short by the deadline, so a timeout means the
    deadline has passed.
    """
    causes = list(_causes(exc))
    detail = f"{type(exc).__name__}: {exc}"
    if any(_is_timeout(cause) for cause in causes):
        if deadline_bound:
            return _Drop("deadline", detail)
        return _Drop("timeout", detail, transient=True)
    if reading:
        return _Drop("read_error", detail)
    if any(isinstance(cause, urllib3.exceptions.NameResolutionError) for cause in causes):
        return _Drop("dns_error", detail)
    if isinstance(exc, (ValueError, http.client.InvalidURL)):
        return _Drop("bad_url", detail)
    return _Drop("connect_error", detail, transient=not isinstance(exc, requests.exceptions.SSLError))


def _retry_after(response: requests.Response) -> Optional[float]:
    """The ``Retry-After`` header in seconds, when it is given as a number of seconds."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _content_length(response: requests.Response) -> Optional[int]:
    """The declared Content-Length, or None when absent or unreadable."""
    try:
        return int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None


def _media_type(response: requests.Response) -> str:
    """The Content-Type without parameters, in lower case; "" when missing."""
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _redirect_location(response: requests.Response) -> Optional[str]:
    """The Location of a redirect answer, None for any other answer."""
    if response.status_code in _REDIRECT_STATUSES:
        return response.headers.get("Location") or None
    return None


class _Session(requests.Session):
    """A session that leaves redirects alone.

    Even with ``allow_redirects=False``, ``requests`` prepares the next hop of a redirect, and
    reads the redirect's whole body (with no size cap) to do so.  The fetcher follows redirects
    itself, so this session reports no redirect target and the body stays unread.
    """

    def get_redirect_target(self, resp: requests.Response) -> None:
        """No redirect, as far as requests is concerned."""
        return None


class Fetcher:
    """Fetches image URLs under a ``FetchPolicy``; safe to use from many threads at once.

    Each thread gets its own ``requests.Session`` (connection pools are reused across URLs of
    that thread).  ``fetch_many`` runs on a thread pool owned by the fetcher.  Call ``close()``
    (or use it as a context manager) to release the pools and threads.
    """

    def __init__(self, policy: Optional[FetchPolicy] = None):
        self.policy = policy or FetchPolicy()
        self._local = threading.local()
        self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._executor_threads = 0

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def fetch(self, url: Optional[str]) -> FetchResult:
        """Fetch one image URL; never raises for network, HTTP or input problems."""
        started = time.monotonic()
        progress = _Progress(url=url if isinstance(url, str) else None)
        try:
            data = self._fetch(url, progress, started + self.policy.deadline_s)
        except _Drop as drop:
            return progress.result(started, drop=drop)
        return progress.result(started, data=data)

    def fetch_many(self, urls: Iterable[Optional[str]], threads: int = 8) -> list[FetchResult]:
        """Fetch ``urls`` on ``threads`` threads; the results are in the order of ``urls``."""
        with self._lock:  # submit under the lock so a concurrent resize cannot shut the pool first
            results = self._executor_for(threads).map(self.fetch, urls)
        return list(results)

    def close(self) -> None:
        """Stop the thread pool and close every thread's connection pools."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        for session in list(self._sessions):
            session.close()

    def _executor_for(self, threads: int) -> ThreadPoolExecutor:
        """The fetcher's thread pool, (re)created with ``threads`` workers; call under the lock."""
        if self._executor is None or self._executor_threads != threads:
            if self._executor is not None:
                self._executor.shutdown(wait=False)  # work already submitted still runs
            self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")
            self._executor_threads = threads
        return self._executor

    def _session(self) -> requests.Session:
        """This thread's session, made on first use."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._new_session()
            self._local.session = session
            self._sessions.add(session)
        return session

    def _new_session(self) -> requests.Session:
        """A session that sends our User-Agent, keeps no cookies, ignores proxy and netrc settings
        from the environment, and leaves retries and redirects to us."""
        session = _Session()
        session.headers["User-Agent"] = self.policy.user_agent
        session.trust_env = False
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(pool_connections=_HOSTS_PER_SESSION, pool_maxsize=1, max_retries=0)
        for scheme in ("http://", "https://"):
            session.mount(scheme, adapter)
        return session

    def _fetch(self, url: object, progress: _Progress, deadline: float) -> bytes:
        """Check ``url``, then try it (following redirects) until it succeeds, fails for good,
        or runs out of retries or time."""
        progress.url = self._checked(url)
        for attempt in itertools.count(1):
            progress.attempts = attempt
            try:
                return self._try(progress, deadline)
            except _Drop as drop:
                if not drop.transient or attempt > self.policy.retries:
                    raise
                self._wait_before_retry(attempt, drop, deadline)

    def _checked(self, url: object) -> str:
        """``url`` when it may be requested: allowed scheme, and a public host unless allowed."""
        url = _checked_url(url, self.policy.schemes)
        if not self.policy.allow_private:
            _check_public_host(url)
        return url

    def _wait_before_retry(self, attempt: int, drop: _Drop, deadline: float) -> None:
        """Sleep before try ``attempt + 1``, or give up with ``drop`` when that would pass the deadline."""
        delay = self._backoff(attempt, drop.retry_after)
        if time.monotonic() + delay >= deadline:
            raise drop
        time.sleep(delay)

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds to wait after try ``attempt``: Retry-After when given, else exponential with jitter."""
        if retry_after is not None:
            return min(retry_after, self.policy.max_backoff_s)
        base = min(self.policy.max_backoff_s, self.policy.backoff_s * 2 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)

    def _try(self, progress: _Progress, deadline: float) -> bytes:
        """One try: request ``progress.url``, following (and checking) redirects, and read the image."""
        while True:
            timeout = min(self.policy.timeout_s, deadline - time.monotonic())
            if timeout <= 0:
                raise _Drop("deadline", f"deadline of {self.policy.deadline_s}s passed")
            deadline_bound = timeout < self.policy.timeout_s
            with self._send(progress.url, timeout, deadline_bound) as response:
                progress.status = response.status_code
                location = _redirect_location(response)
                if location is None:
                    return self._accept(response, progress, deadline, deadline_bound)
            self._follow(progress, location)

    def _send(self, url: str, timeout: float, deadline_bound: bool) -> requests.Response:
        """GET ``url`` without reading the body or following redirects."""
        try:
            return self._session().get(url, stream=True, allow_redirects=False, timeout=timeout)
        except _NETWORK_ERRORS as exc:
            raise _network_drop(exc, reading=False, deadline_bound=deadline_bound) from exc

    def _follow(self, progress: _Progress, location: str) -> None:
        """Move ``progress`` to the redirect target, when it is allowed and within the redirect budget."""
        progress.redirects += 1
        if progress.redirects > self.policy.max_redirects:
            raise _Drop("too_many_redirects", f"more than {self.policy.max_redirects} redirects")
        try:
            target = urljoin(progress.url, location)
        except ValueError as exc:
            raise _Drop("bad_url", f"unparsable redirect target {location!r}: {exc}") from exc
        progress.url = self._checked(target)

    def _accept(self, response: requests.Response, progress: _Progress, deadline: float,
                deadline_bound: bool) -> bytes:
        """The body of a final (non-redirect) answer, when status, headers and size allow it."""
        status = response.status_code
        if not 200 <= status < 300:
            raise _Drop(f"http_{status}", f"HTTP {status} {response.reason}",
                        transient=status == 429 or status >= 500, retry_after=_retry_after(response))
        if robots_disallowed(response.raw.headers.getlist("X-Robots-Tag"),
                             self.policy.user_agent_token, self.policy.disallowed_robots):
            raise _Drop("robots_disallowed", "X-Robots-Tag: " + response.headers["X-Robots-Tag"])
        media_type = _media_type(response)
        progress.content_type = media_type or None
        if not media_type.startswith(self.policy.content_types):
            raise _Drop("not_image", f"content type {media_type or 'missing'}")
        return self._read_body(response, deadline, deadline_bound)

    def _read_body(self, response: requests.Response, deadline: float, deadline_bound: bool) -> bytes:
        """Stream the body, stopping at ``max_bytes`` or the deadline.

        A body shorter than its Content-Length makes urllib3 raise (it enforces the length), which
        becomes ``read_error``.
        """
        cap = self.policy.max_bytes
        declared = _content_length(response)
        if declared is not None and declared > cap:
            raise _Drop("too_large", f"Content-Length {declared} exceeds {cap} bytes")
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(_CHUNK_BYTES):
                size += len(chunk)
                if size > cap:
                    raise _Drop("too_large", f"body exceeds {cap} bytes")
                if time.monotonic() > deadline:
                    raise _Drop("deadline", f"deadline of {self.policy.deadline_s}s passed while reading")
                chunks.append(chunk)
        except _NETWORK_ERRORS as exc:
            raise _network_drop(exc, reading=True, deadline_bound=deadline_bound) from exc
        if not size:
            raise _Drop("empty_body", "the answer has no body")
        return b"".join(chunks)
