"""A local build's worker process: Beam's SDK harness, ended without the interpreter's teardown.

With ``direct_running_mode=multi_processing`` the FnApiRunner starts its workers as
``python -m apache_beam.runners.worker.sdk_worker_main``; a local build starts this module
instead (``flamingo_corpus.runners.local``), which runs the same ``main`` and then leaves with
``os._exit``.  When ``main`` returns, the harness is done: every bundle's output was sent back,
every DoFn torn down, its files closed and its log handler flushed.  The exit handlers
(``atexit``: logging's flush, and the finalizers of temporary folders that libraries make at
import, such as the two wandb makes when open_clip's timm imports it) are then run as a normal
exit runs them.  What is skipped is the rest of the normal exit: the teardown of the ~1,900
modules a worker holds (gRPC's among them), which took 0.3 to 0.4 s per worker, while the
FnApiRunner closes its workers one after another, waiting for each process to end: 0.6 to 0.8 s
at the end of every local build with two workers, with the cores idle (measured; see
docs/benchmarks.md).  A harness that fails raises, and exits the normal way with its traceback and
a non-zero status.
"""

from __future__ import annotations

import atexit
import os
import sys

from ..logs import configure_worker
from .heap import returning_freed_memory
from .stop import ignore_interrupts

if __name__ == "__main__":  # a worker process (the launcher imports this module for BEAM_MODULE)
    configure_worker()  # before Beam's import, which logs that apitools is missing
    ignore_interrupts()  # Ctrl-C reaches the whole process group: the launcher stops the workers

from apache_beam.runners.worker import sdk_worker_main  # noqa: E402 - after the log is set up

from .dataplane import install_in_worker  # noqa: E402 - imports Beam's data plane

BEAM_MODULE = sdk_worker_main.__name__  # the module the FnApiRunner starts its workers with


def main(argv: list) -> None:
    install_in_worker()  # output flushed to the runner a megabyte at a time (runners/dataplane.py)
    with returning_freed_memory():  # freed heap pages go back to the system (runners/heap.py)
        sdk_worker_main.main(argv)
    # Run the exit handlers (logging.shutdown among them) as a normal exit would: os._exit skips
    # them.  atexit has no public call for it; _run_exitfuncs is what the interpreter itself calls.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
