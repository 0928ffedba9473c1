"""Ctrl-C and SIGTERM stop a build within seconds, at any stage, with one line and no traceback;
the same command then resumes to the output an uninterrupted build writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flamingo_corpus.build import run_build
from flamingo_corpus.output.verify import verify
from flamingo_corpus.recipe import load_recipe
from flamingo_corpus.sample.web import SampleWeb

from ..loopback_build import BASE_RECIPE, TINY_CLIP, jpeg_bytes, smooth_photo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROWS = 80
MULTI = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _inputs(root: Path, web: SampleWeb, slow_s: float) -> Path:
    pq.write_table(
        pa.table(
            {
                "URL": [f"{web.url}/slow/{slow_s}/{i % 40}.jpg?{i}" for i in range(ROWS)],
                "TEXT": [f"picture number {i}" for i in range(ROWS)],
            }
        ),
        root / "rows.parquet",
    )
    recipe = root / "r.yaml"
    data = {
        **BASE_RECIPE,
        "input": {"path": str(root / "rows.parquet")},
        "download": {"allow_private": True, "threads": 4},
        "clip": {**TINY_CLIP, "batch_size": 4},
        "dedup": {"exact": False},
        "shard": {"samples_per_shard": 10},
    }
    recipe.write_text(yaml.safe_dump(data))
    return recipe


def _command(recipe: Path, out: Path, extra) -> list:
    return [sys.executable, "-m", "flamingo_corpus", "build", str(recipe), "--output", str(out), *extra]


@pytest.fixture(scope="module")
def web(tmp_path_factory, tiny_clip_checkpoint):
    folder = tmp_path_factory.mktemp("web")
    for i in range(40):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(smooth_photo(i)))
    with SampleWeb(folder) as server:
        yield server


@pytest.fixture(scope="module")
def references(tmp_path_factory, web):
    """The uninterrupted build of each input, made once."""
    made = {}

    def reference(slow: float) -> Path:
        if slow not in made:
            root = tmp_path_factory.mktemp("reference")
            made[slow] = root / "out"
            run_build(load_recipe(_inputs(root, web, slow)), str(made[slow]))
        return made[slow]

    return reference


@pytest.mark.parametrize(
    "when, sig, extra",
    [
        ("download", signal.SIGINT, []),
        ("download", signal.SIGTERM, MULTI),
        ("after the last fetch", signal.SIGINT, MULTI),
        ("after the last fetch", signal.SIGTERM, []),
    ],
)
def test_a_signal_stops_the_build_cleanly_and_the_same_command_resumes(web, references, tmp_path, when, sig, extra):
    slow = 0.2 if when == "download" else 0.0
    recipe = _inputs(tmp_path, web, slow)
    out = tmp_path / "out"
    before = sum(web.counts().values())
    build = subprocess.Popen(
        _command(recipe, out, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    wanted = before + (ROWS // 4 if when == "download" else ROWS)  # a quarter of the fetches, or all
    while sum(web.counts().values()) < wanted and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if build.poll() is not None:
        pytest.skip("the build ended before the signal could be sent (a very fast machine)")
    os.killpg(build.pid, sig)  # as a terminal (Ctrl-C) or a scheduler stopping the job's process group
    sent = time.monotonic()
    stdout, stderr = build.communicate(timeout=60)
    took = time.monotonic() - sent
    assert build.returncode == 128 + sig, stderr[-3000:]
    assert took < 15, f"took {took:.1f} s to stop"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("flamingo-corpus:")]
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name}" in lines[0], stderr[-2000:]
    assert "run the same command to go on" in lines[0] and str(out) in lines[0]
    assert not list(out.glob("*.tar.tmp")), "a partial tar was left"

    again = subprocess.run(_command(recipe, out, extra), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from an interrupted run" in again.stdout
    assert verify(str(out)).ok
    reference = references(slow)
    for tar in sorted(reference.glob("*.tar")):
        assert (out / tar.name).read_bytes() == tar.read_bytes(), tar.name
    assert (out / "sizes.json").read_bytes() == (reference / "sizes.json").read_bytes()
