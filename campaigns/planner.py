"""Campaign planning: from a validated campaign to one send per contact per occurrence.

``preview`` computes what ``plan`` would write, without writing; both run the same
expansion (``_expand``), so their counts cannot disagree.

An *occurrence* is one firing of the trigger: for an event trigger, one matching
calendar event of one country's school year (``exam:bac@DZ@2026-27``); for an
``at`` trigger, its local date and time (``2026-09-01T18:00``). Each occurrence is a
run (campaign_runs); each contact of the audience gets one row in campaign_sends,
planned (with its UTC instant and the form it will take) or skipped with a reason.

Not in this slice: sending the planned rows, pausing/resuming/cancelling runs,
reports. The sender must re-check consent and the 24-hour windows at send time:
the plan only predicts them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campaigns.definitions import MESSENGER_SKIP, Campaign, _calendar_region, render
from jisr.calendars import CalendarBook, CalendarEvent, default_calendars
from jisr.outbox import DEFAULT_RATES
from jisr.progress import ProgressFactory
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import Contact

UTC = dt.timezone.utc
WEEK = dt.timedelta(days=7)
PLATFORM_WINDOW = dt.timedelta(hours=24)

# When a contact has no time zone of their own: the country's (one zone each for these countries).
COUNTRY_TIMEZONES = {
    "FR": "Europe/Paris",
    "ES": "Europe/Madrid",
    "IT": "Europe/Rome",
    "DE": "Europe/Berlin",
    "BE": "Europe/Brussels",
    "NL": "Europe/Amsterdam",
    "DZ": "Africa/Algiers",
    "CI": "Africa/Abidjan",
}

# Channels a campaign can reach: a web chat session cannot be written to first.
PUSH_CHANNELS = ("whatsapp", "telegram", "messenger")

# Reasons a contact of the audience is not sent an occurrence.
OPTED_OUT = "opted_out"
NO_CONSENT = "no_consent"
CAPPED = "capped"
NO_LANGUAGE = "no_language"
OUTSIDE_WINDOW = "outside_window"
NO_TIMEZONE = "no_timezone"
NO_COUNTRY = "no_country"   # the message names the family's country ({country}) and theirs is not known

BATCH_SIZE = 5000


@dataclass(frozen=True)
class Occurrence:
    """One firing of a campaign's trigger."""

    key: str                                 # "exam:bac@DZ@2026-27" or "2026-09-01T18:00"
    country: Optional[str] = None            # None: an `at` trigger, any country
    event: Optional[CalendarEvent] = None
    day: Optional[dt.date] = None            # the local day of an `at` trigger
    earliest: Optional[dt.date] = None       # the local send days over every region of the event
    latest: Optional[dt.date] = None

    def send_days(self) -> tuple[dt.date, dt.date]:
        """The first and last local day any contact is due (regions may differ)."""
        if self.day is not None:
            return self.day, self.day
        assert self.earliest is not None and self.latest is not None
        return self.earliest, self.latest


@dataclass(frozen=True)
class Decision:
    """What one contact gets for one occurrence."""

    occurrence: Occurrence
    contact: Contact
    idempotency_key: str
    language: Optional[str]
    scheduled_at: Optional[dt.datetime]      # UTC
    local_time: Optional[str]
    form: Optional[str]                      # text | template | tag:<TAG>
    reason: Optional[str]                    # None: planned

    @property
    def planned(self) -> bool:
        return self.reason is None


