"""Hostile MMC4 lines: every one is read as a document or dropped with a reason; none stops a build."""

from __future__ import annotations

import json

import pytest

from flamingo_corpus.mmc4.files import checked_documents, reason_token

GOOD = {
    "url": "https://example.com/page",
    "text_list": ["A first sentence.", "A second one."],
    "image_info": [{"image_name": "a.jpg", "raw_url": "https://example.com/a.jpg", "matched_text_index": 0}],
    "similarity_matrix": [[0.3, 0.1]],
}


def _with(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


CASES = {
    # name: (the line, the reason it is dropped for, or None when it is read as a document)
    "good": (_with(), None),
    "not json": (b"{not json", "bad_json"),
    "truncated line": (_with()[:40], "bad_json"),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "bad_json"),
    "object nested 50,000 deep": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "bad_json"),
    "bytes that are not UTF-8": (b'{"url": "\xff\xfe", "text_list": ["x"]}', "bad_json"),
    "a raw NUL in a string": (b'{"url": "a\x00b", "text_list": ["x"]}', "bad_json"),
    "an integer of 5,000 digits": (_with()[:-1] + b', "n": 1' + b"0" * 5000 + b"}", "bad_json"),
    "a list": (b"[1, 2]", "not_an_object"),
    "a string": (b'"just a string"', "not_an_object"),
    "null": (b"null", "not_an_object"),
    "no url": (json.dumps({k: v for k, v in GOOD.items() if k != "url"}).encode(), "missing_field"),
    "no text_list": (json.dumps({k: v for k, v in GOOD.items() if k != "text_list"}).encode(), "missing_field"),
    "empty text_list": (_with(text_list=[], similarity_matrix=[[]]), "bad_text_list"),
    "a sentence that is a number": (_with(text_list=["a", 2]), "bad_text_list"),
    "text_list a string": (_with(text_list="one sentence"), "bad_text_list"),
    "image_info of strings": (_with(image_info=["a.jpg"]), "bad_image_info"),
    "image_info an object": (_with(image_info={"a": 1}), "bad_image_info"),
    "matrix of the wrong shape": (_with(similarity_matrix=[[0.3]]), "bad_matrix_shape"),
    "matrix rows missing": (_with(similarity_matrix=[]), "bad_matrix_shape"),
    "NaN in the matrix": (_with()[:-1].replace(b"0.3", b"NaN") + b"}", "bad_matrix_shape"),
    "Infinity in the matrix": (_with()[:-1].replace(b"0.3", b"Infinity") + b"}", "bad_matrix_shape"),
    "a string in the matrix": (_with(similarity_matrix=[["0.3", 0.1]]), "bad_matrix_shape"),
    "true in the matrix": (_with(similarity_matrix=[[True, 0.1]]), "bad_matrix_shape"),
    "a lone surrogate in a sentence": (_with(text_list=["a \ud800 b", "c"]), "bad_unicode"),
    "a lone surrogate in the url": (_with(url="https://x/\udfff"), "bad_unicode"),
    "a lone surrogate in a key": (_with(extra={"\udc00": 1}), "bad_unicode"),
    "a surrogate pair (an emoji)": (_with(text_list=["a \U0001f600 b", "c"]), None),
    "UTF-8 with a byte-order mark": (b"\xef\xbb\xbf" + _with(), None),
    "UTF-16 (JSON Lines is UTF-8; its newline bytes split the line)": (_with().decode().encode("utf-16"), "bad_json"),
    "duplicate keys": (b'{"url": "a", ' + _with()[1:], None),
    "unknown fields kept": (_with(could_have_url_duplicate=1, face_detections=None), None),
    "a sentence of 1 MB": (_with(text_list=["x" * 1_000_000, "y"]), None),
    "an image index past the sentences": (
        _with(image_info=[{"raw_url": "https://e/a.jpg", "matched_text_index": 99}]),
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_hostile_line_is_read_or_dropped_with_its_reason(tmp_path, name):
    line, reason = CASES[name]
    shard = tmp_path / "docs.jsonl"
    shard.write_bytes(line + b"\n" + _with() + b"\n")  # a good line after it is still read
    items = list(checked_documents(str(shard)))
    assert [n for n, _, _ in items] == [1, 2]
    (_, doc, error), after = items
    assert (reason_token(error) if error else None) == reason, error
    assert (doc is None) == (reason is not None)
    assert after[1] is not None and after[2] is None
