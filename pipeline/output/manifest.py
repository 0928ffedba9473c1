"""manifest.json, sizes.json and the human summary, assembled after the pipeline has run.

Two builds of the same recipe over the same inputs give the same manifest but for ``seconds``
(the only timing field), whether one of them was interrupted and resumed or not; how a build
went (resumed, shards reused) is told in the summary, not in the manifest.
"""

from __future__ import annotations

import json
import posixpath
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from ..download.hosts import politeness_section
from ..download.hosts import summary_lines as politeness_lines
from ..recipe import Recipe
from .index import WORK_DIR

MANIFEST = "manifest.json"
SIZES = "sizes.json"
# Stages whose drops happen before an image is in hand: everything after them was downloaded.
BEFORE_DOWNLOAD = ("read", "metadata", "download")
SHARD_FIELDS = ("name", "count", "bytes", "sha256")  # a shard's entry in the manifest
# The manifest fields that differ between two runs of one build: its time, and what this run asked
# of the hosts (a resumed or re-filtered build takes its images from the store and asks nothing).
TIMING_FIELDS = ("seconds", "hosts")


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("flamingo-corpus")
    except PackageNotFoundError:
        v = "unknown"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{v}+{rev}" if rev else v


def _read_jsonl(pattern: str) -> List[dict]:
    out = []
    for r in FileSystems.match([pattern]):
        for m in r.metadata_list:
            with FileSystems.open(m.path) as f:
                out.extend(json.loads(line) for line in f.read().decode().splitlines() if line.strip())
    return out


