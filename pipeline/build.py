"""Running a build: recipe + output directory + Beam options -> tars, index, manifest, summary.

Builds are resumable.  At the start a build records its recipe digest and its input files (path
and size) in ``_build/state.json``; each shard gets a completion record once it is written whole
(pipeline/output/shard.py).  The same command started again on the output of a killed build finds the
same state and resumes: reading, downloading and processing run again (global ranks are known
only after filtering), but shards already complete are verified and kept instead of written
again, and the output ends byte-identical to an uninterrupted build's.  A different recipe or
different inputs is an error that suggests ``--overwrite``; a complete output (manifest present
and a quick verify passing) is reported as such and left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import logging
import os
import posixpath
import re
import time
from typing import List, Optional, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from .clip.model import check_clip, resolve_pretrained
from .errors import UserError
from .inputs import InputError, match_inputs, unfilled_placeholders
from .output.atomic import same_path
from .output.index import INDEX_DIR, WORK_DIR
from .output.manifest import MANIFEST, SIZES, BuildResult, collect, read_manifest, summary, write_manifest
from .output.shard import COMPLETE_DIR, TMP_SUFFIX
from .progress import ProgressReport
from .recipe import Recipe
from .runners.local import cpu_threads_per_worker, local_runner
from .runners.stop import BuildInterrupted, stoppable
from .store.blocks import StoreSpec, default_root, make_spec, report_path
from .store.fetch import hosts_path

log = logging.getLogger(__name__)

STATE = "state.json"  # under WORK_DIR: what the build is, so that a restart can tell it is the same one
STATE_VERSION = 1


class OutputExists(UserError, RuntimeError):
    pass


def count_parquet_rows(paths: Sequence[str], limit: Optional[int]) -> int:
    """Input rows from the parquet footers: what the index must account for.  A file whose
    footer cannot be read counts as one: the index holds one row for it (``<file>:*``,
    ``unreadable_input``), as its rows cannot be told apart."""
    total = 0
    for path in paths:
        try:
            with FileSystems.open(path) as f:
                n = pq.ParquetFile(f).metadata.num_rows
        except Exception:  # noqa: BLE001 - the pipeline reports it as one unreadable_input row
            total += 1
            continue
        total += min(n, limit) if limit is not None else n
    return total


def input_files(paths: Sequence[str]) -> List[dict]:
    """[{path, bytes}] of the inputs: a file replaced by one of another size is another input."""
    sizes = {m.path: m.size_in_bytes for r in FileSystems.match(list(paths)) for m in r.metadata_list}
    return [{"path": p, "bytes": sizes.get(p)} for p in paths]


def build_state(recipe: Recipe, inputs: Sequence[str]) -> dict:
    return {"version": STATE_VERSION, "recipe_sha256": recipe.digest(), "inputs": input_files(inputs)}


def _state_path(output_dir: str) -> str:
    return posixpath.join(output_dir, WORK_DIR, STATE)


def _read_state(output_dir: str) -> Optional[dict]:
    try:
        with FileSystems.open(_state_path(output_dir)) as f:
            return json.loads(f.read())
    except Exception:  # noqa: BLE001 - missing or cut short by a kill: no state
        return None


def _write_state(output_dir: str, state: dict) -> None:
    with FileSystems.create(_state_path(output_dir)) as f:
        f.write((json.dumps(state, indent=2, sort_keys=True) + "\n").encode())


def _matches(patterns: Sequence[str]) -> List[str]:
    return [m.path for r in FileSystems.match(list(patterns)) for m in r.metadata_list]


def _previous_outputs(output_dir: str) -> List[str]:
    patterns = ["*.tar", "*.tar" + TMP_SUFFIX, MANIFEST, SIZES, f"{INDEX_DIR}/*", f"{WORK_DIR}/*"]
    return _matches([posixpath.join(output_dir, p) for p in patterns])


def _differs(saved: dict, state: dict) -> Optional[str]:
    """What makes ``saved`` another build than ``state``, in words; None when it is the same."""
    if saved.get("recipe_sha256") != state["recipe_sha256"]:
        return (
            f"another recipe (sha256 {str(saved.get('recipe_sha256'))[:12]}, this one is {state['recipe_sha256'][:12]})"
        )
    if saved.get("inputs") != state["inputs"]:
        before = {i["path"]: i["bytes"] for i in saved.get("inputs") or []}
        now = {i["path"]: i["bytes"] for i in state["inputs"]}
        changed = sorted(set(before) ^ set(now)) + sorted(p for p in set(before) & set(now) if before[p] != now[p])
        return f"other input files ({len(changed)} differ, e.g. {changed[0] if changed else '?'})"
    return None


def _clear_for_resume(output_dir: str) -> None:
    """Remove what an interrupted run leaves that a resumed one writes anew: partial tars, the
    index, counts, Beam's temporary folders, a manifest cut short.  Kept: the finished tars, their
    completion records and the state."""
    keep = {_state_path(output_dir)}
    records = posixpath.join(output_dir, WORK_DIR, COMPLETE_DIR) + "/"
    stale = [
        p for p in _matches([posixpath.join(output_dir, WORK_DIR, "*")]) if p not in keep and not p.startswith(records)
    ]
    stale += _matches([posixpath.join(output_dir, p) for p in ("*.tar" + TMP_SUFFIX, MANIFEST, SIZES)])
    index = posixpath.join(output_dir, INDEX_DIR)
    if FileSystems.exists(index):
        stale.append(index)
    if stale:
        log.info("resuming: removing %d files of the interrupted run (partial tars, index, counts)", len(stale))
        FileSystems.delete(stale)


_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHARD_FILE = re.compile(r"\d+\.tar|\d+(-[0-9a-f]{8})?\.tar" + re.escape(TMP_SUFFIX))  # shard.tmp_tar_path
_INDEX_FILE = re.compile(r"index-\d+-of-\d+\.parquet|beam-temp-.*")


def is_our_manifest(manifest: object) -> bool:
    """True for a manifest.json a build of this tool wrote (its shape, not just its name)."""
    return (
        isinstance(manifest, dict)
        and {"code_version", "recipe_sha256", "recipe", "unit", "shards", "totals"} <= set(manifest)
        and isinstance(manifest["recipe_sha256"], str)
        and bool(_SHA256.fullmatch(manifest["recipe_sha256"]))
        and isinstance(manifest["shards"], list)
    )


def _is_our_state(state: object) -> bool:
    return (
        isinstance(state, dict)
        and state.get("version") == STATE_VERSION
        and isinstance(state.get("recipe_sha256"), str)
        and bool(_SHA256.fullmatch(state["recipe_sha256"]))
    )


def _ours_and_foreign(output_dir: str, files: Sequence[str]) -> tuple:
    """(the files a build of this tool wrote, the others) among ``files`` of ``output_dir``.
    Nothing is ours unless the folder holds our manifest or our build state; then ours are the
    names a build writes: manifest.json, sizes.json, NNNNNN.tar, index/index-*.parquet, _build/."""
    if not (is_our_manifest(read_manifest(output_dir)) or _is_our_state(_read_state(output_dir))):
        return [], list(files)
    ours, foreign = [], []
    for path in files:
        rel = path[len(output_dir) :].lstrip("/")
        head, _, rest = rel.partition("/")
        mine = (
            rel in (MANIFEST, SIZES)
            or head == WORK_DIR
            or (head == INDEX_DIR and bool(_INDEX_FILE.fullmatch(rest.split("/")[0])))
            or (not rest and bool(_SHARD_FILE.fullmatch(rel)))
        )
        (ours if mine else foreign).append(path)
    return ours, foreign


def _names(output_dir: str, paths: Sequence[str], n: int = 4) -> str:
    shown = [p[len(output_dir) :].lstrip("/") for p in sorted(paths)[:n]]
    return ", ".join(shown) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def check_output_is_not_input(output_dir: str, inputs: Sequence[str]) -> None:
    """An output folder that is an input file, or holds one, is refused: a build writes and
    (with --overwrite, or resuming) removes files there."""
    local = "://" not in output_dir
    out = os.path.realpath(output_dir) if local else output_dir.rstrip("/")
    for path in inputs:
        if same_path(path, output_dir):
            raise OutputExists(f"--output {output_dir} is an input file of the recipe; choose an output folder")
        if local != ("://" not in path):
            continue
        where = os.path.realpath(path) if local else path
        if where.startswith(out.rstrip("/") + "/"):
            raise OutputExists(
                f"--output {output_dir} holds the recipe's input {path}; choose an output folder of its own"
            )


def prepare_output(output_dir: str, overwrite: bool, state: Optional[dict] = None) -> str:
    """Make ``output_dir`` ready and say how to go on: "fresh", "resume" or "complete".

    ``state`` (see ``build_state``) is what this build is; without it an existing output is only
    replaced (``overwrite``) or refused, as before builds could resume.
    """
    if "://" not in output_dir and FileSystems.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputExists(f"--output {output_dir} is a file, not a folder")
    old = _previous_outputs(output_dir)
    if old and not overwrite:
        if state is None:
            raise OutputExists(f"{output_dir} already holds a build ({len(old)} files); pass --overwrite to replace it")
        mode = _resume_or_complete(output_dir, state, len(old))
        if mode == "resume":
            _clear_for_resume(output_dir)
        return mode
    if old:
        ours, foreign = _ours_and_foreign(output_dir, old)
        if foreign:
            raise OutputExists(
                f"{output_dir} holds files no flamingo-corpus build wrote ({_names(output_dir, foreign)}); "
                "--overwrite removes only a build of this tool: move them away or choose another output folder"
            )
        FileSystems.delete(ours)
        work = posixpath.join(output_dir, WORK_DIR)
        if FileSystems.exists(work):  # its folders too: shard records, the default image store
            FileSystems.delete([work])
    if "://" not in output_dir and not FileSystems.exists(output_dir):
        FileSystems.mkdirs(output_dir)
    if state is not None:
        _write_state(output_dir, state)
    return "fresh"


def _resume_or_complete(output_dir: str, state: dict, n_old: int) -> str:
    from .output.verify import verify

    manifest = read_manifest(output_dir)
    saved = _read_state(output_dir)
    _, foreign = _ours_and_foreign(output_dir, _previous_outputs(output_dir))
    if foreign:
        raise OutputExists(
            f"{output_dir} holds files no flamingo-corpus build wrote ({_names(output_dir, foreign)}); "
            "choose another output folder"
        )
    if manifest is not None:
        done = {"recipe_sha256": manifest.get("recipe_sha256"), "inputs": manifest.get("inputs")}
        why = _differs(done, state)
        if why is None:
            report = verify(output_dir, quick=True)
            if report.ok:
                return "complete"
            if saved is None:
                raise OutputExists(
                    f"{output_dir} holds a build of this recipe that does not verify "
                    f"({report.problems[0]}); pass --overwrite to build it again"
                )
        elif saved is None or _differs(saved, state):
            raise OutputExists(
                f"{output_dir} holds a complete build of {why}; "
                "pass --overwrite to replace it, or choose another output directory"
            )
    if saved is None:
        raise OutputExists(
            f"{output_dir} already holds files ({n_old}) but no state of an interrupted build "
            "to resume; pass --overwrite to replace them"
        )
    why = _differs(saved, state)
    if why is not None:
        raise OutputExists(
            f"{output_dir} holds an interrupted build of {why}; the same command resumes it, "
            "--overwrite starts this one from nothing"
        )
    return "resume"


def open_build_store(
    recipe: Recipe, inputs: Sequence[str], output_dir: str, store: Optional[str], retry_failed: bool
) -> StoreSpec:
    """The image store of this build, ready: ``store`` or ``<output>/_build/store``.  When its
    download or image settings are new to a store that holds others, says which differ: those
    rows are fetched again."""
    root = store.rstrip("/") if store else default_root(output_dir)
    spec, changed = make_spec(recipe, inputs, root, retry_failed=retry_failed, report=report_path(output_dir))
    if changed:
        log.warning(
            "the image store %s holds images of other download or image settings (%s%s): they are not used; "
            "this build fetches its images again into %s",
            root,
            "; ".join(changed[:6]),
            f" and {len(changed) - 6} more" if len(changed) > 6 else "",
            spec.dir,
        )
    log.info("image store %s (%s)%s", spec.dir, spec.run, ", retrying transient failures" if retry_failed else "")
    return spec


def read_store_figures(output_dir: str, spec: StoreSpec) -> dict:
    """This run's store figures (``_build/store.json``, written by the fetch stage), with where."""
    figures = {
        "root": spec.root,
        "digest": spec.digest[:16],
        "run": spec.run,
        "retry_failed": spec.retry_failed,
        "outlives": spec.root != default_root(output_dir),
    }
    try:
        with FileSystems.open(report_path(output_dir)) as f:
            figures.update(json.loads(f.read()))
    except Exception:  # noqa: BLE001 - no row reached the fetch: no figures
        pass
    return figures


