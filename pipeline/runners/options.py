"""Runner option files: the Beam pipeline options of a runner, kept as YAML beside the recipes.

Running on Dataflow, Spark or Flink takes a dozen long flags (project, region, temp location,
worker container, machine type, accelerator, job server, environment).  Typed on a command line
they drift between runs and are never reviewed; ``manifests/runners/*.yaml`` keeps them as files.
A file is a mapping from Beam option name (as on the command line, without the dashes) to a
value::

    runner: DataflowRunner
    machine_type: a3-highgpu-1g
    dataflow_service_options:
      - worker_accelerator=type:nvidia-h100-80gb;count:1;install-nvidia-driver

``flamingo-corpus build RECIPE --runner-options FILE [Beam options...]`` turns the file into Beam
arguments and lets the command line win: an option given on both is the command line's, and
for the list options (``experiments``, ``dataflow_service_options``, ...) an entry of the command
line replaces the file's entry of the same name (the part before ``=``) and the others stay.

Checks are strict, as for recipes: an option name Beam does not know is an error naming the file
and the closest known names (Beam itself only logs "Discarding unparseable args" and runs on
without it, which on a cluster means a default machine or no GPU); so is a value Beam rejects
(a choice not offered, a number that is not one).  Values still holding the shipped placeholders
(``YOUR-PROJECT``, ``YOUR-BUCKET``, ...) are refused when a build starts, unless the command line
replaces them.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from ..errors import UserError
from ..paths import CHECKOUT_MANIFESTS

RUNNERS_DIR = CHECKOUT_MANIFESTS / "runners"
# The shipped files name what a user must fill in with this marker (YOUR-PROJECT, YOUR-BUCKET).
PLACEHOLDER = re.compile(r"YOUR-[A-Z]+")


class RunnerOptionsError(UserError, ValueError):
    """A runner option file that cannot be used: unknown option, bad value, placeholder left."""


class _RaisingParser(argparse.ArgumentParser):
    """argparse exits the process on a bad value; a build wants an error it can report."""

    def error(self, message):
        raise RunnerOptionsError(message)


def beam_parser() -> argparse.ArgumentParser:
    """A parser that knows every Beam pipeline option: the one Beam builds itself in
    ``PipelineOptions.get_all_options`` (each options class adds its arguments), raising instead
    of exiting.  Beam's own parser class is needed for its ``add_value_provider_argument``."""
    import apache_beam  # noqa: F401 - imports every options class (runners, I/O) Beam registers
    from apache_beam.options import pipeline_options as po

    class Parser(_RaisingParser, po._BeamArgumentParser):  # noqa: SLF001 - Beam's parser type
        pass

    parser = Parser(allow_abbrev=False)
    seen = {}
    for cls in po.PipelineOptions.__subclasses__():
        seen.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - how Beam itself collects them
    return parser


