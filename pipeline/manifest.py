"""manifest.json, sizes.json and the human summary, assembled after the pipeline has run."""
from __future__ import annotations

import json
import posixpath
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from apache_beam.io.filesystems import FileSystems

from .index import WORK_DIR
from .recipe import Recipe

MANIFEST = "manifest.json"
SIZES = "sizes.json"
# Stages whose drops happen before an image is in hand: everything after them was downloaded.
BEFORE_DOWNLOAD = ("read", "metadata", "download")


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("flamingo-corpus")
    except PackageNotFoundError:
        v = "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
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


@dataclass
class BuildResult:
    output_dir: str
    recipe: Recipe
    rows_in: Optional[int]
    counts: List[dict]
    shards: List[dict]
    seconds: float
    unit: str = "rows"
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return sum(c["count"] for c in self.counts if c["status"] == "kept")

    @property
    def accounted(self) -> int:
        return sum(c["count"] for c in self.counts)

    @property
    def drops(self) -> Dict[str, int]:
        out: Dict[str, int] = defaultdict(int)
        for c in self.counts:
            if c["status"] == "dropped":
                out[f"{c['stage']}/{c['reason']}"] += c["count"]
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def downloaded(self) -> int:
        return sum(c["count"] for c in self.counts
                   if c["status"] == "kept" or c["stage"] not in BEFORE_DOWNLOAD)

    def manifest(self) -> dict:
        return {
            "recipe": self.recipe.to_dict(),
            "recipe_sha256": self.recipe.digest(),
            "code_version": code_version(),
            "shards": sorted(self.shards, key=lambda s: s["name"]),
            "totals": {
                f"{self.unit}_in": self.rows_in, "accounted": self.accounted, "downloaded": self.downloaded,
                "kept": self.kept, "dropped": self.accounted - self.kept,
                "shards": len(self.shards), "bytes": sum(s["bytes"] for s in self.shards),
            },
            "drops": self.drops,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


def collect(output_dir: str, recipe: Recipe, rows_in: Optional[int], seconds: float, **kw) -> BuildResult:
    counts = _read_jsonl(posixpath.join(output_dir, WORK_DIR, "counts*"))
    shards = _read_jsonl(posixpath.join(output_dir, WORK_DIR, "shards*"))
    return BuildResult(output_dir, recipe, rows_in, counts, shards, seconds, **kw)


def write_manifest(result: BuildResult) -> None:
    d = result.output_dir
    _write_json(posixpath.join(d, MANIFEST), result.manifest())
    _write_json(posixpath.join(d, SIZES), {s["name"]: s["count"] for s in sorted(result.shards, key=lambda s: s["name"])})
    work = posixpath.join(d, WORK_DIR)
    if FileSystems.exists(work):
        FileSystems.delete([work])


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def summary(result: BuildResult) -> str:
    """The few lines a person reads at the end of a build."""
    r, unit = result, result.unit
    rows_in = r.rows_in if r.rows_in is not None else r.accounted
    pct = f" ({100 * r.kept / rows_in:.1f}%)" if rows_in else ""
    lines = [
        f"flamingo-corpus build '{r.recipe.name}' finished (recipe sha256 {r.recipe.digest()[:12]})",
        f"  {unit} in        {rows_in:>10,}",
        f"  downloaded     {r.downloaded:>10,}",
        f"  kept           {r.kept:>10,}{pct}",
        f"  dropped        {r.accounted - r.kept:>10,}",
    ]
    lines += [f"    {reason:<38}{n:>8,}" for reason, n in r.drops.items()]
    names = sorted(s["name"] for s in r.shards)
    span = f" ({names[0]} .. {names[-1]})" if names else ""
    lines += [
        f"  shards         {len(names):>10,}{span}, {_mb(sum(s['bytes'] for s in r.shards))}",
        f"  time           {r.seconds:>10.1f} s, {rows_in / max(r.seconds, 1e-9):.1f} {unit}/s",
        f"  output         {r.output_dir}",
    ]
    if r.rows_in is not None and r.accounted != r.rows_in:
        lines.append(f"  WARNING: {r.accounted:,} {unit} accounted for in the index, {r.rows_in:,} read")
    return "\n".join(lines)
