"""School calendars: one file per country and school year in content/calendars/.

The assistant's answers about dates and the campaign scheduler read the same
files, so "when is the bac?" and the campaign sent a week before it can never
disagree. Dates not yet officially published are marked ``confirmed: false``
and always shown as "to be confirmed".
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from jisr.paths import CONTENT_DIR

CALENDAR_DIR = CONTENT_DIR / "calendars"
EVENT_KINDS = ("school_start", "school_end", "exam", "deadline", "holiday")
_FILE_NAME = re.compile(r"^(?P<country>[a-z]{2})-(?P<year>\d{4})-(?P<next>\d{2})\.yml$")


class CalendarError(ValueError):
    """A calendar file that cannot be trusted, with the file and the field at fault."""


@dataclass(frozen=True)
class RegionalDates:
    first_day: dt.date
    last_day: dt.date


@dataclass(frozen=True)
class CalendarEvent:
    id: str
    kind: str
    names: Mapping[str, str]
    first_day: dt.date
    last_day: dt.date
    confirmed: bool
    source: Optional[str] = None
    regions: Mapping[str, RegionalDates] = field(default_factory=dict)

    def name(self, language: str) -> str:
        return self.names.get(language) or self.names.get("fr") or self.id

    def dates_for(self, region: Optional[str]) -> RegionalDates:
        """The region's own dates where it has them, the country's otherwise."""
        if region and region in self.regions:
            return self.regions[region]
        return RegionalDates(self.first_day, self.last_day)


@dataclass(frozen=True)
class SchoolCalendar:
    country: str
    school_year: str
    source: str
    reviewed: dt.date
    events: tuple[CalendarEvent, ...]
    path: Path

    @property
    def starts(self) -> dt.date:
        return dt.date(int(self.school_year[:4]), 8, 1)

    @property
    def ends(self) -> dt.date:
        return dt.date(int(self.school_year[:4]) + 1, 7, 31)

    def event(self, event_id: str) -> Optional[CalendarEvent]:
        return next((e for e in self.events if e.id == event_id), None)

    def by_kind(self, kind: str) -> list[CalendarEvent]:
        return [e for e in self.events if e.kind == kind]

    @property
    def has_regional_dates(self) -> bool:
        return any(e.regions for e in self.events)


def parse_iso_date(value: Any, where: str, error: type[ValueError] = ValueError) -> dt.date:
    """A YAML date (already a date, or "YYYY-MM-DD"), or ``error`` naming ``where``; shared by the content loaders."""
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as cause:
        raise error(f"{where}: not a date (YYYY-MM-DD): {value!r}") from cause


def _date(value: Any, path: Path, where: str) -> dt.date:
    return parse_iso_date(value, f"{path}: {where}", CalendarError)


def load_calendar(path: Path) -> SchoolCalendar:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for required in ("country", "school_year", "source", "reviewed", "events"):
        if required not in data:
            raise CalendarError(f"{path}: missing field '{required}'")
    events = []
    for index, raw in enumerate(data["events"]):
        where = f"events[{index}]"
        for required in ("id", "kind", "name", "first_day", "last_day"):
            if required not in raw:
                raise CalendarError(f"{path}: {where}: missing field '{required}'")
        if raw["kind"] not in EVENT_KINDS:
            raise CalendarError(f"{path}: {where}.kind: '{raw['kind']}' is not one of {', '.join(EVENT_KINDS)}")
        first, last = _date(raw["first_day"], path, f"{where}.first_day"), _date(raw["last_day"], path, f"{where}.last_day")
        if last < first:
            raise CalendarError(f"{path}: {where}: last_day {last} is before first_day {first}")
        regions = {
            str(code): RegionalDates(
                _date(dates["first_day"], path, f"{where}.regions.{code}.first_day"),
                _date(dates["last_day"], path, f"{where}.regions.{code}.last_day"),
            )
            for code, dates in (raw.get("regions") or {}).items()
        }
        events.append(
            CalendarEvent(
                id=str(raw["id"]),
                kind=raw["kind"],
                names={str(k): str(v) for k, v in (raw["name"] or {}).items()},
                first_day=first,
                last_day=last,
                confirmed=bool(raw.get("confirmed", False)),
                source=raw.get("source"),
                regions=regions,
            )
        )
    events.sort(key=lambda e: (e.first_day, e.id))
    return SchoolCalendar(
        country=str(data["country"]).upper(),
        school_year=str(data["school_year"]),
        source=str(data["source"]),
        reviewed=_date(data["reviewed"], path, "reviewed"),
        events=tuple(events),
        path=path,
    )


class CalendarBook:
    """Every school calendar, by country and school year."""

    def __init__(self, calendars: list[SchoolCalendar]) -> None:
        self._by_country: dict[str, list[SchoolCalendar]] = {}
        for calendar in calendars:
            self._by_country.setdefault(calendar.country, []).append(calendar)
        for items in self._by_country.values():
            items.sort(key=lambda c: c.school_year)

    @classmethod
    def from_dir(cls, directory: Path = CALENDAR_DIR) -> "CalendarBook":
        calendars = []
        for path in sorted(directory.glob("*.yml")):
            if not _FILE_NAME.match(path.name):
                raise CalendarError(f"{path}: calendar files are named <country>-<YYYY>-<YY>.yml, e.g. fr-2026-27.yml")
            calendars.append(load_calendar(path))
        return cls(calendars)

    @property
    def countries(self) -> list[str]:
        return sorted(self._by_country)

    def all(self) -> list[SchoolCalendar]:
        return [c for items in self._by_country.values() for c in items]

    def current(self, country: str, today: Optional[dt.date] = None) -> Optional[SchoolCalendar]:
        """The calendar of the school year under way (or the next one), else the latest known."""
        items = self._by_country.get(country.upper()) or []
        today = today or dt.date.today()
        for calendar in items:
            if today <= calendar.ends:
                return calendar
        return items[-1] if items else None


@lru_cache(maxsize=1)
def default_calendars() -> CalendarBook:
    return CalendarBook.from_dir()
