"""Public holidays: one file per country and school year in content/calendars/public_holidays/.

They sit beside the school calendars because they are dates of the same year, edited by the same
people; this module is their only reader. Today the mediators' working hours use them (a holiday
is a day off, so a family writing on Christmas Day is told the next working day, not "within an
hour"). Only national holidays are listed; lunar-calendar dates not yet announced by the
religious authorities carry ``expected: true`` (their best estimate, used as if certain).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

from jisr.calendars import CALENDAR_DIR, parse_iso_date

HOLIDAY_DIR = CALENDAR_DIR / "public_holidays"
_FILE_NAME = re.compile(r"^(?P<country>[a-z]{2})-(?P<year>\d{4})-(?P<next>\d{2})\.yml$")
_REQUIRED = ("date", "name", "source", "reviewed")
_OPTIONAL = ("expected", "day_off", "note")


class HolidayError(ValueError):
    """A public-holiday file that cannot be trusted, with the file and the field at fault."""


@dataclass(frozen=True)
class PublicHoliday:
    day: dt.date
    name: str
    source: str          # the official page the date was checked against
    reviewed: dt.date    # when someone last checked it
    expected: bool = False  # a lunar-calendar date before its official announcement
    day_off: bool = True    # False: an official holiday on which the mediators still work
    note: str = ""


@dataclass(frozen=True)
class HolidayYear:
    """One country's public holidays for one school year (1 September to 31 August)."""

    country: str
    school_year: str
    holidays: tuple[PublicHoliday, ...]
    path: Path

    @property
    def starts(self) -> dt.date:
        return dt.date(int(self.school_year[:4]), 9, 1)

    @property
    def ends(self) -> dt.date:
        return dt.date(int(self.school_year[:4]) + 1, 8, 31)


def _date(value: Any, path: Path, where: str) -> dt.date:
    return parse_iso_date(value, f"{path}: {where}", HolidayError)


def _flag(raw: dict[str, Any], name: str, default: bool, path: Path, where: str) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise HolidayError(f"{path}: {where}.{name}: write true or false, not {value!r}")
    return value


def load_holiday_year(path: Path) -> HolidayYear:
    match = _FILE_NAME.match(path.name)
    if not match:
        raise HolidayError(f"{path}: public-holiday files are named <country>-<YYYY>-<YY>.yml, e.g. fr-2026-27.yml")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for required in ("country", "school_year", "holidays"):
        if required not in data:
            raise HolidayError(f"{path}: missing field '{required}'")
    country, school_year = str(data["country"]).upper(), str(data["school_year"])
    if country != match["country"].upper() or school_year != f"{match['year']}-{match['next']}":
        raise HolidayError(f"{path}: country {country} and school_year {school_year} must match the file name")
    if int(match["next"]) != (int(match["year"]) + 1) % 100:
        raise HolidayError(f"{path}: school_year {school_year} must span two following years, e.g. 2026-27")
    year = HolidayYear(country, school_year, (), path)
    holidays = []
    for index, raw in enumerate(data["holidays"] or []):
        where = f"holidays[{index}]"
        if not isinstance(raw, dict):
            raise HolidayError(f"{path}: {where}: write date, name, source and reviewed")
        unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
        if unknown:
            # Often a comma inside an unquoted name in a {…} line: YAML then splits the name.
            raise HolidayError(f"{path}: {where}: unknown field(s) {sorted(map(str, unknown))} (a name with a comma needs quotes)")
        for required in _REQUIRED:
            if raw.get(required) in (None, ""):
                raise HolidayError(f"{path}: {where}: missing field '{required}'")
        day = _date(raw["date"], path, f"{where}.date")
        if not year.starts <= day <= year.ends:
            raise HolidayError(f"{path}: {where}.date {day} is outside school year {school_year} ({year.starts} to {year.ends})")
        source = str(raw["source"])
        if not source.startswith(("https://", "http://")):
            raise HolidayError(f"{path}: {where}.source: an official page's address (https://…), not {source!r}")
        holidays.append(
            PublicHoliday(
                day=day,
                name=str(raw["name"]),
                source=source,
                reviewed=_date(raw["reviewed"], path, f"{where}.reviewed"),
                expected=_flag(raw, "expected", False, path, where),
                day_off=_flag(raw, "day_off", True, path, where),
                note=str(raw.get("note") or ""),
            )
        )
    holidays.sort(key=lambda h: (h.day, h.name))
    return HolidayYear(country, school_year, tuple(holidays), path)


class HolidayBook:
    """Every country's public holidays, all school years together."""

    def __init__(self, years: list[HolidayYear]) -> None:
        self._by_country: dict[str, list[HolidayYear]] = {}
        for year in years:
            self._by_country.setdefault(year.country, []).append(year)
        for items in self._by_country.values():
            items.sort(key=lambda y: y.school_year)

    @classmethod
    def from_dir(cls, directory: Path = HOLIDAY_DIR) -> "HolidayBook":
        return cls([load_holiday_year(path) for path in sorted(directory.glob("*.yml"))])

    @property
    def countries(self) -> list[str]:
        return sorted(self._by_country)

    def years(self, country: str) -> list[HolidayYear]:
        return list(self._by_country.get(country.upper(), []))

    def year(self, country: str, school_year: str) -> Optional[HolidayYear]:
        return next((y for y in self.years(country) if y.school_year == school_year), None)

    def days_off(self, country: str) -> frozenset[dt.date]:
        """The dates the country's mediators do not work (holidays with day_off, every year known)."""
        return frozenset(h.day for year in self.years(country) for h in year.holidays if h.day_off)


@lru_cache(maxsize=1)
def default_holidays() -> HolidayBook:
    return HolidayBook.from_dir()
