"""The fetcher against servers that try to hold it, and addresses that try to get past its check.

Every server here is a raw socket on 127.0.0.1 that drips its answer one byte at a time, each byte
well inside ``timeout_s``: only the URL's deadline can end such a fetch, and it must, whatever part
of the exchange is being dripped (status line, headers, chunk framing, body, TLS handshake).
"""

from __future__ import annotations

import socket
import time

import pytest

from flamingo_corpus.download.fetch import (
    Fetcher,
    FetchPolicy,
    is_link_local_address,
    is_private_address,
    robots_disallowed,
)

from ..helpers import one_connection_servers

pytestmark = pytest.mark.timeout(60)

DEADLINE_S = 1.5
SLACK_S = 1.0  # scheduling on a loaded 2-core machine
BODY = b"\xff\xd8\xff" + b"x" * 200

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
ANSWERS = {
    # (what is sent at once, what is dripped a byte at a time)
    "status_line": (b"", HEAD + b"Content-Length: 203\r\n\r\n" + BODY),
    "headers": (b"HTTP/1.1 200 OK\r\n", b"Content-Type: image/jpeg\r\n" + b"X-Pad: " + b"a" * 400 + b"\r\n\r\n"),
    "chunk_framing": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n" * 200 + b"0\r\n\r\n"),
    "body_with_length": (HEAD + b"Content-Length: 203\r\n\r\n", BODY),
    "body_until_close": (HEAD + b"Connection: close\r\n\r\n", BODY),
    "tls_handshake": (b"", b"\x16\x03\x01\x02\x00" + b"\x00" * 600),
}


SHORT = b"\xff\xd8\xff" + b"y" * 27
OTHER_ANSWERS = {"short_body": (HEAD + b"Content-Length: 30\r\n\r\n", SHORT)}


@pytest.fixture
def drip():
    """Serve one connection: send the first part at once, then drip the rest every 0.1 s (for at
    most 20 s). Returns the URL and a list the server appends its end time to."""
    with one_connection_servers() as serve:

        def dripping(name: str, scheme: str = "http"):
            head, dripped = {**ANSWERS, **OTHER_ANSWERS}[name]
            ended: list = []

            def handle(connection: socket.socket) -> None:
                connection.settimeout(1)
                stop = time.monotonic() + 20
                try:
                    if scheme == "http":
                        connection.recv(65536)
                    connection.sendall(head)
                    for i in range(len(dripped)):
                        if time.monotonic() > stop:
                            break
                        connection.sendall(dripped[i : i + 1])
                        time.sleep(0.1)
                finally:  # the fetcher hung up (the send failed), or the drip ended
                    ended.append(time.monotonic())

            return serve(handle, scheme), ended

        yield dripping


@pytest.mark.parametrize("part", sorted(ANSWERS))
def test_a_drip_anywhere_in_the_exchange_ends_at_the_deadline(drip, part):
    scheme = "https" if part == "tls_handshake" else "http"
    url, ended = drip(part, scheme)
    policy = FetchPolicy(allow_private=True, timeout_s=1.0, deadline_s=DEADLINE_S, retries=2, backoff_s=0.01)
    with Fetcher(policy) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(url)
        took = time.monotonic() - started
    assert result.reason == "deadline" and result.data is None, (result.reason, result.detail)
    assert took < DEADLINE_S + SLACK_S
    for _ in range(30):  # the server sees the connection go (its next send fails)
        if ended:
            break
        time.sleep(0.1)
    assert ended and ended[0] - started < DEADLINE_S + 2 * SLACK_S


def test_a_fetch_after_a_fired_deadline_on_the_same_thread_is_not_cut(drip):
    """The watchdog's entries belong to one fetch: the next fetch of the thread keeps its full time."""
    url, _ = drip("status_line")
    policy = FetchPolicy(allow_private=True, timeout_s=1.0, deadline_s=DEADLINE_S, retries=0)
    with Fetcher(policy) as fetcher:
        assert fetcher.fetch(url).reason == "deadline"
        slow_url, _ = drip("short_body")
        patient = FetchPolicy(allow_private=True, timeout_s=1.0, deadline_s=60, retries=0)
        with Fetcher(patient) as fetcher:
            result = fetcher.fetch(slow_url)  # 30 bytes at 10 a second: longer than the first deadline
    assert result.ok and result.data == SHORT


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "0.0.0.0",
        "2001:db8::1",  # documentation
        "::",
        "::1",
        "::127.0.0.1",  # IPv4-compatible loopback
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo whose client is 192.0.2.45
        "fc00::1",
        "fe80::1",
        "ff02::1",
    ],
)
def test_every_address_that_is_not_global_is_refused(address):
    assert is_private_address(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::", "2001:4860:4860::8888"]
)
def test_global_addresses_and_wrappers_of_them_pass(address):
    assert not is_private_address(address)


@pytest.mark.parametrize("address", ["169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "fe80::1"])
def test_metadata_addresses_stay_refused_even_where_private_ones_are_allowed(address):
    assert is_link_local_address(address)


@pytest.mark.parametrize(
    "value, refused",
    [("none", True), ("NONE", True), ("flamingo-corpus: none", True), ("otherbot: none", False), ("all", False)],
)
def test_x_robots_tag_none_means_noindex(value, refused):
    assert robots_disallowed([value], "flamingo-corpus", ("noindex",)) is refused
