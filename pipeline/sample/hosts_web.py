"""A web of many hosts on loopback, for politeness tests and benchmarks: one server, many names.

Each host name gets an address of its own in 127.0.0.0/8 (``loopback_address``: 127.1.0.1,
127.1.0.2, ...; Linux answers on the whole range) and a behaviour:

==============  =================================================================================
``normal``      serve a JPEG for every path
``slow``        the same, after ``latency_s`` per request and ``connect_latency_s`` per new
                connection (every behaviour takes these two)
``throttle``    every ``every``-th request is answered 429 with ``Retry-After: retry_after_s``
                (none when it is None); the others are served
``unavailable`` every ``every``-th request is answered 503 (with ``Retry-After`` when set)
``flaky``       every ``every``-th request has its connection reset (TCP RST, no answer)
``refused``     nothing listens on the host's address: connections are refused
``dead``        the name does not resolve (NXDOMAIN): it has no address at all
==============  =================================================================================

One asyncio loop, on a thread of the process that starts it (``HostWeb``) or in a child process
of its own (``HostWebProcess``, for benchmarks, so the server does not share the build's
interpreter lock), listens on every host's address, all on one port.  Answers are HTTP/1.1 with
keep-alive, as a real host's.  No address outside 127.0.0.0/8 is ever bound.

The server counts per host what the politeness tests check from the server's side: requests,
the peak of requests in progress at once, the arrival time of each request and of each 429, and
connections.  The build's workers are processes of their own: ``write_hosts_file`` writes the
name map they resolve by (``download/dns.py``, ``FLAMINGO_CORPUS_TEST_HOSTS``).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import multiprocessing
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

__all__ = ["Host", "HostWeb", "HostWebProcess", "loopback_address", "BEHAVIOURS"]

BEHAVIOURS = ("normal", "slow", "throttle", "unavailable", "flaky", "refused", "dead")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_MAX_HEADER_LINES = 100


def loopback_address(i: int) -> str:
    """The ``i``-th host address (from 0): 127.1.0.1, ..., 127.1.0.254, 127.1.1.1, ...; about 16
    million before the range runs out."""
    third, fourth = divmod(i, 254)
    second, third = divmod(third, 256)
    if second > 254:
        raise ValueError(f"no loopback address left for host {i}")
    return f"127.{second + 1}.{third}.{fourth + 1}"


@dataclass(frozen=True)
class Host:
    """One host of the web: its name, its behaviour, and the address it is given (``HostWeb``
    gives one to every host but ``dead`` ones when none is set)."""

    name: str
    behaviour: str = "normal"
    latency_s: float = 0.0  # added to every request
    connect_latency_s: float = 0.0  # added to every new connection, before its first answer
    retry_after_s: Optional[float] = None  # throttle, unavailable: the Retry-After sent
    every: int = 1  # throttle, unavailable, flaky: which requests misbehave (every n-th)
    address: Optional[str] = None

    def __post_init__(self):
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {self.behaviour!r}; one of {', '.join(BEHAVIOURS)}")
        if self.address is not None and ipaddress.ip_address(self.address) not in _LOOPBACK:
            raise ValueError(f"{self.name}: {self.address} is not a loopback address")


@dataclass
class HostStats:
    """What one host saw (times are ``time.monotonic()`` of the server's process: the whole
    machine's clock on Linux)."""

    requests: int = 0
    connections: int = 0
    active: int = 0
    peak_concurrent: int = 0
    times: List[float] = field(default_factory=list)  # arrival of each request
    throttled: List[float] = field(default_factory=list)  # when each 429 was sent
    statuses: Dict[int, int] = field(default_factory=dict)

    def max_in_window(self, seconds: float) -> int:
        """Most requests that arrived within any half-open window of ``seconds``."""
        times, best, lo = sorted(self.times), 0, 0
        for hi, t in enumerate(times):
            while times[lo] <= t - seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


class HostWeb:
    """The web's server on a background thread of this process.

    >>> with HostWeb([Host("a.test"), Host("b.test", "throttle", retry_after_s=2)], images) as web:  # doctest: +SKIP
    ...     web.write_hosts_file("hosts.json"); web.url("a.test", "1.jpg")
    """

    def __init__(self, hosts: Sequence[Host], images: Sequence[bytes], port: int = 0):
        if not images:
            raise ValueError("the web needs at least one image to serve")
        self.images = list(images)
        named: Dict[str, Host] = {}
        for i, h in enumerate(hosts):
            if h.name in named:
                raise ValueError(f"host {h.name} is listed twice")
            if h.address is None and h.behaviour != "dead":
                h = Host(**{**h.__dict__, "address": loopback_address(i)})
            named[h.name] = h
        self.hosts = named
        self._requested_port = port
        self._port: Optional[int] = None
        self._stats: Dict[str, HostStats] = {name: HostStats() for name in named}
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._servers: list = []
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    def __enter__(self) -> "HostWeb":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("HostWeb is not running")
        return self._port

    def url(self, name: str, path: str) -> str:
        return f"http://{name}:{self.port}/{path.lstrip('/')}"

    def start(self) -> "HostWeb":
        self._thread = threading.Thread(target=self._run, name="host-web", daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def write_hosts_file(self, path: str, log: Optional[str] = None) -> None:
        """The name map the fetcher's test-only resolver reads (``download/dns.py``): every
        host's name to its loopback address, ``dead`` ones to null (NXDOMAIN)."""
        data = {"hosts": {name: h.address for name, h in self.hosts.items()}, "log": log}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)

    def stats(self) -> Dict[str, HostStats]:
        """A copy of every host's figures so far."""
        with self._lock:
            return {
                name: HostStats(
                    s.requests,
                    s.connections,
                    s.active,
                    s.peak_concurrent,
                    list(s.times),
                    list(s.throttled),
                    dict(s.statuses),
                )
                for name, s in self._stats.items()
            }

    # -- the loop --

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _listen(self) -> None:
        port = self._requested_port
        for h in self.hosts.values():
            if h.address is None or h.behaviour == "refused":
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((h.address, port))
            sock.listen(256)
            port = sock.getsockname()[1]
            server = await asyncio.start_server(functools.partial(self._serve, h), sock=sock)
            self._servers.append(server)
        if port == 0:  # no host listens at all: pick a port nobody uses for the URLs
            probe = socket.create_server(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
        self._port = port

    async def _serve(self, h: Host, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        st = self._stats[h.name]
        with self._lock:
            st.connections += 1
        try:
            if h.connect_latency_s:
                await asyncio.sleep(h.connect_latency_s)
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                path, close = request
                with self._lock:
                    st.requests += 1
                    n = st.requests
                    st.times.append(time.monotonic())
                    st.active += 1
                    st.peak_concurrent = max(st.peak_concurrent, st.active)
                try:
                    if h.latency_s:
                        await asyncio.sleep(h.latency_s)
                    misbehave = h.every > 0 and n % h.every == 0
                    if h.behaviour == "flaky" and misbehave:
                        _reset(writer)
                        return
                    if h.behaviour in ("throttle", "unavailable") and misbehave:
                        status = 429 if h.behaviour == "throttle" else 503
                        extra = f"Retry-After: {h.retry_after_s:g}\r\n" if h.retry_after_s is not None else ""
                        body = b"slow down\n"
                        head = (
                            f"HTTP/1.1 {status} {'Too Many Requests' if status == 429 else 'Service Unavailable'}\r\n"
                        )
                        head += f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n{extra}"
                        if status == 429:
                            with self._lock:
                                st.throttled.append(time.monotonic())
                    else:
                        status, body = 200, self.images[zlib.crc32(path.encode()) % len(self.images)]
                        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n"
                    head += "Connection: close\r\n\r\n" if close else "\r\n"
                    writer.write(head.encode() + body)
                    await writer.drain()
                    with self._lock:
                        st.statuses[status] = st.statuses.get(status, 0) + 1
                finally:
                    with self._lock:
                        st.active -= 1
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - a reset transport
                pass


async def _read_request(reader: asyncio.StreamReader) -> Optional[tuple]:
    """(path, whether the client asked to close) of the next request; None at the end."""
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    path = parts[1] if len(parts) >= 2 else "/"
    close = len(parts) >= 3 and parts[2] == "HTTP/1.0"
    for _ in range(_MAX_HEADER_LINES):
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "connection" and value.strip().lower() == "close":
            close = True
    return path, close


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (zero linger)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- in a process of its own ----------------------------------------------------------------------


def _serve_in_child(hosts, images, port, conn) -> None:
    with HostWeb(hosts, images, port) as web:
        conn.send(web.port)
        conn.recv()  # until told to stop
        conn.send(web.stats())


class HostWebProcess:
    """``HostWeb`` in a child process (``stats()`` comes back when it stops: ``final_stats``)."""

    def __init__(self, hosts: Sequence[Host], images: Sequence[bytes], port: int = 0):
        self._web = HostWeb(hosts, images)  # for the addresses and the hosts file; never started here
        self._requested_port = port
        self.hosts = self._web.hosts
        self._hosts, self._images = list(self.hosts.values()), list(images)
        self.port: Optional[int] = None
        self.final_stats: Optional[Dict[str, HostStats]] = None

    def __enter__(self) -> "HostWebProcess":
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve_in_child, args=(self._hosts, self._images, self._requested_port, child), daemon=True
        )
        self._proc.start()
        self.port = self._conn.recv()
        self._web._port = self.port
        return self

    def __exit__(self, *exc_info) -> None:
        self._conn.send("stop")
        self.final_stats = self._conn.recv()
        self._proc.join(10)

    def url(self, name: str, path: str) -> str:
        return self._web.url(name, path)

    def write_hosts_file(self, path: str, log: Optional[str] = None) -> None:
        self._web.write_hosts_file(path, log)