def read_host_figures(output_dir: str) -> Optional[dict]:
    """This run's per-host figures (``_build/hosts.json``, written by the fetch stage), None when
    nothing was fetched."""
    try:
        with FileSystems.open(hosts_path(report_path(output_dir))) as f:
            return json.loads(f.read())
    except Exception:  # noqa: BLE001 - no row reached the fetch: no figures
        return None


def _remove_stale_tars(output_dir: str, shards: List[dict]) -> None:
    """Tars of an interrupted run beyond this run's shards (it kept fewer samples: the web
    changed in between) would be taken for part of the build; they go."""
    names = {s["name"] for s in shards}
    stale = [p for p in _matches([posixpath.join(output_dir, "*.tar")]) if posixpath.basename(p) not in names]
    if stale:
        log.warning("removing %d tars of the interrupted run that this run does not have", len(stale))
        FileSystems.delete(stale)


def _remove_index_temp(output_dir: str) -> None:
    """Beam's temporary folder of the index write, left by a finalisation that ran again (a
    retried bundle): Beam's sink finds every file renamed already and leaves the (empty) folder.
    After a build that finished, nothing in it is part of the output."""
    pattern = posixpath.join(output_dir, INDEX_DIR, "beam-temp-*")
    # a local folder stays when empty; elsewhere (object stores) what is left are files
    stale = glob.glob(pattern) if "://" not in output_dir else _matches([pattern + "/*"])
    if stale:
        log.info("removing %d temporary folders of the index write", len(stale))
        FileSystems.delete(stale)


