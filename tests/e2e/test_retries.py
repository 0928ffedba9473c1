"""Bundle retries: every step that writes may run again on the same input, and the output is the same.

Spark and Flink retry a failed task, Dataflow a failed bundle (up to four times in batch), and a
lost worker's attempt may still be running when its retry starts.  The work a failed attempt did
stays (files written), its outputs are thrown away, and the same bundle runs again.  No engine
that retries can run here (docs/scale.md says why), and Beam's local engine, the FnApiRunner,
never retries a failed bundle.  What it does have is ``--direct_runner_bundle_repeat=N``: it runs
every bundle of every stage N extra times before the real run, with all its side effects and its
outputs thrown away (``dry_run``), which is what a retry after a failure late in a bundle looks
like to the steps that write: tars, completion records, image-store blocks, the index's temporary
files and their finalisation, the counts and the shard list.

The builds below run every bundle twice that way and must equal the ordinary build: the same tars
byte for byte, the same sizes.json, every index row once (none missing, none doubled), no file
left half-written.  Two attempts at once at one shard are tested directly (``write_tar``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from flamingo_corpus.build import run_build
from flamingo_corpus.output import shard
from flamingo_corpus.runners.options import runner_args

from ..helpers import index_rows

REPEAT = ["--direct_runner_bundle_repeat=1"]


def _outputs(out: Path) -> dict:
    rows = index_rows(out)
    return {
        "tars": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))},
        "sizes": (out / "sizes.json").read_bytes(),
        "rows": sorted(rows, key=lambda r: r["id"]),
        "ids": [r["id"] for r in rows],
        "manifest": json.loads((out / "manifest.json").read_text()),
    }


def _same(once: Path, twice: Path, result) -> None:
    a, b = _outputs(once), _outputs(twice)
    assert a["tars"] and b["tars"] == a["tars"]  # no tar doubled, cut short or changed
    assert b["sizes"] == a["sizes"]
    assert len(set(b["ids"])) == len(b["ids"])  # no index row twice ...
    assert b["rows"] == a["rows"]  # ... and none missing
    for key in ("shards", "totals", "drops"):
        assert b["manifest"][key] == a["manifest"][key], key
    leftovers = [p.name for p in twice.rglob("*") if ".tmp" in p.name or "beam-temp" in p.name]
    assert leftovers == [] and not (twice / "_build").exists()
    # The repeat ran: the second attempt at every shard found the first attempt's tar whole,
    # checked it against its record and the samples, and kept it.
    assert result.shards and all(s["skipped"] for s in result.shards)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_bundle_run_twice_gives_the_same_laion_sample(tmp_path, sample_build, sample_recipe):
    once, _ = sample_build
    result = run_build(sample_recipe, str(tmp_path / "laion"), REPEAT)
    _same(once, tmp_path / "laion", result)
    # the retried fetches took their rows from the image store the first attempt wrote
    assert result.store["rows_fetched"] == 0 and result.store["rows_from_store"] > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_bundle_run_twice_gives_the_same_mmc4_sample(tmp_path, mmc4_build, mmc4_recipe):
    once, _ = mmc4_build
    result = run_build(mmc4_recipe, str(tmp_path / "mmc4"), REPEAT)
    _same(once, tmp_path / "mmc4", result)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_bundle_run_twice_on_worker_processes(tmp_path, sample_build, sample_recipe):
    """The same with two worker processes: the attempts of one step run in other processes."""
    once, _ = sample_build
    args = runner_args("direct-multiprocess", ["--direct_num_workers=2", *REPEAT])
    result = run_build(sample_recipe, str(tmp_path / "laion"), args)
    _same(once, tmp_path / "laion", result)


def test_two_attempts_at_one_shard_at_once_leave_one_whole_tar(tmp_path):
    """A lost worker's attempt still writing while the retry writes the same shard: each writes
    its own temporary file and renames it whole, so the tar is one attempt's, never a mix."""
    members = [{"__key__": f"{i:010d}", "txt": f"caption {i}".encode() * 400, "json": b"{}"} for i in range(50)]
    path = str(tmp_path / "000000.tar")
    halfway = threading.Barrier(2)

    def samples():
        for i, m in enumerate(members):
            if i == 25:
                halfway.wait(timeout=30)  # both attempts are writing now
            yield m

    results = []
    threads = [threading.Thread(target=lambda: results.append(shard.write_tar(path, samples()))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2 and results[0] == results[1]
    count, size, sha = results[0]
    data = Path(path).read_bytes()
    assert count == 50 and len(data) == size and hashlib.sha256(data).hexdigest() == sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.tar"]
    assert shard.tmp_tar_path(path) != shard.tmp_tar_path(path)