@dataclass
class Summary:
    """Counts of an expansion; the planned counts are of sends, the excluded ones of contacts × occurrences."""

    campaign_id: str
    now: dt.datetime
    occurrences: list[str] = field(default_factory=list)
    planned: int = 0
    by_country: Counter = field(default_factory=Counter)
    by_language: Counter = field(default_factory=Counter)
    by_channel: Counter = field(default_factory=Counter)
    by_form: Counter = field(default_factory=Counter)
    by_occurrence: Counter = field(default_factory=Counter)
    excluded: Counter = field(default_factory=Counter)
    past: int = 0                             # audience contacts whose send time had already passed
    first_send: Optional[dt.datetime] = None
    last_send: Optional[dt.datetime] = None
    seconds: float = 0.0                      # how long the expansion took

    def add(self, decision: Decision) -> None:
        if not decision.planned:
            self.excluded[decision.reason] += 1
            return
        contact = decision.contact
        self.planned += 1
        self.by_country[(contact.country or "?").upper()] += 1
        self.by_language[decision.language] += 1
        self.by_channel[contact.channel] += 1
        self.by_form[decision.form] += 1
        self.by_occurrence[decision.occurrence.key] += 1
        at = decision.scheduled_at
        if at is not None:
            self.first_send = at if self.first_send is None or at < self.first_send else self.first_send
            self.last_send = at if self.last_send is None or at > self.last_send else self.last_send

    def estimated_seconds_by_channel(self) -> dict[str, float]:
        """Seconds each channel's sends take at outbox.DEFAULT_RATES (messages per second)."""
        return {channel: count / DEFAULT_RATES[channel] for channel, count in self.by_channel.items()}

    @property
    def estimated_seconds(self) -> float:
        """Channels are rate-limited separately and drain in parallel: the slowest one wins."""
        return max(self.estimated_seconds_by_channel().values(), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign_id,
            "now": self.now.isoformat(),
            "occurrences": self.occurrences,
            "planned": self.planned,
            "by_country": dict(sorted(self.by_country.items())),
            "by_language": dict(sorted(self.by_language.items())),
            "by_channel": dict(sorted(self.by_channel.items())),
            "by_form": dict(sorted(self.by_form.items())),
            "by_occurrence": dict(self.by_occurrence),
            "excluded": dict(sorted(self.excluded.items())),
            "past": self.past,
            "first_send": self.first_send.isoformat() if self.first_send else None,
            "last_send": self.last_send.isoformat() if self.last_send else None,
            "estimated_seconds": round(self.estimated_seconds, 1),
            "estimated_seconds_by_channel": {k: round(v, 1) for k, v in sorted(self.estimated_seconds_by_channel().items())},
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Preview(Summary):
    """What ``plan`` would write, plus the message each language gets."""

    messages: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "messages": self.messages}


@dataclass
class Plan(Summary):
    """What ``plan`` wrote: one run per occurrence; sends already planned before are left as they were."""

    runs: dict[str, int] = field(default_factory=dict)      # occurrence → run id
    inserted: int = 0                                        # rows written now (planned and skipped)
    existing: int = 0                                        # rows a previous plan had written

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "runs": self.runs, "inserted": self.inserted, "existing": self.existing}


# --- Time -------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _zone(name: str) -> Optional[ZoneInfo]:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def contact_zone(contact: Contact) -> Optional[ZoneInfo]:
    """The contact's own time zone, else their country's; None when neither is known."""
    if contact.timezone:
        zone = _zone(contact.timezone)
        if zone is not None:
            return zone
    default = COUNTRY_TIMEZONES.get((contact.country or "").upper())
    return _zone(default) if default else None


def local_send_time(campaign: Campaign, day: dt.date, zone: ZoneInfo) -> dt.datetime:
    """The aware local moment ``campaign`` is due on ``day``, moved into its send window.

    Before the window: its start, the same day. At or after its end: the next day's start
    (no messages at night). Built from the wall time with zoneinfo, so a day on which the
    clocks change gets that day's offset.
    """
    moment = campaign.trigger.local_time
    window = campaign.send_window
    if moment < window.start:
        moment = window.start
    elif moment >= window.end:
        day, moment = day + dt.timedelta(days=1), window.start
    local = dt.datetime.combine(day, moment, tzinfo=zone)
    # A wall time inside a spring-forward gap does not exist: the round trip moves it past the gap.
    return local.astimezone(UTC).astimezone(zone)


