"""OpenFlamingo windows (pipeline/mmc4/windows.py): cutting aligned MMC4 documents into pieces the
training loop sees whole, counted with the language model's tokenizer, on made-up and real
documents."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from flamingo_corpus.errors import UserError
from flamingo_corpus.mmc4 import windows as W
from flamingo_corpus.mmc4.align import realign_document, sort_by_sentence
from flamingo_corpus.mmc4.files import validate_document
from flamingo_corpus.recipe import RecipeError, recipe_from_dict

from ..mmc4_loader import EOC, IMAGE, clip_tokenize, hf_tokenize, loader_view, train_tokenizer

# --- the tokenizer ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> str:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")


@pytest.fixture(scope="module")
def counter(tokenizer_path) -> W.TokenCounter:
    """Loaded the way a build loads it: through the recipe's mmc4.windows.tokenizer."""
    recipe = recipe_from_dict({"mmc4": {"leftover": "drop", "windows": {"enabled": True, "tokenizer": tokenizer_path}}})
    loaded = W.check_windows(recipe.mmc4.windows)
    assert loaded is not None and not loaded.estimated
    return loaded


def test_the_loader_tokens_are_one_token_each(counter):
    tokens = counter.tokenizer.encode(f"A cat.{EOC}{IMAGE}A dog.{EOC}").tokens
    assert tokens.count(IMAGE) == 1 and tokens.count(EOC) == 2
    assert counter.count(f"A cat.{EOC}") == len(counter.tokenizer.encode(f"A cat.{EOC}").ids) + 1  # + end of text


def test_the_estimate_is_marked_and_counts_specials_once():
    est = W.TokenCounter()
    assert est.estimated
    assert est.count(f"{IMAGE}{EOC}") == 2 + 2  # two special tokens, beginning and end of text
    assert est.count("2013") == 2 + 4  # LLaMA splits numbers into digits
    assert est.count("abcdefg") == 2 + 2  # 7 bytes of letters: 2 tokens at 3.5 bytes a token


def test_a_tokenizer_file_that_does_not_load_is_one_clear_user_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    for path in (str(bad), str(tmp_path / "missing.json")):
        recipe = recipe_from_dict({"mmc4": {"leftover": "drop", "windows": {"enabled": True, "tokenizer": path}}})
        with pytest.raises(UserError) as e:
            W.check_windows(recipe.mmc4.windows)
        message = str(e.value)
        assert "mmc4.windows.tokenizer" in message and path in message and "\n" not in message
    assert W.check_windows(recipe_from_dict({}).mmc4.windows) is None  # windows off: nothing to load


def test_the_recipe_section(tmp_path):
    (tmp_path / "tok.json").write_text("{}")
    (tmp_path / "r.yaml").write_text(
        "mmc4:\n  leftover: drop\n  windows:\n    enabled: true\n    mode: trim\n    tokenizer: tok.json\n"
    )
    from flamingo_corpus.recipe import load_recipe

    cfg = load_recipe(tmp_path / "r.yaml").mmc4.windows
    assert cfg.mode == "trim" and cfg.tokenizer == str(tmp_path / "tok.json")  # relative to the recipe
    assert (cfg.max_tokens, cfg.max_images, cfg.single_image) == (256, 6, False)
    with pytest.raises(RecipeError, match="leftover: drop"):
        recipe_from_dict({"mmc4": {"windows": {"enabled": True}}})  # leftover argmax: no place in a window
    with pytest.raises(RecipeError, match="mmc4.windows.mode"):
        recipe_from_dict({"mmc4": {"leftover": "drop", "windows": {"mode": "cut"}}})
    with pytest.raises(RecipeError, match="max_tokens"):
        recipe_from_dict({"mmc4": {"windows": {"max_tokens": 0}}})


# --- the loader's text --------------------------------------------------------------------------


