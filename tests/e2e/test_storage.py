"""A full disk and a read-only output stop a build with one clear line, leave no temporary files,
and the same command resumes once there is room (the output lives on a small tmpfs the test
mounts; skipped where mounting is not allowed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from flamingo_corpus import cli
from flamingo_corpus.output.verify import verify

from ..loopback_build import BASE_RECIPE, jpeg_bytes, serve_rows, smooth_photo

pytestmark = pytest.mark.slow


@pytest.fixture
def mount(tmp_path):
    """mount(size, read_only) -> a folder on a fresh tmpfs of that size; unmounted after the test."""
    points = []

    def make(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        points.append(point)
        return point

    yield make
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def recipe(tmp_path):
    """A LAION recipe over 40 loopback photos of about 30 KB each: about 1 MB of shards."""
    files = {f"{i}.jpg": jpeg_bytes(smooth_photo(i), quality=98) for i in range(40)}
    with serve_rows(tmp_path, files):
        path = tmp_path / "r.yaml"
        data = {
            **BASE_RECIPE,
            "input": {"path": str(tmp_path / "rows.parquet")},
            "image": {"image_size": 320, "resize_mode": "no", "encode_quality": 98},
            "shard": {"samples_per_shard": 5},
        }
        path.write_text(yaml.safe_dump(data))
        yield path


def _leftovers(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name)


def test_a_full_disk_stops_with_one_line_and_the_same_command_resumes(recipe, mount, capsys, tmp_path):
    disk = mount("256k")
    out = disk / "out"
    done = subprocess.run(
        [sys.executable, "-m", "flamingo_corpus", "build", str(recipe), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    err = [line for line in done.stderr.splitlines() if line.startswith("flamingo-corpus:")]
    assert len(err) == 1 and "No space left on device" in err[0] and "run the same command again" in err[0]
    assert _leftovers(out) == [], "temporary files left on the full disk"
    # room again: the output moves to a larger disk with what it holds, and the same command resumes
    bigger = mount("64m") / "out"
    shutil.copytree(out, bigger)
    assert cli.main(["build", str(recipe), "--output", str(bigger)]) == 0
    assert verify(str(bigger)).ok


def test_a_read_only_output_is_one_line(recipe, mount, capsys):
    out = mount("1m", read_only=True) / "out"
    assert cli.main(["build", str(recipe), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0]
