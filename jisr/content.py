"""The assistant's reply texts, loaded from ``content/replies/<language>.yml``.

No sentence a family reads lives in Python code: writers and reviewers edit
the YAML files, and the test suite checks that every language has every key.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from jisr.paths import CONTENT_DIR, REPLY_LANGUAGES

DEFAULT_LANGUAGE = "fr"
# Keys only some languages carry (the offer to switch to French is for Arabic readers).
OPTIONAL_KEYS = frozenset({"offer_french"})


class MissingReply(KeyError):
    """A reply key that no language file defines: a content bug, caught by the tests."""


class _KeepUnknown(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


@dataclass(frozen=True)
class LanguagePack:
    language: str
    replies: Mapping[str, Any]
    countries: Mapping[str, str]
    languages: Mapping[str, str]


class ReplyBook:
    """Every reply in every language, with French as the last resort."""

    def __init__(self, packs: Mapping[str, LanguagePack]) -> None:
        if DEFAULT_LANGUAGE not in packs:
            raise ValueError("the French replies are required: they are the fallback")
        self._packs = dict(packs)

    @classmethod
    def from_dir(cls, directory: Path = CONTENT_DIR / "replies") -> "ReplyBook":
        packs = {}
        for language in REPLY_LANGUAGES:
            path = directory / f"{language}.yml"
            if not path.exists():
                continue
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            packs[language] = LanguagePack(
                language=language,
                replies=data.get("replies") or {},
                countries=data.get("countries") or {},
                languages=data.get("languages") or {},
            )
        return cls(packs)

    @property
    def languages(self) -> list[str]:
        return sorted(self._packs)

    def pack(self, language: str | None) -> LanguagePack:
        return self._packs.get(language or DEFAULT_LANGUAGE) or self._packs[DEFAULT_LANGUAGE]

    def raw(self, key: str, language: str | None) -> Any:
        for pack in (self.pack(language), self._packs[DEFAULT_LANGUAGE]):
            if key in pack.replies:
                return pack.replies[key]
        raise MissingReply(key)

    def text(self, key: str, language: str | None, /, **values: Any) -> str:
        """The reply ``key`` in ``language`` with ``{placeholders}`` filled in."""
        template = self.raw(key, language)
        if not isinstance(template, str):
            raise MissingReply(f"{key} is not a text")
        return string.Formatter().vformat(template, (), _KeepUnknown(values)).strip()

    def has(self, key: str, language: str) -> bool:
        return key in self.pack(language).replies and self.pack(language).language == language

    def country_name(self, code: str | None, language: str | None) -> str:
        if not code:
            return ""
        return self.pack(language).countries.get(code) or self._packs[DEFAULT_LANGUAGE].countries.get(code, code)

    def language_name(self, code: str, language: str | None = None) -> str:
        return self.pack(language).languages.get(code, code)

    def button(self, name: str, language: str | None) -> str:
        buttons = self.raw("buttons", language)
        return str(buttons.get(name, name)) if isinstance(buttons, Mapping) else name


@lru_cache(maxsize=1)
def default_reply_book() -> ReplyBook:
    return ReplyBook.from_dir()
