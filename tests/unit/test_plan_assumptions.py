"""plan says which GPUs it assumed, and warns when the plan depends on them."""

from __future__ import annotations

from flamingo_corpus import cli

ARGS = ["plan", "manifests/mmc4.yaml", "--rows", "1M", "--workers", "10", "--cores-per-worker", "64"]


def test_the_assumed_gpu_is_said_and_a_gpu_bound_plan_warns(capsys):
    assert cli.main(ARGS) == 0
    out = capsys.readouterr().out
    assert out.startswith("assuming 1 GPU (h200) per worker")
    assert "warning: this plan is GPU-bound" in out and "CLIP on the CPUs alone" in out


def test_given_gpus_are_not_called_an_assumption(capsys):
    assert cli.main([*ARGS, "--gpus-per-worker", "1"]) == 0
    out = capsys.readouterr().out
    assert "assuming" not in out and "GPU-bound" in out


def test_a_cpu_only_plan_neither_assumes_nor_warns(capsys):
    assert cli.main([*ARGS, "--gpus-per-worker", "0"]) == 0
    out = capsys.readouterr().out
    assert "assuming" not in out and "GPU-bound" not in out and "no GPU" in out
