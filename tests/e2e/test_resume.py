"""Resumable builds: a build killed part-way and started again with the same command finishes,
reuses the shards already complete, and ends byte-identical to a build that was never stopped.

The pictures are served by a loopback web server in the test process, so that every run (the
killed one, the resumed one, the uninterrupted one) reads the same URLs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flamingo_corpus.build as build_module
from flamingo_corpus.build import OutputExists, run_build
from flamingo_corpus.output.manifest import TIMING_FIELDS
from flamingo_corpus.output.verify import verify
from flamingo_corpus.recipe import load_recipe
from flamingo_corpus.sample.web import SampleWeb

from ..helpers import index_rows
from ..loopback_build import jpeg_bytes, serve_rows, smooth_photo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PER_SHARD = 2


def _write_inputs(root: Path, web: SampleWeb, n: int, samples_per_shard: int = PER_SHARD) -> Path:
    """n pictures served by ``web``, one parquet row each under ``root``, and a recipe beside
    them; returns the recipe path."""
    pictures = web.root
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if not (pictures / f"{i}.jpg").exists():
            (pictures / f"{i}.jpg").write_bytes(jpeg_bytes(smooth_photo(i)))
    pq.write_table(
        pa.table(
            {
                "URL": [f"{web.url}/{i}.jpg" for i in range(n)],
                "TEXT": [f"picture number {i} of the test" for i in range(n)],
            }
        ),
        root / "rows.parquet",
    )
    recipe = root / "recipe.yaml"
    recipe.write_text(
        "name: resume\n"
        "input: {corpus: laion, path: rows.parquet}\n"
        "filters: {language: {enabled: false}}\n"
        "download: {allow_private: true, timeout_s: 30, deadline_s: 60}\n"
        "clip: {enabled: false}\n"
        f"shard: {{samples_per_shard: {samples_per_shard}}}\n"
    )
    return recipe


def _command(recipe: Path, out: Path) -> list:
    return [sys.executable, "-m", "flamingo_corpus.cli", "build", str(recipe), "--output", str(out)]


def _env() -> dict:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}  # the installed package, as users run it


def _complete_records(out: Path) -> dict:
    """{shard name: record} for the completion records that parse (one cut short by the kill does not)."""
    records = {}
    for path in sorted((out / "_build" / "complete").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        records[record["name"]] = record
    return records


def _kill_part_way(recipe: Path, out: Path) -> bool:
    """Run the build and SIGKILL it once a shard is complete; True when it was killed before its
    manifest was written (False: it finished first, the input was too small to catch it)."""
    # A killed build cannot clean up its temporary files: they go under the test's own directory.
    scratch = out.parent / "killed-build-tmp"
    scratch.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        _command(recipe, out),
        cwd=REPO,
        env={**_env(), "TMPDIR": str(scratch)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while proc.poll() is None:
            if (out / "manifest.json").exists():
                break
            if _complete_records(out):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait()
    return proc.returncode == -signal.SIGKILL and not (out / "manifest.json").exists()


def _tar_stats(out: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}


def _index_rows(out: Path) -> list:
    return sorted(index_rows(out), key=lambda r: r["id"])


def _assert_identical(resumed: Path, reference: Path) -> None:
    """Same shard names, same bytes, same sizes.json, same index rows, same manifest but for timing."""
    names = sorted(p.name for p in reference.glob("*.tar"))
    assert names and sorted(p.name for p in resumed.glob("*.tar")) == names
    for name in names:
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    assert (resumed / "sizes.json").read_bytes() == (reference / "sizes.json").read_bytes()
    assert _index_rows(resumed) == _index_rows(reference)
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (resumed, reference))
    for field in TIMING_FIELDS:
        a.pop(field, None), b.pop(field, None)
    assert a == b
    assert not list(resumed.glob("*.tmp")) and not (resumed / "_build").exists()
    report = verify(str(resumed))
    assert report.ok, str(report)


def test_a_killed_build_resumes_with_the_same_command(tmp_path):
    with SampleWeb(_mkdir(tmp_path / "served")) as web:
        # Kill the build once a shard is complete.  Should a loaded machine let the build finish
        # before the poll sees a shard, try again with a bigger input: never pass without a kill.
        for attempt, n in enumerate((48, 192, 768)):
            root = tmp_path / f"attempt{attempt}"
            recipe = _write_inputs(root, web, n)
            out = root / "out"
            if _kill_part_way(recipe, out):
                break
        else:
            pytest.fail("the build finished before a shard could be seen complete, even with 768 rows")

        records = _complete_records(out)
        assert records and not (out / "manifest.json").exists()
        before = _tar_stats(out)
        again = subprocess.run(_command(recipe, out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resumed from an interrupted run" in again.stdout
        reused = re.search(r"reused\s+(\d+) shards", again.stdout)
        assert reused and int(reused.group(1)) == len(records), again.stdout
        after = _tar_stats(out)
        for name in records:  # complete shards were verified and left alone, not written again
            assert after[name] == before[name], name

        reference = root / "uninterrupted"
        run_build(load_recipe(recipe), str(reference))
        _assert_identical(out, reference)

        # Once more on the complete output: it says so, exits 0, and touches nothing.
        third = subprocess.run(_command(recipe, out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
        assert third.returncode == 0, third.stderr[-3000:]
        assert "is complete already" in third.stdout
        assert _tar_stats(out) == after


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Killed(RuntimeError):
    pass


def test_resume_reuses_only_verified_shards(tmp_path, monkeypatch):
    """The kill simulated where it hurts: shards missing, damaged, without a record, with other
    samples than this run would write (the web changed), a partial temp file, a stale tar."""
    served = _mkdir(tmp_path / "served")
    n = 16  # 8 shards of 2
    with SampleWeb(served) as web:
        recipe = _write_inputs(tmp_path, web, n)
        reference = tmp_path / "reference"
        run_build(load_recipe(recipe), str(reference))

        # The interrupted run: picture 13 did not answer then, and the run died before its manifest.
        (served / "13.jpg").rename(served / "13.jpg.away")

        def killed(result):
            raise _Killed("killed before the manifest")

        out = tmp_path / "out"
        with monkeypatch.context() as m:
            m.setattr(build_module, "write_manifest", killed)
            with pytest.raises(_Killed):
                run_build(load_recipe(recipe), str(out))
        (served / "13.jpg.away").rename(served / "13.jpg")
        # The image store holds picture 13's 404 from that run, and a resumed run takes it from there;
        # the store's block goes too, so that this run asks the web again and gets the picture.
        blocks = list((out / "_build" / "store").glob("*/blocks/*/*.parquet"))
        assert blocks
        for block in blocks:
            block.unlink()
        records = out / "_build" / "complete"
        assert sorted(p.name for p in out.glob("*.tar")) == [f"{i:06d}.tar" for i in range(8)]
        assert len(list(records.glob("*.json"))) == 8 and not (out / "manifest.json").exists()

        (out / "000001.tar").unlink()  # missing
        damaged = bytearray((out / "000002.tar").read_bytes())  # a byte changed
        damaged[700] ^= 0xFF
        (out / "000002.tar").write_bytes(bytes(damaged))
        (records / "000003.tar.json").unlink()  # renamed, record not yet written
        (out / "000004.tar.tmp").write_bytes(b"half a tar")  # a write cut short
        (out / "000099.tar").write_bytes((out / "000000.tar").read_bytes())  # beyond this run's shards
        (records / "000099.tar.json").write_text(
            (records / "000000.tar.json").read_text().replace("000000.tar", "000099.tar")
        )
        kept_before = _tar_stats(out)

        result = run_build(load_recipe(recipe), str(out))
    assert result.resumed
    # Shards 0, 4 and 5 hold ranks 0-11, the same in both runs; 6 and 7 shifted with picture 13.
    assert sorted(s["name"] for s in result.shards if s.get("skipped")) == ["000000.tar", "000004.tar", "000005.tar"]
    after = _tar_stats(out)
    for name in ("000000.tar", "000004.tar", "000005.tar"):
        assert after[name] == kept_before[name], name
    for name in ("000002.tar", "000003.tar", "000006.tar", "000007.tar"):
        assert after[name] != kept_before[name], name
    _assert_identical(out, reference)


def test_what_a_restart_finds_decides_what_it_does(tmp_path, monkeypatch):
    served = _mkdir(tmp_path / "served")
    with SampleWeb(served) as web:
        recipe_path = _write_inputs(tmp_path, web, 6)
        recipe = load_recipe(recipe_path)
        out = tmp_path / "out"
        first = run_build(recipe, str(out))
        stats = _tar_stats(out)

        # Complete: said so, nothing rebuilt, nothing touched.
        again = run_build(recipe, str(out))
        assert again.already_complete and again.kept == first.kept and again.shards == first.manifest()["shards"]
        assert _tar_stats(out) == stats

        # A complete build of another recipe: refused, with the way out.
        other = load_recipe(_write_inputs(tmp_path, web, 6, samples_per_shard=3))
        with pytest.raises(OutputExists, match="another recipe.*--overwrite"):
            run_build(other, str(out))
        assert _tar_stats(out) == stats
        replaced = run_build(other, str(out), overwrite=True)
        assert not replaced.resumed and sorted(s["name"] for s in replaced.shards) == ["000000.tar", "000001.tar"]

        # An interrupted build, restarted after its inputs changed: refused, naming the inputs.
        interrupted = tmp_path / "interrupted"
        with monkeypatch.context() as m:
            m.setattr(build_module, "write_manifest", lambda result: (_ for _ in ()).throw(_Killed()))
            with pytest.raises(_Killed):
                run_build(other, str(interrupted))
        grown = load_recipe(_write_inputs(tmp_path, web, 7, samples_per_shard=3))
        with pytest.raises(OutputExists, match="interrupted build of other input files.*--overwrite"):
            run_build(grown, str(interrupted))
        with pytest.raises(OutputExists, match="interrupted build of another recipe"):
            run_build(load_recipe(_write_inputs(tmp_path, web, 7, samples_per_shard=2)), str(interrupted))


def _stored_rows(store: Path) -> int:
    """Rows in the complete blocks of a store (parquet files that read; a block cut short by the
    kill is not complete)."""
    rows = 0
    for path in store.glob("*/blocks/*/*.parquet"):
        try:
            rows += pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - unreadable: not complete, its rows are fetched again
            continue
    return rows


def test_a_build_killed_at_70_percent_resumes_from_the_store(tmp_path):
    """SIGKILL (the whole process group) once about 70% of the rows were requested, on two worker
    processes; the resumed build requests at most the rows the store does not hold plus one
    block per worker (by the server's own request log), and ends byte-identical to a build
    that was never stopped."""
    n, block_rows, workers = 3000, 100, 2
    beam = ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    files = {f"{i}.jpg": jpeg_bytes(smooth_photo(i)) for i in range(n)}
    with serve_rows(tmp_path, files, row_group_size=500) as web:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            "name: killed\n"
            "input: {corpus: laion, path: rows.parquet}\n"
            "filters: {language: {enabled: false}}\n"
            # one loopback host: unlimited, and spread over two lanes so that both workers fetch
            "download: {allow_private: true, timeout_s: 30, deadline_s: 60, threads: 8,\n"
            "           per_host: {max_concurrent: 0, max_requests_per_s: 0}}\n"
            "clip: {enabled: false}\n"
            f"store: {{block_rows: {block_rows}, host_spread: {workers}}}\n"
            "shard: {samples_per_shard: 250}\n"
        )
        out = tmp_path / "out"
        scratch = tmp_path / "killed-build-tmp"
        scratch.mkdir()
        proc = subprocess.Popen(
            _command(recipe, out) + beam,
            cwd=REPO,
            env={**_env(), "TMPDIR": str(scratch)},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while proc.poll() is None and sum(web.counts().values()) < 0.7 * n:
                time.sleep(0.01)
            assert proc.poll() is None, "the build ended before 70% of the rows were requested"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        requested_before = sum(web.counts().values())
        stored = _stored_rows(out / "_build" / "store")
        assert 0 < stored < n and not (out / "manifest.json").exists()

        again = subprocess.run(
            _command(recipe, out) + beam, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stderr[-3000:]
        resumed_requests = sum(web.counts().values()) - requested_before
        print(
            f"killed at {requested_before} requests of {n}; {stored} rows stored; "
            f"the resume requested {resumed_requests}"
        )
        assert n - stored <= resumed_requests <= (n - stored) + workers * block_rows
        assert re.search(rf"image store\s+{stored:,} rows from the store, {n - stored:,} fetched", again.stdout), (
            again.stdout
        )

        reference = tmp_path / "uninterrupted"
        run_build(load_recipe(recipe), str(reference))
    _assert_identical(out, reference)
