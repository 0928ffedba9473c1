"""The local runner's shuffle buffer, holding each grouped value as its encoded bytes.

Beam's FnApiRunner runs a batch pipeline stage after stage, and keeps the input of every
GroupByKey in the runner process until the stage that reads it runs (``execution.GroupingBuffer``).
Beam's buffer decodes every element as it arrives and keeps the decoded value, a Python object:
for this project's records (``records.Sample``, about 1.1 kB encoded) that is three to four times
the encoded size, and it made the runner the largest process of a local build, growing by about
4 kB per input row (benchmarks/store.py, ``memory``).

``CompactGroupingBuffer`` writes each value encoded to a temporary file (``TMPDIR``) as it arrives
and keeps, per key, where its values are (16 bytes a value); it reads and decodes a key's values
only when it sends that key's group to a worker, and the file goes with the buffer when the stage
that reads it is done.  Beam's buffer also encodes each worker's share whole before sending any of it
(a second copy of the shuffle in the runner); this one encodes the groups as they are sent, a
megabyte at a time, and the worker's bounded receive queue paces it.  Groups are dealt to the
workers largest first (``_dealt``), so that a large group does not start last.  Pipelines in other windowings than the
global one (none in this project) keep Beam's buffer.

This is written here, not taken from Beam, because Beam has no option for it: the buffer is
chosen inside ``BundleContextManager.get_buffer``.  ``installed()`` swaps the class in for one run
and puts Beam's back after; ``LocalFnApiRunner`` (runners/local.py) runs every local build in it.
So the runner's memory no longer holds the shuffles, its disk does (about 1.4 kB a row, docs/scale.md),
as the distributed runners' shuffles do.
"""

from __future__ import annotations

import array
import os
import tempfile
import threading
from typing import IO, Dict, Iterator, List, Optional

from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.runners.portability.fn_api_runner import execution
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import windowed_value

from .patching import ScopedPatch

__all__ = ["CompactGroupingBuffer", "installed"]

_BEAMS = execution.GroupingBuffer
_lock = threading.Lock()  # the spill file's first flush


