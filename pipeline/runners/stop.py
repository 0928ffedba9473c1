"""A clean stop: Ctrl-C (SIGINT) or a scheduler's SIGTERM ends a local build within seconds.

The launcher's handler raises ``BuildInterrupted`` in the main thread, wherever the runner is
waiting. It derives from BaseException, not Exception, so that no ``except Exception`` on the
way (Beam's, a DoFn's) takes it for an error to retry or to log. Beam then shuts its workers down
on the way out, the partial tar being written removes itself (``output.shard.write_tar``), and the
build state stays: running the same command resumes. Worker processes of a local build ignore
SIGINT (a terminal sends it to the whole process group) and leave the stopping to the launcher.
A second signal while stopping ends the process at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, List

__all__ = ["BuildInterrupted", "stoppable", "ignore_interrupts"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BuildInterrupted(BaseException):
    """The build was stopped by a signal; ``progress`` says how far it got (set by run_build)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.progress = ""

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextlib.contextmanager
def stoppable() -> Iterator[List[int]]:
    """Turn SIGINT and SIGTERM into ``BuildInterrupted`` for the duration (main thread only).
    Yields the list of signals received: Beam may hand the exception on wrapped in one of its
    own (a RuntimeError naming the step it stopped), and the caller then tells it by this list."""
    stopping: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    def handler(signum, frame):
        if stopping:  # a second signal while stopping: do not wait any longer
            os._exit(128 + signum)
        stopping.append(signum)
        raise BuildInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    hook = threading.excepthook

    def quiet_while_stopping(args) -> None:
        # Beam's threads that watch the workers fail as they are stopped: no traceback for that
        if not stopping:
            hook(args)

    threading.excepthook = quiet_while_stopping
    try:
        yield stopping
    finally:
        threading.excepthook = hook
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_interrupts() -> None:
    """In a local worker process: SIGINT and SIGTERM (a terminal or a scheduler signals the whole
    process group) are the launcher's to handle; it shuts the workers down, and a worker whose
    launcher is gone ends with its control channel. The worker only notes the stop, so that what
    Beam's harness logs while it is torn down (a cancelled bundle's traceback) stays out of the log
    (logs.stopping)."""
    from ..logs import stopping

    for sig in SIGNALS:
        signal.signal(sig, lambda signum, frame: stopping.set())
