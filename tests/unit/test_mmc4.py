"""MMC4 documents: reading jsonl and zipped shards, validation reasons, document filters."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flamingo_corpus.filters import document as f
from flamingo_corpus.mmc4.files import checked_documents, document_id, read_documents, reason_token, validate_document

from ..conftest import REAL_SHARD


def small_doc(**changes) -> dict:
    doc = {
        "url": "http://example.com/a",
        "text_list": ["one.", "two.", "three."],
        "image_info": [
            {
                "image_name": "a.jpg",
                "raw_url": "http://example.com/a.jpg",
                "matched_text_index": 0,
                "matched_sim": 0.3,
                "face_detections": None,
            }
        ],
        "similarity_matrix": [[0.3, 0.2, 0.1]],
    }
    doc.update(changes)
    return doc


def write_lines(path: Path, lines: list) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --- reading -----------------------------------------------------------------------------------


def test_reading_the_real_shard_keeps_every_field(real_lines):
    items = list(read_documents(str(REAL_SHARD)))
    assert [n for n, _, _ in items] == list(range(1, len(real_lines) + 1))
    assert all(error is None for _, _, error in items)
    assert [doc for _, doc, _ in items] == [json.loads(line) for line in real_lines]


def test_every_real_document_validates(real_lines):
    reasons = [validate_document(json.loads(line)) for line in real_lines]
    assert reasons == [None] * len(real_lines)


@pytest.mark.parametrize("name", ["docs_shard_151_v3.jsonl.zip", "shard.zip"])
def test_a_zipped_shard_reads_the_same(real_lines, tmp_path, name):
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("docs_no_face_shard_151_v3.jsonl", b"\n".join(real_lines) + b"\n")
    assert list(read_documents(str(archive))) == list(read_documents(str(REAL_SHARD)))


def test_a_zip_without_jsonl_is_one_error(tmp_path):
    archive = tmp_path / "shard.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("README.txt", "no documents here")
    assert list(read_documents(str(archive))) == [(0, None, "zip_without_jsonl")]


def test_a_zip_with_several_jsonl_is_one_error(tmp_path):
    archive = tmp_path / "shard.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.jsonl", json.dumps(small_doc()))
        z.writestr("b.jsonl", json.dumps(small_doc()))
    assert list(read_documents(str(archive))) == [(0, None, "zip_with_several_jsonl")]


def test_a_file_that_is_not_a_zip_is_one_error(tmp_path):
    archive = tmp_path / "shard.zip"
    archive.write_text(json.dumps(small_doc()))
    assert list(read_documents(str(archive))) == [(0, None, "bad_zip")]


def test_bad_lines_give_their_reasons_with_line_numbers(tmp_path):
    wrong_shape = small_doc(similarity_matrix=[[0.3, 0.2]])
    path = write_lines(
        tmp_path / "docs.jsonl",
        [
            json.dumps(small_doc()),  # 1
            "{not json",  # 2
            "",  # 3: blank, skipped
            json.dumps([1, 2]),  # 4
            json.dumps(wrong_shape),  # 5
            json.dumps({"url": "x"}),  # 6
            json.dumps(small_doc()),  # 7
        ],
    )
    items = list(checked_documents(path))
    assert [(n, reason_token(e) if e else None) for n, _, e in items] == [
        (1, None),
        (2, "bad_json"),
        (4, "not_an_object"),
        (5, "bad_matrix_shape"),
        (6, "missing_field"),
        (7, None),
    ]
    assert items[1][2].startswith("bad_json: ")
    assert all((doc is None) == (error is not None) for _, doc, error in items)


def test_unknown_fields_are_kept(tmp_path):
    doc = small_doc(could_have_url_duplicate=1)
    doc["image_info"][0]["face_detections"] = [[1, 2, 3, 4]]
    path = write_lines(tmp_path / "docs.jsonl", [json.dumps(doc)])
    assert list(checked_documents(path)) == [(1, doc, None)]


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, reason",
    [
        (small_doc(), None),
        (small_doc(image_info=[], similarity_matrix=[]), None),
        ("a string", "not_an_object"),
        ({k: v for k, v in small_doc().items() if k != "similarity_matrix"}, "missing_field"),
        ({k: v for k, v in small_doc().items() if k != "url"}, "missing_field"),
        (small_doc(text_list="one. two."), "bad_text_list"),
        (small_doc(text_list=["one.", 2, "three."]), "bad_text_list"),
        (small_doc(text_list=[], similarity_matrix=[[]]), "bad_text_list"),
        (small_doc(image_info={"a.jpg": {}}), "bad_image_info"),
        (small_doc(image_info=["a.jpg"]), "bad_image_info"),
        (small_doc(similarity_matrix=[]), "bad_matrix_shape"),
        (small_doc(similarity_matrix=[[0.3, 0.2, 0.1], [0.3, 0.2, 0.1]]), "bad_matrix_shape"),
        (small_doc(similarity_matrix=[[0.3, 0.2]]), "bad_matrix_shape"),
        (small_doc(similarity_matrix=[[0.3, "0.2", 0.1]]), "bad_matrix_shape"),
        (small_doc(similarity_matrix=[[0.3, True, 0.1]]), "bad_matrix_shape"),
        (small_doc(similarity_matrix=[[0.3, float("nan"), 0.1]]), "bad_matrix_shape"),
        (small_doc(similarity_matrix=[0.3, 0.2, 0.1]), "bad_matrix_shape"),
    ],
)
def test_validation_reasons(doc, reason):
    assert validate_document(doc) == reason


def test_document_id_names_the_file_and_line():
    assert document_id("docs_shard_151_v3.jsonl.zip", 7) == "docs_shard_151_v3.jsonl.zip:7"
    assert document_id("docs.jsonl", 1) == "docs.jsonl:1"


# --- document filters --------------------------------------------------------------------------


@pytest.mark.parametrize("n, reason", [(1, "too_few_images"), (2, None), (15, None), (16, "too_many_images")])
def test_image_count(n, reason):
    assert f.image_count(n, 2, 15) == reason


@pytest.mark.parametrize("n, reason", [(3, "too_few_sentences"), (4, None), (40, None), (41, "too_many_sentences")])
def test_sentence_count(n, reason):
    assert f.sentence_count(n, 4, 40) == reason


@pytest.mark.parametrize(
    "sims, reason",
    [
        ([0.26, 0.3, 0.4, 0.2], None),  # 3 of 4 above 0.25: exactly 75%
        ([0.26, 0.3, 0.2, 0.2], "fails_core_rule"),
        ([0.25, 0.3, 0.4, 0.5], None),  # 0.25 itself is not above 0.25 ...
        ([0.25, 0.25, 0.4, 0.5], "fails_core_rule"),  # ... so two of them fail
        ([0.3] * 7 + [0.1] * 3, "fails_core_rule"),  # 70%
        ([], "fails_core_rule"),
    ],
)
def test_core_rule(sims, reason):
    assert f.core_rule(sims) == reason


def test_core_rule_thresholds_are_arguments():
    assert f.core_rule([0.3, 0.1], min_fraction=0.5) is None
    assert f.core_rule([0.3, 0.3], min_sim=0.3) == "fails_core_rule"


def test_loader_rejects_a_document_whose_images_all_miss_the_threshold():
    sim = np.array([[0.30, 0.10], [0.10, 0.20]])
    assert f.loader_rejects(sim) is None
    assert f.loader_rejects(sim, threshold=0.31) == "no_image_passes_loader"
    # the loader's one-to-one assignment, not each image's best sentence, decides
    crossed = np.array([[0.25, 0.20], [0.23, 0.00]])  # image 0 passes alone, but pairs 0-1 and 1-0 win
    assert f.loader_rejects(crossed) == "no_image_passes_loader"
    assert f.loader_rejects(np.zeros((0, 3))) == "no_image_passes_loader"


@pytest.mark.parametrize(
    "flag, drop, reason", [(1, True, "could_have_url_duplicate"), (1, False, None), (0, True, None), (None, True, None)]
)
def test_url_duplicate(flag, drop, reason):
    assert f.url_duplicate(flag, drop) == reason
