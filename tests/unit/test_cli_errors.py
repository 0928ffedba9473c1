"""A user's mistake on the command line is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import errno
import socket

import pytest

from flamingo_corpus import cli
from flamingo_corpus.errors import UserError
from flamingo_corpus.sample.web import PortInUse, SampleWeb


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("flamingo-corpus:")]
    assert len(lines) == 1, err
    return lines[0]


def test_sample_with_a_missing_recipe(capsys, tmp_path):
    assert cli.main(["sample", "--recipe", str(tmp_path / "none.yaml"), "--output", str(tmp_path / "o")]) == 2
    assert "cannot read recipe" in _one_line(capsys)


def test_sample_with_a_bad_recipe(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {corpus: laion, path: x.parquet}\nclip: {batch_sise: 8}\n")
    assert cli.main(["sample", "--recipe", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "batch_sise" in _one_line(capsys)


def test_the_sample_port_in_use_is_one_clear_error(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        with pytest.raises(PortInUse, match="is in use") as e:
            SampleWeb(tmp_path, port=holder.getsockname()[1]).start()
        assert isinstance(e.value, UserError)
    finally:
        holder.close()


@pytest.mark.parametrize(
    "exc, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/out/000001.tar.tmp"), "No space left on device writing"),
        (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
        (OSError(errno.EACCES, "Permission denied", "/out/x"), "Permission denied writing /out/x"),
        (RuntimeError("OSError: [Errno 28] No space left on device [while running 'Write shards']"), "No space"),
    ],
)
def test_storage_problems_become_one_line_with_the_resume_hint(exc, expected):
    line = cli.storage_problem(exc)
    assert line is not None and expected in line and "run the same command again" in line


def test_storage_problems_are_found_through_the_exception_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("the pipeline failed") from inner
    except RuntimeError as outer:
        assert "No space left on device" in cli.storage_problem(outer)


@pytest.mark.parametrize("exc", [ValueError("bad value"), OSError(errno.ECONNREFUSED, "refused"), KeyError("x")])
def test_other_errors_are_not_taken_for_storage_problems(exc):
    assert cli.storage_problem(exc) is None
