"""Runner option files (manifests/runners/), the worker Dockerfile, and the pipeline on separate
worker processes with the dedup and safety stages on.

Dataflow, Spark and Flink cannot run here (no Java, Docker or network), so what is tested is what
can be: every shipped file becomes the PipelineOptions the runner reads (through Beam's own option
classes), mistakes in a file are clear errors, the command line wins, the multi-process file runs
a real build byte-identical to the in-process one, and the Dockerfile installs what setup.cfg pins
with the boot program of the same Beam release.
"""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import os
import re
import sys
import tarfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
from apache_beam.runners.runner import create_runner
from PIL import Image

from flamingo_corpus import cli
from flamingo_corpus.build import run_build, with_cpu_threads
from flamingo_corpus.images import perceptual
from flamingo_corpus.recipe import recipe_from_dict
from flamingo_corpus.runners.local import (
    LocalFnApiRunner,
    cpu_threads_per_worker,
    is_direct,
    local_runner,
    local_workers,
    worker_command,
)
from flamingo_corpus.runners.options import (
    RUNNERS_DIR,
    RunnerOptionsError,
    check_cluster_paths,
    load_runner_options,
    local_paths,
    merge_args,
    runner_args,
)
from flamingo_corpus.sample import synthetic

from ..helpers import index_rows
from ..loopback_build import BASE_RECIPE, jpeg_bytes, serve_rows, smooth_photo
from ..loopback_build import TINY_CLIP as SHARED_TINY_CLIP

REPO = Path(__file__).resolve().parents[2]
FILES = sorted(RUNNERS_DIR.glob("*.yaml"))
# What a user puts in place of the shipped placeholders, on the command line.
FILLED = {
    "project": "my-project",
    "temp_location": "gs://my-bucket/tmp",
    "staging_location": "gs://my-bucket/staging",
    "sdk_container_image": "us-central1-docker.pkg.dev/my-project/flamingo-corpus/worker:0.1.0",
    "environment_config": "registry.example/flamingo-corpus/worker:0.1.0",
}
# Dataflow's accelerator option: worker_accelerator=type:GPU;count:N[;install-nvidia-driver][;...]
ACCELERATOR = re.compile(r"worker_accelerator=type:(nvidia-[a-z0-9-]+);count:([1-9][0-9]*)((?:;[a-z0-9_:=-]+)*)")
# Compute Engine: which machine series carries which GPU (A3 High: H100, G2: L4, A2: A100; N1 takes T4/V100/P100).
GPU_MACHINES = {
    "nvidia-h100-80gb": "a3-highgpu-",
    "nvidia-l4": "g2-",
    "nvidia-tesla-a100": "a2-highgpu-",
    "nvidia-a100-80gb": "a2-ultragpu-",
    "nvidia-tesla-t4": "n1-",
}


def _filled(name: str) -> list:
    """Command-line options that fill the placeholders ``name`` holds."""
    held = {a[2:].split("=", 1)[0] for a in load_runner_options(name) if "YOUR-" in a}
    assert held <= set(FILLED), held
    return [f"--{k}={v}" for k, v in FILLED.items() if k in held]


def _options(name: str) -> PipelineOptions:
    return PipelineOptions(runner_args(name, _filled(name)))


def test_every_shipped_file_loads_and_names_a_runner_beam_has():
    assert {f.stem for f in FILES} >= {
        "direct",
        "direct-multiprocess",
        "dataflow-gpu",
        "dataflow-cpu",
        "spark",
        "flink",
    }
    for path in FILES:
        args = load_runner_options(str(path))
        runner = PipelineOptions(args).view_as(StandardOptions).runner
        assert runner, path
        create_runner(runner)  # Beam knows it (raises for an unknown runner name)


def test_direct_files():
    one = _options("direct").view_as(DirectOptions)
    assert one.direct_running_mode == "in_memory"
    many = _options("direct-multiprocess")
    assert many.view_as(StandardOptions).runner == "DirectRunner"
    assert many.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert many.view_as(DirectOptions).direct_num_workers == 0  # Beam: one worker per core


