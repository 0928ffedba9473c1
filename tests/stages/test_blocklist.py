"""Removal lists: parsing, URL and image rules, and a LAION build that honours one."""

from __future__ import annotations

import hashlib

import pytest

from flamingo_corpus.filters.removal_list import Blocklist, BlocklistError, url_hash
from flamingo_corpus.images import perceptual

from ..loopback_build import build_over_loopback, jpeg_bytes, smooth_photo


def test_rules_of_every_kind():
    text = """
    # a removal list
    domain:bad.example
    url:HTTP://Shop.example:80/x.jpg#frag
    url_sha256:%s
    sha256:%s
    phash:ffff0000ffff0000
    """ % (url_hash("http://other.example/y.jpg"), "ab" * 32)
    bl = Blocklist.parse(text, phash_distance=3)
    assert bl.check_url("https://cdn.bad.example/a.png") == "domain:bad.example"
    assert bl.check_url("https://notbad.example/a.png") is None
    assert bl.check_url("http://shop.example/x.jpg").startswith("url_sha256:")
    assert bl.check_url("http://other.example/y.jpg").startswith("url_sha256:")
    assert bl.check_url("http://shop.example/z.jpg") is None
    assert bl.check_image("ab" * 32, None) == f"sha256:{'ab' * 32}"
    assert bl.check_image(None, "ffff0000ffff0007") == "phash:ffff0000ffff0000"  # 3 bits away
    assert bl.check_image(None, "ffff0000ffff000f") is None  # 4 bits away
    assert bl.check_url(None) is None and bl.check_image(None, None) is None


@pytest.mark.parametrize("line", ["nonsense", "colour:red", "domain:", "phash:xyz"])
def test_bad_lines_are_clear_errors(line):
    with pytest.raises(BlocklistError) as e:
        Blocklist.parse(f"domain:ok.example\n{line}\n", source="list.txt")
    assert "list.txt" in str(e.value)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_build_removes_listed_urls_and_images(tmp_path):
    files = {f"p{i}.jpg": jpeg_bytes(smooth_photo(i)) for i in range(6)}
    files["p5.jpg"] = jpeg_bytes(smooth_photo(4), quality=40)  # a recompressed copy of a listed picture

    def write_list(server_url: str) -> None:
        (tmp_path / "removal.txt").write_text(
            "\n".join(
                [
                    f"url:{server_url}/p1.jpg",
                    f"sha256:{hashlib.sha256(files['p2.jpg']).hexdigest()}",  # the bytes as downloaded
                    f"phash:{perceptual.phash(smooth_photo(4))}",
                ]
            )
        )

    rows, result = build_over_loopback(
        tmp_path, files, {"safety": {"blocklist": "removal.txt", "blocklist_phash_distance": 8}}, prepare=write_list
    )
    assert rows["p1.jpg"]["reason"] == "blocklisted" and rows["p1.jpg"]["detail"].startswith("url_sha256:")
    assert rows["p1.jpg"]["bytes"] is None  # refused before any download
    assert rows["p2.jpg"]["reason"] == "blocklisted" and rows["p2.jpg"]["detail"].startswith("sha256:")
    for name in ("p4.jpg", "p5.jpg"):
        assert rows[name]["reason"] == "blocklisted" and rows[name]["detail"].startswith("phash:")
    assert {n for n, r in rows.items() if r["status"] == "kept"} == {"p0.jpg", "p3.jpg"}
    assert result.drops == {"safety/blocklisted": 4}