def test_loader_text_as_the_loader_builds_it():
    text = W.loader_text(["A cat.", "It sleeps.", "A dog."], [0, 2])
    assert text == f"{IMAGE}A cat. It sleeps.{EOC}{IMAGE}A dog.{EOC}"
    assert W.loader_text(["One.", "Two."], []) == f"One. Two.{EOC}"


# --- cutting ------------------------------------------------------------------------------------


def _doc(n_sentences: int, images: list, words: int = 20) -> dict:
    """An aligned document: ``images`` is a list of (sentence, similarity) pairs, sorted by sentence."""
    sentences = [" ".join(chr(97 + (j + k) % 26) * 5 for k in range(words)) + "." for j in range(n_sentences)]
    rng = np.random.default_rng(0)
    sim = rng.uniform(0.0, 0.1, size=(len(images), n_sentences))
    for i, (j, s) in enumerate(images):
        sim[i, j] = s
    return {
        "id": "d.jsonl:1",
        "url": "http://example.com/",
        "text_list": sentences,
        "image_info": [
            {"raw_url": f"http://example.com/{i}.jpg", "matched_text_index": j, "matched_sim": s}
            for i, (j, s) in enumerate(images)
        ],
        "similarity_matrix": sim.tolist(),
    }


def test_windows_fit_and_hold_their_images():
    counter = W.TokenCounter()
    doc = _doc(30, [(0, 0.3), (4, 0.3), (9, 0.3), (10, 0.2), (17, 0.3), (25, 0.3), (29, 0.3)])
    cut = W.window_aligned(doc, counter, single_image=True)
    assert [w.start for w, _, _ in cut.windows][0] == 0
    for (w, _, _), (nxt, _, _) in zip(cut.windows, cut.windows[1:]):
        assert w.end == nxt.start  # consecutive, nothing skipped
    assert cut.windows[-1][0].end == 30
    for w, _, out in cut.windows:
        assert w.tokens <= 256 and len(w.shown) <= 6
        if out is not None:
            shown = [im["matched_text_index"] for im in out["image_info"] if im["matched_sim"] >= 0.24]
            text = W.loader_text(out["text_list"], shown)
            assert counter.count(text) == w.tokens <= 256
    assert cut.image_reasons.keys() == {p for w, r, _ in cut.windows if r for p in w.images}


def test_max_images_closes_a_window():
    doc = _doc(10, [(j, 0.3) for j in range(10)], words=2)  # short sentences: tokens never bind
    cut = W.window_aligned(doc, W.TokenCounter(), max_images=6, single_image=True)
    assert [len(w.shown) for w, _, _ in cut.windows] == [6, 4]


def test_window_document_rebases_sorts_and_slices_the_matrix():
    doc = _doc(30, [(3, 0.3), (12, 0.31), (14, 0.29), (26, 0.33)])
    cut = W.window_aligned(doc, W.TokenCounter(), single_image=True)
    for w, _, out in cut.windows:
        if out is None:
            continue
        assert out["doc_id"] == "d.jsonl:1" and out["id"].startswith("d.jsonl:1/w")
        assert out["text_list"] == doc["text_list"][w.start : w.end]
        indices = [im["matched_text_index"] for im in out["image_info"]]
        assert indices == sorted(indices) and all(0 <= j < len(out["text_list"]) for j in indices)
        sim = np.asarray(out["similarity_matrix"])
        assert sim.shape == (len(out["image_info"]), len(out["text_list"]))
        for im, row in zip(out["image_info"], sim):
            original = next(i for i, o in enumerate(doc["image_info"]) if o["raw_url"] == im["raw_url"])
            assert row.tolist() == doc["similarity_matrix"][original][w.start : w.end]
        assert out["window"]["first_sentence"] == w.start and out["window"]["tokens_estimated"]