@pytest.mark.parametrize("name", ["dataflow-gpu", "dataflow-cpu"])
def test_dataflow_files(name):
    opts = _options(name)
    gcp, worker = opts.view_as(GoogleCloudOptions), opts.view_as(WorkerOptions)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    assert gcp.project == "my-project" and gcp.region and gcp.temp_location.startswith("gs://")
    assert worker.sdk_container_image.endswith("worker:0.1.0") and opts.get_all_options()["sdk_location"] == "container"
    assert worker.machine_type and worker.disk_size_gb >= 50 and worker.max_num_workers >= worker.num_workers >= 1
    assert worker.autoscaling_algorithm == "THROUGHPUT_BASED" and worker.use_public_ips is True  # workers fetch the web
    assert "use_runner_v2" in opts.view_as(DebugOptions).experiments
    assert PipelineOptionsValidator(opts, create_runner("DataflowRunner")).validate() == []
    accelerators = [m for m in map(ACCELERATOR.fullmatch, gcp.dataflow_service_options or []) if m]
    if name == "dataflow-cpu":
        assert not accelerators and not any("accelerator" in o for o in gcp.dataflow_service_options or [])
        return
    (acc,) = accelerators
    gpu, count, flags = acc.group(1), int(acc.group(2)), acc.group(3).split(";")[1:]
    assert count == 1 and "install-nvidia-driver" in flags
    assert worker.machine_type.startswith(GPU_MACHINES[gpu]), (gpu, worker.machine_type)


