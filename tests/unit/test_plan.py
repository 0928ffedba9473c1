"""`flamingo-corpus plan`: the arithmetic on a hand-made table, the stages a recipe switches on,
and the shipped table covering every shipped recipe."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from flamingo_corpus import cli
from flamingo_corpus.recipe import load_recipe, recipe_from_dict
from flamingo_corpus.runners.plan import MEASURED, Cluster, PlanError, format_plan, load_table, make_plan, parse_count

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "manifests").glob("*.yaml"))
BASES = {"measured", "derived", "extrapolated", "assumed"}

# Round numbers, so that every figure below can be checked by hand.
TABLE = {
    "machines": {"m": "a test machine"},
    "stages": {
        "download": {"unit": "image", "per_s": 100.0, "basis": "measured", "machine": "m"},
        "process_laion": {"unit": "row", "per_s": 50.0, "basis": "derived", "machine": "m"},
        "process_mmc4": {"unit": "image", "per_s": 25.0, "basis": "derived", "machine": "m"},
        "dedup_near": {
            "unit": "row",
            "per_s_by_distance": {"5": 1000.0, "10": 200.0},
            "basis": "extrapolated",
            "machine": "m",
        },
    },
    "clip": {
        "M": {
            "gpu": {
                "images_per_s": 4000.0,
                "captions_per_s": 4000.0,
                "sentences_per_s": 1000.0,
                "pairs_per_s": 1800.0,
                "basis": "measured",
                "machine": "m",
            },
            "cpu": {
                "images_per_s": 2.0,
                "captions_per_s": 4.0,
                "sentences_per_s": 8.0,
                "basis": "measured",
                "machine": "m",
            },
        }
    },
    "gpus": {"big": {"relative": 1.0, "basis": "measured"}, "small": {"relative": 0.25, "basis": "extrapolated"}},
    "corpus": {
        "mmc4_images_per_document": {"value": 5.0},
        "mmc4_sentences_per_document": {"value": 20.0},
        "download_bytes_per_image": {"value": 1000.0},
        "laion_output_bytes_per_sample": {"value": 100.0},
        "mmc4_output_bytes_per_image": {"value": 200.0},
        "mmc4_output_bytes_per_document": {"value": 50.0},
    },
}


def _laion(**sections):
    return recipe_from_dict({"name": "t", "clip": {"model": "M", "device": "auto"}, **sections})


def _mmc4(**sections):
    return recipe_from_dict({"name": "t", "input": {"corpus": "mmc4"}, "clip": {"model": "M"}, **sections})


def test_laion_arithmetic():
    rows = 3_600_000
    plan = make_plan(_laion(), rows, Cluster(workers=10, cores_per_worker=4, gpus_per_worker=1, gpu="big"), TABLE)
    by = {s.name: s for s in plan.stages}
    assert list(by) == ["download", "process", "clip M image+caption"]
    assert by["download"].hours == pytest.approx(10.0)  # 3.6M / 100 per s = 36,000 core-s
    assert by["process"].hours == pytest.approx(20.0)
    assert by["clip M image+caption"].hours == pytest.approx(rows / 1800 / 3600)  # the pairs figure
    assert plan.core_hours == pytest.approx(30.0)
    assert plan.cpu_wall_hours == pytest.approx(30.0 / 40)  # 40 cores
    assert plan.gpu_wall_hours == pytest.approx(rows / 1800 / 3600 / 10)
    assert plan.wall_hours == pytest.approx(0.75) and plan.bound == "cpu"
    assert plan.bottleneck.name == "process"
    assert plan.worker_hours == pytest.approx(7.5) and plan.gpu_hours == pytest.approx(7.5)
    assert plan.alone_hours(by["download"]) == pytest.approx(10.0 / 40)
    assert plan.download_bytes == rows * 1000 and plan.output_bytes == rows * 100
    text = format_plan(plan)
    assert "bottleneck stage: process" in text and "45 min at least, bound by the CPUs" in text


def test_gpu_bound_and_the_gpu_kind_scales_the_clip_figure():
    rows = 36_000_000
    plan = make_plan(_laion(), rows, Cluster(workers=1, cores_per_worker=1000, gpus_per_worker=1, gpu="small"), TABLE)
    clip = plan.stages[-1]
    assert clip.rate == pytest.approx(1800 * 0.25) and clip.basis == "extrapolated"
    assert plan.bound == "gpu" and plan.bottleneck is clip
    assert plan.wall_hours == pytest.approx(rows / 450 / 3600)


def test_without_pairs_figure_image_and_caption_costs_add():
    table = json.loads(json.dumps(TABLE))
    del table["clip"]["M"]["gpu"]["pairs_per_s"]
    plan = make_plan(_laion(), 8000, Cluster(1, 1, 1, "big"), table)
    assert plan.stages[-1].rate == pytest.approx(2000.0)  # 1 / (1/4000 + 1/4000)


def test_clip_runs_where_the_recipe_and_the_cluster_say():
    cpu_cluster = Cluster(workers=2, cores_per_worker=8, gpus_per_worker=0)
    plan = make_plan(_laion(), 1000, cpu_cluster, TABLE)
    clip = plan.stages[-1]
    assert clip.resource == "cpu" and clip.rate == pytest.approx(1 / (1 / 2 + 1 / 4))  # no pairs figure on CPU
    assert plan.gpu_busy_hours == 0 and plan.gpu_hours == 0
    forced = make_plan(_laion(clip={"model": "M", "device": "cpu"}), 1000, Cluster(1, 8, 1, "big"), TABLE)
    assert forced.stages[-1].resource == "cpu"
    with pytest.raises(PlanError, match="no GPU"):
        make_plan(_laion(clip={"model": "M", "device": "cuda"}), 1000, cpu_cluster, TABLE)
    off = make_plan(_laion(clip={"enabled": False}), 1000, cpu_cluster, TABLE)
    assert [s.name for s in off.stages] == ["download", "process"]


def test_mmc4_counts_documents_images_and_sentences():
    docs = 720_000
    plan = make_plan(_mmc4(), docs, Cluster(workers=5, cores_per_worker=2, gpus_per_worker=2, gpu="big"), TABLE)
    by = {s.name: s for s in plan.stages}
    assert by["download"].items == docs * 5 and by["process"].rate == 25.0
    assert by["clip M images"].items == docs * 5 and by["clip M images"].hours == pytest.approx(docs * 5 / 4000 / 3600)
    assert by["clip M sentences"].items == docs * 20
    assert by["clip M sentences"].hours == pytest.approx(docs * 20 / 1000 / 3600)
    assert plan.core_hours == pytest.approx(docs * 5 * (1 / 100 + 1 / 25) / 3600)  # 50 h
    assert plan.cpu_wall_hours == pytest.approx(5.0)  # 10 cores
    assert plan.gpu_wall_hours == pytest.approx((0.25 + 4.0) / 10)  # 10 GPUs
    assert plan.bottleneck.name == "process"
    assert plan.output_bytes == docs * (5 * 200 + 50) and plan.download_bytes == docs * 5 * 1000
    assert "(every document kept" in format_plan(plan)
    more = make_plan(_mmc4(), docs, Cluster(5, 2, 2, "big"), TABLE, images_per_document=10, mean_image_bytes=10)
    assert more.stages[0].items == docs * 10 and more.download_bytes == docs * 10 * 10


def test_near_dedup_distance_and_what_is_not_measured():
    recipe = _laion(dedup={"near": True, "near_max_distance": 4, "semantic": True}, safety={"blocklist": "list.txt"})
    plan = make_plan(recipe, 1000, Cluster(1, 1, 1, "big"), TABLE)
    near = plan.stages[-1]
    assert near.name == "dedup near (distance 4)" and near.rate == 1000.0  # the next measured distance up
    assert any("dedup.semantic" in n and "safety.blocklist" in n for n in plan.notes)
    far = make_plan(_laion(dedup={"near": True, "near_max_distance": 12}), 1000, Cluster(1, 1, 1, "big"), TABLE)
    assert far.stages[-1].rate == 200.0 and any("up to 10" in n for n in far.notes)


def test_bad_requests_are_clear_errors():
    with pytest.raises(PlanError, match="'ViT-H-14'"):
        make_plan(_laion(clip={"model": "ViT-H-14"}), 10, Cluster(gpu="big"), TABLE)
    with pytest.raises(PlanError, match="no figures for GPU 'a100'"):
        make_plan(_laion(), 10, Cluster(gpu="a100"), TABLE)
    with pytest.raises(PlanError):
        make_plan(_laion(), 10, Cluster(workers=0), TABLE)


@pytest.mark.parametrize(
    "text, count",
    [
        ("2300000000", 2_300_000_000),
        ("2.3e9", 2_300_000_000),
        ("2.3B", 2_300_000_000),
        ("100M", 100_000_000),
        ("570_000_000", 570_000_000),
        ("1,000", 1000),
        ("12k", 12_000),
    ],
)
def test_counts_as_people_write_them(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "1.5x"])
def test_bad_counts(text):
    with pytest.raises(ValueError):
        parse_count(text)


# --- the shipped table -----------------------------------------------------------------------


def test_shipped_table_covers_every_shipped_recipe_on_gpus_and_cpus():
    table = load_table()
    for path in RECIPES:
        recipe = load_recipe(path)
        for cluster in (
            Cluster(gpus_per_worker=1, gpu="h200"),
            Cluster(gpus_per_worker=1, gpu="h100"),
            Cluster(gpus_per_worker=0),
        ):
            if cluster.gpus_per_worker == 0 and recipe.clip.device.startswith("cuda"):
                continue
            plan = make_plan(recipe, 1_000_000, cluster, table)
            assert plan.stages and plan.wall_hours > 0, path
            if recipe.clip.enabled:
                assert any(s.name.startswith(f"clip {recipe.clip.model}") for s in plan.stages)


def test_shipped_table_says_where_and_how_each_figure_was_got():
    table = load_table()
    machines = set(table["machines"])
    figures = list(table["stages"].values()) + [f for m in table["clip"].values() for f in m.values()]
    for fig in figures:
        assert fig["basis"] in BASES and fig["machine"] in machines and fig["how"], fig
    for fig in list(table["gpus"].values()) + list(table["corpus"].values()):
        assert fig["basis"] in BASES and fig["how"], fig
    # the headline figures of docs/benchmarks.md
    assert table["clip"]["ViT-L-14"]["gpu"]["images_per_s"] == 2388
    assert table["clip"]["ViT-B-32"]["gpu"]["images_per_s"] == 11270
    assert table["gpus"]["h200"]["relative"] == 1.0
    # the derived CPU stages are the measured rates per CPU-second of the whole path (docs/benchmarks.md:
    # LAION 257.4 rows, MMC4 125.5 images, CLIP off) less the download's CPU (benchmarks/load_test.py: 1,212 rows)
    fetch = 1 / 1212
    assert table["stages"]["process_laion"]["per_s"] == pytest.approx(1 / (1 / 257.4 - fetch), abs=0.1)
    assert table["stages"]["process_mmc4"]["per_s"] == pytest.approx(1 / (1 / (199.6 * 20.0 / 31.8) - fetch), abs=0.1)
    assert Path(MEASURED).is_file()


def test_cli_plan(capsys):
    recipe = str(REPO / "manifests" / "laion2b-en.yaml")
    assert (
        cli.main(["plan", recipe, "--rows", "2.3B", "--workers", "100", "--cores-per-worker", "26", "--gpu", "h100"])
        == 0
    )
    out = capsys.readouterr().out
    assert "2,300,000,000 rows" in out and "clip ViT-B-32" in out and "bottleneck stage:" in out
    assert cli.main(["plan", recipe, "--rows", "1000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"] == 1000 and data["bottleneck"] in {s["name"] for s in data["stages"]}
    assert cli.main(["plan", recipe, "--rows", "10", "--gpu", "tpu"]) == 2
    assert "tpu" in capsys.readouterr().err


def test_docs_plans_are_what_plan_prints(capsys):
    """docs/planning.md's LAION-2B and MMC4 estimates are this command's output, not numbers typed in."""
    page = (REPO / "docs" / "planning.md").read_text()
    blocks = re.findall(r"```\n\$ (flamingo-corpus plan [^\n]+)\n(.*?)```", page, re.S)
    assert len(blocks) >= 2
    for command, shown in blocks:
        argv = shlex.split(command)[1:]
        assert cli.main(argv) == 0
        printed = capsys.readouterr().out
        for key in ("wall-clock:", "worker-hours:", "CPU:", "network:"):
            line = next(line for line in printed.splitlines() if line.startswith(key))
            assert line in shown, (command, line)


def test_the_image_store_and_the_shuffles_are_sized_when_the_table_has_them():
    cluster = Cluster(workers=10, cores_per_worker=4, gpus_per_worker=1, gpu="big")
    assert make_plan(_laion(), 1000, cluster, TABLE).store_bytes is None  # a table without the figures
    table = {
        **TABLE,
        "corpus": {
            **TABLE["corpus"],
            "laion_store_bytes_per_row": {"value": 90.0},
            "laion_shuffle_bytes_per_row": {"value": 7.0},
            "mmc4_store_bytes_per_image": {"value": 180.0},
        },
    }
    plan = make_plan(_laion(clip={"enabled": False}), 1000, cluster, table)
    assert plan.store_bytes == 90_000 and plan.shuffle_bytes == 7_000
    text = format_plan(plan)
    assert "image store: 90.0 kB" in text and "shuffles: 7 B per row, 7.0 kB in all" in text
    assert "embeddings" not in text and "embeddings" in format_plan(make_plan(_laion(), 1000, cluster, table))
    mmc4 = make_plan(_mmc4(), 100, cluster, table)
    assert mmc4.store_bytes == 100 * 5 * 180 and mmc4.shuffle_bytes is None
