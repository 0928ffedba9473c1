"""Periodic progress lines from inside workers, for long stages.

Beam's metrics reach the launcher only when a stage finishes on the DirectRunner, so each worker
logs its own counts every ``every_s`` seconds: a person watching a long build sees it move.
"""

from __future__ import annotations

import logging
import os
import time


class Progress:
    def __init__(self, what: str, log: logging.Logger, every_s: float = 10.0):
        self.what = what
        self.log = log
        self.every_s = every_s
        self.start = self.last = time.monotonic()
        self.total = 0
        self.ok = 0

    def add(self, n: int, ok: int = 0) -> None:
        self.total += n
        self.ok += ok
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.total / max(now - self.start, 1e-9)
            self.log.info("[pid %d] %s: %d done, %d ok, %.1f/s", os.getpid(), self.what, self.total, self.ok, rate)