def idempotency_key(campaign_id: str, occurrence: str, contact_id: int) -> str:
    return hashlib.sha256(f"{campaign_id}\x1f{occurrence}\x1f{contact_id}".encode()).hexdigest()


# --- Occurrences ------------------------------------------------------------------------


def occurrences(campaign: Campaign, now: dt.datetime, calendars: CalendarBook) -> list[Occurrence]:
    """The trigger's occurrences that may still have sends after ``now``, earliest first.

    Whether a contact's send is in the future depends on their region and time zone, so
    this keeps every occurrence within a day or two of ``now``; the planner drops past sends.
    """
    trigger = campaign.trigger
    horizon = now.astimezone(UTC).date() - dt.timedelta(days=2)
    if not trigger.is_event:
        assert trigger.at is not None
        day = trigger.at.date()
        if trigger.yearly:
            # The first yearly date not wholly past (29 February is refused by validation).
            day = next(d for d in (day.replace(year=y) for y in range(horizon.year, horizon.year + 2)) if d >= horizon)
        if day < horizon:
            return []
        return [Occurrence(key=f"{day.isoformat()}T{trigger.local_time:%H:%M}", day=day)]

    found: list[tuple[dt.date, Occurrence]] = []
    countries = campaign.audience.countries or tuple(calendars.countries)
    for country in countries:
        for calendar in calendars.all():
            if calendar.country != country:
                continue
            if trigger.school_year is not None:
                if calendar.school_year != trigger.school_year:
                    continue
            elif calendar.ends < horizon:
                continue  # yearly: the school year under way and the ones after it
            for event in calendar.events:
                if not trigger.matches(event):
                    continue
                # The latest send day over the event's regions: a region may still be ahead.
                days = [trigger.send_day(event)] + [trigger.send_day(event, region) for region in event.regions]
                if max(days) + dt.timedelta(days=1) < horizon:
                    continue
                key = f"{event.id}@{country}@{calendar.school_year}"
                found.append((min(days), Occurrence(key=key, country=country, event=event, earliest=min(days), latest=max(days))))
    found.sort(key=lambda item: (item[0], item[1].key))
    return [occurrence for _, occurrence in found]


# --- Expansion --------------------------------------------------------------------------


def _uses_country(campaign: Campaign) -> bool:
    """Does the text or the WhatsApp template ask for the family's country?"""
    template = campaign.whatsapp_template
    return "country" in campaign.placeholders or (template is not None and "country" in template.variables.values())


def _decide(
    campaign: Campaign,
    occurrence: Occurrence,
    contact: Contact,
    now: dt.datetime,
    counted: dict[str, dt.datetime],
) -> Optional[Decision]:
    """One contact's outcome for one occurrence; None when its send time has passed."""
    key = idempotency_key(campaign.id, occurrence.key, contact.id)
    language = campaign.message_language(contact.language)

    def skipped(reason: str, at: Optional[dt.datetime] = None, local: Optional[str] = None) -> Decision:
        return Decision(occurrence, contact, key, language, at, local, None, reason)

    zone = contact_zone(contact)
    if zone is None:
        return skipped(NO_TIMEZONE)
    if not (occurrence.country or contact.country) and _uses_country(campaign):
        # Rendering would have nothing to put in {country}: skipped with its reason at planning,
        # never a send that fails (or a 500) later.
        return skipped(NO_COUNTRY)
    if occurrence.event is not None:
        day = campaign.trigger.send_day(occurrence.event, _calendar_region(contact.region, contact.country))
    else:
        assert occurrence.day is not None
        day = occurrence.day
    local = local_send_time(campaign, day, zone)
    at = local.astimezone(UTC)
    if at <= now:
        return None
    shown = f"{local:%Y-%m-%d %H:%M} {zone.key}"
    if contact.consent == "opted_out":
        return skipped(OPTED_OUT, at, shown)
    if contact.consent != "opted_in":
        return skipped(NO_CONSENT, at, shown)
    if language not in campaign.messages:
        return skipped(NO_LANGUAGE, at, shown)
    # The cap is a rolling week: sends less than 7 days before or after this one count,
    # since a later occurrence may already be planned when an earlier one is added.
    near = sum(1 for other_key, other in counted.items() if other_key != key and abs(other - at) < WEEK)
    if near >= campaign.weekly_cap:
        return skipped(CAPPED, at, shown)
    form = "text"
    inside = contact.last_inbound_at is not None and at - contact.last_inbound_at < PLATFORM_WINDOW
    if contact.channel == "whatsapp" and not inside:
        form = "template"
    elif contact.channel == "messenger" and not inside:
        if campaign.messenger_outside_window == MESSENGER_SKIP:
            return skipped(OUTSIDE_WINDOW, at, shown)
        form = f"tag:{campaign.messenger_outside_window}"
    return Decision(occurrence, contact, key, language, at, shown, form, None)


