"""Where the package's own files are: the shipped assets, and beside a checkout its manifests/."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGE_DIR", "ASSETS", "CHECKOUT_MANIFESTS"]

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS = PACKAGE_DIR / "assets"  # measured.json and the bundled sample, shipped as package data
# manifests/ of a checkout (the folder pipeline/ sits in); absent from an installed wheel
CHECKOUT_MANIFESTS = PACKAGE_DIR.parent / "manifests"
