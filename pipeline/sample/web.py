"""An embedded web server on loopback: serves the files under a root, plus a fault web.

The local sample build uses it to serve the bundled images, and tests and the download load test
use it as a small, fully controlled web that misbehaves on request.  A path is either a file under
the root (``/cats/1.jpg``) or starts with the name of a behaviour, then the behaviour's
parameters, then the rest of the path (usually a file):

==================================  =============================================================
``/status/<code>/<anything>``       answer with status ``code`` (200-599) and a short text body;
                                    with ``?retry_after=S`` also send ``Retry-After: S``
``/slow/<seconds>/<file>``          wait ``seconds`` (at most 30; cut short when the server
                                    stops), then serve the file
``/drip/<seconds>/<file>``          send the headers at once, then the body one byte every
                                    ``seconds`` (a slow drip: no single read waits long)
``/noai/<file>``                    serve the file with ``X-Robots-Tag: noai``
``/robots/<value>/<file>``          serve the file with ``X-Robots-Tag: <value>`` (percent-encoded)
``/as-html/<file>``                 serve the file's bytes as ``text/html``
``/type/<media type>/<file>``       serve the file as ``<media type>`` (percent-encoded)
``/no-type/<file>``                 serve the file with no Content-Type
``/html/<anything>``                an HTML page (``text/html``) where an image was expected
``/flaky/<n>/<file>``               answer 503 with ``Retry-After: 0`` the first ``n`` times this
                                    exact path is requested, then serve the file
``/reset/<n>/<file>``               reset the connection (TCP RST, no answer) the first ``n``
                                    times this exact path is requested, then serve the file
``/truncated/<n>/<file>``           send the full Content-Length but only half the body, then
                                    close, the first ``n`` times; then serve the file
``/extra/<file>``                   send the file's Content-Length, then the file and 1 KiB more
``/redirect/<n>/<file>``            302 to ``/redirect/<n-1>/<file>``; ``/redirect/0/<file>``
                                    serves it
``/redirect-loop/<anything>``       302 to itself, forever
``/redirect-to?url=<url>``          302 to ``url`` (another host, a private address, ``file:``...)
``/huge/<file>``                    declare a Content-Length of 10 GB, then send the file's bytes
``/no-length/<file>``               serve the file without a Content-Length (ends at close)
``/endless/<anything>``             an ``image/jpeg`` body with no Content-Length that never ends
                                    (until the client hangs up, the server stops, or 1 GiB)
``/corrupt/<file>``                 the file with its data after the first eighth (for a JPEG:
                                    after its headers) broken by 0xFF bytes: a corrupt image
``/png-bomb/<side>/<anything>``     a valid ``side`` x ``side`` grayscale PNG (at most 20000) of a
                                    few hundred KB that decodes to side x side bytes
``/gzip/<file>``                    serve the file gzip-compressed (``Content-Encoding: gzip``)
``/gzip-bomb/<MiB>/<anything>``     an ``image/png`` gzip body (at most 1024 MiB when decoded,
                                    about a thousandth of that on the wire) of zero bytes
``/encoding/<value>/<file>``        serve the file's bytes as they are, labelled
                                    ``Content-Encoding: <value>``
==================================  =============================================================

Add a behaviour by writing a handler ``(request, params, rest)`` and a row in ``BEHAVIOURS``.
Behaviours do not combine.  Answers are HTTP/1.0: one request per connection.  ``SampleWeb``
counts the requests and the body bytes it sent per path, for tests to check what a client did.

Run ``python -m flamingo_corpus.sample.web ROOT [--port N]`` to serve a folder until Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import functools
import gzip
import socket
import struct
import sys
import threading
import zlib
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional, Union
from urllib.parse import parse_qs, quote, unquote

from ..errors import UserError

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".html": "text/html",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_SLOW_S = 30.0
HUGE_CONTENT_LENGTH = 10 * 10**9
EXTRA_BYTES = 1024  # what /extra/ sends past the Content-Length
ENDLESS_LIMIT = 1 << 30  # /endless/ gives up after this many bytes
MAX_PNG_BOMB_SIDE = 20_000
MAX_GZIP_BOMB_MIB = 1024
HTML_PAGE = (
    b"<!doctype html>\n<html><head><title>Image not found</title></head>\n"
    b"<body><h1>Sorry</h1><p>This picture has moved. Have a look at our gallery.</p></body></html>\n"
)
_NO_BODY_STATUSES = frozenset({204, 304})


class _BadRequest(Exception):
    """A behaviour's parameters do not parse; answered with 400."""


