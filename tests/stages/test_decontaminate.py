"""Evaluation-set decontamination: the eval index (file, caption formats, matching), the
``index-eval`` command, the Beam stage, and builds that drop planted eval images and captions."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, ImageOps

from flamingo_corpus import cli
from flamingo_corpus.filters.text import match_key
from flamingo_corpus.images import perceptual
from flamingo_corpus.output.manifest import summary
from flamingo_corpus.recipe import ClipConfig, DecontaminationConfig
from flamingo_corpus.records import Sample
from flamingo_corpus.safety.decontaminate import Decontaminate
from flamingo_corpus.safety.eval_index import (
    METADATA_KEY,
    EvalIndexError,
    clip_identity,
    load_index,
    parse_named,
    read_captions,
    read_header,
    write_index,
)
from flamingo_corpus.sample import synthetic

from ..beam_util import run_collect
from ..helpers import flip_bits
from ..loopback_build import build_over_loopback, jpeg_bytes, smooth_photo


def _unit(dim: int, *weights) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    for i, w in weights:
        v[i] = w
    return v / np.linalg.norm(v)


FAKE_CLIP = {"clip_model": "ViT-B-32", "clip_pretrained": "openai", "clip_weights": "openai"}


# ---------------------------------------------------------------------------------------------
# Normalisation and caption files


@pytest.mark.parametrize(
    "a, b",
    [
        ("A Dog, running.", "a dog running"),
        ("  two\tcats\n on a   mat!! ", "two cats on a mat"),
        ("ｆｕｌｌ－ｗｉｄｔｈ ﬁsh", "fullwidth fish"),  # NFKC folds width and ligatures
        ("“Quoted” — text…", "quoted text"),
        ("Café au lait", "café au lait"),  # letters with accents are kept
    ],
)
def test_match_key(a, b):
    assert match_key(a) == b


def test_match_key_keeps_different_words_apart():
    assert match_key("a red circle") != match_key("a red circles")


def test_caption_formats(tmp_path):
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
                "annotations": [
                    {"image_id": 42, "id": 1, "caption": "A man riding a wave."},
                    {"image_id": 7, "id": 2, "caption": "An image not listed."},
                ],
            }
        )
    )
    assert read_captions(str(coco)) == [
        ("COCO_val2014_000000000042.jpg", "A man riding a wave."),
        ("7", "An image not listed."),
    ]
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(
        json.dumps(
            {
                "images": [
                    {
                        "filepath": "val2014",
                        "filename": "x.jpg",
                        "sentences": [{"raw": "One."}, {"tokens": ["two", "words"]}],
                    },
                    {"filename": "1000092795.jpg", "sentences": [{"raw": "Flickr caption."}]},
                ]
            }
        )
    )
    assert read_captions(str(karpathy)) == [
        ("val2014/x.jpg", "One."),
        ("val2014/x.jpg", "two words"),
        ("1000092795.jpg", "Flickr caption."),
    ]
    lines = tmp_path / "memes.jsonl"
    lines.write_text('{"img": "img/01.png", "caption": "first"}\n\n{"caption": ["second", "third"]}\n')
    assert read_captions(str(lines)) == [("img/01.png", "first"), ("line 3", "second"), ("line 3", "third")]
    txt = tmp_path / "plain.txt"
    txt.write_text("first caption\n\n  second caption  \n")
    assert read_captions(str(txt)) == [("line 1", "first caption"), ("line 3", "second caption")]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"image_id": 5, "caption": "listed"}]))
    assert read_captions(str(listed)) == [("5", "listed")]


def test_unknown_caption_file_is_a_clear_error(tmp_path):
    odd = tmp_path / "questions.json"
    odd.write_text(json.dumps({"questions": [{"question": "what?"}]}))
    with pytest.raises(EvalIndexError, match="questions.json"):
        read_captions(str(odd))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "ok"}\nnot json\n')
    with pytest.raises(EvalIndexError, match="bad.jsonl:2"):
        read_captions(str(bad))


def test_named_arguments(tmp_path):
    folder = tmp_path / "val2014"
    folder.mkdir()
    assert parse_named(str(folder)) == ("val2014", str(folder))
    assert parse_named(str(folder) + "/") == ("val2014", str(folder) + "/")
    assert parse_named(f"coco={folder}") == ("coco", str(folder))
    assert parse_named("/data/captions_val2014.json") == ("captions_val2014", "/data/captions_val2014.json")
    assert parse_named("gs://bucket/vizwiz") == ("vizwiz", "gs://bucket/vizwiz")


# ---------------------------------------------------------------------------------------------
# The index file


def test_index_round_trip(tmp_path):
    path = str(tmp_path / "eval.index")
    images = [
        {"eval_set": "flickr", "item": "b.jpg", "phash": "00000000000000ff", "embedding": _unit(4, (1, 1))},
        {"eval_set": "coco", "item": "z/a.jpg", "phash": "ffffffffffffffff", "embedding": _unit(4, (0, 1))},
    ]
    captions = [
        {"eval_set": "coco", "item": "z/a.jpg", "caption": "A Dog, running."},
        {"eval_set": "coco", "item": "z/a.jpg", "caption": "a dog running"},  # the same once normalised
        {"eval_set": "coco", "item": "z/b.jpg", "caption": "?!"},
    ]  # nothing left to compare: left out
    assert write_index(path, images, captions, FAKE_CLIP) == 3
    header = read_header(path)
    assert (header.format_version, header.embedding_dim) == (3, 4)
    assert (header.phash_version, header.variants_version) == (perceptual.VERSION, perceptual.VARIANTS_VERSION)
    assert (header.clip_model, header.clip_weights) == ("ViT-B-32", "openai")
    table = pq.read_table(path)
    assert table.column("kind").to_pylist() == ["image", "image", "caption"]
    assert table.column("item").to_pylist() == ["z/a.jpg", "b.jpg", "z/a.jpg"]  # sorted by eval set, item
    index = load_index(path)
    assert index.sets == ["coco", "flickr"] and index.items == ["z/a.jpg", "b.jpg"]
    assert index.phashes.dtype == np.uint64 and int(index.phashes[0]) == 2**64 - 1
    np.testing.assert_array_equal(index.embeddings, np.stack([_unit(4, (0, 1)), _unit(4, (1, 1))]))
    assert index.captions == {"a dog running": ("coco", "z/a.jpg")}


def test_index_without_embeddings_has_no_clip(tmp_path):
    path = str(tmp_path / "eval.index")
    write_index(path, [{"eval_set": "vizwiz", "item": "a.jpg", "phash": "0" * 16, "embedding": None}], [])
    header = read_header(path)
    assert not header.has_embeddings and header.clip_model is None
    assert load_index(path).embeddings is None
    with pytest.raises(EvalIndexError, match="CLIP"):
        write_index(path, [{"eval_set": "s", "item": "a", "phash": "0" * 16, "embedding": _unit(2, (0, 1))}], [])


def test_files_that_are_not_an_index_are_refused(tmp_path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    with pytest.raises(EvalIndexError, match="not an eval index"):
        read_header(str(other))
    with pytest.raises(EvalIndexError, match="cannot read"):
        read_header(str(tmp_path / "missing.index"))
    newer = tmp_path / "newer.index"
    write_index(str(newer), [], [])
    table = pq.read_table(newer)
    meta = {b"flamingo_corpus.eval_index": json.dumps({"format_version": 99}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), newer)
    with pytest.raises(EvalIndexError, match="newer"):
        load_index(str(newer))


# ---------------------------------------------------------------------------------------------
# Matching


@pytest.fixture
def index(tmp_path):
    base = "0123456789abcdef"
    images = [
        {"eval_set": "coco", "item": "a.jpg", "phash": base, "embedding": _unit(3, (0, 1))},
        {"eval_set": "coco", "item": "b.jpg", "phash": flip_bits(base, range(5)), "embedding": _unit(3, (1, 1))},
        {"eval_set": "vqa", "item": "c.jpg", "phash": flip_bits(base, range(2)), "embedding": _unit(3, (2, 1))},
        {"eval_set": "vqa", "item": "d.jpg", "phash": "fedcba9876543210", "embedding": _unit(3, (2, 1))},
    ]
    captions = [{"eval_set": "coco", "item": "a.jpg", "caption": "A surfer on a wave."}]
    path = str(tmp_path / "eval.index")
    write_index(path, images, captions, FAKE_CLIP)
    return load_index(path), base


def test_phash_within_distance_names_the_nearest(index):
    idx, base = index  # a = base, b = base ^ 0b11111, c = base ^ 0b11, d unrelated

    def near(bits: int) -> str:
        return f"{int(base, 16) ^ bits:016x}"

    got = idx.match(
        [
            near(0b1),
            near(0b111),
            near(0b1111),
            near(0b1000000),
            near(0b11110000),
            "fedcba9876543217",
            "ffff0000ffff0000",
            None,
        ],
        phash_distance=3,
    )
    assert [m and m.detail for m in got] == [
        "coco:a.jpg phash_distance=1",  # a and c are both 1 away: the first in index order is named
        "vqa:c.jpg phash_distance=1",  # a 3, b 2, c 1
        "coco:b.jpg phash_distance=1",
        "coco:a.jpg phash_distance=1",
        None,  # 4 bits from a, 5 or more from the others
        "vqa:d.jpg phash_distance=3",
        None,
        None,
    ]


def test_cosine_and_caption_matches(index):
    idx, base = index
    far = "ffff0000ffff0000"
    got = idx.match(
        [far, far, far, far, base],
        [_unit(3, (1, 1), (0, 0.2)), _unit(3, (2, 1)), _unit(3, (0, 1), (1, 1)), None, _unit(3, (1, 1))],
        ["nothing", None, "a surfer on a wave", "A SURFER, on a wave!", None],
        phash_distance=6,
        min_cosine=0.95,
    )
    assert got[0].detail == "coco:b.jpg cosine=0.9806"
    assert got[1].detail == "vqa:c.jpg cosine=1.0000"  # c and d are equally close: the first in index order
    assert got[2].detail == "caption coco:a.jpg"  # cosine 0.71 is not enough; the caption is
    assert got[3].detail == "caption coco:a.jpg"
    assert got[4].detail == "coco:a.jpg phash_distance=0"  # a perceptual-hash match is named first
    # Switched off: no cosine threshold, no caption check.
    off = idx.match(
        [far] * 3, [_unit(3, (2, 1))] * 3, ["a surfer on a wave"] * 3, min_cosine=None, check_captions=False
    )
    assert off == [None] * 3


def test_beam_stage_drops_rows_and_mmc4_images(index, tmp_path):
    idx, base = index
    cfg = DecontaminationConfig(index=idx.header.path, phash_distance=3, min_cosine=None)
    samples = [
        Sample(id="r:0", source_index=0, row=0, url="http://x/0.jpg", caption="a cat", phash=flip_bits(base, range(1))),
        Sample(
            id="r:1",
            source_index=0,
            row=1,
            url="http://x/1.jpg",
            caption="A surfer on a wave",
            phash="ffff0000ffff0000",
        ),
        Sample(id="r:2", source_index=0, row=2, url="http://x/2.jpg", caption="a cat", phash="ffff0000ffff0000"),
        Sample(
            id="d#0",
            source_index=0,
            row=3,
            url="http://x/3.jpg",
            doc_id="d",
            position=0,
            phash=flip_bits(base, range(2)),
        ),
        Sample(id="d#1", source_index=0, row=3, url="http://x/4.jpg", doc_id="d", position=1, phash="ffff0000ffff0000"),
    ]

    def build(p):
        kept, dropped = p | beam.Create(samples) | Decontaminate(cfg, ClipConfig(enabled=False))
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    assert sorted(s.id for s in out["kept"]) == ["d#1", "r:2"]
    drops = {r.id: (r.kind, r.reason, r.stage, r.detail) for r in out["dropped"]}
    assert drops == {
        "r:0": ("row", "eval_overlap", "decontaminate", "coco:a.jpg phash_distance=1"),
        "r:1": ("row", "eval_overlap", "decontaminate", "caption coco:a.jpg"),
        "d#0": ("image", "eval_overlap", "decontaminate", "vqa:c.jpg phash_distance=0"),
    }


def test_an_index_of_another_clip_model_is_refused_when_the_pipeline_is_built(index, tiny_clip_checkpoint):
    idx, _ = index
    tiny = ClipConfig(model="flamingo-tiny-clip", pretrained=str(tiny_clip_checkpoint))
    with pytest.raises(EvalIndexError, match="ViT-B-32.*flamingo-tiny-clip"):
        Decontaminate(DecontaminationConfig(index=idx.header.path), tiny)
    # Without a cosine threshold, or with CLIP off, the embeddings are not used and the index is fine.
    Decontaminate(DecontaminationConfig(index=idx.header.path, min_cosine=None), tiny)
    Decontaminate(DecontaminationConfig(index=idx.header.path), ClipConfig(enabled=False))
    # Two spellings of one checkpoint are one model.
    by_tag = clip_identity(ClipConfig(model="flamingo-tiny-clip", pretrained="synthetic-world"))
    assert clip_identity(tiny) == {**by_tag, "clip_pretrained": str(tiny_clip_checkpoint)}


@pytest.mark.parametrize(
    "meta_change, found",
    [
        ({"phash_version": None}, "holds pHash version 1 "),  # before the version was recorded
        ({"variants_version": None, "format_version": 1}, "copy variants version 0"),  # format 1: no variants
        ({"variants_version": 99}, "copy variants version 99"),
    ],
)
def test_an_index_of_another_hashing_version_is_refused_in_one_line(tmp_path, meta_change, found):
    """An index whose hashes or copy variants are not the build's is refused, before the build
    starts, with one line (a UserError: the CLI prints it and exits 2) that says to rebuild it."""
    from flamingo_corpus.errors import UserError

    images = [{"eval_set": "coco", "item": "a.jpg", "phash": "0123456789abcdef", "embedding": None}]
    current, old = str(tmp_path / "current.index"), str(tmp_path / "old.index")
    write_index(current, images, [])
    table = pq.read_table(current)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    for key, value in meta_change.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    if meta.get("format_version") == 1:
        table = table.drop_columns(["variant"])
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), old)
    Decontaminate(DecontaminationConfig(index=current, min_cosine=None))
    for attempt in (read_header, load_index, lambda p: Decontaminate(DecontaminationConfig(index=p, min_cosine=None))):
        with pytest.raises(EvalIndexError) as e:
            attempt(old)
        message = str(e.value)
        assert isinstance(e.value, UserError) and "\n" not in message
        assert found in message and "flamingo-corpus index-eval" in message and old in message


# ---------------------------------------------------------------------------------------------
# The command


def test_index_eval_command(tmp_path, capsys):
    root = tmp_path / "vizwiz"
    (root / "val" / "deep").mkdir(parents=True)
    pictures = {
        "val/a.jpg": smooth_photo(1),
        "val/deep/b.png": smooth_photo(2),
        "c.webp": smooth_photo(3),
        "d.bmp": smooth_photo(4),
        "e.GIF": smooth_photo(5),
    }
    for name, img in pictures.items():
        img.save(root / name)
    (root / "val" / "broken.jpg").write_bytes(jpeg_bytes(smooth_photo(6))[:300])  # truncated
    (root / "notes.txt").write_text("not an image")
    caps = tmp_path / "caps.txt"
    caps.write_text("A picture.\nAnother picture.\n")
    out = tmp_path / "eval.index"
    assert cli.main(["index-eval", f"vw={root}", "--captions", f"vw={caps}", "--output", str(out), "--no-clip"]) == 0
    std = capsys.readouterr()
    assert "broken.jpg" in std.err and "vw" in std.out and "1 unreadable" in std.out
    index = load_index(str(out))
    own = [n for n, v in enumerate(index.variants) if not v]  # the pictures' own rows, then variants
    assert [index.items[n] for n in own] == sorted(pictures, key=str) and set(index.sets) == {"vw"}
    assert len(index.items) > 10 * len(own) and "mirrored" in index.variants
    assert index.embeddings is None
    # Lossless copies hash exactly as the image stage hashes the picture.
    hashes = {index.items[n]: f"{int(index.phashes[n]):016x}" for n in own}
    assert hashes["val/deep/b.png"] == perceptual.phash(smooth_photo(2))
    assert index.captions == {"a picture": ("vw", "line 1"), "another picture": ("vw", "line 2")}


def test_index_eval_errors(tmp_path, capsys):
    assert cli.main(["index-eval", str(tmp_path / "nowhere"), "--output", str(tmp_path / "e.index")]) == 2
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["index-eval", str(tmp_path), "--output", "x", "--recipe", "r.yaml", "--no-clip"])
    with pytest.raises(SystemExit) as e:
        cli.main(["index-eval", "--help"])
    assert e.value.code == 0 and "--captions" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Builds


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_build_drops_planted_eval_images_and_captions(tmp_path):
    """The issue's must-show: eval images planted in the web as recompressed, resized and framed
    copies are all removed, and the index names each one's eval item."""
    eval_dir = tmp_path / "eval" / "coco" / "val2014"
    eval_dir.mkdir(parents=True)
    originals = {f"COCO_val2014_{seed:012d}.png": smooth_photo(seed) for seed in (1, 2, 3)}
    for name, img in originals.items():
        img.save(eval_dir / name)
    a, b, c = (f"val2014/{n}" for n in originals)
    first = originals[a.split("/")[1]]
    files = {
        "recompressed.jpg": jpeg_bytes(first, quality=50),
        "half.jpg": jpeg_bytes(originals[b.split("/")[1]].resize((160, 120), Image.Resampling.BICUBIC)),
        "framed.jpg": jpeg_bytes(ImageOps.expand(originals[c.split("/")[1]], border=24, fill="white")),
        **{f"other{i}.jpg": jpeg_bytes(smooth_photo(100 + i)) for i in range(5)},
    }
    # Row i's caption is "picture number i of the test": other2 (row 5) has an eval caption.
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": a, "caption": "Picture number 5 of the test."}) + "\n")
    assert (
        cli.main(
            [
                "index-eval",
                str(tmp_path / "eval" / "coco"),
                "--captions",
                f"coco={captions}",
                "--output",
                str(tmp_path / "eval.index"),
            ]
        )
        == 0
    )

    rows, result = build_over_loopback(tmp_path, files, {"decontamination": {"index": "eval.index"}})
    expected = {
        "recompressed.jpg": f"coco:{a} ",
        "half.jpg": f"coco:{b} ",
        "framed.jpg": f"coco:{c} ",
        "other2.jpg": f"caption coco:{a}",
    }
    for name, detail in expected.items():
        row = rows[name]
        assert (row["status"], row["reason"], row["stage"]) == ("dropped", "eval_overlap", "decontaminate"), name
        assert row["detail"].startswith(detail), (name, row["detail"])
    for name in expected:
        if name != "other2.jpg":
            assert int(rows[name]["detail"].rsplit("phash_distance=", 1)[1]) <= 6
    assert {n for n, r in rows.items() if r["status"] == "kept"} == {f"other{i}.jpg" for i in (0, 1, 3, 4)}
    assert result.drops == {"decontaminate/eval_overlap": 4}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["drops"] == {"decontaminate/eval_overlap": 4} and manifest["totals"]["kept"] == 4
    assert "decontaminate/eval_overlap" in summary(result)


