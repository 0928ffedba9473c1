"""The installed distribution: one import package, flamingo_corpus, with every subpackage and asset."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_every_package_folder_is_listed_in_setup_cfg():
    listed = set(_setup_cfg()["options"]["packages"].split())
    on_disk = {
        "flamingo_corpus." + ".".join(p.parent.relative_to(REPO / "pipeline").parts)
        for p in (REPO / "pipeline").rglob("__init__.py")
    }
    on_disk = {name.rstrip(".") for name in on_disk} | {"flamingo_corpus.filters"}
    assert on_disk == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("flamingo_corpus-*.whl")
    return zipfile.ZipFile(path)


@pytest.mark.slow
def test_the_wheel_installs_no_top_level_pipeline_or_filters_package(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"flamingo_corpus"}
    names = set(wheel.namelist())
    assert "flamingo_corpus/filters/text.py" in names and "flamingo_corpus/__main__.py" in names
    assert "flamingo_corpus/assets/measured.json" in names
    assert any(n.startswith("flamingo_corpus/assets/sample/laion/web/img/") for n in names)
    entry = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "flamingo-corpus = flamingo_corpus.cli:main" in entry


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "flamingo_corpus", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "build" in done.stdout and "verify" in done.stdout


def test_public_api_is_lazy_and_complete():
    code = (
        "import sys, flamingo_corpus as fc; assert 'apache_beam' not in sys.modules; "
        "assert 'torch' not in sys.modules; import flamingo_corpus.filters.text; "
        "assert 'apache_beam' not in sys.modules; "
        "missing = [n for n in fc.__all__ if getattr(fc, n, None) is None]; assert not missing, missing; "
        "print(fc.__version__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
