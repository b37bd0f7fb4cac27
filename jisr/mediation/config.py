"""content/mediation.yml as typed objects: working hours, waits, priorities, cues, quick replies.

Read once per process (``default_config``); tests build their own from a mapping.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional
from zoneinfo import ZoneInfo

import yaml

from jisr.holidays import HolidayBook, default_holidays
from jisr.paths import CONTENT_DIR, REPLY_LANGUAGES

CONFIG_PATH = CONTENT_DIR / "mediation.yml"
# How errors name the file (where operators edit it).
CONFIG_NAME = "content/mediation.yml"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
REASONS = ("safety", "harassment", "dropout", "discrimination", "school_conflict", "request", "not_understood")
DEFAULT_ESCALATION_NOTICE = "Jisr: conversation {id} waiting for {minutes} min ({reason}, priority {priority}, {country}, {language}). {link}"
_ARABIC = re.compile("[\u0600-\u06ff]")


class MediationConfigError(ValueError):
    """content/mediation.yml is wrong; the message names the field."""


@dataclass(frozen=True)
class WorkingHours:
    """When a country's mediators work, in the country's own time zone."""

    timezone: str
    days: frozenset[int]          # Monday = 0
    start: dt.time
    end: dt.time
    # The country's public holidays (content/calendars/public_holidays/): no shift on those dates.
    days_off: frozenset[dt.date] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def fold(text: str) -> str:
    """Lower case without accents (Latin letters), so "Frappé" and "frappe" match the cue "frappé"."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c) or _ARABIC.match(c)))


@dataclass(frozen=True)
class Cues:
    """Phrases that make a message sensitive for one reason, in every language form."""

    latin: tuple[re.Pattern[str], ...]
    arabic: tuple[str, ...]

    @classmethod
    def build(cls, phrases: list[str]) -> "Cues":
        latin, arabic = [], []
        for phrase in phrases:
            folded = fold(str(phrase)).strip()
            if not folded:
                continue
            if _ARABIC.search(folded):
                arabic.append(folded)  # Arabic words take prefixes (و، ال، ب): matched inside words
            else:
                latin.append(re.compile(r"(?<![\w])" + re.escape(folded) + r"(?![\w])"))
        return cls(tuple(latin), tuple(arabic))

    def found_in(self, text: str) -> bool:
        folded = fold(text)
        return any(p.search(folded) for p in self.latin) or any(a in folded for a in self.arabic)


@dataclass(frozen=True)
class MediationConfig:
    default_hours: WorkingHours
    hours_by_country: Mapping[str, WorkingHours]
    expected_response: dt.timedelta
    escalation_wait: dt.timedelta
    priorities: Mapping[str, int]
    cues: Mapping[str, Cues]
    whatsapp_templates: Mapping[str, str]
    messenger_human_agent: dt.timedelta
    quick_replies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    escalation_notice: str = DEFAULT_ESCALATION_NOTICE
    # A message kept for the family's window (a mediator's text, a notice that the case ended)
    # older than this is recorded failed ("expired") instead of sent: months later its words
    # ("the mediator closed your case") would mislead.
    held_messages_expire_after: dt.timedelta = dt.timedelta(days=14)

    def hours(self, country: Optional[str]) -> WorkingHours:
        return self.hours_by_country.get((country or "").upper(), self.default_hours)

    def priority(self, reason: str) -> int:
        return self.priorities.get(reason, max(self.priorities.values(), default=5))

    def whatsapp_template(self, language: Optional[str]) -> Optional[str]:
        return self.whatsapp_templates.get(language or "fr") or self.whatsapp_templates.get("fr")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], holidays: Optional[HolidayBook] = None, source: str = CONFIG_NAME) -> "MediationConfig":
        """``holidays``: the public holidays to apply (default: the files in content/calendars/public_holidays/);
        ``source``: the file named in errors."""
        book = holidays if holidays is not None else default_holidays()
        hours = data.get("working_hours") or {}
        if "default" not in hours:
            raise MediationConfigError("working_hours.default: missing (the hours of countries without their own)")
        by_country = {str(code).upper(): _hours(spec, f"working_hours.countries.{code}", book, str(code)) for code, spec in (hours.get("countries") or {}).items()}
        priorities = {str(k): int(v) for k, v in (data.get("priorities") or {}).items()}
        missing = set(REASONS) - set(priorities)
        if missing:
            raise MediationConfigError(f"priorities: missing {', '.join(sorted(missing))}")
        if priorities["safety"] != min(priorities.values()):
            raise MediationConfigError("priorities: safety must come first (the lowest number)")
        cues = {reason: Cues.build([p for phrases in (by_language or {}).values() for p in phrases or ()]) for reason, by_language in (data.get("cues") or {}).items()}
        templates = dict(((data.get("whatsapp_reopen_template") or {}).get("content_sid_by_language") or {}))
        quick = {str(lang): tuple(str(t).strip() for t in texts or () if str(t).strip()) for lang, texts in (data.get("quick_replies") or {}).items()}
        unknown = set(quick) - set(REPLY_LANGUAGES)
        if unknown:
            raise MediationConfigError(f"quick_replies: unknown languages {sorted(unknown)} (use {', '.join(REPLY_LANGUAGES)})")
        return cls(
            default_hours=_hours(hours["default"], "working_hours.default", book, None),
            hours_by_country=by_country,
            expected_response=dt.timedelta(minutes=_positive(data, "expected_response_minutes", 120)),
            escalation_wait=dt.timedelta(minutes=_positive(data, "escalation_wait_minutes", 30)),
            priorities=priorities,
            cues=cues,
            whatsapp_templates={str(k): str(v) for k, v in templates.items()},
            messenger_human_agent=dt.timedelta(days=_positive(data, "messenger_human_agent_days", 7)),
            quick_replies=quick,
            escalation_notice=str(data.get("escalation_notice") or DEFAULT_ESCALATION_NOTICE),
            held_messages_expire_after=dt.timedelta(days=_days(data, "held_messages_expire_after_days", 14, source)),
        )

    @classmethod
    def from_file(cls, path: Path = CONFIG_PATH) -> "MediationConfig":
        source = CONFIG_NAME if path == CONFIG_PATH else str(path)
        return cls.from_mapping(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=source)


