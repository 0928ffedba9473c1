"""flamingo-corpus: build OpenFlamingo training corpora from LAION and MMC4 metadata."""

from __future__ import annotations

import argparse
import errno
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from .errors import UserError
from .logs import configure as configure_logging
from .paths import CHECKOUT_MANIFESTS
from .recipe import RecipeError, load_recipe
from .runners.stop import BuildInterrupted

REPO_MANIFESTS = CHECKOUT_MANIFESTS
SAMPLE_RECIPES = [REPO_MANIFESTS / "sample-laion.yaml", REPO_MANIFESTS / "sample-mmc4.yaml"]

RUNNER_OPTIONS_HELP = (
    "Beam pipeline options from a YAML file, e.g. manifests/runners/dataflow-gpu.yaml, or the "
    "name of one there (dataflow-gpu); Beam options on the command line win over the file's"
)

EPILOG_BUILD = """\
Any further arguments are Beam pipeline options, for example:
  --direct_running_mode=multi_processing --direct_num_workers=2   (local, one process per core)
  --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
  --runner=SparkRunner / --runner=FlinkRunner (portable runners)
or keep them in a file: --runner-options dataflow-gpu (manifests/runners/*.yaml; see
docs/scale.md).
"""


def _cmd_build(args, beam_args: List[str]) -> int:
    from .build import OutputExists, run_build, summary
    from .runners.options import RunnerOptionsError, check_cluster_paths, runner_args

    try:
        recipe = load_recipe(args.recipe)
        beam_args = runner_args(args.runner_options, beam_args)
        check_cluster_paths(recipe, args.output, beam_args)
        result = run_build(
            recipe, args.output, beam_args, overwrite=args.overwrite, store=args.store, retry_failed=args.retry_failed
        )
    except (RecipeError, RunnerOptionsError, OutputExists, FileNotFoundError) as e:
        print(f"flamingo-corpus: {e}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


def _cmd_sample(args, beam_args: List[str]) -> int:
    from .build import run_build, summary
    from .runners.options import RunnerOptionsError, runner_args

    try:
        beam_args = runner_args(args.runner_options, beam_args)
    except RunnerOptionsError as e:
        print(f"flamingo-corpus: {e}", file=sys.stderr)
        return 2
    for path in args.recipe or SAMPLE_RECIPES:
        recipe = load_recipe(path)
        out = str(Path(args.output) / recipe.input.corpus)
        result = run_build(recipe, out, beam_args, overwrite=True)
        print(summary(result), flush=True)
    return 0


def _cmd_verify(args, beam_args: List[str]) -> int:
    from .output.verify import verify
    from .store.check import check_store, is_store

    if is_store(args.output_dir):  # an image store (--store): every block read and checked
        store_report = check_store(args.output_dir)
        print(store_report)
        return 0 if store_report.ok else 1
    report = verify(args.output_dir)  # never raises: a damaged output is a report of problems
    if not report.found:
        print(f"flamingo-corpus: {report.problems[0]}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


def _cmd_why(args, beam_args: List[str]) -> int:
    from .output.why import WhyError, explain

    try:
        text = explain(args.output_dir, args.query)
    except WhyError as e:
        print(f"flamingo-corpus: {e}", file=sys.stderr)
        return 2
    if text is None:
        print(
            f"flamingo-corpus: no row, document, image, URL or key {args.query!r} in {args.output_dir}", file=sys.stderr
        )
        return 1
    print(text)
    return 0


def _cmd_tiny_clip(args, beam_args: List[str]) -> int:
    from .sample.tiny_clip import ensure_tiny_clip, metrics_path

    path = ensure_tiny_clip(Path(args.cache_dir) if args.cache_dir else None)
    print(path)
    print(metrics_path(path).read_text())
    return 0


def _cmd_realign(args, beam_args: List[str]) -> int:
    from .mmc4.realign import realign_file
    from .output.atomic import OutputIsInput

    def report(line: int, error: str) -> None:
        print(f"{args.input}:{line}: {error}", file=sys.stderr)

    try:
        stats = realign_file(args.input, args.output, args.leftover, on_invalid=report)
    except (OSError, OutputIsInput) as e:
        print(f"flamingo-corpus: {e}", file=sys.stderr)
        return 2
    print(stats.summary())
    return 0


def _cmd_index_eval(args, beam_args: List[str]) -> int:
    from .safety.eval_index import EvalIndexError, build_index, parse_named

    def report(path: str, why: str) -> None:
        print(f"{path}: unreadable, left out: {why}", file=sys.stderr)

    try:
        recipe = load_recipe(args.recipe) if args.recipe else None
        result = build_index(
            [parse_named(d) for d in args.folders],
            [parse_named(c) for c in args.captions or []],
            args.output,
            recipe,
            on_unreadable=report,
        )
    except (RecipeError, EvalIndexError, OSError) as e:
        print(f"flamingo-corpus: {e}", file=sys.stderr)
        return 2
    print(result)
    return 0


def _cmd_plan(args, beam_args: List[str]) -> int:
    import json

    from .runners.plan import Cluster, PlanError, format_plan, load_table, make_plan

    assumed = args.gpus_per_worker is None  # not given: one GPU per worker, said so below
    gpus = 1 if assumed else args.gpus_per_worker
    try:
        table = load_table(args.table)
        recipe = load_recipe(args.recipe)

        def plan_for(gpus_per_worker: int):
            return make_plan(
                recipe,
                args.rows,
                Cluster(args.workers, args.cores_per_worker, gpus_per_worker, args.gpu),
                table,
                images_per_document=args.images_per_document,
                mean_image_bytes=args.mean_image_bytes,
            )

        plan = plan_for(gpus)
        cpu_only = plan_for(0) if gpus and plan.bound == "gpu" else None
    except (RecipeError, PlanError, OSError, ValueError) as e:
        print(f"flamingo-corpus: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    if assumed and gpus:
        print(f"assuming {gpus} GPU ({args.gpu}) per worker: give --gpus-per-worker (0 for CPUs only) to change it\n")
    print(format_plan(plan))
    if cpu_only is not None:
        print(
            f"\nwarning: this plan is GPU-bound: without its {plan.cluster.gpus:,} GPUs, CLIP on the CPUs alone "
            f"would take {cpu_only.wall_hours:,.1f} hours of wall-clock instead of {plan.wall_hours:,.1f}"
        )
    return 0


def _cmd_stats(args, beam_args: List[str]) -> int:
    from .stats.compute import StatsError
    from .stats.report import write_report
    from .store.check import check_store, is_store, write_store_report

    if is_store(args.output_dir):  # an image store: its rows, images and drop reasons
        store_report = check_store(args.output_dir)
        write_store_report(store_report, args.output)
        print(f"wrote {args.output}")
        print(store_report)
        return 0
    try:
        head = write_report(args.output_dir, args.output, samples=args.samples, png_dir=args.png_dir)
    except (StatsError, OSError) as e:
        print(f"flamingo-corpus: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}" + (f" and the figures under {args.png_dir}" if args.png_dir else ""))
    for name, value in head.items():
        print(f"  {name:<20}{value:>14,}")
    return 0


def _count(text: str) -> int:
    from .runners.plan import parse_count

    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _sub(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, allow_abbrev=False, **kwargs)


def parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: --runner must reach Beam, not be taken for --runner-options
    ap = argparse.ArgumentParser(prog="flamingo-corpus", description=__doc__, allow_abbrev=False)
    loudness = ap.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: our debug lines and the libraries' info; -vv: all"
    )
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings, errors and the final summary only")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = _sub(
        sub,
        "build",
        help="run a build recipe",
        epilog=EPILOG_BUILD,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read the recipe's input, download, filter, score and shard it into DIR.",
    )
    b.add_argument("recipe", help="recipe YAML, e.g. manifests/laion2b-en.yaml")
    b.add_argument("--output", required=True, help="output directory (local path or gs://, s3://, hdfs:// URL)")
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what DIR holds and build from nothing (without it, the same command "
        "resumes an interrupted build in DIR, and a complete one is left as it is)",
    )
    b.add_argument(
        "--store",
        metavar="URL",
        help="the image store: a folder (local or gs://, s3://, hdfs://) that keeps every fetched row's processed "
        "image or drop, per input block, and outlives the build; builds that share it download a row once. "
        "Default: OUTPUT/_build/store, removed once the build is complete (docs/output.md, 'The image store')",
    )
    b.add_argument(
        "--retry-failed",
        action="store_true",
        help="fetch again the rows the --store holds as transient failures (timeouts, 429, 5xx, resets, DNS "
        "timeouts); every other row is taken from the store",
    )
    b.add_argument("--runner-options", metavar="FILE", help=RUNNER_OPTIONS_HELP)
    b.set_defaults(func=_cmd_build)

    s = _sub(
        sub,
        "sample",
        help="the local sample build (embedded web server, tiny CLIP)",
        epilog=EPILOG_BUILD,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build the bundled samples into OUTPUT/<corpus>, replacing earlier ones.",
    )
    s.add_argument(
        "--recipe",
        action="append",
        help="a sample recipe; repeatable (default: manifests/sample-laion.yaml and sample-mmc4.yaml)",
    )
    s.add_argument("--output", default="out/sample", help="output root (default: %(default)s)")
    s.add_argument("--runner-options", metavar="FILE", help=RUNNER_OPTIONS_HELP)
    s.set_defaults(func=_cmd_sample)

    v = _sub(
        sub,
        "verify",
        help="check a build's output against its manifest and the tar contract",
        description="Check DIR against its manifest and the output contract (docs/output.md, "
        "'What verify checks'): every shard opens to its end, matches its manifest size and "
        "sha256 and holds only the members the contract allows; manifest.json, sizes.json and "
        "the index are well formed and agree; every input id is in the index exactly once and "
        "every kept row's key is in the shard it names; nothing outside DIR (symbolic links) is "
        "read. Prints OK or every problem found. Exit status 0 when every check passes, 1 when "
        "a problem is found (a damaged file is a problem, never a crash), 2 when DIR does not exist.",
    )
    v.add_argument("output_dir", metavar="DIR", help="a build's output directory (local or gs://, s3://, ...)")
    v.set_defaults(func=_cmd_verify)

    w = _sub(
        sub,
        "why",
        help="what happened to one input row, document, image, URL or key",
        description="Look QUERY up in DIR's index (by id, URL, key or MMC4 document id) and say which "
        "stages it passed, where and why it was dropped, or the shard and key it was written to. "
        "Exit 1 when nothing matches.",
    )
    w.add_argument("output_dir", metavar="DIR", help="a build's output directory")
    w.add_argument("query", metavar="QUERY", help="an id (metadata.parquet:47, docs.jsonl:6#4), a URL or a key")
    w.set_defaults(func=_cmd_why)

    t = _sub(sub, "tiny-clip", help="train (once) and show the tiny CLIP used by tests and samples")
    t.add_argument("--cache-dir", help="cache directory (default: $FLAMINGO_CORPUS_CACHE or ~/.cache/flamingo-corpus)")
    t.set_defaults(func=_cmd_tiny_clip)

    r = _sub(
        sub,
        "realign",
        help="recompute MMC4 image-to-sentence assignments from the similarity matrices",
        description="Rewrite an MMC4 shard with every image's matched_text_index and matched_sim "
        "recomputed (mmc4 v1.0 stored some wrong ones). Invalid lines are reported "
        "on stderr and left out.",
    )
    r.add_argument("input", help="MMC4 shard: .jsonl, or .zip / .jsonl.zip with one jsonl inside")
    r.add_argument("output", help="output .jsonl (local path or gs://, s3:// URL)")
    r.add_argument(
        "--leftover",
        choices=("argmax", "drop"),
        default="argmax",
        help="images left over when there are more images than sentences: put them with their "
        "most similar sentence (mmc4) or remove them from the document, as the OpenFlamingo "
        "loader leaves them out (default: %(default)s)",
    )
    r.set_defaults(func=_cmd_realign)

    e = _sub(
        sub,
        "index-eval",
        help="index evaluation images and captions for decontamination",
        description="Perceptual hashes (and, with --recipe, CLIP embeddings) of every image under "
        "the folders, and normalised captions, in one parquet file that a recipe's "
        "decontamination.index names. Unreadable images are reported and left out.",
    )
    e.add_argument(
        "folders",
        nargs="+",
        metavar="DIR",
        help="folder of eval images (local or fsspec URL); the eval set is named after the folder, or NAME=DIR",
    )
    e.add_argument("--output", required=True, help="the index file to write, e.g. eval.index")
    e.add_argument(
        "--captions",
        action="append",
        metavar="FILE",
        help="caption file, repeatable, NAME=FILE allowed: COCO annotations json, Karpathy split json, "
        "jsonl with a 'caption' field, or .txt one per line",
    )
    how = e.add_mutually_exclusive_group()
    how.add_argument(
        "--recipe",
        help="embed images with this recipe's clip section (and its image settings), "
        "so its builds can match by CLIP cosine",
    )
    how.add_argument("--no-clip", action="store_true", help="perceptual hashes only (the default)")
    e.set_defaults(func=_cmd_index_eval)

    pl = _sub(
        sub,
        "plan",
        help="what a build of N rows would take: worker-hours, GPU-hours, wall-clock, bytes",
        description="Scale the measured per-stage throughputs (pipeline/assets/measured.json) to N input rows "
        "(LAION) or documents (MMC4) of RECIPE on a cluster: core-hours and GPU-hours of "
        "each stage, wall-clock, worker-hours, bytes downloaded and written, and the "
        "bottleneck. Prints figures; runs nothing.",
    )
    pl.add_argument("recipe", help="recipe YAML: which stages run (CLIP model, near dedup, MMC4 documents)")
    pl.add_argument(
        "--rows",
        required=True,
        type=_count,
        metavar="N",
        help="input rows (LAION) or documents (MMC4): 2300000000, 2.3e9 or 2.3B",
    )
    pl.add_argument("--workers", type=int, default=100, help="worker machines (default: %(default)s)")
    pl.add_argument("--cores-per-worker", type=int, default=16, help="vCPUs per worker (default: %(default)s)")
    pl.add_argument(
        "--gpus-per-worker",
        type=int,
        default=None,
        help="GPUs per worker; 0 runs CLIP on the CPUs (default: 1, and the plan says it assumed it)",
    )
    pl.add_argument(
        "--gpu", default="h200", help="GPU kind of the table's 'gpus': h200 (measured), h100, l4 (default: %(default)s)"
    )
    pl.add_argument(
        "--images-per-document",
        type=float,
        metavar="X",
        help="MMC4 images per document (default: the table's, 5.7 as in full MMC4)",
    )
    pl.add_argument(
        "--mean-image-bytes",
        type=float,
        metavar="B",
        help="mean bytes of a downloaded image (default: the table's assumption, 100 kB)",
    )
    pl.add_argument("--table", metavar="FILE", help="throughput table (default: pipeline/assets/measured.json)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=_cmd_plan)

    st = _sub(
        sub,
        "stats",
        help="dataset statistics of a build as one self-contained HTML file",
        description="Filter funnel, CLIP similarity, image sizes, caption/sentence lengths, "
        "languages, MMC4 document shapes, duplicates, download errors, shards and sample "
        "images, computed from the build's manifest.json and index (the sample images "
        "and MMC4 sentences read a few tar members), in one HTML file with the plots "
        "embedded. The notebooks under notebooks/ show the same.",
    )
    st.add_argument("output_dir", metavar="DIR", help="a build's output directory (local or gs://, s3://, ...)")
    st.add_argument("--output", required=True, help="the HTML file to write, e.g. report.html")
    st.add_argument(
        "--samples",
        type=int,
        default=12,
        metavar="N",
        help="sample images in the grid, read from the first members of a few shards; 0 for none "
        "(default: %(default)s)",
    )
    st.add_argument("--png-dir", metavar="FOLDER", help="also write every figure as FOLDER/<name>.png")
    st.set_defaults(func=_cmd_stats)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args, rest = parser().parse_known_args(argv)
    if rest and args.command not in ("build", "sample"):  # only builds take Beam options
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    configure_logging(-1 if args.quiet else min(args.verbose, 2))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_explained_elsewhere)
    try:
        return args.func(args, rest)
    except BuildInterrupted as e:
        command = shlex.join(["flamingo-corpus", *(sys.argv[1:] if argv is None else argv)])
        again = (
            "the same command builds the sample again from nothing"
            if args.command == "sample"
            else f"the output is resumable: run the same command to go on: {command}"
        )
        how_far = f" after {e.progress}" if e.progress else ""
        print(f"flamingo-corpus: stopped by {e}{how_far}; {again}", file=sys.stderr)
        return e.exit_status
    except UserError as e:
        print(f"flamingo-corpus: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - only storage trouble is turned into a line; the rest re-raised
        line = storage_problem(e)
        if line is None:
            raise
        print(f"flamingo-corpus: {line}", file=sys.stderr)
        return 2


# What a full disk, a quota, a read-only or a forbidden output folder raises; the pipeline's
# workers report it inside the runner's own exception, so the message is searched as well.
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only"}
_STORAGE_ERRNOS.update({errno.EACCES: "permission denied", errno.EPERM: "not permitted"})
_STORAGE_TEXT = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system|Permission denied")
STORAGE_HINT = (
    "free the space or choose a writable --output, then run the same command again: a build resumes where it stopped"
)


def _explained_elsewhere(record: logging.LogRecord) -> bool:
    """Leave out Beam's log of a worker failure that the command explains in one line itself
    (a full or read-only output): the traceback would bury that line."""
    if not record.name.startswith("apache_beam") or record.levelno < logging.ERROR:
        return True
    exc = record.exc_info[1] if record.exc_info else None
    text = record.getMessage() + (f" {type(exc).__name__}: {exc}" if exc is not None else "")
    if "BuildInterrupted" in text:  # a stop: the command says so in one line
        return False
    return not ((exc is not None and storage_problem(exc)) or _STORAGE_TEXT.search(text))


def storage_problem(exc: BaseException) -> Optional[str]:
    """One line for an exception caused by the output's storage (full, read-only, forbidden),
    None for any other."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRNOS:
            where = f" writing {current.filename}" if current.filename else ""
            return f"{current.strerror or _STORAGE_ERRNOS[current.errno]}{where}; {STORAGE_HINT}"
        match = _STORAGE_TEXT.search(str(current))
        if match:
            return f"{match.group(0)} while writing the output; {STORAGE_HINT}"
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
