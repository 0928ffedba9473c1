"""Progress of a build: counted in the workers, reported by the launcher as one line per interval.

Workers count what each stage decided: rows a stage dropped (every ``stage.drop`` counts itself),
images downloaded, images embedded by CLIP, samples written. On a local build the launcher
(``ProgressReport``) gives its workers a folder through ``FLAMINGO_CORPUS_PROGRESS_DIR``; each
worker process keeps one small JSON file of its counts there (rewritten at most once a second,
atomically), and the launcher adds them up and logs one line every interval, with the input
total read from the parquet footers at launch::

    progress: 1,315/2,000 rows (65.8%), 130.7 rows/s, ETA 0:00:05 | downloaded 1,190 | clip 900 | written 800

On a cluster there is no shared folder: each worker logs its own counts every ``LOG_EVERY_S``
(the runner's log viewer shows them), and the same counts are Beam metrics (the ``drops``
counters of ``stage.apply_with_drops``), which the runner's UI shows per step.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections import Counter
from typing import Dict, Optional

__all__ = ["Progress", "ProgressReport", "record", "PROGRESS_DIR_ENV"]

PROGRESS_DIR_ENV = "FLAMINGO_CORPUS_PROGRESS_DIR"
FLUSH_EVERY_S = 1.0
LOG_EVERY_S = 30.0
# Stages whose drops happen before a row is downloaded (LAION): a row dropped there is done.
BEFORE_DOWNLOAD = ("read", "metadata")

log = logging.getLogger(__name__)


class _Counts:
    """This process's counts, flushed to its file in the progress folder (or logged)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.last_flush = 0.0
        self.last_log = time.monotonic()

    def add(self, key: str, n: int) -> None:
        with self.lock:
            self.counts[key] += n
            now = time.monotonic()
            if now - self.last_flush < FLUSH_EVERY_S:
                return
            self.last_flush = now
            snapshot = dict(self.counts)
        folder = os.environ.get(PROGRESS_DIR_ENV)
        if folder:
            _write(folder, snapshot)
        elif now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            log.info("[pid %d] %s", os.getpid(), ", ".join(f"{k} {v:,}" for k, v in sorted(snapshot.items())))

    def flush(self) -> None:
        folder = os.environ.get(PROGRESS_DIR_ENV)
        if folder:
            with self.lock:
                snapshot = dict(self.counts)
            _write(folder, snapshot)


def _write(folder: str, counts: dict) -> None:
    path = os.path.join(folder, f"{socket.gethostname()}-{os.getpid()}.json")
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(counts, f)
        os.replace(tmp, path)
    except OSError:  # the launcher removed the folder (the build ended): nothing to report to
        pass


_COUNTS = _Counts()


def record(key: str, n: int = 1) -> None:
    """Count ``n`` of ``key`` in this process: ``"<stage> dropped"``, ``"downloaded"``, ``"clip"``,
    ``"written"``."""
    if n:
        _COUNTS.add(key, n)


class Progress:
    """A stage's own count (kept for the stages that count what they pass, not only what they drop)."""

    def __init__(self, what: str):
        self.what = what

    def add(self, n: int, ok: int = 0) -> None:
        record(self.what, n)
        if ok:
            record(f"{self.what} ok", ok)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressReport:
    """The launcher's side: a folder for the workers' counts and a thread that logs one line per
    ``every_s``. ``total`` is the number of input rows when it is known (LAION), else None."""

    def __init__(self, total: Optional[int], unit: str = "rows", every_s: float = 10.0):
        self.total, self.unit, self.every_s = total, unit, every_s
        self.folder: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = time.monotonic()
        self._previous_env: Optional[str] = None
        self.final: Counter = Counter()  # the counts when the build ended

    def __enter__(self) -> "ProgressReport":
        self.folder = tempfile.mkdtemp(prefix="flamingo-progress-")
        self._previous_env = os.environ.get(PROGRESS_DIR_ENV)
        os.environ[PROGRESS_DIR_ENV] = self.folder  # worker processes started from here inherit it
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _COUNTS.flush()
        self.final = self.counts()
        if self._previous_env is None:
            os.environ.pop(PROGRESS_DIR_ENV, None)
        else:
            os.environ[PROGRESS_DIR_ENV] = self._previous_env
        if self.folder:
            for name in os.listdir(self.folder):
                try:
                    os.remove(os.path.join(self.folder, name))
                except OSError:
                    pass
            try:
                os.rmdir(self.folder)
            except OSError:
                pass

    def counts(self) -> Counter:
        """The counts of every worker process, added up."""
        _COUNTS.flush()  # this process may be a worker too (the in-process runner)
        total: Counter = Counter()
        if not self.folder or not os.path.isdir(self.folder):
            return total
        for name in os.listdir(self.folder):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.folder, name)) as f:
                    total.update(json.load(f))
            except (OSError, ValueError):  # being replaced right now: next time
                continue
        return total

    def done(self, counts: Dict[str, int]) -> Optional[int]:
        """Input rows decided so far (LAION): dropped before the download, or downloaded."""
        if self.total is None:
            return None
        before = sum(counts.get(f"{stage} dropped", 0) for stage in BEFORE_DOWNLOAD)
        return min(self.total, before + counts.get("download", 0))

    def line(self, counts: Optional[Dict[str, int]] = None) -> str:
        counts = self.counts() if counts is None else counts
        elapsed = max(time.monotonic() - self._start, 1e-9)
        parts = []
        done = self.done(counts)
        if done is not None and self.total:
            rate = done / elapsed
            head = f"{done:,}/{self.total:,} {self.unit} ({100 * done / self.total:.1f}%), {rate:,.1f} {self.unit}/s"
            if 0 < done < self.total and rate > 0:
                head += f", ETA {_hms((self.total - done) / rate)}"
            parts.append(head)
        elif counts.get("read"):
            parts.append(f"{counts['read']:,} {self.unit} read")
        if counts.get("download"):
            parts.append(f"downloaded {counts.get('download ok', 0):,} of {counts['download']:,} tried")
        if counts.get("clip"):
            parts.append(f"clip {counts['clip']:,}")
        if counts.get("written"):
            parts.append(f"written {counts['written']:,}")
        dropped = sum(v for k, v in counts.items() if k.endswith(" dropped"))
        if dropped:
            parts.append(f"dropped {dropped:,}")
        return " | ".join(parts) if parts else "starting"

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            log.info("progress: %s", self.line())
