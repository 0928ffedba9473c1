"""Workers on other hosts: the LAION and MMC4 samples built through Beam's PortableRunner with
EXTERNAL worker pools in network namespaces of their own (tests/cluster.py), compared with the
local build of the same recipe.

What a worker host has: its own network (a veth pair on a private /30), hostname, /etc/hosts,
/tmp and $HOME, the project's virtual environment (the stand-in for the worker image), and the
one shared folder, where the recipe's inputs, the removal list, the eval index, the CLIP
checkpoint and the output are.  The images are served on the launcher's veth address and the
recipe's URLs name it, as a web the workers reach.  The launcher runs the documented command
(`flamingo-corpus build ... --runner-options portable-external --environment_config=HOST:PORT`)
under a hostname its workers resolve.

Skipped where namespaces, veth links or mounts are not permitted (not root, a container without
CAP_NET_ADMIN / CAP_SYS_ADMIN).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flamingo_corpus import cli
from flamingo_corpus.build import run_build
from flamingo_corpus.recipe import load_recipe
from flamingo_corpus.sample.web import SampleWeb

from .. import cluster
from ..helpers import index_rows

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "pipeline" / "assets" / "sample"
SAMPLE_ORIGIN = "http://127.0.0.1:8741"  # what the bundled samples' URLs name

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, tiny_clip_checkpoint):
    why = cluster.check()
    if why:
        pytest.skip(f"no worker hosts here: {why}")
    root = tmp_path_factory.mktemp("cluster")
    shared = root / "shared"
    shared.mkdir()
    shutil.copy(tiny_clip_checkpoint, shared / "tiny-clip.pt")
    with cluster.Cluster(shared, root / "launcher", hosts=2) as c:
        yield c


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _outputs(out: Path) -> dict:
    return {
        "tars": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))},
        "sizes": (out / "sizes.json").read_bytes(),
        "index": index_rows(out),
        "manifest": json.loads((out / "manifest.json").read_text()),
    }


def _recipe(c: cluster.Cluster, name: str, origin: str) -> Path:
    """The sample recipe ``name`` on the shared folder: its input with the URLs on ``origin``
    (the launcher's veth address), no embedded web, the CLIP checkpoint, a removal list and an
    eval index as paths on the shared folder."""
    shared = c.shared
    recipe = yaml.safe_load((REPO / "manifests" / f"sample-{name}.yaml").read_text())
    recipe.pop("sample_web")
    recipe["clip"]["pretrained"] = str(shared / "tiny-clip.pt")
    if name == "laion":
        table = pq.read_table(SAMPLE / "laion" / "metadata.parquet")
        urls = [u.replace(SAMPLE_ORIGIN, origin) for u in table.column("URL").to_pylist()]
        pq.write_table(table.set_column(0, "URL", pa.array(urls)), shared / "laion.parquet")
        recipe["input"]["path"] = str(shared / "laion.parquet")
        # A removal list that names one URL, and an eval index of two of the sample's pictures.
        (shared / "removal.txt").write_text(f"url:{origin}/img/00002.jpg\n")
        recipe["safety"] = {"blocklist": str(shared / "removal.txt")}
        eval_dir = shared / "eval" / "coco"
        eval_dir.mkdir(parents=True, exist_ok=True)
        for n in ("00010", "00020"):
            shutil.copy(SAMPLE / "laion" / "web" / "img" / f"{n}.jpg", eval_dir / f"{n}.jpg")
        assert cli.main(["index-eval", str(eval_dir), "--output", str(shared / "eval.index"), "--no-clip"]) == 0
        recipe["decontamination"] = {"index": str(shared / "eval.index")}
    else:
        text = (SAMPLE / "mmc4" / "docs.jsonl").read_text()
        (shared / "mmc4.jsonl").write_text(text.replace(SAMPLE_ORIGIN, origin))
        recipe["input"]["path"] = str(shared / "mmc4.jsonl")
    path = shared / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("name", ["laion", "mmc4"])
def test_a_build_on_worker_hosts_equals_the_local_build(hosts, name):
    c = hosts
    port = _free_port(c.launcher_ip)
    origin = f"http://{c.launcher_ip}:{port}"
    recipe_path = _recipe(c, name, origin)
    web_root = SAMPLE / name / "web"

    # On the worker hosts: the documented command, run as the launcher.
    remote = c.shared / f"{name}-remote"
    command = [sys.executable, "-m", "flamingo_corpus", "build", str(recipe_path), "--output", str(remote)]
    command += ["--runner-options", "portable-external", f"--environment_config={c.dispatcher.address}"]
    started = len(c.dispatcher.started)
    with SampleWeb(web_root, host=c.launcher_ip, port=port):  # a fresh web: its flaky URLs fail anew
        done = c.launch(command, timeout=1800)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}\n{c.pool_logs()}"
    # every SDK worker was asked of a pool on a worker host, one on each
    assert sorted(c.dispatcher.started[started:]) == sorted(f"{ip}:{cluster.POOL_PORT}" for ip in c.host_ips)

    # Here, in one process, the same recipe (the same URLs, so the same provenance in the tars).
    local = c.shared / f"{name}-local"
    with SampleWeb(web_root, host=c.launcher_ip, port=port):
        run_build(load_recipe(recipe_path), str(local))

    ours, theirs = _outputs(local), _outputs(remote)
    assert ours["tars"] and theirs["tars"] == ours["tars"]  # byte-identical shards
    assert theirs["sizes"] == ours["sizes"]
    # The index: the same rows; its files are cut by the runner (num_shards 0), so compared as a set.
    by_id = sorted(ours["index"], key=lambda r: r["id"])
    assert sorted(theirs["index"], key=lambda r: r["id"]) == by_id
    assert len({r["id"] for r in by_id}) == len(by_id)  # no row twice
    for key in ("shards", "totals", "drops", "recipe_sha256", "inputs"):
        assert theirs["manifest"].get(key) == ours["manifest"].get(key), key
    if name == "laion":  # the files on the shared folder were read by the workers
        drops = ours["manifest"]["drops"]
        assert drops.get("safety/blocklisted", 0) >= 1 and drops.get("decontaminate/eval_overlap", 0) >= 1, drops
    assert not list(remote.glob("*.tmp*")) and not (remote / "_build").exists()
