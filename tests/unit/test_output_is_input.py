"""Commands that write a file write it whole or not at all, and never over one of their inputs."""

from __future__ import annotations

import json
import os

import pytest

from flamingo_corpus import cli
from flamingo_corpus.output.atomic import atomic_create, atomic_write, same_path


def _doc(i: int) -> dict:
    return {
        "url": f"https://example.com/{i}",
        "text_list": ["a first sentence here", "a second one"],
        "image_info": [
            {"image_name": "a.jpg", "raw_url": "https://example.com/a.jpg", "matched_text_index": 1, "matched_sim": 0.2}
        ],
        "similarity_matrix": [[0.3, 0.2]],
    }


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(_doc(i)) + "\n" for i in range(3)))
    return path


@pytest.mark.parametrize("spelling", ["same", "dot", "link", "parent"])
def test_realign_refuses_to_write_over_its_input(shard, tmp_path, capsys, spelling):
    before = shard.read_bytes()
    if spelling == "same":
        out = str(shard)
    elif spelling == "dot":
        out = str(tmp_path / "." / "docs.jsonl")
    elif spelling == "link":
        os.symlink(shard, tmp_path / "link.jsonl")
        out = str(tmp_path / "link.jsonl")
    else:
        (tmp_path / "sub").mkdir()
        out = str(tmp_path / "sub" / ".." / "docs.jsonl")
    assert cli.main(["realign", str(shard), out]) == 2
    err = capsys.readouterr().err
    assert "is the input file" in err and "Traceback" not in err
    assert shard.read_bytes() == before


def test_realign_writes_a_new_file_and_leaves_no_temporary_one(shard, tmp_path):
    out = tmp_path / "out.jsonl"
    assert cli.main(["realign", str(shard), str(out)]) == 0
    assert [json.loads(line)["image_info"][0]["matched_text_index"] for line in out.read_text().splitlines()] == [0] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "out.jsonl"]


def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_create(str(path)) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    atomic_write(str(path), b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_read_only_folder_is_an_error_and_leaves_nothing(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root ignores modes
            pytest.skip("this user can write to read-only folders")
        with pytest.raises(OSError):
            atomic_write(str(folder / "f"), b"x")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_same_path_sees_through_spellings(tmp_path):
    a = tmp_path / "a"
    a.write_text("x")
    assert same_path(str(a), str(tmp_path / "." / "a"))
    assert same_path("gs://b/x/y.jsonl", "gs://b/x//y.jsonl")
    assert not same_path(str(a), str(tmp_path / "b"))
    assert not same_path("gs://b/x", "gs://b/y")