@contextlib.contextmanager
def sample_web_for(recipe: Recipe):
    """The embedded loopback web server, when the recipe asks for it (sample builds)."""
    if not recipe.sample_web.enabled:
        yield None
        return
    from .sample.web import SampleWeb

    with SampleWeb(recipe.sample_web.root, port=recipe.sample_web.port) as web:
        log.info("sample web serving %s at %s", recipe.sample_web.root, web.url)
        yield web


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    opts = PipelineOptions(list(beam_args))
    opts.view_as(beam.options.pipeline_options.SetupOptions).save_main_session = False
    return opts


def with_cpu_threads(recipe: Recipe, options: PipelineOptions) -> Recipe:
    """The recipe with ``clip.cpu_threads`` filled in for a local run when it names none: the
    machine's cores shared out among the local workers (torch's default, a thread per core in
    every worker, ran 2 worker processes 1.5-3x slower on 2 cores).  Not part of the recipe's
    hash: it changes how fast the build goes, not what it writes."""
    threads = cpu_threads_per_worker(options)
    if not recipe.clip.enabled or recipe.clip.cpu_threads is not None or threads is None:
        return recipe
    return dataclasses.replace(recipe, clip=dataclasses.replace(recipe.clip, cpu_threads=threads))


def run_build(
    recipe: Recipe,
    output_dir: str,
    beam_args: Sequence[str] = (),
    overwrite: bool = False,
    *,
    store: Optional[str] = None,
    retry_failed: bool = False,
) -> BuildResult:
    """Build ``recipe`` into ``output_dir``: from nothing, resuming an interrupted run of the
    same build, or not at all when the output is complete (the result says which).

    Images are fetched through the image store ``store`` (default ``<output>/_build/store``,
    removed with ``_build/`` when the build is complete): rows it holds are taken from it, the
    others downloaded and added to it.  ``retry_failed`` fetches again the rows it holds as
    transient failures (timeouts, 429, 5xx, resets)."""
    output_dir = output_dir.rstrip("/")
    placeholders = unfilled_placeholders(recipe)
    if placeholders:
        raise InputError(
            f"the recipe still holds the shipped placeholder{'s' if len(placeholders) > 1 else ''} "
            f"{'; '.join(placeholders)}: put your own location there (a local path or a gs://, s3:// or hdfs:// URL)"
        )
    inputs = match_inputs(recipe.input.path)
    check_output_is_not_input(output_dir, inputs)
    if recipe.input.corpus == "laion":
        from .laion.pipeline import build_laion as build

        rows_in, kind = count_parquet_rows(inputs, recipe.input.limit), "row"
    else:
        from .mmc4.pipeline import build_mmc4 as build

        rows_in, kind = None, "document"  # counting lines would read every shard twice
    state = build_state(recipe, inputs)
    mode = prepare_output(output_dir, overwrite, state)
    if mode == "complete":
        log.info("%s is complete already (recipe %s); nothing to do", output_dir, state["recipe_sha256"][:12])
        work = posixpath.join(output_dir, WORK_DIR)
        if FileSystems.exists(work):  # a kill between the manifest and the clean-up left it
            FileSystems.delete([work])
        return BuildResult.from_manifest(output_dir, recipe, read_manifest(output_dir))
    if recipe.clip.enabled:
        check_clip(recipe.clip)  # an unknown model or a bad checkpoint: one line here, not a failure per worker
        resolve_pretrained(recipe.clip)  # builds the tiny synthetic-world CLIP here, not in every worker
    spec = open_build_store(recipe, inputs, output_dir, store, retry_failed)
    build = functools.partial(build, store=spec)
    log.info(
        "%s %s: %d input files -> %s",
        "resuming" if mode == "resume" else "building",
        recipe.name,
        len(inputs),
        output_dir,
    )
    start = time.monotonic()
    report = ProgressReport(rows_in, unit=f"{kind}s")
    stopping: List[int] = []
    try:
        with stoppable() as stopping, sample_web_for(recipe), report:
            options = pipeline_options(beam_args)
            with beam.Pipeline(runner=local_runner(options), options=options) as p:
                build(p, with_cpu_threads(recipe, options), inputs, output_dir)
    except BuildInterrupted as e:
        e.progress = report.line(report.final)
        raise
    except Exception:
        if not stopping:
            raise
        # Beam handed the stop on inside its own exception: it is a stop all the same
        stopped = BuildInterrupted(stopping[0])
        stopped.progress = report.line(report.final)
        raise stopped from None
    _remove_index_temp(output_dir)
    result = collect(
        output_dir,
        recipe,
        rows_in,
        time.monotonic() - start,
        kind=kind,
        inputs=state["inputs"],
        resumed=mode == "resume",
    )
    result.store = read_store_figures(output_dir, spec)
    result.hosts = read_host_figures(output_dir)
    if result.resumed:
        log.info("resumed: %d of %d shards were complete and kept", result.shards_skipped, len(result.shards))
    _remove_stale_tars(output_dir, result.shards)
    write_manifest(result)
    return result


__all__ = ["run_build", "summary", "OutputExists"]
