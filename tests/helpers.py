"""Small helpers several test files share (the loopback build and its pictures: loopback_build.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow.parquet as pq


def index_rows(out: Path) -> list:
    """Every row of a build's parquet index (``out/index/*.parquet``), file by file in name order."""
    return pq.read_table(sorted((Path(out) / "index").glob("*.parquet"))).to_pylist()


def flip_bits(phash: str, bits: Iterable[int]) -> str:
    """A 64-bit hex hash with the bits at the given distinct positions inverted: that many bits away."""
    value = int(phash, 16)
    for bit in bits:
        value ^= 1 << bit
    return f"{value:016x}"


@contextlib.contextmanager
def one_connection_servers() -> Iterator[Callable[..., str]]:
    """``serve(handle, scheme="http")``: a bare TCP server on 127.0.0.1 that takes one connection
    and hands it to ``handle(connection)`` on a daemon thread (a network error there ends it
    quietly); returns the URL of ``/a.jpg`` on it. Every server is closed when the block ends."""
    listeners = []

    def serve(handle: Callable[[socket.socket], None], scheme: str = "http") -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def run() -> None:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                try:
                    handle(connection)
                except OSError:
                    pass

        threading.Thread(target=run, daemon=True).start()
        return f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/a.jpg"

    try:
        yield serve
    finally:
        for listener in listeners:
            listener.close()
