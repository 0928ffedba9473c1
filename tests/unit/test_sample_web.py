"""SampleWeb: files, content types, path safety, every behaviour, counters, quiet shutdown.

Requests go through http.client so that paths reach the server exactly as written.
"""

import gzip
import http.client
import io
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from flamingo_corpus.sample.web import EXTRA_BYTES, HTML_PAGE, HUGE_CONTENT_LENGTH, SampleWeb, corrupt

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path):
    """A served folder with one file of each kind, next to a secret that must stay unreachable."""
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "a.jpg")
    Image.new("RGB", (8, 8), "blue").save(root / "sub" / "b.png")
    (root / "page.html").write_text("<p>hi</p>")
    (root / "c.webp").write_bytes(b"RIFF....WEBP")
    (root / "d.gif").write_bytes(b"GIF89a")
    (root / "notes.txt").write_text("notes")
    (tmp_path / "secret.txt").write_text("secret")
    return root


@pytest.fixture
def web(site):
    with SampleWeb(site) as server:
        yield server


def get(web, path, timeout=5.0):
    """GET ``path`` as written; returns (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


# -- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/a.jpg", "image/jpeg"),
        ("/sub/b.png", "image/png"),
        ("/c.webp", "image/webp"),
        ("/d.gif", "image/gif"),
        ("/page.html", "text/html"),
        ("/notes.txt", "application/octet-stream"),
    ],
)
def test_files_are_served_with_their_content_type(web, site, path, content_type):
    status, headers, body = get(web, path)
    assert status == 200
    assert headers["Content-Type"] == content_type
    assert body == (site / path.lstrip("/")).read_bytes()
    assert int(headers["Content-Length"]) == len(body)


@pytest.mark.parametrize("path", ["/nope.jpg", "/", "/sub", "/sub/"])
def test_missing_files_and_folders_are_404(web, path):
    assert get(web, path)[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/../../secret.txt",
        "/..%2Fsecret.txt",
        "/link.txt",
        "/a.jpg%00.png",
        "{absolute}",
    ],
)
def test_nothing_outside_the_root_is_served(web, site, path):
    secret = site.parent / "secret.txt"
    (site / "link.txt").symlink_to(secret)
    status, _, body = get(web, path.format(absolute="/" + quote(str(secret), safe="")))
    assert status == 404 and b"secret" not in body


# -- behaviours ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 404, 429, 500, 503])
def test_status_answers_with_the_code(web, code):
    status, headers, body = get(web, f"/status/{code}/anything/at/all")
    assert status == code and body == f"status {code}\n".encode()
    assert "Retry-After" not in headers


def test_status_can_send_retry_after(web):
    status, headers, _ = get(web, "/status/429/x?retry_after=7")
    assert (status, headers["Retry-After"]) == (429, "7")


@pytest.mark.parametrize(
    "path",
    [
        "/status/abc/x",
        "/status/99/x",
        "/status/600/x",
        "/status",
        "/slow/-1/a.jpg",
        "/slow/nan/a.jpg",
        "/flaky/x/a.jpg",
        "/redirect/-1/a.jpg",
        "/redirect-to",
        "/drip/-1/a.jpg",
        "/reset/x/a.jpg",
        "/truncated/-1/a.jpg",
        "/png-bomb/0/x",
        "/png-bomb/20001/x",
        "/gzip-bomb/0/x",
        "/gzip-bomb/1025/x",
        "/type",
    ],
)
def test_bad_behaviour_parameters_are_400(web, path):
    assert get(web, path)[0] == 400


def test_slow_waits_then_serves(web, site):
    started = time.monotonic()
    status, _, body = get(web, "/slow/0.3/a.jpg")
    assert time.monotonic() - started >= 0.3
    assert (status, body) == (200, (site / "a.jpg").read_bytes())


def test_stop_is_prompt_while_a_handler_sleeps(site):
    web = SampleWeb(site).start()
    outcome = []

    def client():
        try:
            outcome.append(get(web, "/slow/30/a.jpg"))
        except (http.client.HTTPException, OSError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    while web.count("/slow/30/a.jpg") == 0:
        time.sleep(0.01)
    started = time.monotonic()
    web.stop()
    thread.join(timeout=5)
    assert time.monotonic() - started < 2
    assert len(outcome) == 1 and isinstance(outcome[0], Exception)  # hung up instead of answering


def test_noai_sends_the_robots_header(web, site):
    status, headers, body = get(web, "/noai/a.jpg")
    assert (status, headers["X-Robots-Tag"], body) == (200, "noai", (site / "a.jpg").read_bytes())


def test_robots_sends_the_given_header(web):
    _, headers, _ = get(web, "/robots/otherbot%3A%20noindex/a.jpg")
    assert headers["X-Robots-Tag"] == "otherbot: noindex"


def test_as_html_relabels_the_bytes(web, site):
    status, headers, body = get(web, "/as-html/a.jpg")
    assert (status, headers["Content-Type"], body) == (200, "text/html", (site / "a.jpg").read_bytes())


def test_flaky_fails_n_times_per_path_then_serves(web):
    answers = [get(web, "/flaky/2/a.jpg") for _ in range(3)]
    assert [status for status, _, _ in answers] == [503, 503, 200]
    assert answers[0][1]["Retry-After"] == "0"
    assert get(web, "/flaky/2/sub/b.png")[0] == 503  # another path has its own count


def test_redirect_counts_down_then_serves(web, site):
    status, headers, _ = get(web, "/redirect/2/sub/b.png")
    assert (status, headers["Location"]) == (302, "/redirect/1/sub/b.png")
    status, _, body = get(web, "/redirect/0/sub/b.png")
    assert (status, body) == (200, (site / "sub" / "b.png").read_bytes())


def test_redirect_to_points_anywhere(web):
    status, headers, _ = get(web, "/redirect-to?url=https%3A%2F%2Fexample.com%2Fa.jpg")
    assert (status, headers["Location"]) == (302, "https://example.com/a.jpg")


def test_huge_claims_ten_gigabytes_then_sends_the_file(web, site):
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        connection.request("GET", "/huge/a.jpg")
        response = connection.getresponse()
        assert int(response.headers["Content-Length"]) == HUGE_CONTENT_LENGTH
        size = (site / "a.jpg").stat().st_size
        assert response.read(size) == (site / "a.jpg").read_bytes()
    finally:
        connection.close()


def test_no_length_sends_no_content_length(web, site):
    status, headers, body = get(web, "/no-length/a.jpg")
    assert (status, headers["Content-Length"], body) == (200, None, (site / "a.jpg").read_bytes())


def raw_exchange(web, path, read=1 << 20):
    """Send a GET for ``path`` on a bare socket; (what came back, how the connection ended)."""
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        try:
            while len(received) < read:
                chunk = sock.recv(65536)
                if not chunk:
                    return received, "closed"
                received += chunk
        except ConnectionResetError:
            return received, "reset"
        return received, "open"


def split_answer(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_drip_sends_the_file_byte_by_byte(web, site):
    status, headers, body = get(web, "/drip/0.001/a.jpg", timeout=30)
    assert (status, body) == (200, (site / "a.jpg").read_bytes())
    assert int(headers["Content-Length"]) == len(body)
    # the server counts a byte after its write returns, which may be after the client has read it
    deadline = time.monotonic() + 10
    while web.bytes_sent("/drip/0.001/a.jpg") < len(body) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert web.bytes_sent("/drip/0.001/a.jpg") == len(body)


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/type/image%2Fwebp/a.jpg", "image/webp"),
        ("/type/text%2Fplain%3B%20charset%3Dutf-8/a.jpg", "text/plain; charset=utf-8"),
    ],
)
def test_type_relabels_the_file(web, site, path, content_type):
    status, headers, body = get(web, path)
    assert (status, headers["Content-Type"], body) == (200, content_type, (site / "a.jpg").read_bytes())


def test_no_type_sends_no_content_type(web, site):
    status, headers, body = get(web, "/no-type/a.jpg")
    assert (status, headers["Content-Type"], body) == (200, None, (site / "a.jpg").read_bytes())


def test_html_is_a_page(web):
    status, headers, body = get(web, "/html/gallery/picture.jpg")
    assert (status, headers["Content-Type"], body) == (200, "text/html; charset=utf-8", HTML_PAGE)


def test_reset_resets_n_times_then_serves(web, site):
    assert raw_exchange(web, "/reset/2/a.jpg") == (b"", "reset")
    assert raw_exchange(web, "/reset/2/a.jpg") == (b"", "reset")
    status, _, body = get(web, "/reset/2/a.jpg")
    assert (status, body) == (200, (site / "a.jpg").read_bytes())


def test_truncated_sends_half_the_body_n_times_then_serves(web, site):
    data = (site / "a.jpg").read_bytes()
    raw, ending = raw_exchange(web, "/truncated/1/a.jpg")
    head, body = split_answer(raw)
    assert ending == "closed" and f"Content-Length: {len(data)}" in head
    assert body == data[: len(data) // 2]
    assert get(web, "/truncated/1/a.jpg")[2] == data


def test_extra_sends_more_than_its_content_length(web, site):
    data = (site / "a.jpg").read_bytes()
    raw, ending = raw_exchange(web, "/extra/a.jpg")
    head, body = split_answer(raw)
    assert ending == "closed" and f"Content-Length: {len(data)}" in head
    assert body == data + bytes(EXTRA_BYTES)


def test_redirect_loop_points_at_itself(web):
    status, headers, _ = get(web, "/redirect-loop/a/b.jpg")
    assert (status, headers["Location"]) == (302, "/redirect-loop/a/b.jpg")


def test_endless_goes_on_until_the_client_hangs_up(web):
    raw, ending = raw_exchange(web, "/endless/x", read=3 << 20)
    head, body = split_answer(raw)
    assert ending == "open" and "Content-Type: image/jpeg" in head and "Content-Length" not in head
    assert body.startswith(b"\xff\xd8\xff") and len(body) > 2 << 20


def test_corrupt_breaks_the_image_but_keeps_its_header(web, site):
    # a fixed picture: libjpeg tolerates the damage in a few random ones (about 1 in 7 noise
    # images decode, with garbage), so an unseeded one made this test flaky
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (site / "noise.jpg").write_bytes(jpeg.getvalue())
    status, headers, body = get(web, "/corrupt/noise.jpg")
    assert (status, headers["Content-Type"], len(body)) == (200, "image/jpeg", len(jpeg.getvalue()))
    assert body == corrupt(jpeg.getvalue()) != jpeg.getvalue()
    image = Image.open(io.BytesIO(body))
    assert image.size == (64, 48)  # still a JPEG of the right size ...
    with pytest.raises(OSError):
        image.load()  # ... whose data does not decode


def test_png_bomb_is_small_and_decodes_huge(web):
    status, headers, body = get(web, "/png-bomb/3000/x")
    assert (status, headers["Content-Type"]) == (200, "image/png") and len(body) < 20_000
    image = Image.open(io.BytesIO(body))
    assert (image.size, image.mode) == ((3000, 3000), "L")
    image.load()  # a valid PNG: its 9,000,000 pixels all decode
    assert image.getextrema() == (0, 0)


def test_gzip_sends_the_file_compressed(web, site):
    status, headers, body = get(web, "/gzip/a.jpg")
    assert (status, headers["Content-Encoding"], headers["Content-Type"]) == (200, "gzip", "image/jpeg")
    assert int(headers["Content-Length"]) == len(body)
    assert gzip.decompress(body) == (site / "a.jpg").read_bytes()


def test_gzip_bomb_decodes_to_the_asked_size(web):
    status, headers, body = get(web, "/gzip-bomb/3/x")
    assert (status, headers["Content-Encoding"], headers["Content-Type"]) == (200, "gzip", "image/png")
    assert len(body) < 10_000
    decoded = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body)
    assert decoded == bytes(3 << 20)


def test_encoding_labels_the_bytes_without_encoding_them(web, site):
    status, headers, body = get(web, "/encoding/br/a.jpg")
    assert (status, headers["Content-Encoding"], body) == (200, "br", (site / "a.jpg").read_bytes())


# -- bookkeeping and lifecycle --------------------------------------------------------------------


def test_requests_are_counted_per_path_with_their_headers(web):
    for _ in range(3):
        get(web, "/a.jpg")
    get(web, "/status/404/x?retry_after=1")
    assert web.count("/a.jpg") == 3
    assert web.count("/never") == 0
    assert web.counts() == {"/a.jpg": 3, "/status/404/x": 1}
    assert web.last_headers("/a.jpg")["Host"] == f"127.0.0.1:{web.port}"
    assert web.last_headers("/never") is None
    assert web.bytes_sent("/a.jpg") == 3 * (web.root / "a.jpg").stat().st_size
    assert web.bytes_sent("/never") == 0


def test_url_port_and_lifecycle(site):
    web = SampleWeb(site)
    with pytest.raises(RuntimeError):
        _ = web.url
    with web:
        assert web.url == f"http://127.0.0.1:{web.port}" and web.port > 0
        with pytest.raises(RuntimeError):
            web.start()
    with pytest.raises(RuntimeError):
        _ = web.port
    web.stop()  # stopping twice is harmless


def test_server_is_quiet(web, capfd):
    get(web, "/a.jpg")
    get(web, "/missing.jpg")
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    connection.request("GET", "/slow/0.2/a.jpg")
    connection.close()  # hang up before the answer: the server's write fails
    time.sleep(0.4)
    assert capfd.readouterr().err == ""


def test_command_line_serves_until_interrupted(site):
    command = [sys.executable, "-m", "flamingo_corpus.sample.web", str(site), "--port", "0"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)", process.stdout.readline()).group(1))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/a.jpg")
            assert connection.getresponse().status == 200
            connection.close()
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
