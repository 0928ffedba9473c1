"""Aligning MMC4 images into sentences, the OpenFlamingo loader's view, and the realign tool."""

from __future__ import annotations

import copy
import json
import zipfile

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from flamingo_corpus import cli
from flamingo_corpus.mmc4.align import assign, loader_view, realign_document, similarity, sort_by_sentence
from flamingo_corpus.mmc4.realign import realign_file

from ..conftest import REAL_SHARD


@pytest.fixture(scope="module")
def real_docs(real_lines) -> list:
    return [json.loads(line) for line in real_lines]


def reference_assignment(sim: np.ndarray) -> list:
    """mmc4's compute_assignments.py, restated: one to one, then argmax for the images left over."""
    rows, columns = linear_sum_assignment(-sim)
    matched = dict(zip(rows.tolist(), columns.tolist()))
    return [matched.get(i, int(np.argmax(sim[i]))) for i in range(sim.shape[0])]


def stored_assignment(doc: dict) -> list:
    return [image["matched_text_index"] for image in doc["image_info"]]


def count_wrong(docs: list) -> int:
    return sum(stored_assignment(d) != reference_assignment(np.array(d["similarity_matrix"])) for d in docs)


def doc_with(sim: list, stored: list) -> dict:
    """A small document with the given matrix and stored assignment."""
    return {
        "url": "http://example.com/",
        "text_list": [f"sentence {j}." for j in range(len(sim[0]))],
        "image_info": [
            {
                "image_name": f"{i}.jpg",
                "raw_url": f"http://example.com/{i}.jpg",
                "matched_text_index": j,
                "matched_sim": sim[i][j],
                "face_detections": None,
            }
            for i, j in enumerate(stored)
        ],
        "similarity_matrix": sim,
    }


# --- assign ------------------------------------------------------------------------------------


def test_square_assignment_maximises_the_total_not_each_image():
    sim = np.array([[0.9, 0.8], [0.8, 0.1]])  # both images' best sentence is 0
    assert assign(sim) == [(0, 1, 0.8), (1, 0, 0.8)]


def test_more_images_than_sentences_argmax_or_drop():
    sim = np.array([[0.50, 0.10], [0.40, 0.30], [0.45, 0.05]])
    assert assign(sim, leftover="argmax") == [(0, 0, 0.50), (1, 1, 0.30), (2, 0, 0.45)]
    assert assign(sim, leftover="drop") == [(0, 0, 0.50), (1, 1, 0.30)]


def test_more_sentences_than_images_assigns_every_image():
    sim = np.array([[0.10, 0.20, 0.30, 0.25], [0.10, 0.20, 0.35, 0.05]])
    expected = [(0, 3, 0.25), (1, 2, 0.35)]
    assert assign(sim, leftover="argmax") == expected
    assert assign(sim, leftover="drop") == expected


def test_min_sim_removes_images_before_the_assignment():
    sim = np.array([[0.30, 0.29], [0.14, 0.01]])
    assert assign(sim) == [(0, 1, 0.29), (1, 0, 0.14)]  # image 1 takes sentence 0 from image 0 ...
    assert assign(sim, min_sim=0.15) == [(0, 0, 0.30)]  # ... unless it is removed first
    assert assign(sim, min_sim=0.14) == assign(sim)  # a best similarity equal to min_sim stays


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (7, 2), (2, 7), (4, 4), (1, 6), (6, 1)])
@pytest.mark.parametrize("dummy_cost", [0.0, 1000.0, -5.0])  # 0: zero-padded sims; 1000: mmc4's lapjv pad
def test_rectangular_solve_equals_solving_the_padded_square(shape, dummy_cost):
    sim = np.random.default_rng(sum(shape)).uniform(-0.1, 0.4, shape)
    n, m = shape
    padded = np.full((max(shape), max(shape)), dummy_cost)
    padded[:n, :m] = -sim
    rows, columns = linear_sum_assignment(padded)
    real = {(i, j) for i, j in zip(rows.tolist(), columns.tolist()) if i < n and j < m}
    assert {(i, j) for i, j, _ in assign(sim, leftover="drop")} == real