def _int_param(text: str, low: int, high: int) -> int:
    """``text`` as an integer in [low, high]."""
    try:
        value = int(text)
    except ValueError as exc:
        raise _BadRequest(f"not an integer: {text!r}") from exc
    if not low <= value <= high:
        raise _BadRequest(f"{value} is outside {low}..{high}")
    return value


def _seconds_param(text: str) -> float:
    """``text`` as a number of seconds, capped at ``MAX_SLOW_S``."""
    try:
        seconds = float(text)
    except ValueError as exc:
        raise _BadRequest(f"not a number: {text!r}") from exc
    if not seconds >= 0:  # also refuses NaN
        raise _BadRequest(f"negative seconds: {text!r}")
    return min(seconds, MAX_SLOW_S)


def media_type_of(path: Path) -> str:
    """The Content-Type the web serves ``path`` with, by its extension."""
    return CONTENT_TYPES.get(path.suffix.lower(), DEFAULT_CONTENT_TYPE)


class _Handler(BaseHTTPRequestHandler):
    """Answers one request: a behaviour from ``BEHAVIOURS``, or a file under the root."""

    server: "_Server"
    url_path: str  # the requested path, without the query string
    query: dict[str, str]  # the query parameters (the last value of each)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        """Record the request, then answer it."""
        path, _, query = self.path.partition("?")
        self.url_path = path
        self.query = {name: values[-1] for name, values in parse_qs(query).items()}
        self.web._record(path, dict(self.headers.items()))
        try:
            self._dispatch([unquote(segment) for segment in path.split("/") if segment])
        except _BadRequest as exc:
            self.send_text(400, f"bad request: {exc}\n")

    def _dispatch(self, segments: list[str]) -> None:
        """Run the behaviour named by the first segment, or serve the whole path as a file."""
        behaviour = BEHAVIOURS.get(segments[0]) if segments else None
        if behaviour is None:
            self.send_file(segments)
            return
        params, rest = segments[1 : 1 + behaviour.params], segments[1 + behaviour.params :]
        if len(params) < behaviour.params:
            raise _BadRequest(f"/{segments[0]}/ takes {behaviour.params} parameter(s)")
        behaviour.handle(self, params, rest)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        """Stay quiet: no line per request on stderr."""

    @property
    def web(self) -> "SampleWeb":
        """The ``SampleWeb`` this request came to."""
        return self.server.web

    def send_text(self, status: int, text: str, headers: Optional[dict] = None) -> None:
        """Answer with ``status`` and a short plain-text body."""
        self.send_body(status, text.encode(), "text/plain; charset=utf-8", headers)

    def send_redirect(self, location: str) -> None:
        """Answer 302 to ``location``."""
        self.send_text(302, f"see {location}\n", {"Location": location})

    def send_file(
        self, segments: list[str], content_type: Optional[str] = None, headers: Optional[dict] = None
    ) -> None:
        """Serve the file at ``segments`` under the root, or answer 404."""
        path = self.web.file_at(segments)
        if path is None:
            self.send_text(404, "not found\n")
            return
        self.send_body(200, path.read_bytes(), content_type or media_type_of(path), headers)

    def send_body(self, status: int, body: bytes, content_type: Optional[str], headers: Optional[dict] = None) -> None:
        """Send the answer.  ``headers`` are added after Content-Type and Content-Length and may
        replace them; a header whose value is None is left out."""
        self.send_head(status, content_type, len(body), headers)
        if status not in _NO_BODY_STATUSES:
            self.write_body(body)

    def send_head(
        self, status: int, content_type: Optional[str], length: Optional[int], headers: Optional[dict] = None
    ) -> None:
        """Send the status line and headers (Content-Length ``length`` when not None)."""
        fields = {
            "Content-Type": content_type,
            "Content-Length": None if length is None else str(length),
            **(headers or {}),
        }
        self.send_response(status)
        for name, value in fields.items():
            if value is not None:
                self.send_header(name, value)
        self.end_headers()

    def write_body(self, data: bytes) -> bool:
        """Send body bytes, counting them for the path; False when the client has hung up."""
        try:
            self.wfile.write(data)
        except OSError:
            return False
        self.web._sent(self.url_path, len(data))
        return True

    def file_bytes(self, segments: list[str]) -> Optional[bytes]:
        """The bytes of the file at ``segments``, or None after answering 404."""
        path = self.web.file_at(segments)
        if path is None:
            self.send_text(404, "not found\n")
            return None
        return path.read_bytes()

    def reset(self) -> None:
        """Drop the connection with a TCP reset: no answer, not even a clean close."""
        raw = socket.socket(fileno=self.connection.detach())  # the handler's files see a closed socket
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # closing with a zero linger time sends RST
        self.close_connection = True


