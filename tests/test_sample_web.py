"""SampleWeb: files, content types, path safety, every behaviour, counters, quiet shutdown.

Requests go through http.client so that paths reach the server exactly as written.
"""
import http.client
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from pipeline.sample_web import HUGE_CONTENT_LENGTH, SampleWeb

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]


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

@pytest.mark.parametrize("path, content_type", [
    ("/a.jpg", "image/jpeg"),
    ("/sub/b.png", "image/png"),
    ("/c.webp", "image/webp"),
    ("/d.gif", "image/gif"),
    ("/page.html", "text/html"),
    ("/notes.txt", "application/octet-stream"),
])
def test_files_are_served_with_their_content_type(web, site, path, content_type):
    status, headers, body = get(web, path)
    assert status == 200
    assert headers["Content-Type"] == content_type
    assert body == (site / path.lstrip("/")).read_bytes()
    assert int(headers["Content-Length"]) == len(body)


@pytest.mark.parametrize("path", ["/nope.jpg", "/", "/sub", "/sub/"])
def test_missing_files_and_folders_are_404(web, path):
    assert get(web, path)[0] == 404


@pytest.mark.parametrize("path", ["/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt",
                                  "/..%2Fsecret.txt", "/link.txt", "/a.jpg%00.png", "{absolute}"])
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


@pytest.mark.parametrize("path", ["/status/abc/x", "/status/99/x", "/status/600/x", "/status", "/slow/-1/a.jpg",
                                  "/slow/nan/a.jpg", "/flaky/x/a.jpg", "/redirect/-1/a.jpg", "/redirect-to"])
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


def test_url_port_and_lifecycle(site):
    web = SampleWeb(site)
    with pytest.raises(RuntimeError):
        web.url
    with web:
        assert web.url == f"http://127.0.0.1:{web.port}" and web.port > 0
        with pytest.raises(RuntimeError):
            web.start()
    with pytest.raises(RuntimeError):
        web.port
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
    command = [sys.executable, "-m", "pipeline.sample_web", str(site), "--port", "0"]
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
