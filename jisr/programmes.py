"""The catalogue of support programmes (content/programmes.yml).

Moroccan programmes for families abroad, host-country ones, and the offers of
Jisr's own network. An operator adds a programme by adding an entry; answers
about a topic list the programmes that exist in the family's country.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from jisr.paths import CONTENT_DIR

PROGRAMMES_FILE = CONTENT_DIR / "programmes.yml"
AUDIENCES = ("parents", "students", "children")
ALL_COUNTRIES = "all"
# Who reads the answer (the role slot) → whom a programme must be for.
AUDIENCES_OF_ROLE = {"parent": {"parents", "children"}, "student": {"students", "children"}}


class ProgrammeError(ValueError):
    """A catalogue entry that cannot be used, with the entry and field at fault."""


@dataclass(frozen=True)
class Programme:
    id: str
    names: Mapping[str, str]
    audience: tuple[str, ...]
    topics: tuple[str, ...]
    countries: tuple[str, ...]
    how_to_join: Mapping[str, str]
    contact: str

    def available_in(self, country: Optional[str]) -> bool:
        return ALL_COUNTRIES in self.countries or (country or "").upper() in self.countries

    def summary(self, language: str) -> str:
        name = self.names.get(language) or self.names.get("fr") or self.id
        join = self.how_to_join.get(language) or self.how_to_join.get("fr", "")
        contact = f" ({self.contact})" if self.contact else ""
        return f"• {name}: {join}{contact}"


def _texts(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        return {"fr": value}
    return {str(k): str(v).strip() for k, v in (value or {}).items()}


def load_programmes(path: Path = PROGRAMMES_FILE) -> list["Programme"]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    programmes = []
    for index, raw in enumerate(data.get("programmes") or []):
        where = f"{path}: programmes[{index}] ({raw.get('id', '?')})"
        for required in ("id", "name", "audience", "topics", "countries", "how_to_join"):
            if not raw.get(required):
                raise ProgrammeError(f"{where}: missing '{required}'")
        audience = tuple(raw["audience"])
        unknown = [a for a in audience if a not in AUDIENCES]
        if unknown:
            raise ProgrammeError(f"{where}: audience {unknown} is not one of {', '.join(AUDIENCES)}")
        programmes.append(
            Programme(
                id=str(raw["id"]),
                names=_texts(raw["name"]),
                audience=audience,
                topics=tuple(raw["topics"]),
                countries=tuple(str(c).upper() if c != ALL_COUNTRIES else c for c in raw["countries"]),
                how_to_join=_texts(raw["how_to_join"]),
                contact=str(raw.get("contact") or ""),
            )
        )
    return programmes


class ProgrammeCatalogue:
    def __init__(self, programmes: list[Programme]) -> None:
        self.programmes = programmes

    def for_topic(self, topic: str, country: Optional[str], role: Optional[str] = None, limit: int = 4) -> list[Programme]:
        """Programmes on ``topic`` available in ``country`` for the reader's role, country-specific first."""
        wanted = AUDIENCES_OF_ROLE.get(role or "")
        found = [
            p
            for p in self.programmes
            if topic in p.topics and p.available_in(country) and (not wanted or wanted & set(p.audience))
        ]
        found.sort(key=lambda p: ALL_COUNTRIES in p.countries)
        return found[:limit]


@lru_cache(maxsize=1)
def default_programmes() -> ProgrammeCatalogue:
    if not PROGRAMMES_FILE.exists():
        return ProgrammeCatalogue([])
    return ProgrammeCatalogue(load_programmes())