@pytest.mark.parametrize("name, environment", [("spark", "DOCKER"), ("flink", "EXTERNAL")])
def test_portable_files(name, environment):
    opts = _options(name)
    portable = opts.view_as(PortableOptions)
    assert opts.view_as(StandardOptions).runner == "PortableRunner"
    assert re.fullmatch(r"[\w.-]+:\d+", portable.job_endpoint)
    assert portable.environment_type == environment and portable.environment_config
    if environment == "EXTERNAL":  # the worker pool's address
        assert re.fullmatch(r"[\w.-]+:\d+", portable.environment_config)


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "opts.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "runner: DataflowRunner\nmachine_typ: n2-standard-16\n",
            "unknown Beam pipeline option 'machine_typ'; did you mean machine_type",
        ),
        ("direct_running_mode: multiprocessing\n", "invalid choice: 'multiprocessing'"),
        ("num_workers: many\n", "invalid int value: 'many'"),
        ("use_public_ips: yes please\n", "use_public_ips is a switch"),
        ("machine_type: [a, b]\n", "machine_type takes one value, not a list"),
        ("experiments: {a: 1}\n", "experiments takes a value or a list, not a mapping"),
        ("- runner\n", "expected a mapping"),
        ("runner: [DirectRunner\n", "not valid YAML"),
    ],
)
def test_mistakes_in_a_file_are_clear_errors(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(RunnerOptionsError) as e:
        load_runner_options(path)
    assert message in str(e.value) and path in str(e.value)


def test_placeholders_left_in_a_file_stop_the_build_unless_the_command_line_fills_them():
    with pytest.raises(RunnerOptionsError) as e:
        runner_args("dataflow-gpu", ["--project=my-project"])
    assert "YOUR-BUCKET" in str(e.value) and "--project=YOUR-PROJECT" not in str(e.value)
    assert not any("YOUR-" in a for a in runner_args("dataflow-gpu", _filled("dataflow-gpu")))


def test_the_command_line_wins(tmp_path):
    path = _write(
        tmp_path,
        "\n".join(
            [
                "runner: DataflowRunner",
                "machine_type: n2-standard-16",
                "num_workers: 10",
                "use_public_ips: true",
                "experiments: [use_runner_v2, shuffle_mode=service]",
                "dataflow_service_options:",
                "  - worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
                "  - enable_prime",
                "hdfs_host: null",
                "",
            ]
        ),
    )
    args = runner_args(
        path,
        [
            "--machine_type",
            "g2-standard-32",
            "--num_workers=3",
            "--no_use_public_ips",
            "--dataflow_service_options=worker_accelerator=type:nvidia-h100-80gb;count:1",
            "--experiments=shuffle_mode=appliance",
        ],
    )
    opts = PipelineOptions(args)
    worker, gcp = opts.view_as(WorkerOptions), opts.view_as(GoogleCloudOptions)
    assert worker.machine_type == "g2-standard-32" and worker.num_workers == 3
    assert worker.use_public_ips is False
    # list options: the command line's entry replaces the file's entry of the same name, the rest stay
    assert gcp.dataflow_service_options == ["enable_prime", "worker_accelerator=type:nvidia-h100-80gb;count:1"]
    assert opts.view_as(DebugOptions).experiments == ["use_runner_v2", "shuffle_mode=appliance"]
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    assert runner_args(None, ["--direct_num_workers=3"]) == ["--direct_num_workers=3"]
    with pytest.raises(RunnerOptionsError, match="not_a_beam_option"):  # Beam would only log it
        runner_args(path, ["--not_a_beam_option=1"])


def test_a_false_switch_gives_the_other_sense_and_merging_keeps_token_pairs(tmp_path):
    assert load_runner_options(_write(tmp_path, "use_public_ips: false\n")) == ["--no_use_public_ips"]
    assert load_runner_options(_write(tmp_path, "no_use_public_ips: false\n")) == ["--use_public_ips"]
    assert load_runner_options(_write(tmp_path, "spark_submit_uber_jar: false\n")) == []  # Beam's default
    assert load_runner_options(_write(tmp_path, "spark_submit_uber_jar: true\n")) == ["--spark_submit_uber_jar"]
    assert merge_args(["--runner=DirectRunner", "--direct_num_workers", "4"], ["--direct_num_workers=2"]) == [
        "--runner=DirectRunner",
        "--direct_num_workers=2",
    ]


def test_build_and_sample_take_runner_options(monkeypatch, tmp_path, capsys):
    seen = []

    def fake_run_build(recipe, output, beam_args, overwrite=False, **options):
        seen.append(list(beam_args))
        raise FileNotFoundError("stop here")

    monkeypatch.setattr("flamingo_corpus.build.run_build", fake_run_build)
    recipe = str(REPO / "manifests" / "sample-laion.yaml")
    assert (
        cli.main(
            [
                "build",
                recipe,
                "--output",
                str(tmp_path / "o"),
                "--runner-options",
                "direct-multiprocess",
                "--direct_num_workers=2",
            ]
        )
        == 2
    )
    assert seen[-1] == ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    with pytest.raises(FileNotFoundError):
        cli.main(
            [
                "sample",
                "--recipe",
                recipe,
                "--output",
                str(tmp_path / "s"),
                "--runner-options",
                str(RUNNERS_DIR / "direct.yaml"),
            ]
        )
    assert seen[-1] == ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
    assert cli.main(["build", recipe, "--output", str(tmp_path / "o"), "--runner-options", "dataflow-gpu"]) == 2
    assert "YOUR-PROJECT" in capsys.readouterr().err and len(seen) == 2


# --- the worker image ----------------------------------------------------------------------


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _requirements(cfg) -> dict:
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines()]
    reqs = [r for r in reqs if r and not r.startswith("#")]
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower(): r for r in reqs}


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def _arg(text: str, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)", text, re.M).group(1)


