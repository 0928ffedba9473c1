"""The local runner's data plane in megabyte messages (runners/dataplane.py) and the freed memory
its processes hand back (runners/heap.py)."""

from __future__ import annotations

import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.worker import data_plane
from apache_beam.testing.util import assert_that, equal_to

from flamingo_corpus.runners import dataplane, heap
from flamingo_corpus.runners.local import local_runner


class _Channel:
    """A data channel that records the messages its output streams send."""

    def __init__(self):
        self.messages = []

    def output_stream(self, instruction_id, transform_id):
        return data_plane.ClosableOutputStream.create(self.messages.append, self.messages.append, 0)


class _Bundles:
    """What ``_send_input_to_worker`` reads of its BundleManager."""

    def __init__(self):
        self._worker_handler = type("Handler", (), {"data_conn": _Channel()})()


def _chunks(n: int, size: int) -> list:
    return [bytes([i % 251]) * size for i in range(n)]


def test_a_bundle_input_goes_in_messages_of_about_a_megabyte_not_one():
    chunks = _chunks(40, 300_000)  # a 12 MB share, as the shuffle buffer or a kept PCollection hands it
    ours, beams = _Bundles(), _Bundles()
    dataplane._send_input_in_chunks(ours, "bundle_1", "read", chunks)
    fn_runner.BundleManager._send_input_to_worker(beams, "bundle_1", "read", chunks)
    sent = ours._worker_handler.data_conn.messages
    assert b"".join(sent) == b"".join(chunks) == b"".join(beams._worker_handler.data_conn.messages)
    assert len(beams._worker_handler.data_conn.messages) == 1  # Beam's: the whole share at once
    assert len(sent) >= 10 and max(map(len, sent)) < dataplane.CHUNK_BYTES + 300_000
    # every message ends where a chunk ends: no element is cut between two messages
    ends, total = set(), 0
    for c in chunks:
        total += len(c)
        ends.add(total)
    total = 0
    for m in sent:
        total += len(m)
        assert total in ends


def test_a_worker_flushes_its_output_every_megabyte():
    beams = data_plane.ClosableOutputStream.__dict__["create"]
    try:
        dataplane.install_in_worker()
        flushed = []
        out = data_plane.ClosableOutputStream.create(flushed.append, flushed.append, 0)
        for _ in range(100):
            out.write(b"x" * 50_000)  # one element
            out.maybe_flush()  # what a worker's output does after every element
        out.close()
    finally:
        data_plane.ClosableOutputStream.create = beams
    assert sum(map(len, flushed)) == 5_000_000
    assert len(flushed) >= 4 and max(map(len, flushed)) <= dataplane.CHUNK_BYTES + 50_000


def test_a_local_run_gives_the_same_result_and_beams_data_plane_is_back_after():
    before = (
        fn_runner.BundleManager._send_input_to_worker,
        data_plane._DEFAULT_SEND_QUEUE_MAX_ELEMENTS,
        data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES,
    )
    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        grouped = (
            p
            | beam.Create(range(6000))
            | beam.Map(lambda i: (i % 3, "v" * 1000 + str(i)))  # 2 MB a group: shares of several messages
            | beam.GroupByKey()
            | beam.MapTuple(lambda k, vs: (k, len(list(vs))))
        )
        assert_that(grouped, equal_to([(0, 2000), (1, 2000), (2, 2000)]))
    after = (
        fn_runner.BundleManager._send_input_to_worker,
        data_plane._DEFAULT_SEND_QUEUE_MAX_ELEMENTS,
        data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES,
    )
    assert after == before


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not heap.malloc_trim(), reason="glibc only")
def test_freed_memory_in_the_middle_of_the_heap_goes_back_to_the_system():
    # 150 MB of records of 1.5 kB (malloc's, not Python's small-object allocator), one in twenty
    # kept: the freed pages lie between live ones, where glibc's own trimming (the top of the
    # heap only) does not reach
    heap.malloc_trim()
    objects = [bytes([i % 251]) * 1500 for i in range(100_000)]
    kept = objects[::20]
    del objects
    held = _rss_mib()
    with heap.returning_freed_memory(interval_s=0.05):
        time.sleep(0.5)
    assert _rss_mib() < held - 50, (held, _rss_mib())
    assert len(kept) == 5_000
