"""The local runner's shuffle buffer (runners/grouping.py): the same groups as Beam's, in less memory."""

from __future__ import annotations

import os
import tracemalloc

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import execution
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core
from apache_beam.transforms.window import GlobalWindows

from flamingo_corpus.records import Sample
from flamingo_corpus.runners import grouping
from flamingo_corpus.runners.local import local_runner


def _sample(i: int) -> Sample:
    return Sample(
        id=f"rows.parquet:{i}",
        source_index=0,
        row=i,
        url=f"https://img{i % 13}.example.com/photos/{i:07d}.jpg",
        caption=f"a photograph of a red bicycle leaning on a wall, number {i}",
    )


def _coders():
    kv = coders.TupleCoder([coders.StrUtf8Coder(), coders.PickleCoder()])
    pre = coders.coders.WindowedValueCoder(kv, coders.coders.GlobalWindowCoder())
    post = coders.coders.WindowedValueCoder(
        coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.PickleCoder())]),
        coders.coders.GlobalWindowCoder(),
    )
    return pre, post


def _fill(buffer, pre, elements, chunk=100):
    impl = pre.get_impl()
    for start in range(0, len(elements), chunk):
        out = create_OutputStream()
        for kv in elements[start : start + chunk]:
            impl.encode_to_stream(GlobalWindows.windowed_value(kv), out, True)
        buffer.append(out.get())


def _groups(buffer, post, n):
    impl = post.get_impl()
    parts = []
    for part in buffer.partition(n):
        groups = {}
        for blob in part:
            stream = create_InputStream(blob)
            while stream.size() > 0:
                key, values = impl.decode_from_stream(stream, True).value
                groups[key] = [s.id for s in values]
        parts.append(groups)
    return parts


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_same_groups_as_beams_buffer_each_whole_in_one_share(workers):
    pre, post = _coders()
    elements = [(f"block-{i % 17}", _sample(i)) for i in range(1000)]
    beams = execution.GroupingBuffer(pre, post, core.Windowing(GlobalWindows()))
    ours = grouping.CompactGroupingBuffer(pre, post, core.Windowing(GlobalWindows()))
    _fill(beams, pre, elements)
    _fill(ours, pre, elements)
    shares = _groups(ours, post, workers)
    assert len(shares) == workers and all(shares)
    merged = {k: v for share in shares for k, v in share.items()}
    assert sum(len(share) for share in shares) == len(merged) == 17  # no group split or repeated
    assert merged == {k: v for share in _groups(beams, post, workers) for k, v in share.items()}


def test_large_groups_are_dealt_first_and_the_shares_balance():
    # one lane of a busy host (400 rows), one of 120, and 60 lanes of a few rows, as they come
    # from the fetch's grouping: the busy lanes came last, Beam's buffer deals them last
    pre, post = _coders()
    sizes = [3 + i % 4 for i in range(60)] + [120, 400]
    elements, i = [], 0
    for lane, n in enumerate(sizes):
        for _ in range(n):
            elements.append((f"lane-{lane}", _sample(i)))
            i += 1
    ours = grouping.CompactGroupingBuffer(pre, post, core.Windowing(GlobalWindows()))
    _fill(ours, pre, elements)
    first, second = _groups(ours, post, 2)
    assert next(iter(first)) == "lane-61" and next(iter(second)) == "lane-60"  # sent first
    for share in (first, second):
        counts = [len(v) for v in share.values()]
        assert counts == sorted(counts, reverse=True)
    rows = sorted(sum(len(v) for v in share.values()) for share in (first, second))
    assert rows == [sum(sizes) - 400, 400]  # the busy lane alone, everything else beside it


def test_it_keeps_the_values_on_disk_and_a_fraction_of_beams_memory():
    pre, post = _coders()
    elements = [(f"block-{i // 1000}", _sample(i)) for i in range(20000)]
    encoded = sum(len(pre.encode(GlobalWindows.windowed_value(kv))) for kv in elements)

    def held(cls) -> int:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        buffer = cls(pre, post, core.Windowing(GlobalWindows()))
        _fill(buffer, pre, elements)
        size = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return size

    ours, beams = held(grouping.CompactGroupingBuffer), held(execution.GroupingBuffer)
    assert ours < 0.2 * encoded, (ours, encoded)  # where each value is, not the value
    assert ours < beams / 20, (ours, beams)
    spilled = grouping.CompactGroupingBuffer(pre, post, core.Windowing(GlobalWindows()))
    _fill(spilled, pre, elements)
    assert 0.8 * encoded < os.fstat(spilled._spill.fileno()).st_size < encoded


def test_local_builds_group_with_it_and_beams_buffer_is_back_after(monkeypatch):
    appended = []
    original = grouping.CompactGroupingBuffer.append
    monkeypatch.setattr(
        grouping.CompactGroupingBuffer, "append", lambda self, data: (appended.append(len(data)), original(self, data))
    )
    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        grouped = (
            p
            | beam.Create([(i % 7, i) for i in range(700)])
            | beam.GroupByKey()
            | beam.MapTuple(lambda k, vs: (k, sorted(vs)))
        )
        assert_that(grouped, equal_to([(k, list(range(k, 700, 7))) for k in range(7)]))
    assert appended, "the build's GroupByKey did not go through CompactGroupingBuffer"
    assert execution.GroupingBuffer is grouping.CompactGroupingBuffer.__mro__[1]


def test_a_share_is_sent_in_chunks_and_can_be_sent_again(monkeypatch):
    monkeypatch.setattr(grouping._Part, "CHUNK_BYTES", 4096)
    pre, post = _coders()
    ours = grouping.CompactGroupingBuffer(pre, post, core.Windowing(GlobalWindows()))
    _fill(ours, pre, [(f"block-{i % 50}", _sample(i)) for i in range(2000)])
    (part,) = ours.partition(1)
    first, again = list(part), list(part)
    assert first == again and len(first) > 10  # a repeated bundle gets the same bytes
    assert _groups(ours, post, 1)[0] == {
        f"block-{k}": [f"rows.parquet:{i}" for i in range(k, 2000, 50)] for k in range(50)
    }


def test_local_builds_and_their_workers_use_two_malloc_arenas_unless_told_otherwise(monkeypatch):
    import subprocess
    import sys

    from flamingo_corpus.runners import local

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    local_runner(PipelineOptions([]))
    worker = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('MALLOC_ARENA_MAX'))"], capture_output=True, text=True
    )
    assert worker.stdout.strip() == str(local.MALLOC_ARENAS)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    local_runner(PipelineOptions([]))
    assert local.os.environ["MALLOC_ARENA_MAX"] == "4"
