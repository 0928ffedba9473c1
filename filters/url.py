"""URL filters and the URL form used for exact URL dedup."""

from __future__ import annotations

from typing import Optional, Sequence
from urllib.parse import urlsplit, urlunsplit


def url_scheme(url: Optional[str], schemes: Sequence[str]) -> Optional[str]:
    """Only the listed schemes are fetched: file://, ftp://, data: and friends never are."""
    if url is None or not isinstance(url, str) or not url.strip():
        return "no_url"
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # a non-numeric or out-of-range port raises here, not later in normalize_url
    except ValueError:
        return "bad_url"
    if parts.scheme.lower() not in schemes:
        return "bad_scheme"
    if not parts.hostname:
        return "bad_url"
    return None


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop the fragment and a default port: equal URLs compare equal."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal: keep its brackets, or the port would merge into the address
        host = f"[{host}]"
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port in (None, default) else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))


EXTENSIONS_MMC4 = ("png", "jpg", "jpeg")
URL_WORDS_MMC4 = ("logo", "button", "icon", "plugin", "widget")


def url_extension(url: str, allowed: Sequence[str]) -> Optional[str]:
    """mmc4 kept only images whose URL path ends in one of the allowed extensions."""
    path = urlsplit(url).path.lower()
    ext = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
    return None if ext in allowed else "bad_extension"


def url_words(url: str, words: Sequence[str]) -> Optional[str]:
    """mmc4 skipped URLs naming logos, buttons, icons, plugins and widgets."""
    low = url.lower()
    return "url_blocklisted_word" if any(w in low for w in words) else None


def url_rule_detail(reason: str, url: Optional[str], field: str, every: str, schemes: Sequence[str], rule: str):
    """The value and the rule behind ``url_scheme``'s reasons, for a drop's detail: ``field`` names
    the URL ("the URL", "raw_url"), ``every`` what needs one ("row"), ``rule`` where ``schemes``
    come from ("filters.url_schemes"). None for any other reason."""
    if reason == "no_url":
        return f"{field} is {url!r}: every {every} needs one"
    if reason == "bad_url":
        return f"{(url or '')[:200]!r} does not parse as a URL with a host"
    if reason == "bad_scheme":
        scheme = urlsplit((url or "").strip()).scheme.lower() or "(none)"
        return f"scheme {scheme} is not one of {rule} {', '.join(schemes)}"
    return None
