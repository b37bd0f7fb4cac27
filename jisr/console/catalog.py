"""The consoles' interface texts, one YAML file per language in content/console/.

French is the default (the mediators' working language in most countries Jisr covers);
English is complete too. A person picks another language with the switch in the nav bar
(a cookie); every key must exist in every file (tests/test_console_shell.py checks), so a
missing text is a failing test, not a blank button.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from jisr.paths import CONTENT_DIR

CATALOG_DIR = CONTENT_DIR / "console"
DEFAULT_LANGUAGE = "fr"
LANGUAGE_COOKIE = "jisr_console_lang"


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
    return tuple(catalogs())


def pick_language(requested: Optional[str]) -> str:
    """The requested language if the consoles have it, else French."""
    code = (requested or "").strip().lower()
    return code if code in catalogs() else DEFAULT_LANGUAGE


def texts(language: str) -> dict[str, str]:
    return catalogs()[pick_language(language)]
