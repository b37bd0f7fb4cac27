"""The consoles' interface texts, one YAML file per language in content/console/.

Six languages, as the mediators and operators work in them: French (the default: the working
language in most countries Jisr covers), English, Spanish, Italian, German and Arabic (written
right to left: the page gets dir="rtl" and the CSS uses logical properties, so it mirrors).
A page's language is ?lang= (a link), else the nav bar's switch (a cookie), else the browser's
Accept-Language when it names one of these, else French (``choose_language``). Every key must
exist in every file with the same {placeholders} (tests/test_console_shell.py and
tests/test_console_languages.py check), so a missing text is a failing test, not a blank button.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from jisr.http_language import preferred_language
from jisr.paths import CONTENT_DIR

CATALOG_DIR = CONTENT_DIR / "console"
DEFAULT_LANGUAGE = "fr"
LANGUAGE_COOKIE = "jisr_console_lang"
# The nav bar's order: French first, Arabic last (its name reads right to left). A file added
# to content/console/ without a place here comes after these, by code.
LANGUAGE_ORDER = ("fr", "en", "es", "it", "de", "ar")
RIGHT_TO_LEFT = frozenset({"ar"})
# A browser set to Moroccan Darija (ary) gets the Arabic console, as a family writing Darija
# gets the Arabic replies.
ALIASES = {"ary": "ar"}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def load_catalog(path: Path) -> dict[str, str]:
    """The file's texts by dotted key ("mediation.action.claim")."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of texts")
    return _flatten(data)


@lru_cache(maxsize=1)
def catalogs() -> dict[str, dict[str, str]]:
    """Every language's texts, read once."""
    return {path.stem: load_catalog(path) for path in sorted(CATALOG_DIR.glob("*.yml"))}


def languages() -> tuple[str, ...]:
    """The consoles' languages in the nav bar's order."""
    rank = {code: index for index, code in enumerate(LANGUAGE_ORDER)}
    return tuple(sorted(catalogs(), key=lambda code: (rank.get(code, len(rank)), code)))


def direction(language: str) -> str:
    """The page's dir attribute: "rtl" for Arabic, else "ltr"."""
    return "rtl" if pick_language(language) in RIGHT_TO_LEFT else "ltr"


def supported(requested: Optional[str]) -> Optional[str]:
    """The consoles' code for a language tag ("es", "ES", "es-ES", "ary"), or None if they do
    not have it."""
    code = (requested or "").strip().lower().replace("_", "-").split("-")[0]
    code = ALIASES.get(code, code)
    return code if code in catalogs() else None


def pick_language(requested: Optional[str]) -> str:
    """The requested language if the consoles have it, else French."""
    return supported(requested) or DEFAULT_LANGUAGE


def from_accept_language(header: Optional[str]) -> Optional[str]:
    """The browser's most wanted language that the consoles have, or None.

    "de-CH, fr;q=0.8, *;q=0.1" → "de". Tags are ranked by their q weight (1 when absent; the
    header's order breaks ties); q=0 means "not this one"; "*" names nothing in particular.
    A malformed part is skipped, never an error: the header is the browser's, not the person's.
    The reading is jisr.http_language's, shared with the public subscription form.
    """
    return preferred_language(header, supported)


def choose_language(query: Optional[str], cookie: Optional[str], accept_language: Optional[str]) -> str:
    """A page's language: ?lang= (a link), then the nav bar's cookie, then the browser's
    Accept-Language, each only when the consoles have it; else French."""
    return supported(query) or supported(cookie) or from_accept_language(accept_language) or DEFAULT_LANGUAGE


def texts(language: str) -> dict[str, str]:
    return catalogs()[pick_language(language)]
