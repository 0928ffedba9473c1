"""A piece of Beam swapped for the project's while local runs need it (runners/grouping.py,
runners/dataplane.py).

Beam has no option for what these swap (the local runner's shuffle buffer, how it sends a
bundle's input), so the project puts its own in place for the length of a run and Beam's back
after.  Runs can nest and run at once in one process (tests, a notebook): the swap is counted,
made when the first run enters and undone when the last one leaves.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

__all__ = ["ScopedPatch"]


class ScopedPatch:
    """``with patch():`` -- ``apply()`` in force while at least one run is inside; ``save()``'s
    value is handed to ``restore`` when the last one leaves."""

    def __init__(self, save: Callable[[], Any], apply: Callable[[], None], restore: Callable[[Any], None]):
        self._save, self._apply, self._restore = save, apply, restore
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: Any = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._saved = self._save()
                self._apply()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._restore(self._saved)
