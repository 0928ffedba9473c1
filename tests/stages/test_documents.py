"""The MMC4 document stages on crafted documents: every document and image drop reason."""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from flamingo_corpus.mmc4.documents import AssembleDocuments, FilterDocuments, SplitDocuments
from flamingo_corpus.recipe import Mmc4Config
from flamingo_corpus.records import Sample

from ..beam_util import run_collect

DIM = 8


def _unit(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


def _doc(doc_id: str, n_images: int, n_sentences: int, **extra) -> Sample:
    doc = {
        "url": f"http://example.com/{doc_id}",
        "text_list": [f"sentence {j}." for j in range(n_sentences)],
        "image_info": [
            {
                "image_name": f"{i}.jpg",
                "raw_url": f"http://example.com/{doc_id}/{i}.jpg",
                "matched_text_index": 0,
                "matched_sim": 0.0,
            }
            for i in range(n_images)
        ],
        "similarity_matrix": [[0.0] * n_sentences for _ in range(n_images)],
        **extra,
    }
    return Sample(id=doc_id, source_index=0, row=int(doc_id[1:]), url=doc["url"], doc_id=doc_id, document=doc)


def _image(doc: Sample, pos: int, emb: np.ndarray, phash: str) -> Sample:
    return Sample(
        id=f"{doc.doc_id}#{pos}",
        source_index=0,
        row=doc.row,
        url=f"http://example.com/{pos}.jpg",
        doc_id=doc.doc_id,
        position=pos,
        image_bytes=b"\xff\xd8" + bytes(12000),
        sha256="x" * 64,
        phash=phash,
        width=200,
        height=200,
        image_embedding=emb,
    )


def _sentences(doc: Sample):
    return [
        Sample(
            id=f"{doc.doc_id}@{j}",
            source_index=0,
            row=doc.row,
            url=None,
            caption=t,
            doc_id=doc.doc_id,
            position=j,
            text_embedding=_unit(j),
        )
        for j, t in enumerate(doc.document["text_list"])
    ]


def _assemble(cfg: Mmc4Config, docs, images, sentences):
    def build(p):
        kept, dropped = (
            p | "d" >> beam.Create(docs),
            p | "i" >> beam.Create(images),
            p | "s" >> beam.Create(sentences),
        ) | AssembleDocuments(cfg)
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    return out["kept"], {d.id: (d.kind, d.reason) for d in out["dropped"]}


def _mix(*weights) -> np.ndarray:
    v = sum(w * _unit(i) for i, w in weights)
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_weak_repeated_and_leftover_images_and_the_aligned_order():
    d = _doc("d1", 4, 3)
    images = [
        _image(d, 0, _unit(2), "0" * 16),
        _image(d, 1, _unit(0), "f" * 16),
        _image(d, 2, _unit(0), "f" * 16),  # the same picture again
        _image(d, 3, _unit(7), "a" * 16),
    ]  # like no sentence at all
    kept, drops = _assemble(Mmc4Config(leftover="drop"), [d], images, _sentences(d))
    assert drops == {"d1#2": ("image", "duplicate_in_document"), "d1#3": ("image", "low_similarity")}
    (doc,) = kept
    out = doc.document
    assert [im["image_name"] for im in out["image_info"]] == ["1.jpg", "0.jpg"]  # sorted by sentence
    assert [im["matched_text_index"] for im in out["image_info"]] == [0, 2]
    assert np.asarray(out["similarity_matrix"]).shape == (2, 3)
    assert [c.id for c in doc.children] == ["d1#1", "d1#0"]

    more = _doc("d2", 3, 1)
    crowd = [_image(more, i, _unit(0), f"{i:016x}") for i in range(3)]
    kept, drops = _assemble(Mmc4Config(leftover="drop", phash_max_distance=0), [more], crowd, _sentences(more))
    assert sorted(drops.values()) == [("image", "unassigned")] * 2
    kept, drops = _assemble(Mmc4Config(leftover="argmax"), [more], crowd, _sentences(more))
    assert drops == {} and [im["matched_text_index"] for im in kept[0].document["image_info"]] == [0, 0, 0]


def test_document_rules_drop_the_document_and_its_images():
    d = _doc("d3", 2, 2)
    weak = [_image(d, 0, _mix((0, 0.2), (5, 1.0)), "0" * 16), _image(d, 1, _mix((1, 0.22), (6, 1.0)), "1" * 16)]
    kept, drops = _assemble(Mmc4Config(loader_threshold=0.24, min_image_similarity=0.15), [d], weak, _sentences(d))
    assert kept == [] and drops["d3"] == ("document", "no_image_passes_loader")
    assert drops["d3#0"] == drops["d3#1"] == ("image", "document_dropped")

    core = Mmc4Config(core_rule=True, loader_threshold=None, min_image_similarity=None)
    kept, drops = _assemble(core, [d], weak, _sentences(d))
    assert kept == [] and drops["d3"] == ("document", "fails_core_rule")

    kept, drops = _assemble(
        Mmc4Config(min_images=3, loader_threshold=None),
        [d],
        [_image(d, 0, _unit(0), "0" * 16), _image(d, 1, _unit(1), "1" * 16)],
        _sentences(d),
    )
    assert kept == [] and drops["d3"] == ("document", "too_few_images")


def test_document_filters_before_download_and_the_image_url_rules():
    docs = [_doc("d4", 1, 5), _doc("d5", 1, 1), _doc("d6", 1, 5, could_have_url_duplicate=1), _doc("d7", 1, 5)]
    docs[3].document.update(url=docs[0].document["url"])  # same URL and text as d4
    cfg = Mmc4Config(min_sentences=2, drop_url_duplicates=True)

    def build(p):
        kept, dropped = p | beam.Create(docs) | FilterDocuments(cfg)
        images, sentences, url_drops = kept | SplitDocuments(Mmc4Config())
        return {"kept": kept, "dropped": dropped, "images": images, "sentences": sentences, "url_drops": url_drops}

    out = run_collect(build)
    assert [s.id for s in out["kept"]] == ["d4"]
    assert {d.id: (d.reason, d.duplicate_of) for d in out["dropped"]} == {
        "d5": ("too_few_sentences", None),
        "d6": ("could_have_url_duplicate", None),
        "d7": ("duplicate_document", "d4"),
    }
    assert [s.id for s in out["images"]] == ["d4#0"] and len(out["sentences"]) == 5

    logo = _doc("d8", 3, 2)
    infos = logo.document["image_info"]
    infos[1]["raw_url"] = "http://example.com/site-logo.png"
    infos[2]["raw_url"] = "http://example.com/anim.gif"
    out = run_collect(
        lambda p: dict(zip(("images", "sentences", "drops"), p | beam.Create([logo]) | SplitDocuments(Mmc4Config())))
    )
    assert [s.id for s in out["images"]] == ["d8#0"]
    assert {d.id: (d.kind, d.reason) for d in out["drops"]} == {
        "d8#1": ("image", "url_blocklisted_word"),
        "d8#2": ("image", "bad_extension"),
    }