def _panel(img: Image.Image, seed: int, pad: int = 120) -> Image.Image:
    """The picture as the middle panel of a wider image: a centre crop (CLIP's view with
    resize_mode center_crop) still sees it, its perceptual hash is far from the original's."""
    canvas = smooth_photo(seed).resize((img.width + 2 * pad, img.height))
    canvas.paste(img, (pad, 0))
    return canvas


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_build_with_clip_matches_by_embedding(tmp_path, tiny_clip_checkpoint):
    clip = {
        "enabled": True,
        "model": "flamingo-tiny-clip",
        "pretrained": str(tiny_clip_checkpoint),
        "device": "cpu",
        "batch_size": 8,
        "min_similarity": None,
    }
    image = {"resize_mode": "center_crop", "image_size": 224}
    scenes = list(synthetic.scenes(11, 7))  # 0 and 2 are eval images; their perceptual hashes are
    # 26 or more bits from the others' (dotted scenes like 1 move up to 16 bits under JPEG alone)
    eval_dir = tmp_path / "eval" / "okvqa"
    eval_dir.mkdir(parents=True)
    for i in (0, 2):
        synthetic.render(scenes[i], 320, 240).save(eval_dir / f"scene{i}.png")
    recipe = tmp_path / "embed.yaml"
    recipe.write_text(yaml.safe_dump({"name": "embed", "clip": clip, "image": image}))
    assert (
        cli.main(["index-eval", str(eval_dir), "--recipe", str(recipe), "--output", str(tmp_path / "eval.index")]) == 0
    )
    header = read_header(str(tmp_path / "eval.index"))
    assert header.clip_model == "flamingo-tiny-clip" and header.embedding_dim and header.has_embeddings

    files = {
        "panel.jpg": jpeg_bytes(_panel(synthetic.render(scenes[0], 320, 240), 7)),
        "copy.jpg": jpeg_bytes(synthetic.render(scenes[2], 320, 240), quality=50),
        **{f"other{i}.jpg": jpeg_bytes(synthetic.render(scenes[i], 320, 240)) for i in (1, 3, 4, 5, 6)},
    }
    rows, result = build_over_loopback(
        tmp_path, files, {"clip": clip, "image": image, "decontamination": {"index": "eval.index", "min_cosine": 0.95}}
    )
    panel, copy = rows["panel.jpg"], rows["copy.jpg"]
    assert panel["reason"] == "eval_overlap" and panel["detail"].startswith("okvqa:scene0.png cosine=")
    assert float(panel["detail"].rsplit("=", 1)[1]) >= 0.95
    assert copy["reason"] == "eval_overlap" and copy["detail"].startswith("okvqa:scene2.png phash_distance=")
    assert all(rows[f"other{i}.jpg"]["status"] == "kept" for i in (1, 3, 4, 5, 6))
    assert result.drops == {"decontaminate/eval_overlap": 2}


