"""Country knowledge: sourced answers per country, topic and language (content/knowledge/<cc>.yml).

Writers edit YAML; this module only loads, checks and renders. Every entry
carries the official source to check and the date it was last reviewed, and
both are shown under the answer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml
from babel.dates import format_date, format_interval

from jisr.calendars import CalendarEvent, SchoolCalendar, parse_iso_date
from jisr.paths import CONTENT_DIR, REPLY_LANGUAGES, date_locale

KNOWLEDGE_DIR = CONTENT_DIR / "knowledge"
TOPICS = (
    "school_tracks",
    "enrollment",
    "parent_rights",
    "exam_calendar",
    "language_courses",
    "arabic_classes",
    "tutoring",
    "scholarships",
    "mentoring",
    "dropout_help",
    "internship",
    "mediators",
    "harassment",
)
LEVELS = ("primary", "lower_secondary", "upper_secondary")
# Stages without their own track answer use the nearest one.
LEVEL_FALLBACK = {"preschool": "primary", "higher": "upper_secondary"}
MAX_ANSWER_CHARS = 650
DATES_PLACEHOLDER = "{dates}"


class KnowledgeError(ValueError):
    """A knowledge file that cannot be used, with the file and the field at fault."""


@dataclass(frozen=True)
class Entry:
    country: str
    topic: str
    source: str
    reviewed: dt.date
    regional: bool
    offer_mediator: bool
    answers: Mapping[str, str]
    by_level: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def text(self, language: str, level: Optional[str] = None) -> Optional[str]:
        level = LEVEL_FALLBACK.get(level or "", level)
        if level and level in self.by_level and self.by_level[level].get(language):
            return self.by_level[level][language]
        return self.answers.get(language)


def load_country(path: Path) -> dict[str, Entry]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    country = str(data.get("country", "")).upper()
    if len(country) != 2:
        raise KnowledgeError(f"{path}: 'country' must be an ISO 3166 alpha-2 code")
    entries = {}
    for topic, raw in (data.get("topics") or {}).items():
        where = f"{path}: topics.{topic}"
        if topic not in TOPICS:
            raise KnowledgeError(f"{where}: unknown topic (known: {', '.join(TOPICS)})")
        for required in ("source", "reviewed", "answers"):
            if not raw.get(required):
                raise KnowledgeError(f"{where}: missing '{required}'")
        entries[topic] = Entry(
            country=country,
            topic=topic,
            source=str(raw["source"]),
            reviewed=parse_iso_date(raw["reviewed"], f"{where}.reviewed", KnowledgeError),
            regional=bool(raw.get("regional", False)),
            offer_mediator=bool(raw.get("offer_mediator", False)),
            answers={str(k): str(v).strip() for k, v in raw["answers"].items()},
            by_level={
                str(level): {str(k): str(v).strip() for k, v in texts.items()}
                for level, texts in (raw.get("by_level") or {}).items()
            },
        )
    return entries


class KnowledgeBase:
    """All countries' entries; ``entry(country, topic)`` or None when not written."""

    def __init__(self, entries: Mapping[str, Mapping[str, Entry]]) -> None:
        self._entries = {c: dict(topics) for c, topics in entries.items()}

    @classmethod
    def from_dir(cls, directory: Path = KNOWLEDGE_DIR) -> "KnowledgeBase":
        entries = {}
        for path in sorted(directory.glob("*.yml")):
            topics = load_country(path)
            if topics:
                entries[next(iter(topics.values())).country] = topics
        return cls(entries)

    @property
    def countries(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, country: Optional[str], topic: str) -> Optional[Entry]:
        if not country:
            return None
        return self._entries.get(country.upper(), {}).get(topic)

    def entries(self) -> list[Entry]:
        return [e for topics in self._entries.values() for e in topics.values()]


def format_day(day: dt.date, language: str) -> str:
    return format_date(day, format="long", locale=date_locale(language))


# What families ask dates for, most wanted first: exams and the year's start and
# end before administrative deadlines. Holidays are left to the official page.
_KIND_PRIORITY = {"exam": 0, "school_start": 1, "school_end": 1, "deadline": 2}


def select_events(
    calendar: SchoolCalendar, region: Optional[str] = None, today: Optional[dt.date] = None, limit: int = 8
) -> list[CalendarEvent]:
    """The events worth listing today: upcoming ones (or the whole year once it is over), most wanted first."""
    today = today or dt.date.today()
    listed = [e for e in calendar.events if e.kind in _KIND_PRIORITY]
    upcoming = [e for e in listed if e.dates_for(region).last_day >= today] or listed
    chosen = sorted(upcoming, key=lambda e: (_KIND_PRIORITY[e.kind], e.dates_for(region).first_day))[:limit]
    return sorted(chosen, key=lambda e: (e.dates_for(region).first_day, e.id))


def format_dates(
    events: list[CalendarEvent],
    language: str,
    unconfirmed_label: str,
    region: Optional[str] = None,
) -> str:
    """Events as short bullet lines in ``language``, unconfirmed ones marked."""
    locale = language if language in REPLY_LANGUAGES else "fr"
    lines = []
    for event in events:
        dates = event.dates_for(region)
        if dates.first_day == dates.last_day:
            when = format_day(dates.first_day, locale)
        else:
            when = format_interval(dates.first_day, dates.last_day, "yMMMd", locale=date_locale(locale))
        mark = "" if event.confirmed else f" ({unconfirmed_label})"
        lines.append(f"• {event.name(locale)}: {when}{mark}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def default_knowledge() -> KnowledgeBase:
    return KnowledgeBase.from_dir()