def _write_json(path: str, obj) -> None:
    with FileSystems.create(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


UNITS = {"row": "rows", "document": "documents", "image": "images", "window": "windows"}


def unit_totals(kind: str, counts: Iterable[Tuple[Optional[str], str, int]]) -> Dict[str, int]:
    """The headline figures of one kind from its (stage, status, count) triples: accounted, kept,
    dropped and, but for documents and windows (their images are what is downloaded), downloaded: what was
    kept or dropped after the download stages (BEFORE_DOWNLOAD).  The summary, the manifest's
    totals and the statistics report's headline all read them from here."""
    accounted = kept = downloaded = 0
    for stage, status, n in counts:
        accounted += n
        kept += n if status == "kept" else 0
        downloaded += n if status == "kept" or stage not in BEFORE_DOWNLOAD else 0
    totals = {"accounted": accounted, "kept": kept, "dropped": accounted - kept}
    if kind not in ("document", "window"):
        totals["downloaded"] = downloaded
    return totals


@dataclass
class BuildResult:
    """The counts of a finished build.  ``kind`` is what one input row is: a LAION "row" or an
    MMC4 "document"; MMC4 builds also count their "image"s."""

    output_dir: str
    recipe: Recipe
    rows_in: Optional[int]
    counts: List[dict]
    shards: List[dict]
    seconds: float
    kind: str = "row"
    inputs: Optional[List[dict]] = None  # [{path, bytes}] of the input files
    resumed: bool = False  # this run picked up the output of an interrupted one
    already_complete: bool = False  # the output was complete already; nothing was run
    store: Optional[dict] = None  # this run's use of the image store (build.read_store_figures); not in the manifest
    hosts: Optional[dict] = None  # this run's per-host figures (_build/hosts.json); manifest "hosts"

    @property
    def shards_skipped(self) -> int:
        """Shards a resumed build found complete and did not write again."""
        return sum(1 for s in self.shards if s.get("skipped"))

    def _counts(self, kind: Optional[str] = None) -> List[dict]:
        kind = kind or self.kind
        return [c for c in self.counts if c.get("kind", "row") == kind]

    def totals_of(self, kind: Optional[str] = None) -> Dict[str, int]:
        """accounted, kept, dropped (and downloaded, but for documents) of one kind: unit_totals."""
        return unit_totals(kind or self.kind, ((c["stage"], c["status"], c["count"]) for c in self._counts(kind)))

    def kept_of(self, kind: Optional[str] = None) -> int:
        return self.totals_of(kind)["kept"]

    def accounted_of(self, kind: Optional[str] = None) -> int:
        return self.totals_of(kind)["accounted"]

    def drops_of(self, kind: Optional[str] = None) -> Dict[str, int]:
        out: Dict[str, int] = defaultdict(int)
        for c in self._counts(kind):
            if c["status"] == "dropped":
                out[f"{c['stage']}/{c['reason']}"] += c["count"]
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def kept(self) -> int:
        return self.kept_of()

    @property
    def accounted(self) -> int:
        return self.accounted_of()

    @property
    def drops(self) -> Dict[str, int]:
        return self.drops_of()

    @property
    def kinds(self) -> List[str]:
        return sorted({c.get("kind", "row") for c in self.counts} | {self.kind}, key=list(UNITS).index)

    def _totals(self, kind: str) -> dict:
        return {f"{UNITS[kind]}_in": self.rows_in if kind == self.kind else None, **self.totals_of(kind)}

    def manifest(self) -> dict:
        shards = [{k: s[k] for k in SHARD_FIELDS} for s in sorted(self.shards, key=lambda s: s["name"])]
        return {
            "recipe": self.recipe.to_dict(),
            "recipe_sha256": self.recipe.digest(),
            "code_version": code_version(),
            "unit": UNITS[self.kind],
            "inputs": self.inputs,
            "shards": shards,
            "totals": {**self._totals(self.kind), "shards": len(shards), "bytes": sum(s["bytes"] for s in shards)},
            "drops": self.drops,
            **{
                f"{UNITS[k]}": {"totals": self._totals(k), "drops": self.drops_of(k)}
                for k in self.kinds
                if k != self.kind
            },
            "seconds": round(self.seconds, 3),
            **({"hosts": section} if (section := politeness_section(self.hosts)) else {}),
        }

    @classmethod
    def from_manifest(cls, output_dir: str, recipe: Recipe, manifest: dict) -> "BuildResult":
        """The result of a build that is already complete, rebuilt from its manifest (the counts
        per stage and reason the summary shows are all there; the index is not read)."""
        unit_kind = {u: k for k, u in UNITS.items()}
        kind = unit_kind.get(manifest.get("unit", "rows"), "row")
        counts = []
        for k, unit in UNITS.items():
            section = manifest if k == kind else manifest.get(unit)
            if not section:
                continue
            counts.append(
                {"kind": k, "stage": "shard", "status": "kept", "reason": None, "count": section["totals"]["kept"]}
            )
            for stage_reason, n in section["drops"].items():
                stage, _, reason = stage_reason.partition("/")
                counts.append({"kind": k, "stage": stage, "status": "dropped", "reason": reason, "count": n})
        return cls(
            output_dir,
            recipe,
            manifest["totals"].get(f"{UNITS[kind]}_in"),
            counts,
            manifest.get("shards", []),
            manifest.get("seconds", 0.0),
            kind=kind,
            inputs=manifest.get("inputs"),
            already_complete=True,
        )


def read_manifest(output_dir: str) -> Optional[dict]:
    """manifest.json of ``output_dir``, or None when there is none or it does not parse."""
    path = posixpath.join(output_dir, MANIFEST)
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            return json.loads(f.read())
    except Exception:  # noqa: BLE001 - a manifest cut short by a kill is no manifest
        return None


def collect(output_dir: str, recipe: Recipe, rows_in: Optional[int], seconds: float, **kw) -> BuildResult:
    counts = _read_jsonl(posixpath.join(output_dir, WORK_DIR, "counts*"))
    shards = _read_jsonl(posixpath.join(output_dir, WORK_DIR, "shards*"))
    return BuildResult(output_dir, recipe, rows_in, counts, shards, seconds, **kw)


def write_manifest(result: BuildResult) -> None:
    """sizes.json, then manifest.json, then the work folder goes: a kill at any point leaves
    either no manifest (the build resumes) or a complete output with some leftovers in _build/."""
    d = result.output_dir
    _write_json(
        posixpath.join(d, SIZES), {s["name"]: s["count"] for s in sorted(result.shards, key=lambda s: s["name"])}
    )
    _write_json(posixpath.join(d, MANIFEST), result.manifest())
    work = posixpath.join(d, WORK_DIR)
    if FileSystems.exists(work):
        FileSystems.delete([work])


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _block(r: BuildResult, kind: str, rows_in: Optional[int]) -> List[str]:
    unit = UNITS[kind]
    totals = r.totals_of(kind)
    n_in = rows_in if rows_in is not None else totals["accounted"]
    kept = totals["kept"]
    pct = f" ({100 * kept / n_in:.1f}%)" if n_in else ""
    lines = [f"  {unit + ' in':<15}{n_in:>10,}"]
    if "downloaded" in totals:
        lines.append(f"  {'downloaded':<15}{totals['downloaded']:>10,}")
    lines += [f"  {'kept':<15}{kept:>10,}{pct}", f"  {'dropped':<15}{totals['dropped']:>10,}"]
    lines += [f"    {reason:<38}{n:>8,}" for reason, n in r.drops_of(kind).items()]
    return lines


def _store_lines(store: Optional[dict]) -> List[str]:
    """How this run used the image store: rows taken from it and fetched, retries, damage."""
    if not store or not store.get("blocks"):
        return []
    lines = [
        f"  image store    {store.get('rows_from_store', 0):>10,} rows from the store, "
        f"{store.get('rows_fetched', 0):,} fetched ({store['blocks']:,} blocks, "
        f"{store.get('blocks_written', 0):,} written, {_mb(store.get('bytes_written', 0))})",
    ]
    if store.get("retry_failed") or store.get("rows_retried"):
        lines.append(
            f"  retried        {store.get('rows_retried', 0):>10,} transient failures, "
            f"{store.get('rows_recovered', 0):,} recovered"
        )
    if store.get("blocks_damaged"):
        lines.append(f"  WARNING: {store['blocks_damaged']:,} damaged store blocks were fetched again (see the log)")
    if store.get("outlives"):
        lines.append(f"  store          {store.get('root')}/{store.get('digest')} (run {store.get('run')})")
    return lines


def summary(result: BuildResult) -> str:
    """The few lines a person reads at the end of a build."""
    r = result
    unit = UNITS[r.kind]
    rows_in = r.rows_in if r.rows_in is not None else r.accounted
    if r.already_complete:
        head = "is complete already: nothing was rebuilt (--overwrite builds it again)"
    else:
        head = "finished, resumed from an interrupted run" if r.resumed else "finished"
    lines = [f"flamingo-corpus build '{r.recipe.name}' {head} (recipe sha256 {r.recipe.digest()[:12]})"]
    lines += _block(r, r.kind, r.rows_in)
    for kind in r.kinds:
        if kind != r.kind:
            lines += _block(r, kind, None)
    if r.kind == "document" and r.recipe.mmc4.windows.enabled:
        from ..mmc4.windows import summary_lines  # MMC4 windows: what the loader sees of the images

        lines += summary_lines(r.recipe.mmc4.windows, r.totals_of("image")["kept"], r.drops_of("image"))
    names = sorted(s["name"] for s in r.shards)
    span = f" ({names[0]} .. {names[-1]})" if names else ""
    lines += [
        f"  shards         {len(names):>10,}{span}, {_mb(sum(s['bytes'] for s in r.shards))}",
    ]
    if r.resumed:
        lines.append(f"  reused         {r.shards_skipped:>10,} shards complete from the interrupted run")
    lines += _store_lines(r.store)
    lines += politeness_lines(politeness_section(r.hosts))
    lines += [
        f"  time           {r.seconds:>10.1f} s, {rows_in / max(r.seconds, 1e-9):.1f} {unit}/s"
        + (" (of the original build)" if r.already_complete else ""),
        f"  output         {r.output_dir}",
    ]
    if r.rows_in is not None and r.accounted != r.rows_in:
        lines.append(f"  WARNING: {r.accounted:,} {unit} accounted for in the index, {r.rows_in:,} read")
    return "\n".join(lines)