class PortInUse(UserError, OSError):
    """The port the sample web must serve on is taken."""


class _Server(ThreadingHTTPServer):
    """The threading server, pointing back at its ``SampleWeb``."""

    daemon_threads = True
    request_queue_size = 128  # the load test opens many connections at once

    def __init__(self, address: tuple[str, int], web: "SampleWeb"):
        self.web = web
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        """Clients hanging up (timeouts, size caps) is expected here: only report other errors."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


# -- behaviours ---------------------------------------------------------------------------------

Handle = Callable[[_Handler, list, list], None]


@dataclass(frozen=True)
class Behaviour:
    """A path prefix: the number of path segments it takes as parameters, and its handler."""

    params: int
    handle: Handle


def _answer_status(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Answer with the status code from the path."""
    status = _int_param(params[0], 200, 599)
    retry_after = request.query.get("retry_after")
    request.send_text(status, f"status {status}\n", {"Retry-After": retry_after})


def _answer_slow(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Serve the file after a pause; hang up without answering when the server stops meanwhile."""
    if request.web.pause(_seconds_param(params[0])):
        request.send_file(rest)


def _answer_noai(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Serve the file with ``X-Robots-Tag: noai``."""
    request.send_file(rest, headers={"X-Robots-Tag": "noai"})


def _answer_robots(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Serve the file with the X-Robots-Tag value from the path."""
    request.send_file(rest, headers={"X-Robots-Tag": params[0]})


def _answer_as_html(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Serve the file's bytes as text/html."""
    request.send_file(rest, content_type="text/html")


def _answer_flaky(request: _Handler, params: list[str], rest: list[str]) -> None:
    """503 for the first n requests of this path, then the file."""
    failures = _int_param(params[0], 0, 1_000_000)
    if request.web.count(request.url_path) <= failures:
        request.send_text(503, "try again\n", {"Retry-After": "0"})
    else:
        request.send_file(rest)


def _answer_redirect(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Redirect to the same path with one hop fewer, or serve the file after the last hop."""
    hops = _int_param(params[0], 0, 1_000)
    if hops == 0:
        request.send_file(rest)
    else:
        request.send_redirect("/" + "/".join(["redirect", str(hops - 1), *(quote(s) for s in rest)]))


def _answer_redirect_to(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Redirect to the ``url`` query parameter."""
    target = request.query.get("url")
    if not target:
        raise _BadRequest("/redirect-to needs ?url=")
    request.send_redirect(target)


def _answer_huge(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Claim a 10 GB body, then send only the file."""
    request.send_file(rest, headers={"Content-Length": str(HUGE_CONTENT_LENGTH)})


def _answer_no_length(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Serve the file with no Content-Length: the client only learns the size by reading."""
    request.send_file(rest, headers={"Content-Length": None})


def _answer_drip(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Headers at once, then the body byte by byte, ``seconds`` apart."""
    interval = _seconds_param(params[0])
    data = request.file_bytes(rest)
    if data is None:
        return
    request.send_head(200, media_type_of(Path(rest[-1])), len(data))
    for i in range(len(data)):
        if not request.write_body(data[i : i + 1]) or not request.web.pause(interval):
            return


def _answer_type(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Serve the file with the Content-Type from the path."""
    request.send_file(rest, content_type=params[0])


def _answer_no_type(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Serve the file with no Content-Type at all."""
    data = request.file_bytes(rest)
    if data is not None:
        request.send_body(200, data, None)


def _answer_html(request: _Handler, params: list[str], rest: list[str]) -> None:
    """An HTML page where an image was expected."""
    request.send_body(200, HTML_PAGE, "text/html; charset=utf-8")


def _answer_reset(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Reset the connection for the first n requests of this path, then serve the file."""
    failures = _int_param(params[0], 0, 1_000_000)
    if request.web.count(request.url_path) <= failures:
        request.reset()
    else:
        request.send_file(rest)


def _answer_truncated(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Half the body under the full Content-Length for the first n requests, then the file."""
    failures = _int_param(params[0], 0, 1_000_000)
    data = request.file_bytes(rest)
    if data is None:
        return
    if request.web.count(request.url_path) > failures:
        request.send_body(200, data, media_type_of(Path(rest[-1])))
        return
    request.send_head(200, media_type_of(Path(rest[-1])), len(data))
    request.write_body(data[: len(data) // 2])  # HTTP/1.0: the connection closes after this


def _answer_extra(request: _Handler, params: list[str], rest: list[str]) -> None:
    """The file's own Content-Length, then the file and EXTRA_BYTES more."""
    data = request.file_bytes(rest)
    if data is not None:
        request.send_head(200, media_type_of(Path(rest[-1])), len(data))
        request.write_body(data + b"\x00" * EXTRA_BYTES)


def _answer_redirect_loop(request: _Handler, params: list[str], rest: list[str]) -> None:
    """Redirect to this very path."""
    request.send_redirect(request.url_path)


def _answer_endless(request: _Handler, params: list[str], rest: list[str]) -> None:
    """A JPEG start marker, then zeros until the client hangs up or the server stops."""
    request.send_head(200, "image/jpeg", None)
    block = b"\xff\xd8\xff" + bytes(64 * 1024 - 3)
    sent = 0
    while sent < ENDLESS_LIMIT and not request.web.stopping and request.write_body(block):
        sent += len(block)
        block = bytes(len(block))


def _answer_corrupt(request: _Handler, params: list[str], rest: list[str]) -> None:
    """The file with its data broken: a corrupt image under the right type and length."""
    data = request.file_bytes(rest)
    if data is not None:
        request.send_body(200, corrupt(data), media_type_of(Path(rest[-1])))


def _answer_png_bomb(request: _Handler, params: list[str], rest: list[str]) -> None:
    """A small PNG that decodes to side x side pixels."""
    side = _int_param(params[0], 1, MAX_PNG_BOMB_SIDE)
    request.send_body(200, png_bomb(side), "image/png")


def _answer_gzip(request: _Handler, params: list[str], rest: list[str]) -> None:
    """The file, gzip-compressed."""
    data = request.file_bytes(rest)
    if data is not None:
        request.send_body(
            200, gzip.compress(data, mtime=0), media_type_of(Path(rest[-1])), {"Content-Encoding": "gzip"}
        )


def _answer_gzip_bomb(request: _Handler, params: list[str], rest: list[str]) -> None:
    """A gzip body that decodes to MiB mebibytes of zeros."""
    mib = _int_param(params[0], 1, MAX_GZIP_BOMB_MIB)
    request.send_body(200, gzip_bomb(mib), "image/png", {"Content-Encoding": "gzip"})


def _answer_encoding(request: _Handler, params: list[str], rest: list[str]) -> None:
    """The file's bytes as they are, under the Content-Encoding from the path."""
    data = request.file_bytes(rest)
    if data is not None:
        request.send_body(200, data, media_type_of(Path(rest[-1])), {"Content-Encoding": params[0]})


BEHAVIOURS: dict[str, Behaviour] = {
    "status": Behaviour(1, _answer_status),
    "slow": Behaviour(1, _answer_slow),
    "drip": Behaviour(1, _answer_drip),
    "noai": Behaviour(0, _answer_noai),
    "robots": Behaviour(1, _answer_robots),
    "as-html": Behaviour(0, _answer_as_html),
    "type": Behaviour(1, _answer_type),
    "no-type": Behaviour(0, _answer_no_type),
    "html": Behaviour(0, _answer_html),
    "flaky": Behaviour(1, _answer_flaky),
    "reset": Behaviour(1, _answer_reset),
    "truncated": Behaviour(1, _answer_truncated),
    "extra": Behaviour(0, _answer_extra),
    "redirect": Behaviour(1, _answer_redirect),
    "redirect-loop": Behaviour(0, _answer_redirect_loop),
    "redirect-to": Behaviour(0, _answer_redirect_to),
    "huge": Behaviour(0, _answer_huge),
    "no-length": Behaviour(0, _answer_no_length),
    "endless": Behaviour(0, _answer_endless),
    "corrupt": Behaviour(0, _answer_corrupt),
    "png-bomb": Behaviour(1, _answer_png_bomb),
    "gzip": Behaviour(0, _answer_gzip),
    "gzip-bomb": Behaviour(1, _answer_gzip_bomb),
    "encoding": Behaviour(1, _answer_encoding),
}


# -- generated fault bodies -------------------------------------------------------------------


def corrupt(data: bytes) -> bytes:
    """``data`` with every 7th byte after its headers set to 0xFF.

    For a JPEG the headers end with the start-of-scan segment, so the markers and tables stay
    valid (the file is still identified as a JPEG of the right size) and the entropy-coded data is
    broken: decoders fail on it.  For other files the first eighth is kept.
    """
    start = len(data) // 8
    scan = data.find(b"\xff\xda") if data.startswith(b"\xff\xd8") else -1
    if scan >= 0 and scan + 4 <= len(data):
        start = scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")
    out = bytearray(data)
    out[start : len(out) - 2 : 7] = b"\xff" * len(range(start, len(out) - 2, 7))
    return bytes(out)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@functools.lru_cache(maxsize=4)
def png_bomb(side: int) -> bytes:
    """A valid side x side 8-bit grayscale PNG of zeros: about side*side/1000 bytes that decode to
    side*side bytes (deflate compresses zeros about 1000:1).  Written by hand, row by row, because
    encoding it with Pillow would first allocate the whole image."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter type 0, then the row's pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


@functools.lru_cache(maxsize=4)
def gzip_bomb(mib: int) -> bytes:
    """A gzip stream of ``mib`` MiB of zeros, compressed about 1000:1."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    return b"".join(compressor.compress(block) for _ in range(mib)) + compressor.flush()


# -- the server ---------------------------------------------------------------------------------


class SampleWeb:
    """A loopback web server in a background thread.

    >>> with SampleWeb("images") as web:          # doctest: +SKIP
    ...     requests.get(web.url + "/cat.jpg")
    """

    def __init__(self, root: Union[str, Path], host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root).resolve()
        self.host = host
        self._requested_port = port
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._last_headers: dict[str, dict[str, str]] = {}

    def __enter__(self) -> "SampleWeb":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "SampleWeb":
        """Bind the port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("SampleWeb is already running")
        self._stopping.clear()
        try:
            self._server = _Server((self.host, self._requested_port), self)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(
                f"port {self._requested_port} on {self.host} is in use (another sample build running?); the "
                "bundled sample's URLs name this port: wait for the other build, or stop what holds the port"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sample-web-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; paused (``/slow/``) handlers give up at once."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    @property
    def port(self) -> int:
        """The bound port (the one the OS chose when constructed with port 0)."""
        if self._server is None:
            raise RuntimeError("SampleWeb is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def count(self, path: str) -> int:
        """How many requests came for ``path`` (as requested, without the query string)."""
        with self._lock:
            return self._counts[path]

    def counts(self) -> dict[str, int]:
        """Requests per path so far."""
        with self._lock:
            return dict(self._counts)

    def bytes_sent(self, path: str) -> int:
        """Body bytes sent for ``path`` so far (all its requests; the client may not have read them)."""
        with self._lock:
            return self._bytes[path]

    def last_headers(self, path: str) -> Optional[dict[str, str]]:
        """The headers of the latest request for ``path``, None when there was none."""
        with self._lock:
            return self._last_headers.get(path)

    def file_at(self, segments: list[str]) -> Optional[Path]:
        """The file that path ``segments`` name under the root; None when missing or outside it."""
        try:
            path = self.root.joinpath(*segments).resolve()
        except (OSError, ValueError):  # e.g. an embedded NUL byte
            return None
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the server started stopping meanwhile."""
        return not self._stopping.wait(seconds)

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` has begun: long answers give up."""
        return self._stopping.is_set()

    def _record(self, path: str, headers: dict[str, str]) -> None:
        """Count a request for ``path`` and keep its headers."""
        with self._lock:
            self._counts[path] += 1
            self._last_headers[path] = headers

    def _sent(self, path: str, size: int) -> None:
        """Count ``size`` body bytes sent for ``path``."""
        with self._lock:
            self._bytes[path] += size


def main(argv: Optional[list[str]] = None) -> None:
    """Serve a folder on loopback until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m flamingo_corpus.sample.web", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder to serve")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    args = parser.parse_args(argv)
    with SampleWeb(args.root, port=args.port) as web:
        print(f"serving {web.root} at {web.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