def test_ties_are_broken_deterministically():
    flat = np.full((4, 4), 0.2)
    first = assign(flat)
    assert assign(flat.copy()) == first
    assert sorted(j for _, j, _ in first) == [0, 1, 2, 3]  # still one to one
    sim = np.array([[0.5, 0.1], [0.1, 0.5], [0.2, 0.2]])
    assert assign(sim)[2] == (2, 0, 0.2)  # an argmax tie goes to the first sentence


def test_assign_edge_cases():
    assert assign(np.zeros((0, 3))) == []
    assert assign(np.zeros((2, 0))) == []
    assert assign(np.array([[0.1, 0.2]]), min_sim=0.5) == []
    with pytest.raises(ValueError, match="leftover"):
        assign(np.zeros((2, 2)), leftover="keep")
    with pytest.raises(ValueError, match="2-D"):
        assign(np.zeros(3))


# --- realign_document, sort_by_sentence ------------------------------------------------------------


def test_realign_fixes_a_wrong_assignment_and_leaves_the_input_alone():
    doc = doc_with([[0.9, 0.8], [0.8, 0.1]], stored=[0, 1])
    before = copy.deepcopy(doc)
    realigned, changed = realign_document(doc)
    assert changed
    assert stored_assignment(realigned) == [1, 0]
    assert [im["matched_sim"] for im in realigned["image_info"]] == [0.8, 0.8]
    assert doc == before
    assert realign_document(realigned) == (realigned, False)


def test_realign_reports_a_stored_similarity_that_is_off():
    doc = doc_with([[0.9, 0.8], [0.8, 0.1]], stored=[1, 0])
    assert realign_document(doc)[1] is False
    doc["image_info"][0]["matched_sim"] += 1e-7
    assert realign_document(doc)[1] is False
    doc["image_info"][0]["matched_sim"] += 1e-5
    assert realign_document(doc)[1] is True


def test_realign_leftover_argmax_keeps_every_image_drop_removes_the_leftover():
    doc = doc_with([[0.50, 0.10], [0.40, 0.30], [0.45, 0.05]], stored=[0, 1, 0])
    assert realign_document(doc) == (doc, False)
    dropped, changed = realign_document(doc, leftover="drop")
    assert changed
    assert [im["image_name"] for im in dropped["image_info"]] == ["0.jpg", "1.jpg"]
    assert dropped["similarity_matrix"] == doc["similarity_matrix"][:2]


def test_sort_by_sentence_keeps_rows_and_image_info_together():
    doc = doc_with([[0.1, 0.2, 0.3], [0.4, 0.1, 0.1], [0.2, 0.1, 0.35]], stored=[2, 0, 2])
    before = copy.deepcopy(doc)
    ordered = sort_by_sentence(doc)
    assert [im["image_name"] for im in ordered["image_info"]] == ["1.jpg", "0.jpg", "2.jpg"]  # stable on ties
    row_of = {im["image_name"]: row for im, row in zip(doc["image_info"], doc["similarity_matrix"])}
    assert [row_of[im["image_name"]] for im in ordered["image_info"]] == ordered["similarity_matrix"]
    assert doc == before


# --- loader_view ---------------------------------------------------------------------------------


def test_loader_view_threshold_and_max_images():
    sim = np.diag([0.30, 0.23, 0.24, 0.50, 0.25, 0.26, 0.27, 0.28])
    assert loader_view(sim) == [(0, 0), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]  # 0.24 kept, 0.23 not, 6 at most
    assert loader_view(sim, max_images=2) == [(0, 0), (2, 2)]
    assert loader_view(sim, threshold=0.6) == []


def loader_reference(sim: np.ndarray, threshold: float = 0.24, max_images: int = 6) -> list:
    """open_flamingo/train/data.py preprocess_interleaved, restated."""
    rows, columns = linear_sum_assignment(-sim)
    kept = [(i, j) for i, j in zip(rows.tolist(), columns.tolist()) if sim[i][j] >= threshold]
    return kept[:max_images]


def test_loader_view_on_real_documents(real_docs):
    for doc in real_docs:
        sim = np.array(doc["similarity_matrix"])
        assert loader_view(sim) == loader_reference(sim)