def test_chunked_search_gives_the_same_matches(index, monkeypatch):
    """The eval side is searched in chunks; ties across a chunk boundary still go to the first."""
    import flamingo_corpus.safety.eval_index as eval_index

    idx, base = index
    queries = [base, flip_bits(base, range(1)), flip_bits(base, range(3)), "fedcba9876543210", "ffff0000ffff0000"]
    embeddings = [_unit(3, (2, 1)), _unit(3, (1, 1)), None, _unit(3, (0, 1), (2, 0.1)), _unit(3, (2, 1))]
    whole = idx.match(queries, embeddings, (), phash_distance=3, min_cosine=0.9)
    monkeypatch.setattr(eval_index, "CHUNK_CELLS", 1)  # one eval image at a time
    assert idx.match(queries, embeddings, (), phash_distance=3, min_cosine=0.9) == whole
    assert [m and m.detail for m in whole] == [
        "coco:a.jpg phash_distance=0",
        "coco:a.jpg phash_distance=1",
        "vqa:c.jpg phash_distance=1",
        "vqa:d.jpg phash_distance=0",
        "vqa:c.jpg cosine=1.0000",
    ]


# ---------------------------------------------------------------------------------------------
# Copies that are not the same picture (issue 21): real photographs, through index-eval's code


def _photo(name: str, box) -> Image.Image:
    data = pytest.importorskip("skimage.data")
    pixels = getattr(data, name)()
    pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # stereo_motorcycle: (left, right, disparity)
    return Image.fromarray(pixels).convert("RGB").crop(box)