def test_single_image_windows_are_kept_only_when_asked():
    doc = _doc(40, [(1, 0.3), (2, 0.3), (35, 0.3)])
    kept = W.window_aligned(doc, W.TokenCounter(), single_image=True)
    dropped = W.window_aligned(doc, W.TokenCounter(), single_image=False)
    assert sum(out is not None for _, _, out in kept.windows) == 2
    reasons = [r for _, r, _ in dropped.windows]
    assert reasons.count("single_image_window") == 1 and reasons.count(None) == 1
    assert dropped.image_reasons == {2: "single_image_window"}


def test_trim_keeps_the_first_window_only():
    doc = _doc(30, [(0, 0.3), (1, 0.3), (20, 0.3), (28, 0.3)])
    cut = W.window_aligned(doc, W.TokenCounter(), mode="trim", single_image=True)
    assert [r for _, r, _ in cut.windows] == [None] + ["past_first_window"] * (len(cut.windows) - 1)
    assert cut.image_reasons == {2: "past_first_window", 3: "past_first_window"}


# --- bad input ----------------------------------------------------------------------------------


def test_a_sentence_longer_than_a_window_is_in_no_window():
    doc = _doc(6, [(1, 0.3), (2, 0.3), (4, 0.3)])
    doc["text_list"][2] = " ".join(["lengthy"] * 400)  # 400 words: far more than 256 tokens
    cut = W.window_aligned(doc, W.TokenCounter(), single_image=True)
    assert cut.image_reasons[1] == "long_sentence"
    assert all(not (w.start <= 2 < w.end) for w, _, _ in cut.windows)  # the windows break around it
    assert [(w.start, w.end) for w, _, _ in cut.windows] == [(0, 2), (3, 6)]


def test_an_image_on_a_sentence_that_does_not_exist():
    doc = _doc(5, [(1, 0.3), (3, 0.3)])
    doc["image_info"][1]["matched_text_index"] = 9
    cut = W.window_aligned(doc, W.TokenCounter(), single_image=True)
    assert cut.image_reasons == {1: "no_such_sentence"}
    assert [len(out["image_info"]) for _, _, out in cut.windows if out] == [1]
    with pytest.raises(ValueError, match="sentence 9"):
        W.cut_windows(doc["text_list"], [1, 9], [True, True], W.TokenCounter(), 256, 6)


def test_a_document_with_no_sentences():
    doc = _doc(1, [(0, 0.3)])
    doc["text_list"], doc["similarity_matrix"] = [], [[]]
    assert validate_document(doc) == "bad_text_list"  # read/bad_text_list: it never reaches the windows
    cut = W.window_aligned(doc, W.TokenCounter())
    assert cut.windows == [] and cut.image_reasons == {0: "no_such_sentence"}


# --- the first window, before any download ------------------------------------------------------


def test_the_first_window_bound_holds_whatever_images_survive():
    counter = W.TokenCounter()
    doc = _doc(30, [(j, 0.3) for j in (0, 2, 5, 8, 11, 14, 20)])
    first, last = W.first_window_bound(doc["text_list"], counter, 256)
    rng = np.random.default_rng(1)
    for _ in range(20):  # any subset of the images downloads
        keep = sorted(rng.choice(7, size=rng.integers(1, 8), replace=False).tolist())
        sub = {
            **doc,
            "image_info": [doc["image_info"][i] for i in keep],
            "similarity_matrix": [doc["similarity_matrix"][i] for i in keep],
        }
        w = W.window_aligned(sub, counter, mode="trim", single_image=True).windows[0][0]
        assert first <= w.start and w.end - 1 <= last


# --- real documents -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_docs(real_lines) -> list:
    return [json.loads(line) for line in real_lines]


def _aligned(doc: dict, n: int, leftover: str) -> dict:
    """The document as a build with the release's matrix aligns it (realign), sorted by sentence."""
    return {**sort_by_sentence(realign_document(doc, leftover)[0]), "id": f"real.jsonl:{n}"}