def test_dockerfile_boot_program_is_from_the_pinned_beam_release():
    text = _dockerfile()
    pin = re.fullmatch(r"apache-beam==([0-9.]+)", _requirements(_setup_cfg())["apache-beam"]).group(1)
    assert _arg(text, "BEAM_VERSION") == pin
    stage = re.search(r"^FROM apache/beam_python\$\{PYTHON_VERSION\}_sdk:\$\{BEAM_VERSION\} AS (\w+)$", text, re.M)
    assert stage, "the SDK image must be the official one of BEAM_VERSION"
    assert re.search(rf"^COPY --from={stage.group(1)} /opt/apache/beam /opt/apache/beam$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', text, re.M)
    assert text.rstrip().splitlines()[-1].startswith("ENTRYPOINT")
    # the Python of the CUDA base is the one the SDK image is chosen for
    ubuntu_python = {"ubuntu24.04": "3.12", "ubuntu22.04": "3.10"}
    base = _arg(text, "CUDA_IMAGE")
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base
    assert ubuntu_python[base.rsplit("-", 1)[1]] == _arg(text, "PYTHON_VERSION")


def test_dockerfile_installs_the_project_from_setup_cfg_and_repeats_no_version():
    text, cfg = _dockerfile(), _setup_cfg()
    assert re.search(r'pip install "\.\[\$\{EXTRAS\}\]"', text)
    extras = set(_arg(text, "EXTRAS").split(","))
    assert extras <= set(cfg["options.extras_require"]) and {"gcp", "aws", "hadoop"} <= extras
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for name in _requirements(cfg):
        assert not re.search(rf"\b{re.escape(name)}\s*(==|>=|<=|~=|<|>)", code, re.I), (
            f"{name} pinned in the Dockerfile"
        )
    assert not re.search(r"pip install[^\n]*\b(torch|torchvision)\b", code)
    # everything `pip install .` reads is copied in and not ignored by .dockerignore
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # the folders the package is installed from (setup.cfg package_dir: pipeline/, filters/)
    packages = [line.split("=")[1].strip() for line in cfg["options"]["package_dir"].strip().splitlines()]
    readme = cfg["metadata"]["long_description"].split("file:")[1].strip()
    for needed in ["setup.cfg", "pyproject.toml", readme, *packages]:
        assert re.search(rf"^COPY [^\n]*\b{re.escape(needed)}\b", text, re.M), needed
        assert f"!{needed}" in ignore or f"!{needed}/" in ignore, needed
    assert ignore[0] == "*"


# --- separate worker processes, with the dedup and safety stages on ------------------------------

TINY_CLIP = {**SHARED_TINY_CLIP, "batch_size": 8}


def _pictures() -> dict:
    """Pictures each of the stages has work on: exact copies, recompressed copies (near),
    re-rendered scenes that CLIP finds alike (semantic), and pictures the removal list names."""
    files = {f"photo{i}.jpg": jpeg_bytes(smooth_photo(200 + i)) for i in range(8)}
    files["exact.jpg"] = files["photo0.jpg"]
    files["recompressed.jpg"] = jpeg_bytes(smooth_photo(201), quality=40)
    for i, scene in enumerate(synthetic.scenes(11, 12)):  # the shape moved a little: pHash-far, CLIP-close
        moved = dataclasses.replace(scene, jitter_x=scene.jitter_x + 0.08, jitter_y=scene.jitter_y - 0.06)
        files[f"scene{i}.jpg"] = jpeg_bytes(synthetic.render(scene))
        files[f"moved{i}.jpg"] = jpeg_bytes(synthetic.render(moved))
    files["listed.jpg"] = jpeg_bytes(smooth_photo(300))
    files["listed-copy.jpg"] = jpeg_bytes(smooth_photo(300), quality=50)
    return files


def _build(tmp_path: Path, recipe: dict, out: str, beam_args) -> tuple:
    result = run_build(recipe_from_dict(recipe, base_dir=tmp_path), str(tmp_path / out), beam_args)
    index = index_rows(tmp_path / out)
    tars = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / out).glob("*.tar"))}
    return result, sorted(index, key=lambda r: r["id"]), tars


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_multiprocess_file_builds_byte_identical_shards_with_dedup_and_safety_on(tmp_path, tiny_clip_checkpoint):
    """The direct-multiprocess option file runs the LAION pipeline with near and semantic dedup
    and a removal list on two worker processes: nothing may rely on sharing a process (models
    load in setup, the removal list and centroids come as side inputs, groups through shuffles),
    so the tars, index and counts equal the in-process build's byte for byte.  Both builds use
    one server, so that the URLs (and the provenance written into the tars) are the same; that is
    why this test does not go through build_over_loopback, which starts a server per build."""
    files = _pictures()
    web = tmp_path / "web"
    with serve_rows(tmp_path, files) as server:
        (tmp_path / "removal.txt").write_text(
            f"url:{server.url}/photo7.jpg\nphash:{perceptual.phash(Image.open(web / 'listed.jpg'))}\n"
        )
        recipe = {
            **BASE_RECIPE,
            "input": {"path": str(tmp_path / "rows.parquet")},
            "clip": TINY_CLIP,
            "image": {"resize_mode": "center_crop", "image_size": 224},
            "dedup": {
                "exact": True,
                "near": True,
                "near_max_distance": 5,
                "semantic": True,
                "semantic_clusters": 2,
                "semantic_max_similarity": 0.9,
                "semantic_fit_rows": 100,
            },
            "safety": {"blocklist": "removal.txt", "blocklist_phash_distance": 8},
            "shard": {"samples_per_shard": 4},
        }
        one, one_index, one_tars = _build(tmp_path, recipe, "one", [])
        multi_args = runner_args("direct-multiprocess", ["--direct_num_workers=2"])
        assert "--direct_running_mode=multi_processing" in multi_args
        two, two_index, two_tars = _build(tmp_path, recipe, "two", multi_args)

    # every stage had work, so equality below means something
    for drop in (
        "dedup/duplicate_image",
        "near_dup/near_duplicate",
        "sem_dedup/semantic_duplicate",
        "safety/blocklisted",
    ):
        assert one.drops.get(drop, 0) > 0, (drop, one.drops)
    assert len(one_tars) >= 2 and one.kept + sum(one.drops.values()) == len(files)
    assert two_tars == one_tars  # byte-identical shards
    assert sorted(two.shards, key=lambda s: s["name"]) == sorted(one.shards, key=lambda s: s["name"])
    assert two.drops == one.drops
    assert two_index == one_index
    for name in one_tars:  # and they are tars the loader can open
        with tarfile.open(tmp_path / "two" / name) as tar:
            assert tar.getnames()