EVAL_PHOTOS = {  # eval item -> (photograph, crop box)
    "astronaut.png": ("astronaut", (100, 40, 420, 280)),
    "coffee.png": ("coffee", (80, 60, 480, 360)),
    "chelsea.png": ("chelsea", (40, 20, 440, 290)),
    "rocket.png": ("rocket", (100, 50, 500, 350)),
    "motorcycle.png": ("stereo_motorcycle", (200, 100, 640, 400)),
    "grace.png": ("astronaut", (20, 250, 300, 500)),
}


def _letterboxed(img: Image.Image) -> Image.Image:
    """Padded to a square with black bars above and below (the picture is wider than high)."""
    canvas = Image.new("RGB", (max(img.size),) * 2)
    canvas.paste(img, (0, (img.width - img.height) // 2))
    return canvas


COPIES = {  # the web copy -> (eval item, edit, the variant the drop must name)
    "mirrored": ("astronaut.png", lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "mirrored"),
    "cropped": ("coffee.png", lambda im: perceptual.crop_fraction(im, (0.05,) * 4), "crop"),  # 90% a side
    "rotated": ("chelsea.png", lambda im: perceptual.rotate_inside(im, 5), "rotated"),
    "framed": ("rocket.png", lambda im: ImageOps.expand(im, border=16, fill="white"), ""),
    "letterboxed": ("rocket.png", _letterboxed, ""),  # the bars are trimmed before hashing
    "corner": ("motorcycle.png", lambda im: perceptual.crop_fraction(im, (0.1, 0, 0, 0.1)), "crop-left10%-bottom10%"),
    "off-grid crop": ("grace.png", lambda im: perceptual.crop_fraction(im, (0.03, 0.08, 0.06, 0.01)), "crop"),
}
UNRELATED = {
    "camera": ("camera", (0, 0, 300, 250)),
    "hubble": ("hubble_deep_field", (0, 0, 400, 300)),
    "cells": ("immunohistochemistry", (0, 0, 300, 300)),
    "coins": ("coins", (0, 0, 300, 200)),
}


def _web_sample(n: int, name: str, img: Image.Image) -> Sample:
    from flamingo_corpus.images.process import process_image
    from flamingo_corpus.recipe import ImageConfig

    p = process_image(jpeg_bytes(img), ImageConfig())
    return Sample(
        id=f"r:{n}",
        source_index=0,
        row=n,
        url=f"http://x/{name}.jpg",
        caption=name,
        phash=p.phash,
        phash_variants=p.phash_variants,  # what tells an image of low detail
        phash_checks=p.phash_checks,  # what confirms a match 2 bits or more away
    )


def test_a_match_two_bits_away_or_more_needs_check_hashes_that_agree(tmp_path):
    """From ``CHECK_FROM`` bits on, an index row counts only when its check hash is within
    ``check_distance`` of the sample's: the nearest row that agrees is named; a closer pair, a
    sample without a check hash, or check_distance None match on the pHash alone; the Beam
    stage passes each sample's own check hash (``phash_checks[0]``)."""
    from flamingo_corpus.dedup.hamming_index import CHECK_FROM

    assert CHECK_FROM == 2
    base, check = "0123456789abcdef", "00ff00ff00ff00ff"
    cropped, cropped_check = flip_bits(base, range(20, 30)), flip_bits(check, range(30, 60))
    images = [
        {"eval_set": "coco", "item": "a.jpg", "phash": base, "check": check},
        {"eval_set": "coco", "item": "a.jpg", "variant": "crop-left10%", "phash": cropped, "check": cropped_check},
    ]
    path = str(tmp_path / "eval.index")
    write_index(path, images, [])
    idx = load_index(path)
    assert idx.checks is not None and len(idx.checks) == 2
    near_crop = flip_bits(cropped, range(2))  # 2 from the crop row, 8 from the picture's own
    queries = [near_crop, near_crop, near_crop, flip_bits(cropped, (0,)), near_crop]
    checks = [
        flip_bits(cropped_check, range(14)),  # agrees with the crop row (14 bits)
        flip_bits(cropped_check, range(15)),  # disagrees: 15 bits
        flip_bits(check, range(4)),  # agrees with the picture's row only, which is 8 away: too far
        flip_bits(cropped_check, range(40)),  # disagrees, but the pHashes are 1 bit apart
        None,  # no check hash: the pHash alone
    ]

    def details(**kw):
        return [m and m.detail for m in idx.match(queries, phash_distance=6, checks=checks, **kw)]

    assert details(check_distance=14) == [
        "coco:a.jpg crop-left10% phash_distance=2",
        None,
        None,
        "coco:a.jpg crop-left10% phash_distance=1",
        "coco:a.jpg crop-left10% phash_distance=2",
    ]
    assert details(check_distance=None) == ["coco:a.jpg crop-left10% phash_distance=2"] * 3 + [
        "coco:a.jpg crop-left10% phash_distance=1",
        "coco:a.jpg crop-left10% phash_distance=2",
    ]
    # of two rows within the distance, the nearest whose check agrees: 4 bits from the picture's
    # own row, whose check disagrees, and 6 from the crop row, whose check agrees
    between = flip_bits(base, range(20, 24))
    found = [
        m and m.detail
        for m in idx.match([between] * 2, phash_distance=6, checks=[cropped_check, check], check_distance=14)
    ]
    assert found == ["coco:a.jpg crop-left10% phash_distance=6", "coco:a.jpg phash_distance=4"]

    cfg = DecontaminationConfig(index=path, phash_distance=6, min_cosine=None, captions=False, check_distance=14)
    samples = [
        Sample(
            id=f"r:{n}",
            source_index=0,
            row=n,
            url=f"http://x/{n}.jpg",
            phash=near_crop,
            phash_variants=FULL_VARIANTS,
            phash_checks=(c,) + FULL_VARIANTS,
        )
        for n, c in enumerate(checks[:3])
    ]

    def build(p):
        kept, dropped = p | beam.Create(samples) | Decontaminate(cfg, ClipConfig(enabled=False))
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    assert {r.id: r.detail for r in out["dropped"]} == {"r:0": "coco:a.jpg crop-left10% phash_distance=2"}
    assert sorted(s.id for s in out["kept"]) == ["r:1", "r:2"]


def test_mirrored_cropped_rotated_and_framed_copies_are_dropped_naming_the_variant(tmp_path):
    eval_dir = tmp_path / "coco"
    eval_dir.mkdir()
    pictures = {item: _photo(*spec) for item, spec in EVAL_PHOTOS.items()}
    for item, img in pictures.items():
        img.save(eval_dir / item)
    index = str(tmp_path / "eval.index")
    assert cli.main(["index-eval", str(eval_dir), "--output", index, "--no-clip"]) == 0
    samples = [_web_sample(n, name, edit(pictures[item])) for n, (name, (item, edit, _)) in enumerate(COPIES.items())]
    samples += [_web_sample(10 + n, name, _photo(*spec)) for n, (name, spec) in enumerate(UNRELATED.items())]
    cfg = DecontaminationConfig(index=index, phash_distance=6, min_cosine=None, captions=False)

    def build(p):
        kept, dropped = p | beam.Create(samples) | Decontaminate(cfg, ClipConfig(enabled=False))
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    drops = {r.url.rsplit("/", 1)[1][:-4]: r.detail for r in out["dropped"]}
    assert sorted(drops) == sorted(COPIES)  # every copy, and none of the unrelated photographs
    assert sorted(s.caption for s in out["kept"]) == sorted(UNRELATED)
    for name, (item, _, variant) in COPIES.items():
        ref, *evidence = drops[name].split(" ")
        assert ref == f"coco:{item}", drops[name]
        assert evidence[-1].startswith("phash_distance=") and int(evidence[-1].split("=")[1]) <= 6
        assert " ".join(evidence[:-1]).startswith(variant) if variant else evidence == evidence[-1:], drops[name]


def test_a_mirrored_variant_must_be_closer_than_the_picture_and_its_plain_variants(tmp_path):
    """A mirrored variant row counts within phash_distance - MIRRORED_MARGIN; the picture's own
    and its plain (cropped, turned) variants within phash_distance.  At equal distance the
    picture's own row is named."""
    from flamingo_corpus.safety.eval_index import MIRRORED_MARGIN, VARIANT_MARGIN

    base = "0123456789abcdef"
    mirrored, cropped = flip_bits(base, range(40, 50)), flip_bits(base, range(20, 30))
    images = [
        {"eval_set": "coco", "item": "a.jpg", "phash": base, "embedding": None},
        {"eval_set": "coco", "item": "a.jpg", "variant": "mirrored", "phash": mirrored},
        {"eval_set": "coco", "item": "b.jpg", "variant": "mirrored", "phash": flip_bits(base, range(1))},
        {"eval_set": "coco", "item": "c.jpg", "variant": "crop-left10%", "phash": cropped},
    ]
    path = str(tmp_path / "eval.index")
    write_index(path, images, [])
    idx = load_index(path)
    queries = [
        flip_bits(mirrored, range(4)),  # 4 from a's mirrored variant: counts as 5
        flip_bits(mirrored, range(6)),  # 6 from a's mirrored variant: counts as 7, too far
        flip_bits(base, range(1, 7)),  # 6 from a itself: the picture's own row counts at phash_distance
        flip_bits(cropped, range(6)),  # 6 from c's cropped variant: a plain variant counts as 6
        flip_bits(cropped, range(8)),  # 8 from it: too far
    ]
    assert (VARIANT_MARGIN, MIRRORED_MARGIN) == (0, 1)
    assert [m and m.detail for m in idx.match(queries, phash_distance=6)] == [
        "coco:a.jpg mirrored phash_distance=4",
        None,
        "coco:a.jpg phash_distance=6",
        "coco:c.jpg crop-left10% phash_distance=6",
        None,
    ]


# A normal image's build variants (33 distinct hashes), and a low-detail one's (3 of them collapsed).
FULL_VARIANTS = tuple(flip_bits("ffffffff00000000", (i,)) for i in range(perceptual.BUILD_VARIANTS))
LOW_VARIANTS = FULL_VARIANTS[:-3]


def _low_detail_index(tmp_path):
    base = "0123456789abcdef"
    cropped, mirrored = flip_bits(base, range(20, 30)), flip_bits(base, range(40, 50))
    images = [
        {"eval_set": "coco", "item": "a.jpg", "phash": base, "embedding": None},
        {"eval_set": "coco", "item": "a.jpg", "variant": "crop-left10%", "phash": cropped},
        {"eval_set": "coco", "item": "a.jpg", "variant": "mirrored", "phash": mirrored},
    ]
    path = str(tmp_path / "eval.index")
    write_index(path, images, [])
    return path, base, cropped, mirrored


def test_a_low_detail_image_must_be_closer_to_a_variant(tmp_path):
    """A training image of low detail (``hamming_index.low_detail`` on its build variants) counts
    against an index variant within phash_distance - LOW_DETAIL_MARGIN, against the picture's own
    row within phash_distance; the evidence says "low-detail" where the stricter distance held."""
    from flamingo_corpus.dedup.hamming_index import low_detail
    from flamingo_corpus.safety.eval_index import LOW_DETAIL_MARGIN

    assert LOW_DETAIL_MARGIN == 4 and not low_detail(FULL_VARIANTS) and low_detail(LOW_VARIANTS)
    path, base, cropped, mirrored = _low_detail_index(tmp_path)
    idx = load_index(path)
    queries = [
        flip_bits(cropped, range(4)),  # 4 from the crop variant: within 6, not within 2
        flip_bits(cropped, range(2)),  # 2 from it
        flip_bits(mirrored, range(2)),  # 2 from the mirrored variant
        flip_bits(base, range(1, 7)),  # 6 from the picture itself
    ]

    def details(variants):
        return [m and m.detail for m in idx.match(queries, phash_distance=6, build_variants=variants)]

    assert details([FULL_VARIANTS] * 4) == [
        "coco:a.jpg crop-left10% phash_distance=4",
        "coco:a.jpg crop-left10% phash_distance=2",
        "coco:a.jpg mirrored phash_distance=2",
        "coco:a.jpg phash_distance=6",
    ]
    assert details([LOW_VARIANTS] * 4) == [
        None,
        "coco:a.jpg crop-left10% low-detail phash_distance=2",
        "coco:a.jpg mirrored low-detail phash_distance=2",
        "coco:a.jpg phash_distance=6",
    ]
    # Variants not known (None, or none given): matched as an image that is not of low detail.
    assert details([None] * 4) == details(()) == details([FULL_VARIANTS] * 4)
    assert details([LOW_VARIANTS, FULL_VARIANTS, None, ()])[0] is None


@pytest.mark.parametrize("release", [False, True])
def test_beam_stage_holds_low_detail_images_to_the_stricter_distance(tmp_path, release):
    path, _, cropped, _ = _low_detail_index(tmp_path)
    cfg = DecontaminationConfig(index=path, phash_distance=6, min_cosine=None, captions=False)
    samples = [
        Sample(id=f"r:{n}", source_index=0, row=n, url=f"http://x/{n}.jpg", phash=phash, phash_variants=variants)
        for n, (phash, variants) in enumerate(
            [
                (flip_bits(cropped, range(4)), FULL_VARIANTS),
                (flip_bits(cropped, range(4)), LOW_VARIANTS),
                (flip_bits(cropped, range(2)), LOW_VARIANTS),
                (flip_bits(cropped, range(4)), ()),  # no variants: every one collapsed, of low detail
            ]
        )
    ]

    def build(p):
        kept, dropped = p | beam.Create(samples) | Decontaminate(cfg, ClipConfig(enabled=False), release)
        return {"kept": kept, "dropped": dropped}

    out = run_collect(build)
    assert {r.id: r.detail for r in out["dropped"]} == {
        "r:0": "coco:a.jpg crop-left10% phash_distance=4",
        "r:2": "coco:a.jpg crop-left10% low-detail phash_distance=2",
    }
    kept = {s.id: s.phash_variants for s in out["kept"]}
    assert kept == ({"r:1": (), "r:3": ()} if release else {"r:1": LOW_VARIANTS, "r:3": ()})


def _index_and_off_grid_copy(tmp_path) -> dict:
    """``tmp_path/eval.index``, of one detailed photograph (coco:grace.png), and the files a web
    serves: ``copy.jpg``, an off-grid crop of it 4 bits from a crop variant, and ``other.jpg``, an
    unrelated photograph."""
    eval_dir = tmp_path / "eval" / "coco"
    eval_dir.mkdir(parents=True)
    picture = _photo(*EVAL_PHOTOS["grace.png"])
    picture.save(eval_dir / "grace.png")
    assert cli.main(["index-eval", str(eval_dir), "--output", str(tmp_path / "eval.index"), "--no-clip"]) == 0
    _, edit, _ = COPIES["off-grid crop"]
    return {"copy.jpg": jpeg_bytes(edit(picture)), "other.jpg": jpeg_bytes(_photo(*UNRELATED["coins"]))}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_build_without_near_dup_matches_with_the_build_variants(tmp_path):
    """A LAION build without near dup keeps the variant hashes up to decontamination: an off-grid
    crop of a detailed photograph is 4 bits from a crop variant, which an image without variants
    (of low detail) would have to be within 2 of."""
    files = _index_and_off_grid_copy(tmp_path)
    recipe = {"decontamination": {"index": "eval.index", "min_cosine": None}, "dedup": {"near": False}}
    rows, result = build_over_loopback(tmp_path, files, recipe)
    assert rows["copy.jpg"]["detail"] == "coco:grace.png crop-left5%-top10%-right5% phash_distance=4", rows["copy.jpg"]
    assert rows["other.jpg"]["status"] == "kept"
    assert result.drops == {"decontaminate/eval_overlap": 1}


@pytest.mark.parametrize("check_distance", [14, 0])
def test_an_mmc4_build_matches_with_the_build_variants(tmp_path, check_distance):
    """MMC4 keeps the variant hashes and their check hashes up to decontamination too: a
    document's image that is an off-grid crop of a detailed eval photograph, 4 bits from a crop
    variant, is dropped naming it (an image without variants would count as of low detail and
    have to be within 2), the document's other image is kept.  With ``check_distance`` 0 the copy
    is kept: its check hash came through the store to the stage and is not the variant's own."""
    from flamingo_corpus.build import run_build
    from flamingo_corpus.recipe import recipe_from_dict
    from flamingo_corpus.sample.web import SampleWeb

    from ..helpers import index_rows
    from ..loopback_build import BASE_RECIPE

    web = tmp_path / "web"
    web.mkdir()
    for name, data in _index_and_off_grid_copy(tmp_path).items():
        (web / name).write_bytes(data)
    with SampleWeb(web) as server:
        images = [f"{server.url}/copy.jpg", f"{server.url}/other.jpg"]
        document = {
            "url": "http://example.com/page",
            "text_list": ["A first sentence here.", "A second sentence there."],
            "similarity_matrix": [[0.3, 0.1], [0.1, 0.3]],
            "image_info": [
                {"image_name": f"img{i}.jpg", "raw_url": u, "matched_text_index": i, "matched_sim": 0.3}
                for i, u in enumerate(images)
            ],
        }
        (tmp_path / "docs.jsonl").write_text(json.dumps(document) + "\n")
        recipe = {
            **BASE_RECIPE,
            "input": {"corpus": "mmc4", "path": str(tmp_path / "docs.jsonl")},
            "mmc4": {"min_images": 1},
            "decontamination": {
                "index": str(tmp_path / "eval.index"),
                "min_cosine": None,
                "check_distance": check_distance,
            },
        }
        run_build(recipe_from_dict(recipe, base_dir=tmp_path), str(tmp_path / "out"))
    rows = {r["url"].rsplit("/", 1)[1]: r for r in index_rows(tmp_path / "out") if r["kind"] == "image"}
    assert rows["other.jpg"]["status"] == "kept", rows["other.jpg"]
    if check_distance == 0:
        assert rows["copy.jpg"]["status"] == "kept", rows["copy.jpg"]
        return
    assert rows["copy.jpg"]["reason"] == "eval_overlap", rows["copy.jpg"]
    assert rows["copy.jpg"]["detail"] == "coco:grace.png crop-left5%-top10%-right5% phash_distance=4"
    assert rows["other.jpg"]["status"] == "kept", rows["other.jpg"]
