"""What a build of a whole corpus would take: `flamingo-corpus plan RECIPE --rows N`.

A LAION-2B or full-MMC4 build runs for hours on hundreds of machines; its cost should be known
before it starts, and from figures that were measured, not hoped for.  The planner reads the
recipe to know which stages run (CLIP on or off and with which model, near dedup, MMC4
documents), takes each stage's measured throughput from ``pipeline/assets/measured.json`` (per CPU core or
per GPU, with the machine and the basis of every figure), and scales them to the corpus and the
cluster:

- resource-hours of each stage: items / rate, in core-hours or GPU-hours;
- wall-clock: the CPU stages share the workers' cores and the GPU stage their GPUs; Beam fuses
  download, processing and CLIP into one stage, so the two overlap and the run takes as long as
  the busier of the two (start-up, autoscaling and the shuffles before dedup and sharding come on
  top: the figure is a floor);
- the bottleneck: the stage with the most hours on the busier resource;
- bytes from the web (images x mean image size) and bytes written (every row kept: an upper
  bound).

Work is counted as if every row were downloaded and processed: rows that fail early cost less,
so these are upper bounds on work and lower bounds on nothing but wall-clock.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from ..errors import UserError
from ..paths import ASSETS
from ..recipe import Recipe

MEASURED = ASSETS / "measured.json"  # shipped in the package


class PlanError(UserError, ValueError):
    """A plan that cannot be made: a stage without a figure, a cluster that cannot run it."""


@dataclass(frozen=True)
class Cluster:
    workers: int = 100
    cores_per_worker: int = 16
    gpus_per_worker: int = 1
    gpu: str = "h200"  # a key of the table's "gpus" (its figures are scaled by "relative")

    @property
    def cores(self) -> int:
        return self.workers * self.cores_per_worker

    @property
    def gpus(self) -> int:
        return self.workers * self.gpus_per_worker


@dataclass(frozen=True)
class StagePlan:
    name: str
    unit: str
    items: float
    resource: str  # "cpu" (rate per core) or "gpu" (rate per GPU)
    rate: float
    basis: str  # measured | derived | extrapolated | assumed

    @property
    def hours(self) -> float:
        """Core-hours or GPU-hours."""
        return self.items / self.rate / 3600


@dataclass
class Plan:
    recipe: str
    corpus: str
    rows: int
    cluster: Cluster
    stages: List[StagePlan]
    download_bytes: float
    output_bytes: float
    notes: List[str] = field(default_factory=list)
    store_bytes: Optional[float] = None  # the image store: every downloaded image and every fetched row's record
    shuffle_bytes: Optional[float] = None  # bytes through the runner's shuffles (GroupByKey inputs), all stages
    clip: bool = False  # the recipe runs CLIP (its embeddings ride the shuffles after it)

    def _hours(self, resource: str) -> float:
        return sum(s.hours for s in self.stages if s.resource == resource)

    @property
    def core_hours(self) -> float:
        return self._hours("cpu")

    @property
    def gpu_busy_hours(self) -> float:
        return self._hours("gpu")

    @property
    def cpu_wall_hours(self) -> float:
        return self.core_hours / self.cluster.cores

    @property
    def gpu_wall_hours(self) -> float:
        busy = self.gpu_busy_hours
        return busy / self.cluster.gpus if busy else 0.0

    @property
    def wall_hours(self) -> float:
        return max(self.cpu_wall_hours, self.gpu_wall_hours)

    @property
    def worker_hours(self) -> float:
        return self.wall_hours * self.cluster.workers

    @property
    def gpu_hours(self) -> float:
        """GPU-hours paid for: every worker's GPUs for the whole run."""
        return self.wall_hours * self.cluster.gpus

    @property
    def bound(self) -> str:
        return "gpu" if self.gpu_wall_hours > self.cpu_wall_hours else "cpu"

    @property
    def bottleneck(self) -> StagePlan:
        return max((s for s in self.stages if s.resource == self.bound), key=lambda s: s.hours)

    def alone_hours(self, stage: StagePlan) -> float:
        """Wall-clock of a stage with the whole cluster's cores or GPUs to itself."""
        return stage.hours / (self.cluster.cores if stage.resource == "cpu" else self.cluster.gpus)

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe,
            "corpus": self.corpus,
            "rows": self.rows,
            "cluster": asdict(self.cluster),
            "stages": [{**asdict(s), "hours": s.hours, "alone_hours": self.alone_hours(s)} for s in self.stages],
            "core_hours": self.core_hours,
            "gpu_busy_hours": self.gpu_busy_hours,
            "wall_hours": self.wall_hours,
            "worker_hours": self.worker_hours,
            "gpu_hours": self.gpu_hours,
            "bound": self.bound,
            "bottleneck": self.bottleneck.name,
            "download_bytes": self.download_bytes,
            "output_bytes": self.output_bytes,
            "store_bytes": self.store_bytes,
            "shuffle_bytes": self.shuffle_bytes,
            "notes": self.notes,
        }