def _actions(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    # argparse has no public lookup from option string to action; this map has been stable since
    # argparse was written and is what parse_args itself uses.
    return parser._option_string_actions  # noqa: SLF001


def _is_list(action: argparse.Action) -> bool:
    """Options given several times that collect a list (experiments, dataflow_service_options,
    environment_options, labels, resource_hints)."""
    return isinstance(action, argparse._AppendAction) or type(action).__name__ == "_CommaSeparatedListAction"


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0


def _entry_name(value: str) -> str:
    """What names an entry of a list option: ``worker_accelerator`` in
    ``worker_accelerator=type:...``, the whole entry where there is no ``=``."""
    return value.split("=", 1)[0]


@dataclass(frozen=True)
class _Arg:
    """One option of an argument list: its tokens as given, and what it sets."""

    tokens: Tuple[str, ...]
    dest: Optional[str] = None  # None: not a Beam option (kept as it is; Beam warns about it)
    value: Optional[str] = None
    is_list: bool = False


def _split(args: Sequence[str], parser: argparse.ArgumentParser) -> List[_Arg]:
    actions = _actions(parser)
    out, i = [], 0
    while i < len(args):
        token = args[i]
        name, eq, value = token.partition("=")
        action = actions.get(name) if token.startswith("-") else None
        if action is None:
            out.append(_Arg((token,)))
            i += 1
            continue
        tokens = (token,)
        if not eq and not _is_flag(action) and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, tokens = args[i + 1], (token, args[i + 1])
        out.append(_Arg(tokens, action.dest, value if (eq or len(tokens) == 2) else None, _is_list(action)))
        i += len(tokens)
    return out


def merge_args(
    base: Sequence[str], override: Sequence[str], parser: Optional[argparse.ArgumentParser] = None
) -> List[str]:
    """``base`` (an option file's arguments) with ``override`` (the command line's) winning."""
    parser = parser or beam_parser()
    over = _split(override, parser)
    single = {a.dest for a in over if a.dest and not a.is_list}
    entries = {(a.dest, _entry_name(v)) for a in over if a.is_list and a.value is not None for v in a.value.split(",")}
    kept = []
    for a in _split(base, parser):
        if a.dest in single:
            continue
        if a.is_list and a.value is not None and (a.dest, _entry_name(a.value)) in entries:
            continue
        kept.append(a)
    return [t for a in kept + over for t in a.tokens]


def resolve_path(name_or_path: str) -> Path:
    """A file path, or the name of a shipped file (``dataflow-gpu`` for
    manifests/runners/dataflow-gpu.yaml)."""
    path = Path(name_or_path)
    if not path.exists() and "/" not in name_or_path:
        shipped = RUNNERS_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
        if shipped.exists():
            return shipped
    return path


def _value_tokens(
    option: str, value, action: argparse.Action, actions: Dict[str, argparse.Action], where: str
) -> List[str]:
    """The command-line tokens of one file entry."""
    if value is None:  # written out to show the option; leaves Beam's default
        return []
    if _is_flag(action):
        if not isinstance(value, bool):
            raise RunnerOptionsError(f"{where}: {option} is a switch: write true or false, not {value!r}")
        if value:
            return [f"--{option}"]
        # false: the switch of the other sense where Beam has one (use_public_ips: false gives
        # --no_use_public_ips), else nothing, which is Beam's default
        return [o for o, a in actions.items() if a.dest == action.dest and _is_flag(a) and a.const != action.const][:1]
    if isinstance(value, dict):
        raise RunnerOptionsError(f"{where}: {option} takes a value or a list, not a mapping")
    values = value if isinstance(value, list) else [value]
    if len(values) != 1 and not _is_list(action):
        raise RunnerOptionsError(f"{where}: {option} takes one value, not a list")
    tokens = []
    for v in values:
        if isinstance(v, bool) or isinstance(v, (dict, list)) or v is None:
            raise RunnerOptionsError(
                f"{where}: {option}: {v!r} is not a value Beam takes; quote it as a string if that is what you mean"
            )
        tokens.append(f"--{option}={v}")
    return tokens


def load_runner_options(name_or_path: str, parser: Optional[argparse.ArgumentParser] = None) -> List[str]:
    """The option file as Beam command-line arguments, checked: every name is a Beam option and
    Beam accepts every value."""
    path = resolve_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise RunnerOptionsError(f"cannot read runner options {path}: {e}") from e
    except yaml.YAMLError as e:
        raise RunnerOptionsError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return []
    if not isinstance(data, dict):
        raise RunnerOptionsError(f"{path}: expected a mapping of Beam option names to values")
    if isinstance(data.get("runner"), str):  # its options are known once its module is imported
        try:
            import_runner([f"--runner={data['runner']}"])
        except RunnerOptionsError as e:
            raise RunnerOptionsError(f"{path}: {e}") from e
        parser = beam_parser()
    parser = parser or beam_parser()
    actions = _actions(parser)
    names = sorted(o[2:] for o in actions if o.startswith("--"))
    args: List[str] = []
    for option, value in data.items():
        action = actions.get(f"--{option}") if isinstance(option, str) else None
        if action is None:
            close = difflib.get_close_matches(str(option), names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RunnerOptionsError(f"{path}: unknown Beam pipeline option {option!r}{hint}")
        args += _value_tokens(option, value, action, actions, str(path))
    try:
        parser.parse_args(args)
    except RunnerOptionsError as e:
        raise RunnerOptionsError(f"{path}: {e}") from e
    return args


def placeholders(args: Sequence[str]) -> List[str]:
    """The arguments still holding a shipped placeholder."""
    return [a for a in args if PLACEHOLDER.search(a)]


def _runner_named(args: Sequence[str]) -> Optional[str]:
    """The value of the last ``--runner`` in an argument list (``--runner=X`` or ``--runner X``)."""
    runner = None
    for i, token in enumerate(args):
        if token.startswith("--runner="):
            runner = token.split("=", 1)[1]
        elif token == "--runner" and i + 1 < len(args):
            runner = args[i + 1]
    return runner


def import_runner(args: Sequence[str]) -> None:
    """Import the module of the runner ``args`` name, so that the options it defines (Beam adds a
    runner's options class when its module is imported: DaskRunner's, any runner named by its
    module path) are known before the arguments are checked."""
    from apache_beam.runners.runner import _RUNNER_MAP  # noqa: SLF001 - the names create_runner knows

    runner = _runner_named(args)
    if not runner:
        return
    path = _RUNNER_MAP.get(runner.lower()) or _RUNNER_MAP.get(runner.lower() + "runner")
    if path is None and "." not in runner:
        known = sorted({p.rsplit(".", 1)[1] for p in _RUNNER_MAP.values()})
        raise RunnerOptionsError(
            f"--runner {runner}: not a runner Beam knows ({', '.join(known)}); name any other runner by its "
            "module path, e.g. --runner=apache_beam.runners.dask.dask_runner.DaskRunner"
        )
    module, _, name = (path or runner).rpartition(".")
    try:
        loaded = importlib.import_module(module)
    except ImportError as e:
        raise RunnerOptionsError(f"--runner {runner}: cannot import {module} ({e}); is its package installed?") from e
    if not hasattr(loaded, name):
        raise RunnerOptionsError(f"--runner {runner}: {module} has no {name}")


def check_beam_args(args: Sequence[str], parser: Optional[argparse.ArgumentParser] = None) -> List[str]:
    """``args`` as they are, once every one is a Beam pipeline option with a value Beam accepts.
    Beam itself only logs an option it does not know and runs without it: a mistyped
    ``--direct_num_worker=8`` would quietly build in one process."""
    import_runner(args)
    parser = parser or beam_parser()
    try:
        _, unknown = parser.parse_known_args(list(args))
    except RunnerOptionsError as e:
        raise RunnerOptionsError(f"Beam option: {e}") from e
    if unknown:
        names = sorted(o for o in _actions(parser) if o.startswith("--"))
        problems = []
        for token in unknown:
            if not token.startswith("-"):
                problems.append(f"{token!r} (a value with no option before it)")
                continue
            close = difflib.get_close_matches(token.split("=", 1)[0], names, n=3, cutoff=0.6)
            problems.append(repr(token) + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise RunnerOptionsError("not an option of this command nor a Beam pipeline option: " + "; ".join(problems))
    return list(args)


def runner_args(options_file: Optional[str], cli_args: Sequence[str], check_placeholders: bool = True) -> List[str]:
    """The Beam arguments of a build: the option file's, with the command line's winning, each
    checked (``check_beam_args``).  Without a file, the command line's."""
    if not options_file:
        return check_beam_args(cli_args)
    file_args = load_runner_options(options_file)
    import_runner(list(cli_args))
    parser = beam_parser()  # knows the options of the runners the file and the command line name
    args = check_beam_args(merge_args(file_args, cli_args, parser), parser)
    left = placeholders(args) if check_placeholders else []
    if left:
        raise RunnerOptionsError(
            f"{resolve_path(options_file)}: fill in the placeholders ({', '.join(left)}) in the file "
            "or give those options on the command line"
        )
    return args


def _local(path: Optional[str]) -> bool:
    return bool(path) and "://" not in path


def local_paths(recipe, output_dir: str) -> List[str]:
    """The files a build reads or writes that are local paths (``what: path``).  Workers of a
    cluster read the recipe's files (input, removal list, eval index, NSFW head, language model,
    CLIP checkpoint) themselves, in pipeline steps or DoFn setup, so such a path names a file on
    the launching machine that no worker has."""
    clip = recipe.clip
    checkpoint = (
        clip.pretrained if clip.pretrained and ("/" in clip.pretrained or clip.pretrained.startswith(".")) else None
    )
    named = [
        ("--output", output_dir),
        ("input.path", recipe.input.path),
        ("safety.blocklist", recipe.safety.blocklist),
        ("safety.nsfw_head", recipe.safety.nsfw_head),
        ("decontamination.index", recipe.decontamination.index),
        ("filters.language.model_path", recipe.filters.language.model_path),
        ("clip.pretrained", checkpoint if clip.enabled else None),
        ("clip.model_config", clip.model_config if clip.enabled else None),
    ]
    return [f"{what}: {path}" for what, path in named if _local(path)]


def check_cluster_paths(recipe, output_dir: str, args: Sequence[str]) -> None:
    """On Dataflow, whose workers are always other machines, a local path is an error before the
    job starts (rather than a worker failing on a missing file an hour in)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(list(args)).view_as(StandardOptions).runner or ""
    if "dataflow" not in runner.lower():
        return
    local = local_paths(recipe, output_dir)
    if local:
        raise RunnerOptionsError(
            f"{runner} workers cannot read local paths; put these on gs:// (or another "
            f"filesystem the workers reach): {'; '.join(local)}"
        )


__all__ = [
    "RunnerOptionsError",
    "beam_parser",
    "check_beam_args",
    "check_cluster_paths",
    "import_runner",
    "load_runner_options",
    "local_paths",
    "merge_args",
    "runner_args",
    "placeholders",
    "resolve_path",
    "RUNNERS_DIR",
]
