"""The runner of a local build: Beam's FnApiRunner, never the Prism runner.

Beam's ``DirectRunner`` (``SwitchingDirectRunner``) first tries its Prism runner, a Go program
that it downloads from GitHub's release pages at run time when no copy is cached (or
``--prism_location`` names none): every local build, and every test pipeline, would send a request
to the web and, where the web answers, run on another engine than the one the tests exercise.  Where
it does not answer (as on machines without network), the attempt fails and costs about half a
second before the DirectRunner falls back to the FnApiRunner, the engine it uses for batch
pipelines.  A build asking for the DirectRunner therefore gets that FnApiRunner directly, with the
same options (``direct_running_mode``, ``direct_num_workers``) and the pipeline options passed
to its workers as the DirectRunner passes them.

Beam's ``PortableRunner`` with ``job_endpoint: embed`` runs that same FnApiRunner in the launching
process behind an in-process job service, but with one SDK worker whatever the options say (its
``BeamJob`` builds ``FnApiRunner()`` and never reads a worker count): a cluster of worker pools
would run one bundle at a time.  Such a build gets the FnApiRunner directly too, its workers in
the environment the options name (``environment_type``, ``environment_config``: an ``EXTERNAL``
worker pool on other machines) and ``sdk_worker_parallelism`` of them at once.  Any other runner
(a job server's endpoint, Dataflow) is left to Beam.

Its worker processes (``multi_processing``) run ``flamingo_corpus.runners.local_worker``, Beam's worker main
that skips the interpreter's teardown once the harness is done: the FnApiRunner waits for each
worker to end, one after another, at the end of every run.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, PortableOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.runner import PipelineRunner

from . import dataplane, grouping, local_worker
from .heap import returning_freed_memory

DIRECT_NAMES = {"", "direct", "directrunner", "switchingdirectrunner"}


def is_direct(options: PipelineOptions) -> bool:
    """Whether ``options`` ask for the DirectRunner (the default when no runner is named)."""
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        return True
    if not isinstance(runner, str):
        return False
    return runner.rsplit(".", 1)[-1].lower() in DIRECT_NAMES


def is_embedded_portable(options: PipelineOptions) -> bool:
    """Whether ``options`` ask for Beam's PortableRunner with its embedded job server."""
    runner = options.view_as(StandardOptions).runner
    if not isinstance(runner, str) or runner.rsplit(".", 1)[-1].lower() not in ("portable", "portablerunner"):
        return False
    return options.view_as(PortableOptions).job_endpoint == "embed"


def local_runner(options: PipelineOptions) -> Optional[PipelineRunner]:
    """The FnApiRunner for a DirectRunner run or an embedded PortableRunner one, or None to let
    Beam pick the runner it was asked for."""
    direct, embedded = is_direct(options), is_embedded_portable(options)
    if not (direct or embedded) or options.view_as(StandardOptions).streaming:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # What SwitchingDirectRunner.run_pipeline hands the FnApiRunner (Beam 2.77).
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    fewer_malloc_arenas()
    if direct:
        return LocalFnApiRunner(provision_info=provision)
    from apache_beam.transforms import environments

    portable = options.view_as(PortableOptions)
    runner = LocalFnApiRunner(
        default_environment=environments.Environment.from_options(portable), provision_info=provision
    )
    runner.workers = int(portable.sdk_worker_parallelism or 1) or 1
    return runner


MALLOC_ARENAS = 2


def fewer_malloc_arenas() -> None:
    """Two malloc arenas, not glibc's default of eight per core, for this process and the worker
    processes it starts (they inherit ``MALLOC_ARENA_MAX``; a value the user set is kept).

    The runner's gRPC threads and the workers' download threads each allocate in an arena of their
    own, and what one thread frees another cannot reuse: the runner of a 32,000-row local build
    peaked at 506 MiB with the default and 402 MiB with two arenas (benchmarks/store.py,
    ``memory``; docs/scale.md).  Where the C library is not glibc,
    nothing changes."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, int(os.environ["MALLOC_ARENA_MAX"]))  # arenas made from now on
    except (OSError, AttributeError, ValueError):
        pass


_M_ARENA_MAX = -8  # glibc's malloc.h


def worker_command(module: str) -> str:
    """The shell command the FnApiRunner starts a ``multi_processing`` worker with (Beam 2.77)."""
    return f"{sys.executable} -m {module}"


class LocalFnApiRunner(fn_runner.FnApiRunner):
    """The FnApiRunner, its subprocess workers started as ``flamingo_corpus.runners.local_worker``.

    ``FnApiRunner.run_pipeline`` sets the command of a ``multi_processing`` worker itself, so the
    command is swapped in the pipeline proto it hands on; an environment with any other command
    (set by the user) is left as it is.  ``workers``, where set (an embedded PortableRunner
    run), is how many SDK workers of the pipeline's environment run bundles at once."""

    workers: Optional[int] = None

    def run_via_runner_api(self, pipeline_proto, options):
        if self.workers:
            self._num_workers = self.workers
        self.use_local_worker(pipeline_proto)
        # the shuffles held encoded (runners/grouping.py), inputs sent a megabyte at a time
        # (runners/dataplane.py), freed heap pages handed back (runners/heap.py)
        with grouping.installed(), dataplane.installed(), returning_freed_memory():
            return super().run_via_runner_api(pipeline_proto, options)

    @staticmethod
    def use_local_worker(pipeline_proto) -> int:
        """Start ``pipeline_proto``'s Beam subprocess workers as ``flamingo_corpus.runners.local_worker``, in place;
        returns how many environments changed."""
        from apache_beam.portability import python_urns

        beam_command = worker_command(local_worker.BEAM_MODULE).encode()
        swapped = 0
        for environment in pipeline_proto.components.environments.values():
            if environment.urn == python_urns.SUBPROCESS_SDK and environment.payload == beam_command:
                # exec: Beam starts the command through a shell; without exec that shell is the
                # worker's parent, dies of a terminal's Ctrl-C and takes the build down with a
                # traceback, while the worker itself leaves stopping to the launcher
                environment.payload = ("exec " + worker_command(local_worker.__name__)).encode()
                swapped += 1
        return swapped


def local_workers(options: PipelineOptions) -> Optional[int]:
    """How many workers a local run executes bundles on at once (processes for
    ``multi_processing``, threads for ``multi_threading``, 1 ``in_memory``); None for other runners."""
    if not is_direct(options):
        return None
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode in ("multi_processing", "multi_threading"):
        return direct.direct_num_workers or os.cpu_count() or 1
    return 1


def cpu_threads_per_worker(options: PipelineOptions) -> Optional[int]:
    """The torch threads each local worker should run on the CPU: the cores shared out among the
    workers (at least one).  None for other runners: their machines are not this one."""
    workers = local_workers(options)
    return None if workers is None else max(1, (os.cpu_count() or 1) // workers)


__all__ = [
    "LocalFnApiRunner",
    "cpu_threads_per_worker",
    "is_direct",
    "is_embedded_portable",
    "local_runner",
    "local_workers",
]
