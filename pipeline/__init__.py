"""flamingo-corpus: LAION and MMC4 metadata to OpenFlamingo-ready webdataset tars, as Beam stages.

The public surface::

    from flamingo_corpus import load_recipe, run_build, verify
    result = run_build(load_recipe("manifests/sample-laion.yaml"), "out/laion")
    print(result.kept, verify("out/laion").ok)

``build_laion`` and ``build_mmc4`` add a corpus's stages to a Beam pipeline of your own. Names are
imported on first use, so ``import flamingo_corpus.filters`` stays free of Beam and torch.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any

try:
    __version__ = _version("flamingo-corpus")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

# public name -> module that defines it
_PUBLIC = {
    "Recipe": ".recipe",
    "RecipeError": ".recipe",
    "load_recipe": ".recipe",
    "run_build": ".build",
    "OutputExists": ".build",
    "BuildResult": ".output.manifest",
    "verify": ".output.verify",
    "build_laion": ".laion.pipeline",
    "build_mmc4": ".mmc4.pipeline",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
