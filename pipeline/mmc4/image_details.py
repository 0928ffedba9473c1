"""The detail of an MMC4 image's URL drop (stage ``metadata``): what the URL held and the rule of
the recipe's ``mmc4`` section that decided it.  ``documents.image_checks`` gives the token; its
DoFn passes ``image_check_detail(reason, url, cfg)`` as the drop's detail."""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit

from ..filters.url import url_rule_detail
from ..recipe import Mmc4Config

__all__ = ["IMAGE_SCHEMES", "image_check_detail"]

# The schemes MMC4 image URLs may have (documents.image_checks): a rule of mmc4, not a recipe key.
IMAGE_SCHEMES = ("http", "https")


def _extension(url: str) -> str:
    path = urlsplit(url).path.lower()
    last = path.rsplit("/", 1)[-1]
    return "." + last.rsplit(".", 1)[-1] if "." in last else "(none)"


def image_check_detail(reason: str, url: Optional[str], cfg: Mmc4Config) -> str:
    """ "extension .gif is not one of mmc4.image_extensions png, jpg, jpeg"; "the URL holds 'logo'
    (mmc4.url_words)"; the scheme and URL rules likewise."""
    about_url = url_rule_detail(reason, url, "raw_url", "image", IMAGE_SCHEMES, "mmc4's image URL schemes")
    if about_url is not None:
        return about_url
    url = url or ""
    if reason == "bad_extension":
        return f"extension {_extension(url)} is not one of mmc4.image_extensions {', '.join(cfg.image_extensions)}"
    if reason == "url_blocklisted_word":
        low = url.lower()
        word = next((w for w in cfg.url_words if w in low), "?")
        return f"the URL holds {word!r} (mmc4.url_words)"
    return reason  # a reason of another rule: never empty
