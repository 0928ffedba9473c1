"""Fetch lanes (download/lanes.py): a host's rows in a bounded number of lanes, blocks of one lane."""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys

import pytest

from flamingo_corpus.download.lanes import Lanes, stable_hash
from flamingo_corpus.recipe import RecipeError, recipe_from_dict
from flamingo_corpus.records import Sample


def _rows(n: int, hosts: int):
    return [(f"https://img{i % hosts}.example.com/p/{i}.jpg", f"rows.parquet:{i}", i) for i in range(n)]


@pytest.mark.parametrize("spread", [1, 3, 8])
def test_a_hosts_rows_are_in_at_most_spread_lanes_and_split_about_evenly(spread):
    lanes = Lanes(lanes=64, spread=spread, block_rows=100)
    per_host = collections.defaultdict(collections.Counter)
    for url, row_id, _ in _rows(6000, 5):
        per_host[url.split("/")[2]][lanes.lane(url, row_id)] += 1
    for host, counts in per_host.items():
        assert 1 <= len(counts) <= spread, (host, counts)
        if spread > 1:  # ten million rows of one host are not one group
            assert max(counts.values()) < 1200 / spread * 1.4, counts


def test_blocks_hold_block_rows_rows_of_one_lane_in_input_order_numbered_by_their_first_row():
    lanes = Lanes(lanes=16, spread=1, block_rows=50)
    rows = _rows(5000, 3)  # three hosts: lanes of very different sizes
    groups = collections.defaultdict(list)
    for url, row_id, row in rows:
        groups[(lanes.band(row), lanes.lane(url, row_id))].append(Sample(id=row_id, source_index=0, row=row, url=url))
    seen = []
    for (band, lane), samples in groups.items():
        random.Random(band).shuffle(samples)  # a group comes in any order
        blocks = lanes.cut(samples)
        assert [n for n, _ in blocks] == sorted(n for n, _ in blocks)
        for number, block in blocks:
            assert number == block[0].row and [s.row for s in block] == sorted(s.row for s in block)
            assert len(block) <= 50 and {lanes.lane(s.url, s.id) for s in block} == {lane}
        assert all(len(b) == 50 for _, b in blocks[:-1])  # full but the last
        seen += [s.id for _, b in blocks for s in b]
    assert sorted(seen) == sorted(i for _, i, _ in rows)


def test_an_mmc4_documents_images_of_one_lane_stay_in_one_block():
    lanes = Lanes(lanes=1, spread=1, block_rows=2)
    images = [
        Sample(id=f"d{row}/{k}", source_index=0, row=row, position=k, url=f"https://h.test/{row}/{k}")
        for row in range(5)
        for k in range(3)
    ]
    blocks = lanes.cut(list(reversed(images)))
    assert [(n, [s.id for s in b]) for n, b in blocks][:1] == [(0, ["d0/0", "d0/1", "d0/2", "d1/0", "d1/1", "d1/2"])]
    assert [n for n, _ in blocks] == [0, 2, 4]


def test_routing_is_the_same_in_every_process():
    code = (
        "from flamingo_corpus.download.lanes import Lanes;"
        "print([Lanes(64, 4, 10).lane(f'https://h{i}.test/{i}', f'f:{i}') for i in range(50)])"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(runs) == 1 and runs.pop().startswith("[")
    assert stable_hash("a") != stable_hash("b")


def test_rows_without_a_host_share_one_lane_per_sub_lane():
    lanes = Lanes(lanes=64, spread=1, block_rows=10)
    assert {lanes.lane(url, f"f:{i}") for i, url in enumerate([None, "", "not a url", 3])} == {lanes.lane(None, "x")}


@pytest.mark.parametrize("key,value", [("lanes", 0), ("host_spread", 0), ("host_spread", 5000), ("lanes", 1.5)])
def test_the_recipe_refuses_lanes_and_spreads_out_of_range(key, value):
    with pytest.raises(RecipeError, match=key):
        recipe_from_dict({"name": "x", "input": {"path": "in.parquet"}, "store": {key: value}})
