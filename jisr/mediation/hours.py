"""Mediators' working hours: is someone at work now, and when does the next shift start?

Computed in the country's own time zone (DST-safe through zoneinfo), then told to the family in
*its* local time, which may differ (a family in Spain whose conversation is followed from Paris).
The country's public holidays (WorkingHours.days_off) are days without a shift.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Optional
from zoneinfo import ZoneInfo

from babel.dates import format_date

from jisr.content import ReplyBook
from jisr.mediation.config import WorkingHours
from jisr.paths import REPLY_LANGUAGES, date_locale

# Less than this left in a shift: promise the next shift rather than "today".
LAST_CALL = dt.timedelta(minutes=30)
# How far ahead to look for a working day (holidays can close several days in a row).
LOOK_AHEAD_DAYS = 31
# From this many days ahead a weekday alone is ambiguous ("Monday": which one?): the date is added.
WEEKDAY_ALONE_WITHIN = 7
# The weekday and the date, in each reply language (the locale's own order and words).
DAY_AND_DATE = {"fr": "EEEE d MMMM", "ar": "EEEE d MMMM", "es": "EEEE d 'de' MMMM", "it": "EEEE d MMMM", "de": "EEEE, d. MMMM"}


@dataclass(frozen=True)
class Eta:
    """Roughly when a person answers: within ``hours`` hours, today before ``at``, or at ``at`` (next shift)."""

    kind: str                         # within | today | next_shift
    at: Optional[dt.datetime] = None  # aware: the shift's end (today) or the next shift's start
    hours: int = 0                    # for "within"


def _shift(hours: WorkingHours, day: dt.date, time: dt.time) -> dt.datetime:
    return dt.datetime.combine(day, time, tzinfo=hours.zone)


def working_day(hours: WorkingHours, day: dt.date) -> bool:
    """One of the mediators' weekdays, and not a public holiday of their country."""
    return day.weekday() in hours.days and day not in hours.days_off


def next_shift_start(hours: WorkingHours, now: dt.datetime) -> dt.datetime:
    """The first shift start strictly after ``now`` (aware, in the mediators' zone)."""
    local = now.astimezone(hours.zone)
    for offset in range(LOOK_AHEAD_DAYS + 1):
        day = local.date() + dt.timedelta(days=offset)
        if working_day(hours, day):
            start = _shift(hours, day, hours.start)
            if start > local:
                return start
    raise ValueError(f"no working day in the {LOOK_AHEAD_DAYS} days after {local.date()}: check the public holidays in content/calendars/public_holidays/")


def open_now(hours: WorkingHours, now: dt.datetime) -> bool:
    local = now.astimezone(hours.zone)
    return working_day(hours, local.date()) and hours.start <= local.time() < hours.end


def eta(hours: WorkingHours, now: dt.datetime, expected: dt.timedelta) -> Eta:
    if open_now(hours, now):
        local = now.astimezone(hours.zone)
        end = _shift(hours, local.date(), hours.end)
        left = end - local
        if left >= expected:
            return Eta("within", hours=max(1, math.ceil(expected.total_seconds() / 3600)))
        if left >= LAST_CALL:
            return Eta("today", at=end)
    return Eta("next_shift", at=next_shift_start(hours, now))


def family_zone(timezone: Optional[str], hours: WorkingHours) -> ZoneInfo:
    """The family's own zone when known (contacts.timezone), else the mediators' country zone."""
    if timezone:
        try:
            return ZoneInfo(timezone)
        except Exception:
            pass
    return hours.zone


def hours_phrase(replies: ReplyBook, language: str, n: int) -> str:
    """"about n hours" in the reply language (``handoff_hours``): ``one``, ``two``, then the
    language's own plural category where the file names it (Arabic counts 3–10 hours with
    ساعات, CLDR "few", and 11 or more with ساعة, "many"/"other"), else ``many``."""
    from babel import Locale

    counts = replies.raw("handoff_hours", language)
    if n in (1, 2):
        form = "one" if n == 1 else "two"
    else:
        form = Locale.parse(date_locale(language)).plural_form(n)
    return str(counts.get(form) or counts["many"]).format(n=n)


def eta_text(replies: ReplyBook, language: str, when: Eta, zone: ZoneInfo, now: dt.datetime) -> str:
    """The sentence saying when a person answers, in the family's language and local time."""
    if when.kind == "within":
        duration = hours_phrase(replies, language, when.hours)
        return replies.text("handoff_eta_within", language, duration=duration)
    assert when.at is not None
    local = when.at.astimezone(zone)
    time = local.strftime("%H:%M")
    if when.kind == "today":
        return replies.text("handoff_eta_today", language, time=time)
    days = replies.raw("handoff_days", language)
    today = now.astimezone(zone).date()
    if local.date() == today:
        day = str(days["today"])
    elif local.date() == today + dt.timedelta(days=1):
        day = str(days["tomorrow"])
    else:
        locale = language if language in REPLY_LANGUAGES else "fr"
        pattern = "EEEE" if (local.date() - today).days < WEEKDAY_ALONE_WITHIN else DAY_AND_DATE.get(locale, "EEEE d MMMM")
        weekday = format_date(local.date(), format=pattern, locale=date_locale(locale))
        day = str(days.get("weekday", "{weekday}")).format(weekday=weekday)
    return replies.text("handoff_eta_next_shift", language, day=day, time=time)
