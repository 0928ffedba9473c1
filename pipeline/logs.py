"""A quiet log: what the user can act on, not what the libraries say to themselves.

Beam logs its worker plumbing (channels, harness start and stop, options it discards), open_clip
logs seven INFO lines per model load on the root logger, and Beam warns at import that apitools
is missing (Dataflow's BigQuery client; builds do not use it). By default the log shows
flamingo-corpus's own INFO lines and every library's WARNING and ERROR lines except the known
noise below; ``-q`` shows warnings and errors only; ``-v`` adds the libraries' INFO and our DEBUG;
``-vv`` all. (Pillow's decompression-bomb warning is not emitted at all: images/process.py checks
the pixel limit itself.)

Worker processes of a local build inherit the level through ``FLAMINGO_CORPUS_VERBOSITY`` and
install the same filter before Beam is imported (``runners/local_worker.py``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

__all__ = ["configure", "configure_worker", "NOISE", "VERBOSITY_ENV"]

VERBOSITY_ENV = "FLAMINGO_CORPUS_VERBOSITY"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Messages that say nothing a user can act on, whatever their level. A worker's warnings reach the
# launcher relayed inside a message of Beam's job service, hence no anchors.
NOISE = re.compile(
    "|".join(
        [
            r"apitools not found",
            r"No semi_persistent_directory found",
            r"Discarding unparseable args",
            r"Pipeline_options: ",
            r"BatchElements statistics",
        ]
    )
)


# Errors that are what stopping a build looks like from inside a worker: left out at any level.
SHUTDOWN = re.compile(r"worker shutting down")


# Set in a local worker process when the build is being stopped (runners/stop.ignore_interrupts):
# from then on the libraries' records are the harness being torn down, and are left out.
stopping = threading.Event()


class _Quiet(logging.Filter):
    """Drops the known noise, and the libraries' records below ``library_level``."""

    def __init__(self, own_level: int, library_level: int):
        super().__init__()
        self.own_level = own_level
        self.library_level = library_level

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "flamingo_corpus" or record.name.startswith("flamingo_corpus.")
        if stopping.is_set() and not own:
            return False
        if record.levelno < (self.own_level if own else self.library_level):
            return False
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" {record.exc_info[1]}"
        if SHUTDOWN.search(message):
            return False
        return record.levelno >= logging.ERROR or not NOISE.search(message)


def _levels(verbosity: int) -> tuple:
    """(our level, the libraries' level) for -q (-1), the default (0), -v (1) and -vv (2)."""
    return {
        -1: (logging.WARNING, logging.WARNING),
        0: (logging.INFO, logging.WARNING),
        1: (logging.DEBUG, logging.INFO),
    }.get(verbosity, (logging.DEBUG, logging.DEBUG))


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test may have replaced it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbosity: int = 0) -> None:
    """Our stderr handler on the root logger (replacing the one an earlier call installed), with
    the quiet filter; worker processes started from here inherit the verbosity."""
    own, library = _levels(verbosity)
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_Quiet(own, library))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(own, library))
    os.environ[VERBOSITY_ENV] = str(verbosity)


def configure_worker() -> None:
    """In a local build's worker process, before Beam is imported: the launcher's verbosity."""
    try:
        verbosity = int(os.environ.get(VERBOSITY_ENV, "0"))
    except ValueError:
        verbosity = 0
    configure(verbosity)