def test_dataflow_refuses_local_paths_before_the_job_starts(tmp_path, capsys):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        "name: r\ninput:\n  path: gs://b/in/*.parquet\nclip:\n  enabled: false\nsafety:\n  blocklist: removal.txt\n"
    )
    args = ["build", str(recipe_path), "--runner-options", "dataflow-cpu", *_filled("dataflow-cpu")]
    assert cli.main(args + ["--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--output: " in err and "safety.blocklist: " + str(tmp_path / "removal.txt") in err
    assert "input.path" not in err  # gs:// is fine
    recipe = recipe_from_dict({"input": {"path": "gs://b/x"}, "clip": {"pretrained": "/ckpt/model.pt"}})
    assert local_paths(recipe, "s3://b/out") == ["clip.pretrained: /ckpt/model.pt"]
    check_cluster_paths(recipe, "/local/out", ["--runner=DirectRunner"])  # local runs read local files


# --- the runner of local builds ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,direct",
    [
        ([], True),
        (["--runner=DirectRunner"], True),
        (["--runner=direct"], True),
        (["--runner=apache_beam.runners.direct.direct_runner.SwitchingDirectRunner"], True),
        (["--runner=DataflowRunner"], False),
        (["--runner=PortableRunner"], False),
        (["--runner=PrismRunner"], False),
    ],
)
def test_only_direct_runs_get_the_local_runner(args, direct):
    options = PipelineOptions(args)
    assert is_direct(options) is direct
    runner = local_runner(options)
    assert isinstance(runner, LocalFnApiRunner) if direct else runner is None


_HELD_UNTIL_EXIT: list = []  # in a worker: what lives until the process ends


class _WorkerMain(beam.DoFn):
    """The module the worker process that runs it was started as.  Like a library that makes a
    temporary folder at import (wandb, which open_clip's timm imports, makes two), it keeps one
    until its process ends, for the exit to remove."""

    def __init__(self, folder: str):
        self.folder = folder

    def setup(self):
        import tempfile

        _HELD_UNTIL_EXIT.append(tempfile.TemporaryDirectory(dir=self.folder))

    def process(self, x):
        main = sys.modules["__main__"]
        yield x, getattr(main.__spec__, "name", None), os.getpid()


def test_local_worker_processes_run_our_worker_main_and_give_the_same_results(tmp_path):
    """multi_processing workers are started as flamingo_corpus.runners.local_worker (Beam's harness, without the
    interpreter teardown at its end), their results come back whole, and their exit handlers
    still run: a temporary folder held until exit is gone when the pipeline is."""
    from apache_beam.testing.util import assert_that

    from ..beam_util import local_pipeline

    main_pid = os.getpid()

    def check(rows, main_pid=main_pid):  # runs in a worker: a failure fails the pipeline
        assert sorted(x for x, _, _ in rows) == list(range(40))
        assert {name for _, name, _ in rows} == {"flamingo_corpus.runners.local_worker"}
        assert main_pid not in {pid for _, _, pid in rows}

    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with local_pipeline(options) as p:
        rows = p | beam.Create(list(range(40))) | beam.Reshuffle() | beam.ParDo(_WorkerMain(str(tmp_path)))
        assert_that(rows, check)
    assert list(tmp_path.iterdir()) == []


def test_a_subprocess_environment_the_user_set_keeps_its_command(tmp_path, monkeypatch):
    import tempfile

    from apache_beam.transforms import environments

    # A Pipeline that is never run keeps the temporary folder it made: make it under tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def proto(command):
        p = beam.Pipeline()
        _ = p | beam.Create([1]) | beam.Map(lambda x: x)
        return p.to_runner_api(default_environment=environments.SubprocessSDKEnvironment.from_command_string(command))

    beams = proto(worker_command("apache_beam.runners.worker.sdk_worker_main"))
    assert LocalFnApiRunner.use_local_worker(beams) == 1
    commands = {e.payload.decode() for e in beams.components.environments.values() if e.payload}
    assert "exec " + worker_command("flamingo_corpus.runners.local_worker") in commands
    users = proto("/opt/my-python -m my_worker")
    before = users.SerializeToString()
    assert LocalFnApiRunner.use_local_worker(users) == 0
    assert users.SerializeToString() == before


def test_local_builds_never_start_the_prism_runner_and_the_numbering_dedup_runs_on_two_processes(tmp_path, monkeypatch):
    """Beam's DirectRunner would first try its Prism runner, which downloads a binary from GitHub:
    a local build must not (any start of it is recorded here).  The same build, exact image dedup
    applied inside the shard numbering (no near or semantic dedup), gives byte-identical shards
    and the same index on one process and on two worker processes."""
    from apache_beam.runners.portability import prism_runner

    started = []
    original = prism_runner.PrismRunner.run_pipeline
    monkeypatch.setattr(
        prism_runner.PrismRunner,
        "run_pipeline",
        lambda self, *a, **kw: started.append(self) or original(self, *a, **kw),
    )
    files = {f"photo{i}.jpg": jpeg_bytes(smooth_photo(400 + i)) for i in range(10)}
    files["copy-of-3.jpg"] = files["photo3.jpg"]
    files["copy-of-5.jpg"] = files["photo5.jpg"]
    with serve_rows(tmp_path, files):
        recipe = {
            **BASE_RECIPE,
            "input": {"path": str(tmp_path / "rows.parquet")},
            "dedup": {"exact": True, "near": False, "semantic": False},
            "shard": {"samples_per_shard": 4},
        }
        one, one_index, one_tars = _build(tmp_path, recipe, "one", [])
        two, two_index, two_tars = _build(
            tmp_path, recipe, "two", runner_args("direct-multiprocess", ["--direct_num_workers=2"])
        )
    assert started == []
    assert one.drops == {"dedup/duplicate_image": 2} and one.kept == 10
    duplicates = {r["url"].rsplit("/", 1)[1]: r["duplicate_of"] for r in one_index if r["reason"] == "duplicate_image"}
    ids = {r["url"].rsplit("/", 1)[1]: r["id"] for r in one_index}
    assert duplicates == {"copy-of-3.jpg": ids["photo3.jpg"], "copy-of-5.jpg": ids["photo5.jpg"]}
    assert two_tars == one_tars and len(one_tars) == 3
    assert two_index == one_index and two.drops == one.drops


@pytest.mark.parametrize(
    "args,workers",
    [
        ([], 1),
        (["--direct_running_mode=in_memory"], 1),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 2),
        (["--direct_running_mode=multi_threading", "--direct_num_workers=3"], 3),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=0"], os.cpu_count()),
        (["--runner=DataflowRunner"], None),
    ],
)
def test_local_workers_share_out_the_cores_for_torch(args, workers):
    options = PipelineOptions(args)
    assert local_workers(options) == workers
    expected = None if workers is None else max(1, os.cpu_count() // workers)
    assert cpu_threads_per_worker(options) == expected
    recipe = recipe_from_dict({**BASE_RECIPE, "clip": TINY_CLIP})
    filled = with_cpu_threads(recipe, options)
    assert filled.clip.cpu_threads == expected
    assert dataclasses.replace(filled, clip=recipe.clip) == recipe  # nothing else changes
    # a recipe's own value wins, and a build without CLIP is left alone
    own = recipe_from_dict({**BASE_RECIPE, "clip": {**TINY_CLIP, "cpu_threads": 5}})
    assert with_cpu_threads(own, options).clip.cpu_threads == 5
    off = recipe_from_dict({**BASE_RECIPE, "clip": {"enabled": False}})
    assert with_cpu_threads(off, options) == off


def test_clip_on_the_cpu_runs_the_threads_it_is_given(tiny_clip_checkpoint):
    import torch

    from flamingo_corpus.clip.model import load_clip
    from flamingo_corpus.recipe import ClipConfig

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        load_clip(
            ClipConfig(model="flamingo-tiny-clip", pretrained=str(tiny_clip_checkpoint), device="cpu", cpu_threads=1)
        )
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        load_clip(ClipConfig(model="flamingo-tiny-clip", pretrained=str(tiny_clip_checkpoint), device="cpu"))
        assert torch.get_num_threads() == 2  # not set: torch's own setting stays
    finally:
        torch.set_num_threads(before)


def test_an_embedded_portable_run_drives_as_many_external_workers_as_asked():
    """PortableRunner with job_endpoint embed: Beam's job service would run its FnApiRunner with
    one SDK worker; the build runs that engine itself with sdk_worker_parallelism workers, in the
    environment the options name (portable-external.yaml: EXTERNAL worker pools)."""
    from apache_beam.portability import common_urns
    from apache_beam.transforms import environments

    args = runner_args("portable-external", ["--environment_config=10.1.2.3:50000"])
    options = PipelineOptions(args)
    runner = local_runner(options)
    assert isinstance(runner, LocalFnApiRunner) and runner.workers == 2
    env = runner._default_environment  # noqa: SLF001 - what the FnApiRunner starts workers in
    assert isinstance(env, environments.ExternalEnvironment) and env.url == "10.1.2.3:50000"
    assert env.to_runner_api(None).urn == common_urns.environments.EXTERNAL.urn
    assert cpu_threads_per_worker(options) is None  # the workers' machines are not this one
    # a job server of its own (Spark, Flink) is Beam's to drive
    assert local_runner(PipelineOptions(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])) is None
