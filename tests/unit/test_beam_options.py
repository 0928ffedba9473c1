"""Beam's own flags reach Beam from the command line, checked; runners named by module path work."""

from __future__ import annotations

import sys
import textwrap

import pytest

from flamingo_corpus import cli
from flamingo_corpus.runners.options import RunnerOptionsError, check_beam_args, runner_args

RUNNER_MODULE = textwrap.dedent(
    """
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineRunner


    class TrialOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument("--trial_cluster", default=None)


    class TrialRunner(PipelineRunner):
        pass
    """
)


@pytest.fixture(scope="module")
def trial_runner(tmp_path_factory):
    """A runner whose options Beam learns only when its module is imported (as DaskRunner's)."""
    folder = tmp_path_factory.mktemp("runner")
    (folder / "flamingo_trial_runner.py").write_text(RUNNER_MODULE)
    sys.path.insert(0, str(folder))
    yield "flamingo_trial_runner.TrialRunner"
    sys.path.remove(str(folder))


def _parse(argv):
    args, rest = cli.parser().parse_known_args(argv)
    return args, rest


@pytest.mark.parametrize("form", [["--runner=DataflowRunner"], ["--runner", "DataflowRunner"]])
def test_runner_is_not_taken_for_runner_options(form):
    args, rest = _parse(["build", "manifests/laion2b-en.yaml", "--output", "gs://b/o", *form])
    assert args.runner_options is None
    assert rest == form
    assert check_beam_args(rest) == form


def test_no_option_of_the_cli_is_abbreviated():
    args, rest = _parse(["build", "r.yaml", "--output", "o", "--overwr"])
    assert not args.overwrite and rest == ["--overwr"]


def test_a_mistyped_beam_option_is_refused_with_a_suggestion():
    with pytest.raises(RunnerOptionsError, match="did you mean --direct_num_workers"):
        check_beam_args(["--direct_num_worker=2"])
    with pytest.raises(RunnerOptionsError, match="a value with no option"):
        check_beam_args(["stray"])


def test_a_bad_value_of_a_beam_option_is_refused():
    with pytest.raises(RunnerOptionsError, match="direct_running_mode"):
        check_beam_args(["--direct_running_mode=sideways"])


def test_a_runner_named_by_module_path_brings_its_options(trial_runner):
    if "flamingo_trial_runner" not in sys.modules:  # before its module is imported, Beam knows no such option
        with pytest.raises(RunnerOptionsError, match="trial_cluster"):
            check_beam_args(["--trial_cluster=c1"])
    args = [f"--runner={trial_runner}", "--trial_cluster=c1"]
    assert runner_args(None, args) == args


def test_a_runner_options_file_may_name_such_a_runner(trial_runner, tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text(f"runner: {trial_runner}\ntrial_cluster: c2\n")
    assert runner_args(str(path), []) == [f"--runner={trial_runner}", "--trial_cluster=c2"]


def test_unknown_and_unimportable_runners_are_one_clear_error():
    with pytest.raises(RunnerOptionsError, match="not a runner Beam knows"):
        check_beam_args(["--runner=NoSuchRunner"])
    with pytest.raises(RunnerOptionsError, match="cannot import no_such_package"):
        check_beam_args(["--runner=no_such_package.mod.Runner"])


def test_build_exits_2_with_one_line_for_a_mistyped_beam_option(tmp_path, capsys):
    code = cli.main(["build", "manifests/sample-laion.yaml", "--output", str(tmp_path / "o"), "--num_worker=2"])
    err = capsys.readouterr().err
    assert code == 2 and "--num_worker=2" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