class CompactGroupingBuffer(_BEAMS):
    """``execution.GroupingBuffer`` with its values kept encoded (in the global window), on disk."""

    def __init__(self, pre_grouped_coder, post_grouped_coder, windowing) -> None:
        super().__init__(pre_grouped_coder, post_grouped_coder, windowing)
        self._compact = windowing.is_default()
        if self._compact:
            self._value_impl = pre_grouped_coder.value_coder().get_impl()
            self._spill: Optional[IO[bytes]] = None
            self._places: Dict[bytes, "array.array[int]"] = {}  # per key: offset, length, offset, ...
            self._end = 0  # bytes written to the spill file
            self._flushed = False

    def append(self, elements_data: bytes) -> None:
        if not self._compact:
            return super().append(elements_data)
        if self._grouped_output:
            raise RuntimeError("Grouping table append after read.")
        stream = create_InputStream(elements_data)
        element_impl = self._pre_grouped_coder.get_impl()
        key_impl, value_impl = self._key_coder.get_impl(), self._value_impl
        while stream.size() > 0:
            key, value = element_impl.decode_from_stream(stream, True).value
            self._add(key_impl.encode(key), value_impl.encode(value))

    def extend(self, input_buffer) -> None:
        if not (self._compact and isinstance(input_buffer, CompactGroupingBuffer) and input_buffer._compact):
            return super().extend(input_buffer)
        if input_buffer is not self:
            for encoded_key in list(input_buffer._places):
                for v in input_buffer.encoded_values(encoded_key):
                    self._add(encoded_key, v)

    def partition(self, n: int) -> List[List[bytes]]:
        if not self._compact:
            return super().partition(n)
        if not self._grouped_output:
            self._grouped_output = [_Part(self, keys) for keys in self._dealt(n)]  # type: ignore[misc]
        return self._grouped_output

    # Up to this many groups, they are dealt largest first (below); above it, in the order their
    # keys came (many small groups balance by themselves, and sorting millions costs time).
    SIZED_DEAL_MAX_KEYS = 1 << 16

    def _dealt(self, n: int) -> List[List[bytes]]:
        """The keys of each of ``n`` workers' shares, in the order they are sent.  Few groups
        (a fetch lane's blocks, a shard's samples) are dealt largest first, each to the share
        with the fewest bytes so far (longest processing time first): the largest groups start
        first and the shares end together, instead of a large group dealt last holding up the
        stage's end (a busy host's lane, paced by its per-host limits, is the largest group of the
        fetch).  Beam's buffer deals them round-robin in the order they came.  The order never
        changes a result: every stage's output is independent of how its groups are dealt (the
        1- and N-worker byte-identity tests)."""
        keys = list(self._places)
        if len(keys) > self.SIZED_DEAL_MAX_KEYS or n == 1:
            return [keys[i::n] for i in range(n)]
        size = {k: sum(self._places[k][1::2]) for k in keys}
        shares: List[List[bytes]] = [[] for _ in range(n)]
        loads = [0] * n
        for k in sorted(keys, key=lambda k: -size[k]):  # stable: equal sizes keep their order
            i = loads.index(min(loads))
            shares[i].append(k)
            loads[i] += size[k]
        return shares

    def _add(self, encoded_key: bytes, encoded_value: bytes) -> None:
        """Write a value to the spill file; the table keeps where it is (offset, length)."""
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="flamingo-corpus-shuffle-")
        self._spill.write(encoded_value)
        places = self._places.get(encoded_key)
        if places is None:
            places = self._places[encoded_key] = array.array("q")
        places.append(self._end)
        places.append(len(encoded_value))
        self._end += len(encoded_value)

    def encoded_values(self, encoded_key: bytes) -> List[bytes]:
        """The values of a key as they were appended, encoded, read back from the spill file."""
        assert self._spill is not None
        with _lock:
            if not self._flushed:
                self._spill.flush()
                self._flushed = True
        places, fd = self._places[encoded_key], self._spill.fileno()
        return [os.pread(fd, places[i + 1], places[i]) for i in range(0, len(places), 2)]


class _Part:
    """One worker's share of a ``CompactGroupingBuffer``: its groups, encoded as they are sent, in
    chunks of about ``CHUNK_BYTES`` (Beam's buffer encodes every share whole, before sending any:
    a second copy of the shuffle).  It can be sent more than once (a repeated bundle)."""

    CHUNK_BYTES = 1 << 20

    def __init__(self, buffer: CompactGroupingBuffer, keys: List[bytes]):
        self._buffer, self._keys = buffer, keys

    def __iter__(self) -> Iterator[bytes]:
        b = self._buffer
        in_global_window = GlobalWindows.windowed_value(
            None,
            timestamp=GlobalWindow().max_timestamp(),
            pane_info=windowed_value.PaneInfo(
                is_first=True,
                is_last=True,
                timing=windowed_value.PaneInfoTiming.ON_TIME,
                index=0,
                nonspeculative_index=0,
            ),
        ).with_value
        group_impl = b._post_grouped_coder.get_impl()
        key_impl, value_impl = b._key_coder.get_impl(), b._value_impl
        stream = create_OutputStream()
        for encoded_key in self._keys:
            values = [value_impl.decode(v) for v in b.encoded_values(encoded_key)]
            group_impl.encode_to_stream(in_global_window((key_impl.decode(encoded_key), values)), stream, True)
            if stream.size() >= self.CHUNK_BYTES:
                yield stream.get()
                stream = create_OutputStream()
        if stream.size():
            yield stream.get()


def _use_compact() -> None:
    execution.GroupingBuffer = CompactGroupingBuffer  # type: ignore[misc]


def _put_back(beams: "type[execution.GroupingBuffer]") -> None:
    execution.GroupingBuffer = beams  # type: ignore[misc]


# Within ``installed()``, the FnApiRunner groups with ``CompactGroupingBuffer`` (nested and
# concurrent runs share the swap; Beam's class is back once the last one ends).
installed = ScopedPatch(lambda: _BEAMS, _use_compact, _put_back)