def load_table(path: Optional[str] = None) -> dict:
    with open(path or MEASURED) as f:
        return json.load(f)


def _clip_figures(table: dict, model: str, where: str) -> dict:
    try:
        return table["clip"][model][where]
    except KeyError:
        raise PlanError(
            f"no measured {where.upper()} throughput for CLIP model {model!r} in the table; "
            "run benchmarks/clip_throughput.py on the machine and add it to pipeline/assets/measured.json"
        ) from None


def _clip_where(recipe: Recipe, cluster: Cluster) -> str:
    device = recipe.clip.device
    if device == "cpu":
        return "cpu"
    if cluster.gpus_per_worker > 0:
        return "gpu"
    if device.startswith("cuda"):
        raise PlanError(f"the recipe runs CLIP on {device} but the workers have no GPU (--gpus-per-worker 0)")
    return "cpu"


def _near_rate(table: dict, distance: int, notes: List[str]) -> float:
    by = {int(k): v for k, v in table["stages"]["dedup_near"]["per_s_by_distance"].items()}
    above = [k for k in sorted(by) if k >= distance]
    if not above:
        notes.append(
            f"dedup.near at distance {distance}: only distances up to {max(by)} were measured; "
            f"the figure of {max(by)} is used and the real cost is higher"
        )
        return by[max(by)]
    return by[above[0]]


# Recipe features that run but were not benchmarked: they are named, not counted.
def _unmeasured(recipe: Recipe) -> List[str]:
    out = []
    if recipe.dedup.semantic:
        out.append("dedup.semantic (k-means fit on one worker, pairs compared within clusters)")
    if recipe.safety.blocklist:
        out.append("safety.blocklist")
    if recipe.safety.nsfw_head:
        out.append("safety.nsfw_head")
    if recipe.decontamination.index:
        out.append("decontamination.index")
    if recipe.input.corpus == "mmc4" and recipe.dedup.max_image_documents is not None:
        out.append("dedup.max_image_documents")
    return out


def _value(table: dict, key: str) -> float:
    return float(table["corpus"][key]["value"])


