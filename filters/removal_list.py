"""Removal lists: URLs, domains and images that must not be in a corpus.

A blocklist is a text file, one rule a line, ``kind:value`` (``#`` starts a comment), the forms
Re-LAION-style removal lists take:

    domain:example.com            the host and every subdomain of it
    url:http://example.com/a.jpg  one URL (normalised: case of scheme/host, default port, fragment)
    url_sha256:<64 hex>           sha256 of the normalised URL (lists that do not publish URLs)
    sha256:<64 hex>               sha256 of the image bytes as downloaded or as encoded
    phash:<16 hex>                a 64-bit perceptual hash; images within ``phash_distance`` match

``check_url`` runs before download, ``check_image`` after decoding; each returns the matching rule
(for the index's detail) or None.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import FrozenSet, Optional, Tuple
from urllib.parse import urlsplit

from ..images.perceptual import bit_distance
from .url import normalize_url

KINDS = ("domain", "url", "url_sha256", "sha256", "phash")


class BlocklistError(ValueError):
    pass


@dataclass(frozen=True)
class Blocklist:
    domains: FrozenSet[str] = frozenset()
    url_hashes: FrozenSet[str] = frozenset()  # sha256 of normalised URLs
    image_hashes: FrozenSet[str] = frozenset()
    phashes: Tuple[int, ...] = field(default_factory=tuple)
    phash_distance: int = 0

    @classmethod
    def parse(cls, text: str, phash_distance: int = 0, source: str = "blocklist") -> "Blocklist":
        rules = {k: set() for k in KINDS}
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            kind, sep, value = line.partition(":")
            kind, value = kind.strip().lower(), value.strip()
            if not sep or kind not in KINDS or not value:
                raise BlocklistError(f"{source}:{n}: expected one of {', '.join(KINDS)} then ':value', got {raw!r}")
            rules[kind].add(value.lower() if kind != "url" else value)
        try:
            phashes = tuple(sorted(int(h, 16) for h in rules["phash"]))
        except ValueError as e:
            raise BlocklistError(f"{source}: a phash is not hexadecimal ({e})") from e
        return cls(
            domains=frozenset(d.lstrip(".") for d in rules["domain"]),
            url_hashes=frozenset(rules["url_sha256"] | {url_hash(u) for u in rules["url"]}),
            image_hashes=frozenset(rules["sha256"]),
            phashes=phashes,
            phash_distance=phash_distance,
        )

    def check_url(self, url: Optional[str]) -> Optional[str]:
        if not url:
            return None
        try:
            host = (urlsplit(url).hostname or "").lower()
            digest = url_hash(url)
        except ValueError:
            return None  # not a URL at all: the scheme filter reports it
        parts = host.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in self.domains:
                return f"domain:{'.'.join(parts[i:])}"
        return f"url_sha256:{digest}" if digest in self.url_hashes else None

    def check_image(self, sha256: Optional[str], phash: Optional[str]) -> Optional[str]:
        if sha256 and sha256 in self.image_hashes:
            return f"sha256:{sha256}"
        if phash and self.phashes:
            value = int(phash, 16)
            for blocked in self.phashes:
                if bit_distance(value, blocked) <= self.phash_distance:
                    return f"phash:{blocked:016x}"
        return None


def url_hash(url: str) -> str:
    return hashlib.sha256(normalize_url(url).encode("utf-8")).hexdigest()