def _positive(data: Mapping[str, Any], name: str, default: float) -> float:
    value = data.get(name, default)
    if not isinstance(value, (int, float)) or value <= 0:
        raise MediationConfigError(f"{name}: must be a positive number of units, not {value!r}")
    return float(value)


def _days(data: Mapping[str, Any], name: str, default: float, source: str) -> float:
    """A positive number of days (a YAML ``true`` is not one, though Python counts it as 1)."""
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise MediationConfigError(f"{source}: {name} must be a positive number of days (for example 14), not {value!r}")
    return float(value)


def _hours(spec: Any, where: str, holidays: HolidayBook, country: Optional[str]) -> WorkingHours:
    """One entry of working_hours; its days off are the public holidays of ``country``, or of the
    country named by its optional ``holidays`` field (the default entry has no country of its own)."""
    if not isinstance(spec, Mapping):
        raise MediationConfigError(f"{where}: must map timezone, days, start and end")
    if "timezone" not in spec:
        raise MediationConfigError(f"{where}.timezone: missing")
    zone = str(spec["timezone"])
    try:
        ZoneInfo(zone)
    except Exception:  # ZoneInfoNotFoundError, or a malformed name
        raise MediationConfigError(f"{where}.timezone: '{zone}' is not an IANA time zone") from None
    days = spec.get("days") or []
    bad = [d for d in days if str(d).lower() not in WEEKDAYS]
    if bad or not days:
        raise MediationConfigError(f"{where}.days: use {', '.join(WEEKDAYS)} (got {days!r})")
    try:
        start, end = dt.time.fromisoformat(str(spec["start"])), dt.time.fromisoformat(str(spec["end"]))
    except (KeyError, ValueError):
        raise MediationConfigError(f"{where}: start and end are HH:MM times") from None
    if end <= start:
        raise MediationConfigError(f"{where}: end must be after start")
    holidays_of = str(spec.get("holidays") or country or "").upper()
    if "holidays" in spec and holidays_of not in holidays.countries:
        raise MediationConfigError(f"{where}.holidays: no public-holiday file for '{spec['holidays']}' (known: {', '.join(holidays.countries)})")
    days_off = holidays.days_off(holidays_of) if holidays_of else frozenset()
    return WorkingHours(zone, frozenset(WEEKDAYS.index(str(d).lower()) for d in days), start, end, days_off)


@lru_cache(maxsize=1)
def default_config() -> MediationConfig:
    return MediationConfig.from_file()