def _expand(
    campaign: Campaign,
    store: CampaignStore,
    now: dt.datetime,
    calendars: CalendarBook,
    summary: Summary,
    progress: Optional[ProgressFactory] = None,
) -> Iterator[tuple[Occurrence, list[Decision]]]:
    """Each occurrence's decisions, one batch of contacts at a time, counted into ``summary``.

    Sends decided earlier in this expansion count towards the cap of later ones (``pending``),
    whether or not the caller writes them, so preview and plan agree. ``progress`` is told of
    each batch of contacts read (the total is counted first: one cheap query per country).
    """
    audience = campaign.audience
    channels = [c for c in audience.reached_channels if c in PUSH_CHANNELS]
    pending: dict[int, dict[str, dt.datetime]] = {}
    found = occurrences(campaign, now, calendars)
    summary.occurrences.extend(o.key for o in found)
    # Contacts are read once per country, not once per occurrence (exam:* has several per
    # country); each contact still meets its occurrences in time order, which is what the
    # cap needs, so the outcome is the same as going occurrence by occurrence.
    groups: dict[Optional[str], list[Occurrence]] = {}
    for occurrence in found:
        groups.setdefault(occurrence.country, []).append(occurrence)
    bar = None
    if progress is not None:
        total = sum(store.count_contacts(countries=(country,) if country else audience.countries, channels=channels) for country in groups)
        bar = progress("contacts", total)
    for country, group in groups.items():
        countries = (country,) if country else audience.countries
        # Every send falls on one of the group's send days (the next day when clamped, ±14 h
        # of time zones): one range query per batch covers what the cap must count.
        start = dt.datetime.combine(min(o.send_days()[0] for o in group), dt.time(0), tzinfo=UTC) - WEEK - dt.timedelta(days=1)
        end = dt.datetime.combine(max(o.send_days()[1] for o in group), dt.time(0), tzinfo=UTC) + WEEK + dt.timedelta(days=2)
        for batch in store.iter_contact_batches(countries=countries, channels=channels, batch_size=BATCH_SIZE):
            # Topics live in their own table: read for the batch only when the audience asks for them.
            topics, stopped = store.topics_between(batch[0].id, batch[-1].id) if audience.topics and batch else ({}, {})
            members = [
                c
                for c in batch
                if audience.includes(
                    country=c.country, language=c.language, role=c.role, channel=c.channel, level=c.school_level, region=c.region,
                    topics=topics.get(c.id, ()), stopped_topics=stopped.get(c.id, ()),
                )
            ]
            if bar is not None:
                bar.advance(len(batch))
            if not members:
                continue
            stored = store.counted_sends(members[0].id, members[-1].id, start, end)
            for occurrence in group:
                decisions = []
                for contact in members:
                    counted = {**stored.get(contact.id, {}), **pending.get(contact.id, {})}
                    decision = _decide(campaign, occurrence, contact, now, counted)
                    if decision is None:
                        summary.past += 1
                        continue
                    summary.add(decision)
                    if decision.planned and decision.scheduled_at is not None:
                        pending.setdefault(contact.id, {})[decision.idempotency_key] = decision.scheduled_at
                    decisions.append(decision)
                yield occurrence, decisions
    if bar is not None:
        bar.finish()