def test_sorted_real_documents_give_the_loader_images_in_sentence_order(real_docs):
    for doc in real_docs:
        ordered = sort_by_sentence(realign_document(doc)[0])
        sentences = [j for _, j in loader_view(similarity(ordered), threshold=-1.0, max_images=len(doc["image_info"]))]
        assert sentences == sorted(sentences)


# --- realign on the real shard -------------------------------------------------------------------


def test_realign_gives_the_reference_assignment_on_real_documents(real_docs):
    changed = 0
    for doc in real_docs:
        sim = np.array(doc["similarity_matrix"])
        expected = reference_assignment(sim)
        realigned, was_changed = realign_document(doc)
        assert stored_assignment(realigned) == expected
        assert [im["matched_sim"] for im in realigned["image_info"]] == [sim[i, j] for i, j in enumerate(expected)]
        assert {k: v for k, v in realigned.items() if k != "image_info"} == {
            k: v for k, v in doc.items() if k != "image_info"
        }
        changed += was_changed
    wrong = count_wrong(real_docs)
    print(f"\n{wrong} of {len(real_docs)} real mmc4 v1.0 documents had a wrong stored assignment")
    assert changed == wrong
    assert 0 < wrong < len(real_docs)  # the sample has the known v1.0 bug, in part of its documents


def test_realign_drop_removes_only_the_images_left_over(real_docs):
    for doc in real_docs:
        dropped, _ = realign_document(doc, leftover="drop")
        n, m = len(doc["image_info"]), len(doc["text_list"])
        assert len(dropped["image_info"]) == len(dropped["similarity_matrix"]) == min(n, m)


def test_realign_file_counts_what_it_changed(real_docs, tmp_path):
    stats = realign_file(str(REAL_SHARD), str(tmp_path / "out.jsonl"))
    assert (stats.read, stats.written, stats.changed, sum(stats.invalid.values())) == (
        len(real_docs),
        len(real_docs),
        count_wrong(real_docs),
        0,
    )


def test_realign_file_of_a_zip_without_documents(tmp_path):
    archive = tmp_path / "shard.zip"
    zipfile.ZipFile(archive, "w").close()
    reported = []
    stats = realign_file(str(archive), str(tmp_path / "out.jsonl"), on_invalid=lambda n, e: reported.append((n, e)))
    assert (stats.read, stats.written, dict(stats.invalid)) == (0, 0, {"zip_without_jsonl": 1})
    assert reported == [(0, "zip_without_jsonl")]


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_realign_end_to_end(real_lines, real_docs, tmp_path, capsys):
    out = tmp_path / "realigned" / "docs.jsonl"
    assert cli.main(["realign", str(REAL_SHARD), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"documents read: {len(real_docs)}" in printed
    assert f"changed: {count_wrong(real_docs)}" in printed
    assert "invalid: 0" in printed
    written = out.read_bytes().splitlines()
    assert len(written) == len(real_lines)
    for line, new_line, doc in zip(real_lines, written, real_docs):
        expected = reference_assignment(np.array(doc["similarity_matrix"]))
        assert stored_assignment(json.loads(new_line)) == expected
        if stored_assignment(doc) == expected:
            assert new_line == line  # a right document comes out byte for byte


def test_cli_realign_reports_invalid_lines_and_goes_on(tmp_path, capsys):
    good = doc_with([[0.9, 0.8], [0.8, 0.1]], stored=[0, 1])
    wrong_shape = doc_with([[0.9, 0.8], [0.8, 0.1]], stored=[0, 1]) | {"similarity_matrix": [[0.9, 0.8]]}
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([json.dumps(good), "{oops", json.dumps(wrong_shape), json.dumps(good)]) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["realign", str(source), str(out), "--leftover", "drop"]) == 0
    captured = capsys.readouterr()
    assert f"{source}:2: bad_json" in captured.err
    assert f"{source}:3: bad_matrix_shape" in captured.err
    assert "documents read: 4" in captured.out and "written: 2" in captured.out and "changed: 2" in captured.out
    assert "bad_json: 1" in captured.out and "bad_matrix_shape: 1" in captured.out
    assert [stored_assignment(json.loads(line)) for line in out.read_text().splitlines()] == [[1, 0], [1, 0]]


def test_cli_realign_missing_input_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["realign", str(tmp_path / "nope.jsonl"), str(tmp_path / "out.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