def _figures(docs, counter, tokenize, single_image=True):
    """(before, after) on real documents: whole documents as written without windows (mmc4's
    argmax leftovers), and the windows written with them; each (documents or windows written,
    rejected by the loader, images the loader keeps, of them within its tokens)."""
    before = [0, 0, 0, 0]
    for n, doc in enumerate(docs, start=1):
        view = loader_view(_aligned(doc, n, "argmax"), tokenize)
        before = [before[0] + 1, before[1] + (not view.accepted), before[2] + len(view.kept), before[3] + view.seen]
    after = [0, 0, 0, 0]
    for n, doc in enumerate(docs, start=1):
        aligned = _aligned(doc, n, "drop")
        # the images the loader keeps from the whole aligned document: similarity at its threshold
        sim = np.asarray(aligned["similarity_matrix"], dtype=float).reshape(len(aligned["image_info"]), -1)
        after[2] += sum(sim[i, im["matched_text_index"]] >= 0.24 for i, im in enumerate(aligned["image_info"]))
        for _, _, out in W.window_aligned(aligned, counter, single_image=single_image).windows:
            if out is None:
                continue
            view = loader_view(out, tokenize)
            after[0] += 1
            after[1] += not view.accepted
            after[3] += view.seen
            assert len(view.kept) == view.seen, out["id"]  # every image the loader keeps is within its tokens
    return before, after


def test_real_documents_with_the_tokenizer_file(real_docs, counter):
    before, after = _figures(real_docs, counter, hf_tokenize(counter.tokenizer))
    print(f"\nbefore: {before}\nafter: {after}")
    assert before[1] > 0 and before[3] < 0.8 * before[2]  # the problem the windows solve, measured
    assert after[1] == 0  # every window written is accepted by the loader
    assert after[3] >= 0.95 * after[2]  # the images the loader would keep lie inside a window


def test_real_documents_with_the_estimate(real_docs):
    """Without a tokenizer file, the estimate's margin holds against CLIP's byte-pair tokenizer
    (the issue's stand-in for the language models' tokenizers)."""
    before, after = _figures(real_docs, W.TokenCounter(), clip_tokenize())
    print(f"\nbefore: {before}\nafter: {after}")
    assert after[1] == 0 and after[3] >= 0.95 * after[2]


def test_the_loader_reassignment_on_a_window_reproduces_the_documents(real_docs, counter):
    """The loader recomputes the one-to-one assignment on a window's rows and columns; it gives
    back the document's: a better one inside the window would make a better one for the document."""
    checked = 0
    for n, doc in enumerate(real_docs, start=1):
        aligned = _aligned(doc, n, "drop")
        for _, _, out in W.window_aligned(aligned, counter, single_image=True).windows:
            if out is None:
                continue
            sim = np.asarray(out["similarity_matrix"], dtype=float)
            rows, cols = linear_sum_assignment(-sim)
            assert rows.tolist() == list(range(len(out["image_info"])))
            assert cols.tolist() == [im["matched_text_index"] for im in out["image_info"]], out["id"]
            checked += 1
    assert checked > 100


def test_trim_saves_downloads_on_real_documents(real_docs, counter):
    """mmc4.windows trim with the release's matrix: images no sentence of the first window can
    hold at the loader's threshold are not downloaded; none of them would have been kept."""
    images = skipped = 0
    for n, doc in enumerate(real_docs, start=1):
        bound = W.first_window_bound(doc["text_list"], counter, 256)
        skip = {
            i for i, row in enumerate(doc["similarity_matrix"]) if not W.could_show_in_first_window(row, bound, 0.24)
        }
        images += len(doc["image_info"])
        skipped += len(skip)
        first = W.window_aligned(_aligned(doc, n, "drop"), counter, mode="trim", single_image=True).windows
        if first and first[0][2] is not None:
            kept = {im["raw_url"] + im["image_name"] for im in first[0][2]["image_info"] if im["matched_sim"] >= 0.24}
            assert not kept & {doc["image_info"][i]["raw_url"] + doc["image_info"][i]["image_name"] for i in skip}
    print(f"\ntrim: {skipped} of {images} images not downloaded")
    assert skipped > 0.1 * images