def parse_now(value: Optional[str]) -> dt.datetime:
    """An ISO date-time given by an operator (``--now``, the API's ``now``); without an offset
    it is taken as UTC; None is now. ValueError if it is not one."""
    if value is None:
        return dt.datetime.now(UTC)
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _aware_now(now: Optional[dt.datetime]) -> dt.datetime:
    if now is None:
        return dt.datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime (e.g. 2026-08-20T10:00+00:00)")
    return now.astimezone(UTC)


def source_hash(campaign: Campaign) -> Optional[str]:
    """sha256 of the campaign file, so a run records which version of the file planned it."""
    if campaign.source_digest is not None:
        return campaign.source_digest
    if campaign.path is None or not campaign.path.exists():
        return None
    return hashlib.sha256(campaign.path.read_bytes()).hexdigest()


def preview(
    campaign: Campaign,
    store: CampaignStore,
    now: Optional[dt.datetime] = None,
    calendars: Optional[CalendarBook] = None,
    progress: Optional[ProgressFactory] = None,
) -> Preview:
    """What ``plan`` would write now, without writing; with one rendered message per language."""
    started = time.perf_counter()
    now = _aware_now(now)
    calendars = calendars if calendars is not None else default_calendars()
    result = Preview(campaign_id=campaign.id, now=now)
    first: Optional[Occurrence] = None
    for occurrence, _decisions in _expand(campaign, store, now, calendars, result, progress):
        first = first or occurrence
    if first is None:
        found = occurrences(campaign, now, calendars)
        first = found[0] if found else None
    # The text as the first occurrence's contacts read it; another country or region only
    # changes the names and dates filled in.
    for language in campaign.messages:
        if first is None and campaign.needs_event:
            break
        # With no country in the trigger or the audience, {country} is shown as the country
        # most of the planned families live in (contacts without one are skipped, see _decide).
        known = [code for code, _ in result.by_country.most_common() if code != "?"]
        sample_country = (first.country if first else None) or (campaign.audience.countries or (None,))[0] or (known[0] if known else None)
        if sample_country is None and _uses_country(campaign):
            break  # nobody to write to: no text to show
        result.messages[language] = render(campaign, language, first.event if first else None, sample_country)
    result.seconds = time.perf_counter() - started
    return result


def plan(
    campaign: Campaign,
    store: CampaignStore,
    now: Optional[dt.datetime] = None,
    calendars: Optional[CalendarBook] = None,
    progress: Optional[ProgressFactory] = None,
) -> Plan:
    """Write one run per occurrence and one send per audience contact (planned or skipped).

    Idempotent: a send already written for (campaign, occurrence, contact) is left as it
    was, so planning again only adds contacts who joined since.
    """
    started = time.perf_counter()
    now = _aware_now(now)
    calendars = calendars if calendars is not None else default_calendars()
    result = Plan(campaign_id=campaign.id, now=now)
    digest = source_hash(campaign)
    for occurrence, decisions in _expand(campaign, store, now, calendars, result, progress):
        if occurrence.key not in result.runs:
            result.runs[occurrence.key], _ = store.get_or_create_run(campaign.id, occurrence.key, digest)
        run_id = result.runs[occurrence.key]
        stamp = dt.datetime.now(UTC)
        rows = [
            {
                "run_id": run_id,
                "contact_id": d.contact.id,
                "idempotency_key": d.idempotency_key,
                "language": d.language,
                "channel": d.contact.channel,
                "form": d.form,
                "scheduled_at": d.scheduled_at,
                "local_time": d.local_time,
                "status": "planned" if d.planned else "skipped",
                "reason": d.reason,
                "created_at": stamp,
                "updated_at": stamp,
            }
            for d in decisions
        ]
        written = store.insert_sends(rows)
        result.inserted += written
        result.existing += len(rows) - written
    result.seconds = time.perf_counter() - started
    return result
