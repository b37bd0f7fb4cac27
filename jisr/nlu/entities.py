"""Gazetteer entities: the host country, the child's school stage, the role, a language name.

Why not DIET's entity recogniser: these are closed lists (a few hundred
spellings across six language forms) that families type in predictable ways;
a folded-spelling look-up is exact, needs no annotated examples, and an
operator extends it by editing ``content/gazetteer.yml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import yaml

from jisr.paths import CONTENT_DIR
from jisr.text import normalize_for_matching

ENTITY_COUNTRY = "country"
ENTITY_SCHOOL_LEVEL = "school_level"
ENTITY_ROLE = "role"
ENTITY_LANGUAGE = "language_name"
ENTITY_REGION = "region"

_GAZETTEER_SECTIONS = {
    "countries": ENTITY_COUNTRY,
    "school_levels": ENTITY_SCHOOL_LEVEL,
    "roles": ENTITY_ROLE,
    "languages": ENTITY_LANGUAGE,
    "regions": ENTITY_REGION,
}
# A region is matched on its own layer: "München" is both a country (DE) and a region (DE-BY).
_OWN_LAYER = {ENTITY_REGION}
# Arabic glues prepositions and the article to the noun: "ففرنسا", "بالعربية", "لالمانيا".
_ARABIC_PREFIX = r"(?:[وفبلك]?(?:ال)?)"
# Latin-script Darija glues them too: "lfransa", "f l'italie", "fsbanya".
_LATIN_PREFIX = r"(?:(?:[lfb]|fl|fel|bl)'?)?"
_ARABIC_CHAR = re.compile(r"[\u0600-\u06ff]")


@dataclass(frozen=True)
class EntityMatch:
    entity: str
    value: str
    start: int
    end: int
    surface: str

    def as_rasa_entity(self, extractor: str) -> dict:
        return {
            "entity": self.entity,
            "value": self.value,
            "start": self.start,
            "end": self.end,
            "confidence_entity": 1.0,
            "extractor": extractor,
        }


def _term_pattern(term: str) -> str:
    folded = normalize_for_matching(term)
    body = r"\s+".join(re.escape(part) for part in folded.split())
    if _ARABIC_CHAR.search(folded):
        return rf"(?<![\w]){_ARABIC_PREFIX}{body}(?![\w])"
    if len(folded) >= 4 and folded[0].isalpha():
        return rf"(?<![\w']){_LATIN_PREFIX}{body}(?![\w])"
    return rf"(?<![\w']){body}(?![\w])"


class Gazetteer:
    """Compiled look-up of every entity type; longest match wins, no overlaps."""

    def __init__(self, sections: dict[str, dict[str, list[str]]]) -> None:
        # (entity, value, pattern, needle). The needle is the folded term's first word: a match
        # always contains it, so a message without it skips the pattern. Running all ~860
        # patterns over every message was about 5 % of the gateway's CPU per message; the
        # substring test rules most of them out for a few microseconds.
        self._patterns: list[tuple[str, str, re.Pattern[str], str]] = []
        for section, entity in _GAZETTEER_SECTIONS.items():
            for value, terms in (sections.get(section) or {}).items():
                for term in terms or []:
                    needle = (normalize_for_matching(str(term)).split() or [""])[0]
                    self._patterns.append((entity, str(value), re.compile(_term_pattern(str(term))), needle))

    @classmethod
    def from_file(cls, path: Path) -> "Gazetteer":
        with path.open(encoding="utf-8") as handle:
            return cls(yaml.safe_load(handle) or {})

    def find(self, text: str, only: Iterable[str] | None = None) -> list[EntityMatch]:
        """All non-overlapping matches in ``text``, in reading order.

        Offsets refer to the folded text, which has the same length as the
        message in all but rare cases (elongated letters, Arabic diacritics).
        """
        folded = normalize_for_matching(text)
        candidates = self._candidates(folded, set(only) if only else None)
        taken: list[EntityMatch] = []
        for layer in (lambda m: m.entity not in _OWN_LAYER, lambda m: m.entity in _OWN_LAYER):
            kept: list[EntityMatch] = []
            for match in sorted(filter(layer, candidates), key=lambda m: (-(m.end - m.start), m.start)):
                if all(match.end <= t.start or match.start >= t.end for t in kept):
                    kept.append(match)
            taken.extend(kept)
        return sorted(taken, key=lambda m: (m.start, m.entity))

    def _candidates(self, folded: str, wanted: set[str] | None, skip_by_needle: bool = True) -> list[EntityMatch]:
        """Every match of every pattern (overlapping ones included) in the folded text."""
        candidates: list[EntityMatch] = []
        for entity, value, pattern, needle in self._patterns:
            if (wanted and entity not in wanted) or (skip_by_needle and needle not in folded):
                continue
            for found in pattern.finditer(folded):
                candidates.append(EntityMatch(entity, value, found.start(), found.end(), found.group(0)))
        return candidates

    def first_value(self, text: str, entity: str) -> str | None:
        matches = self.find(text, only=[entity])
        return matches[0].value if matches else None


@lru_cache(maxsize=1)
def follow_up_openers() -> tuple[str, ...]:
    """Openings of follow-up questions, folded, longest first."""
    data = yaml.safe_load((CONTENT_DIR / "gazetteer.yml").read_text(encoding="utf-8")) or {}
    folded = {normalize_for_matching(str(o)) for o in data.get("follow_up_openers") or []}
    return tuple(sorted(folded, key=len, reverse=True))


def opens_as_follow_up(text: str, max_words: int = 6) -> bool:
    """True for short messages like "et en Belgique ?" or "w ila kan f lycee?"."""
    folded = normalize_for_matching(text).strip()
    if len(folded.split()) > max_words:
        return False
    return any(folded == o or folded.startswith(o + " ") or (o.isalpha() and not o.isascii() and folded.startswith(o)) for o in follow_up_openers())


@lru_cache(maxsize=1)
def default_gazetteer() -> Gazetteer:
    return Gazetteer.from_file(CONTENT_DIR / "gazetteer.yml")