def make_plan(
    recipe: Recipe,
    rows: int,
    cluster: Cluster,
    table: Optional[dict] = None,
    *,
    images_per_document: Optional[float] = None,
    sentences_per_document: Optional[float] = None,
    mean_image_bytes: Optional[float] = None,
) -> Plan:
    """The plan of ``recipe`` over ``rows`` input rows (LAION) or documents (MMC4) on ``cluster``."""
    table = table if table is not None else load_table()
    if rows < 1 or cluster.workers < 1 or cluster.cores_per_worker < 1 or cluster.gpus_per_worker < 0:
        raise PlanError("rows, workers and cores per worker must be at least 1, GPUs per worker at least 0")
    if cluster.gpus_per_worker and cluster.gpu not in table["gpus"]:
        raise PlanError(f"no figures for GPU {cluster.gpu!r}; the table has {', '.join(sorted(table['gpus']))}")
    stages_t, notes = table["stages"], []
    mmc4 = recipe.input.corpus == "mmc4"
    ipd = images_per_document if images_per_document is not None else _value(table, "mmc4_images_per_document")
    spd = sentences_per_document if sentences_per_document is not None else _value(table, "mmc4_sentences_per_document")
    images = rows * ipd if mmc4 else float(rows)

    def cpu_stage(name: str, key: str, items: float) -> StagePlan:
        t = stages_t[key]
        return StagePlan(name, t["unit"], items, "cpu", float(t["per_s"]), t["basis"])

    stages = [
        cpu_stage("download", "download", images),
        cpu_stage("process", "process_mmc4" if mmc4 else "process_laion", images),
    ]
    if recipe.clip.enabled:
        where = _clip_where(recipe, cluster)
        fig = _clip_figures(table, recipe.clip.model, where)
        scale, basis = 1.0, fig["basis"]
        if where == "gpu":
            g = table["gpus"][cluster.gpu]
            scale = float(g["relative"])
            basis = fig["basis"] if g["basis"] == "measured" else g["basis"]
        label = f"clip {recipe.clip.model}"
        if mmc4:
            stages.append(StagePlan(f"{label} images", "image", images, where, fig["images_per_s"] * scale, basis))
            stages.append(
                StagePlan(f"{label} sentences", "sentence", rows * spd, where, fig["sentences_per_s"] * scale, basis)
            )
        else:
            pair = fig.get("pairs_per_s") or 1 / (1 / fig["images_per_s"] + 1 / fig["captions_per_s"])
            stages.append(StagePlan(f"{label} image+caption", "row", images, where, pair * scale, basis))
    if recipe.dedup.near and not mmc4:
        rate = _near_rate(table, recipe.dedup.near_max_distance, notes)
        stages.append(
            StagePlan(
                f"dedup near (distance {recipe.dedup.near_max_distance})",
                "row",
                images,
                "cpu",
                rate,
                stages_t["dedup_near"]["basis"],
            )
        )
    left = _unmeasured(recipe)
    if left:
        notes.append(f"not measured, so not counted: {', '.join(left)}")
    image_bytes = mean_image_bytes if mean_image_bytes is not None else _value(table, "download_bytes_per_image")
    if mmc4:
        out = rows * (
            ipd * _value(table, "mmc4_output_bytes_per_image") + _value(table, "mmc4_output_bytes_per_document")
        )
    else:
        out = rows * _value(table, "laion_output_bytes_per_sample")
    corpus = table["corpus"]
    store_key, shuffle_key = (
        ("mmc4_store_bytes_per_image", None) if mmc4 else ("laion_store_bytes_per_row", "laion_shuffle_bytes_per_row")
    )
    store = images * float(corpus[store_key]["value"]) if store_key in corpus else None
    shuffle = rows * float(corpus[shuffle_key]["value"]) if shuffle_key and shuffle_key in corpus else None
    return Plan(
        recipe.name,
        recipe.input.corpus,
        rows,
        cluster,
        stages,
        images * image_bytes,
        out,
        notes,
        store_bytes=store,
        shuffle_bytes=shuffle,
        clip=recipe.clip.enabled,
    )


# -- printing -------------------------------------------------------------------------------


def _si(n: float, unit: str = "") -> str:
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def _hours(h: float) -> str:
    if h < 1 / 60:
        return f"{h * 3600:.1f} s"
    if h < 1:
        return f"{h * 60:.0f} min"
    return f"{h:,.1f} h" if h < 48 else f"{h:,.0f} h ({h / 24:.1f} days)"


def format_plan(plan: Plan, table: Optional[dict] = None) -> str:
    c = plan.cluster
    unit = "documents" if plan.corpus == "mmc4" else "rows"
    gpu_txt = f", {c.gpus_per_worker} GPU ({c.gpu}) each" if c.gpus_per_worker else ", no GPU"
    lines = [
        f"plan: {plan.recipe} ({plan.corpus}), {plan.rows:,} {unit}",
        f"cluster: {c.workers} worker{'s' if c.workers > 1 else ''} x {c.cores_per_worker} cores{gpu_txt}",
        "",
    ]
    width = max(len(s.name) for s in plan.stages) + 2
    head = f"  {'stage':<{width}}{'items':>10}  {'rate':>22}  {'work':>16}  {'alone':>16}  basis"
    lines += [head, "  " + "-" * (len(head) + 8)]
    for s in plan.stages:
        per = "core" if s.resource == "cpu" else "GPU"
        rate = f"{s.rate:,.1f} {s.unit}/s/{per}" if s.rate < 100 else f"{s.rate:,.0f} {s.unit}/s/{per}"
        work = f"{_num(s.hours)} {per}-h"
        alone = _hours(plan.alone_hours(s))
        lines.append(f"  {s.name:<{width}}{_si(s.items):>10}  {rate:>22}  {work:>16}  {alone:>16}  {s.basis}")
    lines.append("")
    lines.append(f"CPU: {_num(plan.core_hours)} core-hours on {c.cores:,} cores -> {_hours(plan.cpu_wall_hours)}")
    if plan.gpu_busy_hours:
        busy = plan.gpu_busy_hours / plan.gpu_hours if plan.gpu_hours else 0
        lines.append(
            f"GPU: {_num(plan.gpu_busy_hours)} GPU-hours of work on {c.gpus:,} GPUs -> "
            f"{_hours(plan.gpu_wall_hours)} (busy {busy:.0%} of the run)"
        )
    b = plan.bottleneck
    lines.append(
        f"wall-clock: {_hours(plan.wall_hours)} at least, bound by the {plan.bound.upper()}s; "
        f"bottleneck stage: {b.name}"
    )
    lines.append(
        f"worker-hours: {_num(plan.worker_hours)}"
        + (f"; GPU-hours paid: {_num(plan.gpu_hours)}" if c.gpus_per_worker else "")
    )
    per_worker = plan.download_bytes * 8 / (plan.wall_hours * 3600 * c.workers) if plan.wall_hours else 0
    lines.append(
        f"network: {_si(plan.download_bytes, 'B')} downloaded from the web "
        f"({_si(per_worker, 'bit/s')} per worker), {_si(plan.output_bytes, 'B')} written "
        f"(every {unit[:-1]} kept: an upper bound)"
    )
    if plan.store_bytes is not None:
        lines.append(
            f"image store: {_si(plan.store_bytes, 'B')} (every image downloaded and kept there: an upper bound; "
            f"--store keeps it for resumes, retries and re-filtering)"
        )
    if plan.shuffle_bytes is not None:
        lines.append(
            f"shuffles: {_si(plan.shuffle_bytes / plan.rows, 'B')} per {unit[:-1]}, {_si(plan.shuffle_bytes, 'B')} "
            "in all, measured with CLIP off (no image rides a shuffle"
            + ("; CLIP's two embeddings add 8 B per dimension a row)" if plan.clip else ")")
        )
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines.append(
        "figures: pipeline/assets/measured.json (derived, extrapolated and assumed ones are marked in 'basis')"
    )
    return "\n".join(lines)


_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_count(text: str) -> int:
    """2300000000, 2.3e9, 2.3B, 100M, 570_000_000: a count of rows as people write it."""
    m = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kKmMbBgG]?)\s*", text)
    if not m:
        raise ValueError(f"not a count: {text!r}")
    value = float(m.group(1).replace(",", "").replace("_", "")) * _SUFFIX.get(m.group(2).lower(), 1)
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"not a count: {text!r}")
    return int(round(value))


__all__ = [
    "Cluster",
    "Plan",
    "PlanError",
    "StagePlan",
    "format_plan",
    "load_table",
    "make_plan",
    "parse_count",
    "MEASURED",
]
