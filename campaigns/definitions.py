"""Campaign definitions: one YAML file per campaign, written by operators.

A campaign says who it reaches (audience), when (a fixed local date and time, or
days before/after a school-calendar event such as ``school_start`` or every
``exam:*``), what it says in each language, and how it may reach contacts the
platforms only let us message on their terms: a pre-approved WhatsApp template
outside the 24-hour window, and a Messenger tag (or nothing) outside
Messenger's window. It also bounds how it is sent: a send window in each
contact's local time and a cap of messages per contact per week.

Files are read with ruamel.yaml's round-trip loader so that every refusal names
the file, the line and the field::

    campaigns/examples/exam_period_students.yml:12: audience.countries[2]: 'XX' is not an ISO 3166 alpha-2 country code

An operator who copied an example should be able to fix the file from that one
line, so every message says what is accepted, not only what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import yaml
from babel import Locale
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from jisr.calendars import EVENT_KINDS, CalendarBook, CalendarEvent, default_calendars
from jisr.paths import CONTENT_DIR, REPLY_LANGUAGES, reply_language_of

__all__ = [
    "Audience",
    "Campaign",
    "CampaignError",
    "RenderError",
    "SendWindow",
    "Trigger",
    "WhatsAppTemplate",
    "load_campaign",
    "load_campaign_text",
    "load_campaigns",
    "render",
    "template_variables",
]

# --- What a campaign may say -------------------------------------------------

ROLES = ("parent", "student")
CHANNELS = ("whatsapp", "telegram", "messenger", "webchat")
LEVELS = ("preschool", "primary", "lower_secondary", "upper_secondary", "higher")
# What contacts subscribe to when they opt in ("rentrée, exams, deadlines…").
from jisr.topics import SUBSCRIPTION_TOPICS, reaches  # noqa: E402  (one list: contacts subscribe to these, campaigns target them)

# Placeholders a message may use. The four event ones only exist for campaigns
# triggered by a calendar event; {dates} is "9–11 June 2027" or "18 May 2027"
# (one day), so a message never reads "from 18 May to 18 May".
EVENT_PLACEHOLDERS = ("event_name", "first_day", "last_day", "dates")
DATE_PLACEHOLDERS = ("first_day", "last_day", "dates")
PLACEHOLDERS = EVENT_PLACEHOLDERS + ("country",)

# A WhatsApp template body holds at most 1024 characters; a campaign text that
# would not fit one would not fit the template the operator has to get approved.
MAX_TEXT_CHARS = 1000

# Meta's tags for non-promotional updates outside Messenger's 24-hour window.
# HUMAN_AGENT is left out on purpose (see _messenger_policy); Meta retires tags
# from time to time, so operators should check the list before relying on one.
MESSENGER_CAMPAIGN_TAGS = ("ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE")
MESSENGER_SKIP = "skip"

DEFAULT_SEND_WINDOW = (dt.time(9, 0), dt.time(20, 0))
# No send window may reach into the night, whatever the operator writes.
EARLIEST_SEND = dt.time(8, 0)
LATEST_SEND = dt.time(21, 0)
DEFAULT_WEEKLY_CAP = 2
MAX_OFFSET_DAYS = 365

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TIME = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")
_LOCAL_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ](?:[01]\d|2[0-3]):[0-5]\d$")
_SCHOOL_YEAR = re.compile(r"^(\d{4})-(\d{2})$")
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
_REGION = re.compile(r"^([A-Z]{2})-([A-Za-z0-9_]+)$")

# Babel knows every territory; these two-letter codes are not ISO 3166-1 countries
# (exceptionally reserved codes, the EU, the UN, pseudo-locales, Kosovo, unknown).
_NOT_ISO_COUNTRIES = {"AC", "CP", "CQ", "DG", "EA", "IC", "TA", "EU", "EZ", "QO", "UN", "XA", "XB", "XK", "ZZ"}
_ORIGIN_COUNTRY = "MA"

_TOP_FIELDS = (
    "id",
    "name",
    "description",
    "enabled",
    "audience",
    "trigger",
    "messages",
    "fallback_language",
    "whatsapp_template",
    "messenger_outside_window",
    "send_window",
    "weekly_cap",
)
_AUDIENCE_FIELDS = ("countries", "regions", "languages", "roles", "channels", "levels", "topics")
_TRIGGER_FIELDS = ("at", "event", "offset_days", "time", "yearly", "school_year")
_TEMPLATE_FIELDS = ("content_sid", "content_sid_by_language", "variables")
_WINDOW_FIELDS = ("start", "end")


class CampaignError(ValueError):
    """A campaign file Jisr refuses, as ``<file>:<line>: <field path>: <what is wrong>``."""

    def __init__(self, path: Union[str, Path], line: int, field_path: str, reason: str) -> None:
        super().__init__(f"{path}:{line}: {field_path}: {reason}")
        self.path = Path(path)
        self.line = line
        self.field = field_path
        self.reason = reason


class RenderError(ValueError):
    """A message asked for a value (event, country) the caller did not give."""


# --- The definition ----------------------------------------------------------


@dataclass(frozen=True)
class Audience:
    """Who a campaign reaches. An empty tuple means "not restricted" on that dimension."""

    countries: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()  # "<country>-<region key>", as in the contact's profile: ES-CT, DE-NW, FR-A
    languages: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    levels: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()

    @property
    def spoken_languages(self) -> tuple[str, ...]:
        """The languages the campaign must be written in: all five unless restricted."""
        return self.languages or REPLY_LANGUAGES

    @property
    def reached_channels(self) -> tuple[str, ...]:
        return self.channels or CHANNELS

    def includes(
        self,
        *,
        country: Optional[str],
        language: Optional[str],
        role: Optional[str],
        channel: Optional[str],
        level: Optional[str] = None,
        region: Optional[str] = None,
        topics: Iterable[str] = (),
        stopped_topics: Iterable[str] = (),
    ) -> bool:
        """Whether a contact with this profile is in the audience.

        A restricted dimension needs the contact's value to be known and listed:
        a campaign for parents is not sent to contacts whose role is unknown.
        Topics: jisr.topics.reaches (the topics the contact chose, or every one it did not stop).
        """
        language = reply_language_of(language) if language else None
        checks = (
            (self.countries, country.upper() if country else None),
            (self.regions, region),
            (self.languages, language),
            (self.roles, role),
            (self.channels, channel),
            (self.levels, level),
        )
        if any(allowed and value not in allowed for allowed, value in checks):
            return False
        return reaches(self.topics, topics, stopped_topics)


@dataclass(frozen=True)
class Trigger:
    """When a campaign is sent, always in each contact's own local time.

    Either ``at`` (a fixed local date and time; ``yearly`` repeats it on the same
    day every year) or ``event`` (a calendar event id, or ``<kind>:*`` for every
    event of that kind, e.g. ``exam:*``) with ``offset_days`` from the event's
    first day and a local ``time``. An event trigger runs every school year
    (``yearly``) or for the one ``school_year`` it names.
    """

    at: Optional[dt.datetime] = None
    event: Optional[str] = None
    offset_days: int = 0
    time: Optional[dt.time] = None
    yearly: bool = False
    school_year: Optional[str] = None

    @property
    def is_event(self) -> bool:
        return self.event is not None

    @property
    def local_time(self) -> dt.time:
        """The time of day, in the contact's time zone, the campaign is due."""
        if self.at is not None:
            return self.at.time()
        assert self.time is not None  # a loaded event trigger always has one
        return self.time

    @property
    def event_kind(self) -> Optional[str]:
        """``exam`` for ``exam:*``; None for a single event id."""
        if self.event and self.event.endswith(":*"):
            return self.event[:-2]
        return None

    def matches(self, event: CalendarEvent) -> bool:
        """Whether this trigger fires for ``event`` (its id, or any event of the kind)."""
        if self.event is None:
            return False
        kind = self.event_kind
        return event.kind == kind if kind else event.id == self.event

    def send_day(self, event: CalendarEvent, region: Optional[str] = None) -> dt.date:
        """The local day the campaign is due for ``event`` (the region's own dates where it has them)."""
        return event.dates_for(region).first_day + dt.timedelta(days=self.offset_days)


@dataclass(frozen=True)
class WhatsAppTemplate:
    """The approved template sent to WhatsApp contacts outside the 24-hour window.

    ``variables`` maps the template's numbered variables ({{1}}, {{2}}…) to the
    campaign placeholder that fills each. Meta approves a template per language,
    so ``content_sid_by_language`` may give one SID per language; ``content_sid``
    serves the others.
    """

    content_sid: str
    variables: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    content_sid_by_language: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def sid_for(self, language: str) -> str:
        return self.content_sid_by_language.get(reply_language_of(language), self.content_sid)

    @property
    def is_placeholder(self) -> bool:
        """True for the all-zero SID the shipped examples carry: Twilio would refuse it, so a
        scheduler can report the template as not configured instead of failing each send."""
        return any(set(sid[2:]) == {"0"} for sid in (self.content_sid, *self.content_sid_by_language.values()))


@dataclass(frozen=True)
class SendWindow:
    """Hours of the contact's local day when the campaign may be delivered: [start, end)."""

    start: dt.time
    end: dt.time

    def contains(self, moment: dt.time) -> bool:
        return self.start <= moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}–{self.end:%H:%M}"


@dataclass(frozen=True)
class Campaign:
    """One validated campaign.

    ``weekly_cap``: a contact who already received that many campaign messages
    (from any campaign) in the last 7 days is skipped, so calendars with many
    exams close together never flood a family.
    ``messenger_outside_window``: ``"skip"`` or a permitted message tag.
    """

    id: str
    name: str
    description: str
    audience: Audience
    trigger: Trigger
    messages: Mapping[str, str]
    fallback_language: str
    whatsapp_template: Optional[WhatsAppTemplate]
    messenger_outside_window: str = MESSENGER_SKIP
    send_window: SendWindow = SendWindow(*DEFAULT_SEND_WINDOW)
    weekly_cap: int = DEFAULT_WEEKLY_CAP
    enabled: bool = True
    path: Optional[Path] = None
    # sha256 of the text, for a campaign that came as text (the API) rather than as a file.
    source_digest: Optional[str] = None

    def message_language(self, language: Optional[str]) -> str:
        """The language a contact speaking ``language`` gets: theirs if written, else the fallback."""
        wanted = reply_language_of(language) if language else self.fallback_language
        return wanted if wanted in self.messages else self.fallback_language

    @property
    def placeholders(self) -> frozenset[str]:
        """The placeholders every language's message uses (validated to be the same set)."""
        return _placeholders_of(self.messages[self.fallback_language])

    @property
    def needs_event(self) -> bool:
        return self.trigger.is_event


# --- Loading -----------------------------------------------------------------


def load_campaign(path: Union[str, Path], calendars: Optional[CalendarBook] = None) -> Campaign:
    """Read and validate one campaign file; CampaignError names the file, line and field at fault.

    ``calendars`` defaults to the project's school calendars (content/calendars/);
    event ids are checked against them.
    """
    return _load(Path(path), calendars)[0]


def load_campaigns(directory: Union[str, Path], calendars: Optional[CalendarBook] = None) -> list[Campaign]:
    """Every ``*.yml`` / ``*.yaml`` campaign in ``directory``, by file name; ids must be unique."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such campaign directory")
    seen: dict[str, Path] = {}
    campaigns = []
    for path in sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")]):
        campaign, id_line = _load(path, calendars)
        if campaign.id in seen:
            # Sends are keyed by campaign id: two files with one id would share idempotency keys.
            raise CampaignError(path, id_line, "id", f"'{campaign.id}' is already the id of {seen[campaign.id]}; ids must be unique")
        seen[campaign.id] = path
        campaigns.append(campaign)
    return campaigns


def load_campaign_text(source: Union[str, bytes], name: str, calendars: Optional[CalendarBook] = None) -> Campaign:
    """Validate a campaign given as text (e.g. posted to the API) exactly as ``load_campaign``
    validates a file; ``name`` stands for the file in CampaignError messages.

    The campaign has no ``path``; its ``source_digest`` (sha256 of the text) takes the place of
    the file's hash in the runs it plans.
    """
    raw = source.encode("utf-8") if isinstance(source, str) else source
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CampaignError(name, 1, "campaign", "is not UTF-8 text") from error
    campaign = _parse(Path(name), text, calendars)[0]
    return dataclasses.replace(campaign, path=None, source_digest=hashlib.sha256(raw).hexdigest())


def _load(path: Path, calendars: Optional[CalendarBook]) -> tuple[Campaign, int]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CampaignError(path, 1, "campaign", f"cannot be read: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise CampaignError(path, 1, "campaign", "is not UTF-8 text") from error
    return _parse(path, text, calendars)


def _parse(path: Path, text: str, calendars: Optional[CalendarBook]) -> tuple[Campaign, int]:
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = (error.problem or error.context or "invalid YAML").split("\n")[0]
        raise CampaignError(path, line, "yaml", problem) from error
    except YAMLError as error:
        raise CampaignError(path, 1, "yaml", str(error).split("\n")[0]) from error
    reader = _Reader(path, calendars if calendars is not None else default_calendars())
    return reader.campaign(data)


# --- Validation --------------------------------------------------------------


def _key_line(container: Any, key: Any) -> int:
    """1-based line of a mapping key or a sequence item (ruamel counts from 0)."""
    try:
        if isinstance(container, CommentedSeq):
            return int(container.lc.item(key)[0]) + 1
        return int(container.lc.key(key)[0]) + 1
    except (AttributeError, KeyError, IndexError, TypeError):
        return _own_line(container)


def _value_line(container: Any, key: Any) -> int:
    try:
        if isinstance(container, CommentedSeq):
            return int(container.lc.item(key)[0]) + 1
        return int(container.lc.value(key)[0]) + 1
    except (AttributeError, KeyError, IndexError, TypeError):
        return _key_line(container, key)


def _own_line(node: Any) -> int:
    try:
        return int(node.lc.line) + 1
    except (AttributeError, TypeError):
        return 1


def _join(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, ScalarBoolean))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not _is_bool(value)


@lru_cache(maxsize=1)
def _iso_countries() -> frozenset[str]:
    territories = Locale("en").territories
    return frozenset(code for code in territories if len(code) == 2 and code.isalpha() and code not in _NOT_ISO_COUNTRIES)


@lru_cache(maxsize=1)
def _gazetteer_regions() -> frozenset[str]:
    """Region codes the assistant can put in a contact's profile (content/gazetteer.yml)."""
    try:
        data = yaml.safe_load((CONTENT_DIR / "gazetteer.yml").read_text(encoding="utf-8")) or {}
    except OSError:
        return frozenset()
    return frozenset(str(code) for code in (data.get("regions") or {}))


def _placeholders_of(text: str) -> frozenset[str]:
    return frozenset(name for _, name, _, _ in string.Formatter().parse(text) if name is not None)


class _Reader:
    """Walks one campaign document, refusing at the first problem with its line and field."""

    def __init__(self, path: Path, calendars: CalendarBook) -> None:
        self.path = path
        self.calendars = calendars

    def fail(self, line: int, field_path: str, reason: str) -> CampaignError:
        return CampaignError(self.path, line, field_path, reason)

    # -- generic shapes --

    def mapping(self, node: Any, field_path: str, line: int, known: Sequence[str], required: Sequence[str] = ()) -> CommentedMap:
        if not isinstance(node, CommentedMap):
            raise self.fail(line, field_path or "campaign", f"must be a mapping of fields ({', '.join(known)})")
        for key in node:
            if key not in known:
                raise self.fail(
                    _key_line(node, key),
                    _join(field_path, key),
                    f"unknown field '{key}'{_did_you_mean(str(key), known)}",
                )
        for name in required:
            if name not in node:
                raise self.fail(line, _join(field_path, name), "missing (required)")
        return node

    def text(self, node: CommentedMap, key: str, field_path: str) -> str:
        value = node[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(_value_line(node, key), field_path, "must be a non-empty text")
        return str(value).strip()

    def boolean(self, node: CommentedMap, key: str, field_path: str, default: bool) -> bool:
        if key not in node:
            return default
        value = node[key]
        if not _is_bool(value):
            raise self.fail(_value_line(node, key), field_path, f"must be true or false, not {value!r}")
        return bool(value)

    def time(self, node: CommentedMap, key: str, field_path: str) -> dt.time:
        value = node[key]
        # YAML 1.2 (ruamel's default) reads 18:00 as a string; an int means e.g. "time: 1800".
        if not isinstance(value, str) or not _TIME.match(value.strip()):
            raise self.fail(_value_line(node, key), field_path, f"{str(value)!r} is not a time HH:MM (24-hour clock, e.g. \"18:00\")")
        hours, minutes = value.strip().split(":")
        return dt.time(int(hours), int(minutes))

    def choices(self, node: CommentedMap, key: str, field_path: str, check: Any) -> tuple[str, ...]:
        """A non-empty list of distinct strings, each passed to ``check(value, line, item_path)``."""
        value = node[key]
        line = _value_line(node, key)
        if not isinstance(value, CommentedSeq):
            raise self.fail(line, field_path, f"must be a list, e.g. [{str(value) if value is not None else '…'}]")
        if not value:
            raise self.fail(line, field_path, "an empty list reaches nobody; leave the field out to reach everyone")
        items: list[str] = []
        for index, item in enumerate(value):
            item_path = f"{field_path}[{index}]"
            item_line = _key_line(value, index)
            if not isinstance(item, str):
                raise self.fail(item_line, item_path, f"must be a text, not {item!r}")
            item = str(item).strip()
            check(item, item_line, item_path)
            if item in items:
                raise self.fail(item_line, item_path, f"'{item}' is listed twice")
            items.append(item)
        return tuple(items)

    def one_of(self, allowed: Sequence[str], what: str, hints: Optional[Mapping[str, str]] = None) -> Any:
        def check(item: str, line: int, item_path: str) -> None:
            if item in allowed:
                return
            hint = (hints or {}).get(item) or _did_you_mean(item, allowed)
            raise self.fail(line, item_path, f"'{item}' is not {what} ({', '.join(allowed)}){hint}")

        return check

    # -- the campaign --

    def campaign(self, data: Any) -> tuple[Campaign, int]:
        if data is None:
            raise self.fail(1, "campaign", "the file is empty; copy one of campaigns/examples/*.yml to start")
        root = self.mapping(data, "", _own_line(data), _TOP_FIELDS, required=("id", "name", "audience", "trigger", "messages", "fallback_language"))

        campaign_id = self.text(root, "id", "id")
        if not _ID.match(campaign_id):
            raise self.fail(_value_line(root, "id"), "id", f"'{campaign_id}' must be lowercase letters, digits, '_' or '-' (e.g. school_start_parents)")
        name = self.text(root, "name", "name")
        description = self.text(root, "description", "description") if "description" in root else ""
        enabled = self.boolean(root, "enabled", "enabled", default=True)

        audience = self.audience(root["audience"], _key_line(root, "audience"))
        send_window = self.send_window(root)
        trigger = self.trigger(root["trigger"], _key_line(root, "trigger"), audience, send_window)
        messages, fallback = self.messages(root, audience, trigger)
        template = self.whatsapp_template(root, audience, trigger)
        messenger = self.messenger_policy(root)
        weekly_cap = self.weekly_cap(root)

        campaign = Campaign(
            id=campaign_id,
            name=name,
            description=description,
            audience=audience,
            trigger=trigger,
            messages=MappingProxyType(messages),
            fallback_language=fallback,
            whatsapp_template=template,
            messenger_outside_window=messenger,
            send_window=send_window,
            weekly_cap=weekly_cap,
            enabled=enabled,
            path=self.path,
        )
        return campaign, _key_line(root, "id")

    def audience(self, node: Any, line: int) -> Audience:
        if node is None:
            node = CommentedMap()  # "audience:" with nothing under it: everyone
        self.mapping(node, "audience", line, _AUDIENCE_FIELDS)
        values: dict[str, tuple[str, ...]] = {}

        if "countries" in node:
            values["countries"] = self.choices(node, "countries", "audience.countries", self._check_country)
        countries = values.get("countries", ())

        if "regions" in node:
            values["regions"] = self.choices(node, "regions", "audience.regions", self._region_checker(countries))
        if "languages" in node:
            hints = {"ary": " (Darija speakers are written to in Arabic: use 'ar')", "en": " (Jisr writes in ar, fr, es, it and de only)"}
            values["languages"] = self.choices(node, "languages", "audience.languages", self.one_of(REPLY_LANGUAGES, "a reply language", hints))
        if "roles" in node:
            values["roles"] = self.choices(node, "roles", "audience.roles", self.one_of(ROLES, "a role"))
        if "channels" in node:
            values["channels"] = self.choices(node, "channels", "audience.channels", self.one_of(CHANNELS, "a channel"))
        if "levels" in node:
            values["levels"] = self.choices(node, "levels", "audience.levels", self.one_of(LEVELS, "a school level"))
        if "topics" in node:
            values["topics"] = self.choices(node, "topics", "audience.topics", self.one_of(SUBSCRIPTION_TOPICS, "a subscription topic"))
        return Audience(**values)

    def _check_country(self, code: str, line: int, item_path: str) -> None:
        if code == _ORIGIN_COUNTRY:
            raise self.fail(line, item_path, "'MA' is Morocco, the families' country of origin: Jisr never takes it as a contact's host country")
        if code in _iso_countries():
            return
        if code.upper() in _iso_countries():
            raise self.fail(line, item_path, f"'{code}' must be written in capitals: '{code.upper()}'")
        hint = " (the United Kingdom is 'GB')" if code.upper() == "UK" else ""
        raise self.fail(line, item_path, f"'{code}' is not an ISO 3166 alpha-2 country code (e.g. FR, ES, IT, DE, BE, NL, DZ, CI){hint}")

    def _region_checker(self, countries: tuple[str, ...]) -> Any:
        known = set(_gazetteer_regions())
        for calendar in self.calendars.all():
            for event in calendar.events:
                known.update(f"{calendar.country}-{key}" for key in event.regions)

        def check(region: str, line: int, item_path: str) -> None:
            match = _REGION.match(region)
            if not match:
                raise self.fail(line, item_path, f"'{region}' must be '<country>-<region>', as in a contact's profile (e.g. ES-CT, DE-NW, FR-A)")
            country = match.group(1)
            if countries and country not in countries:
                raise self.fail(line, item_path, f"'{region}' is in {country}, which audience.countries leaves out")
            if region not in known:
                same_country = sorted(r for r in known if r.startswith(f"{country}-"))
                listing = f" (known for {country}: {', '.join(same_country)})" if same_country else f" (no regions are known for {country})"
                raise self.fail(line, item_path, f"unknown region '{region}'{_did_you_mean(region, same_country)}{listing}")

        return check

    def send_window(self, root: CommentedMap) -> SendWindow:
        if "send_window" not in root:
            return SendWindow(*DEFAULT_SEND_WINDOW)
        node = self.mapping(root["send_window"], "send_window", _key_line(root, "send_window"), _WINDOW_FIELDS, required=_WINDOW_FIELDS)
        start = self.time(node, "start", "send_window.start")
        end = self.time(node, "end", "send_window.end")
        if start < EARLIEST_SEND:
            raise self.fail(_value_line(node, "start"), "send_window.start", f"{start:%H:%M} is before {EARLIEST_SEND:%H:%M}: no messages at night")
        if end > LATEST_SEND:
            raise self.fail(_value_line(node, "end"), "send_window.end", f"{end:%H:%M} is after {LATEST_SEND:%H:%M}: no messages at night")
        if start >= end:
            raise self.fail(_value_line(node, "start"), "send_window.start", f"{start:%H:%M} must be before the end of the window ({end:%H:%M})")
        return SendWindow(start, end)

    def trigger(self, node: Any, line: int, audience: Audience, window: SendWindow) -> Trigger:
        self.mapping(node, "trigger", line, _TRIGGER_FIELDS)
        if "at" in node and "event" in node:
            raise self.fail(_key_line(node, "event"), "trigger.event", "'at' and 'event' cannot be used together: choose a fixed date or a calendar event")
        if "at" not in node and "event" not in node:
            raise self.fail(line, "trigger", "needs either 'at' (a local date and time, e.g. 2026-09-01T18:00) or 'event' (a calendar event id, e.g. school_start or exam:*)")
        yearly = self.boolean(node, "yearly", "trigger.yearly", default=False)
        trigger = self._at_trigger(node, yearly) if "at" in node else self._event_trigger(node, line, yearly, audience)
        moment = trigger.local_time
        if not window.contains(moment):
            key = "at" if "at" in node else "time"
            raise self.fail(
                _value_line(node, key),
                f"trigger.{key}",
                f"{moment:%H:%M} is outside the send window {window}: move the time or the window",
            )
        return trigger

    def _at_trigger(self, node: CommentedMap, yearly: bool) -> Trigger:
        for only_event in ("offset_days", "time", "school_year"):
            if only_event in node:
                raise self.fail(_key_line(node, only_event), f"trigger.{only_event}", "only for event triggers; 'at' already gives the date and time")
        value = node["at"]
        line = _value_line(node, "at")
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                raise self.fail(line, "trigger.at", "give the local time without a time zone: each contact gets it at that time in their own time zone")
            # A plain datetime: ruamel's TimeStamp subclass carries parsing details we do not want to keep.
            moment = dt.datetime(value.year, value.month, value.day, value.hour, value.minute)
        elif isinstance(value, dt.date):
            raise self.fail(line, "trigger.at", f"{value} needs a local time too, e.g. {value}T18:00")
        elif isinstance(value, str) and _LOCAL_DATETIME.match(value.strip()):
            try:
                moment = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                raise self.fail(line, "trigger.at", f"'{value}' is not a real date") from None
        else:
            raise self.fail(line, "trigger.at", f"{str(value)!r} is not a local date and time (YYYY-MM-DDTHH:MM, e.g. 2026-09-01T18:00)")
        if yearly and (moment.month, moment.day) == (2, 29):
            raise self.fail(line, "trigger.at", "29 February does not come every year; choose another day for a yearly campaign")
        return Trigger(at=moment, yearly=yearly)

    def _event_trigger(self, node: CommentedMap, line: int, yearly: bool, audience: Audience) -> Trigger:
        event = self.text(node, "event", "trigger.event")
        if "time" not in node:
            raise self.fail(line, "trigger.time", "missing (required with 'event'): the local time of day to send, e.g. \"18:00\"")
        time = self.time(node, "time", "trigger.time")
        offset = 0
        if "offset_days" in node:
            offset = node["offset_days"]
            if not _is_int(offset) or abs(offset) > MAX_OFFSET_DAYS:
                raise self.fail(
                    _value_line(node, "offset_days"),
                    "trigger.offset_days",
                    f"{offset!r} must be a whole number of days from the event's first day, between -{MAX_OFFSET_DAYS} and {MAX_OFFSET_DAYS} (e.g. -7 for a week before)",
                )
        school_year = None
        if "school_year" in node:
            school_year = self._school_year(node)
            if yearly:
                raise self.fail(_key_line(node, "school_year"), "trigger.school_year", "'yearly: true' runs every school year; leave out school_year or yearly")
        elif not yearly:
            raise self.fail(line, "trigger", "say which school years: 'yearly: true' (every school year) or 'school_year: 2026-27' (that one only)")
        self._check_event(event, _value_line(node, "event"), audience, school_year)
        return Trigger(event=event, offset_days=int(offset), time=time, yearly=yearly, school_year=school_year)

    def _school_year(self, node: CommentedMap) -> str:
        value = str(node["school_year"]).strip()
        match = _SCHOOL_YEAR.match(value)
        if not match or (int(match.group(1)) + 1) % 100 != int(match.group(2)):
            raise self.fail(_value_line(node, "school_year"), "trigger.school_year", f"'{value}' is not a school year like 2026-27")
        return value

    def _check_event(self, event: str, line: int, audience: Audience, school_year: Optional[str]) -> None:
        countries = audience.countries or tuple(self.calendars.countries)
        calendars = [
            c for c in self.calendars.all() if c.country in countries and (school_year is None or c.school_year == school_year)
        ]
        where = ", ".join(countries)
        if not calendars:
            year = f" for {school_year}" if school_year else ""
            raise self.fail(line, "trigger.event", f"no school calendar{year} of {where} in content/calendars/: an event trigger needs one")
        ids = sorted({e.id for c in calendars for e in c.events})
        kinds = sorted({e.kind for c in calendars for e in c.events})
        wildcards = [f"{kind}:*" for kind in kinds]
        if event.endswith(":*"):
            kind = event[:-2]
            if kind not in EVENT_KINDS:
                raise self.fail(
                    line,
                    "trigger.event",
                    f"'{event}' names no kind of event{_did_you_mean(event, wildcards)} (kinds: {', '.join(f'{k}:*' for k in EVENT_KINDS)})",
                )
            if kind not in kinds:
                raise self.fail(line, "trigger.event", f"no calendar of {where} has an event of kind '{kind}'")
            return
        if event not in ids:
            raise self.fail(
                line,
                "trigger.event",
                f"no calendar of {where} has the event '{event}'{_did_you_mean(event, ids + wildcards)}; event ids are in content/calendars/",
            )

    def messages(self, root: CommentedMap, audience: Audience, trigger: Trigger) -> tuple[dict[str, str], str]:
        node = root["messages"]
        line = _key_line(root, "messages")
        if not isinstance(node, CommentedMap) or not node:
            raise self.fail(line, "messages", "must map each language to its text, e.g. fr: \"Bonjour…\"")
        texts: dict[str, str] = {}
        for language in node:
            item_path = f"messages.{language}"
            if language not in REPLY_LANGUAGES:
                hint = " (Darija speakers are written to in Arabic: use 'ar')" if language == "ary" else _did_you_mean(str(language), REPLY_LANGUAGES)
                raise self.fail(_key_line(node, language), item_path, f"'{language}' is not a reply language ({', '.join(REPLY_LANGUAGES)}){hint}")
            value = node[language]
            value_line = _value_line(node, language)
            if not isinstance(value, str) or not value.strip():
                raise self.fail(value_line, item_path, "the message is empty")
            text = str(value).strip()
            if len(text) > MAX_TEXT_CHARS:
                raise self.fail(value_line, item_path, f"the message is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}")
            self._check_placeholders(text, value_line, item_path, trigger)
            texts[str(language)] = text

        fallback = self.text(root, "fallback_language", "fallback_language")
        fallback_line = _value_line(root, "fallback_language")
        if fallback not in REPLY_LANGUAGES:
            raise self.fail(fallback_line, "fallback_language", f"'{fallback}' is not a reply language ({', '.join(REPLY_LANGUAGES)})")
        if fallback not in texts:
            raise self.fail(fallback_line, "fallback_language", f"'{fallback}' has no message under messages")

        for language in audience.spoken_languages:
            if language not in texts:
                raise self.fail(line, "messages", f"missing the message in '{language}', which the audience speaks")

        # Every language must carry the same facts: compare each with the fallback language.
        reference = _placeholders_of(texts[fallback])
        for language, text in texts.items():
            used = _placeholders_of(text)
            extra, lacking = sorted(used - reference), sorted(reference - used)
            if extra or lacking:
                problems = []
                if lacking:
                    problems.append(f"lacks {', '.join('{' + p + '}' for p in lacking)}")
                if extra:
                    problems.append(f"uses {', '.join('{' + p + '}' for p in extra)}")
                raise self.fail(
                    _value_line(node, language),
                    f"messages.{language}",
                    f"{' and '.join(problems)} unlike the '{fallback}' message: every language must use the same placeholders",
                )
        return texts, fallback

    def _check_placeholders(self, text: str, line: int, item_path: str, trigger: Trigger) -> None:
        try:
            pieces = list(string.Formatter().parse(text))
        except ValueError:
            raise self.fail(line, item_path, "has an unmatched '{' or '}' (write {{ or }} for a literal brace)") from None
        known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        for _, name, spec, conversion in pieces:
            if name is None:
                continue
            if name not in PLACEHOLDERS:
                raise self.fail(line, item_path, f"unknown placeholder {{{name}}}{_did_you_mean(name, PLACEHOLDERS)} (known: {known})")
            if spec or conversion:
                raise self.fail(line, item_path, f"placeholder {{{name}}} takes no format; write it as {{{name}}}")
            if name in EVENT_PLACEHOLDERS and not trigger.is_event:
                raise self.fail(line, item_path, f"{{{name}}} needs a calendar event, but this campaign's trigger is a fixed date ('at')")

    def whatsapp_template(self, root: CommentedMap, audience: Audience, trigger: Trigger) -> Optional[WhatsAppTemplate]:
        if "whatsapp_template" not in root:
            if "whatsapp" in audience.reached_channels:
                audience_node = root["audience"]
                line = (
                    _key_line(audience_node, "channels")
                    if isinstance(audience_node, CommentedMap) and "channels" in audience_node
                    else _key_line(root, "audience")
                )
                raise self.fail(
                    line,
                    "whatsapp_template",
                    "missing: the audience includes WhatsApp, where contacts outside the 24-hour window can only get an approved template "
                    "(add whatsapp_template, or leave whatsapp out of audience.channels)",
                )
            return None
        node = self.mapping(root["whatsapp_template"], "whatsapp_template", _key_line(root, "whatsapp_template"), _TEMPLATE_FIELDS, required=("content_sid",))
        sid = self._content_sid(node, "content_sid", "whatsapp_template.content_sid")
        by_language: dict[str, str] = {}
        if "content_sid_by_language" in node:
            sids = node["content_sid_by_language"]
            if not isinstance(sids, CommentedMap):
                raise self.fail(_value_line(node, "content_sid_by_language"), "whatsapp_template.content_sid_by_language", "must map languages to template SIDs, e.g. ar: HX…")
            for language in sids:
                item_path = f"whatsapp_template.content_sid_by_language.{language}"
                if language not in REPLY_LANGUAGES:
                    raise self.fail(_key_line(sids, language), item_path, f"'{language}' is not a reply language ({', '.join(REPLY_LANGUAGES)})")
                by_language[str(language)] = self._content_sid(sids, language, item_path)
        variables = self._template_variables(node, trigger) if "variables" in node else {}
        return WhatsAppTemplate(sid, MappingProxyType(variables), MappingProxyType(by_language))

    def _content_sid(self, node: CommentedMap, key: Any, field_path: str) -> str:
        value = str(node[key] or "").strip()
        if not _CONTENT_SID.match(value):
            raise self.fail(
                _value_line(node, key),
                field_path,
                f"'{value}' is not a Twilio Content SID ('HX' and 32 hexadecimal digits, from Twilio's Content Template Builder)",
            )
        return value

    def _template_variables(self, node: CommentedMap, trigger: Trigger) -> dict[int, str]:
        variables = node["variables"]
        line = _value_line(node, "variables")
        if not isinstance(variables, CommentedMap):
            raise self.fail(line, "whatsapp_template.variables", "must map the template's variable numbers to placeholders, e.g. {1: event_name, 2: dates}")
        result: dict[int, str] = {}
        for key in variables:
            item_path = f"whatsapp_template.variables.{key}"
            key_line = _key_line(variables, key)
            number = key if _is_int(key) else int(key) if isinstance(key, str) and key.strip().isdigit() else None
            if number is None or number < 1:
                raise self.fail(key_line, item_path, f"'{key}' is not a template variable number (1, 2, 3…)")
            value = variables[key]
            name = str(value).strip().strip("{}") if isinstance(value, str) else None
            if name not in PLACEHOLDERS:
                known = ", ".join(PLACEHOLDERS)
                raise self.fail(key_line, item_path, f"{value!r} is not a placeholder ({known}){_did_you_mean(str(name), PLACEHOLDERS)}")
            if name in EVENT_PLACEHOLDERS and not trigger.is_event:
                raise self.fail(key_line, item_path, f"'{name}' needs a calendar event, but this campaign's trigger is a fixed date ('at')")
            result[number] = name
        expected = list(range(1, len(result) + 1))
        if sorted(result) != expected:
            missing = next(n for n in expected if n not in result)
            # Twilio fills {{1}}, {{2}}… of the approved template: a gap would leave one empty.
            raise self.fail(line, "whatsapp_template.variables", f"variables must be numbered 1, 2, 3… without gaps; {missing} is missing")
        return dict(sorted(result.items()))

    def messenger_policy(self, root: CommentedMap) -> str:
        if "messenger_outside_window" not in root:
            return MESSENGER_SKIP
        value = root["messenger_outside_window"]
        line = _value_line(root, "messenger_outside_window")
        allowed = f"{MESSENGER_SKIP}, {', '.join(MESSENGER_CAMPAIGN_TAGS)}"
        if not isinstance(value, str):
            raise self.fail(line, "messenger_outside_window", f"must be one of {allowed}")
        word = value.strip()
        if word.lower() == MESSENGER_SKIP:
            return MESSENGER_SKIP
        if word.upper() == "HUMAN_AGENT":
            raise self.fail(
                line,
                "messenger_outside_window",
                "HUMAN_AGENT is not allowed for campaigns: Meta reserves it for a person answering a user's own message "
                f"within 7 days, and a campaign is sent by the engine, not by a person; use one of {allowed}",
            )
        if word.upper() in MESSENGER_CAMPAIGN_TAGS:
            return word.upper()
        raise self.fail(
            line,
            "messenger_outside_window",
            f"'{word}' is not allowed: outside Messenger's 24-hour window only tags for non-promotional updates may be used ({allowed})"
            f"{_did_you_mean(word.upper(), MESSENGER_CAMPAIGN_TAGS)}",
        )

    def weekly_cap(self, root: CommentedMap) -> int:
        if "weekly_cap" not in root:
            return DEFAULT_WEEKLY_CAP
        value = root["weekly_cap"]
        if not _is_int(value) or value < 1:
            raise self.fail(_value_line(root, "weekly_cap"), "weekly_cap", f"{value!r} must be a whole number of messages per contact per week, at least 1")
        return int(value)


# --- Rendering ---------------------------------------------------------------


def _calendar_region(region: Optional[str], country: Optional[str]) -> Optional[str]:
    """Calendars key regions without the country ("CT"); profiles carry "ES-CT"."""
    if not region:
        return None
    prefix, dash, key = region.partition("-")
    if not dash:
        return region
    if country and prefix.upper() != country.upper():
        return None  # a region of another country: the contact moved
    return key


def _values(
    campaign: Campaign,
    names: Iterable[str],
    language: str,
    event: Optional[CalendarEvent],
    country: Optional[str],
    region: Optional[str],
) -> dict[str, str]:
    # Imported here: the reply book and Babel are only needed to render, not to validate.
    from babel.dates import format_interval

    from jisr.content import default_reply_book
    from jisr.knowledge import format_day

    values: dict[str, str] = {}
    for name in names:
        if name in EVENT_PLACEHOLDERS:
            if event is None:
                raise RenderError(f"campaign '{campaign.id}': the message uses {{{name}}} but no calendar event was given")
            dates = event.dates_for(_calendar_region(region, country))
            if name == "event_name":
                values[name] = event.name(language)
            elif name == "first_day":
                values[name] = format_day(dates.first_day, language)
            elif name == "last_day":
                values[name] = format_day(dates.last_day, language)
            elif dates.first_day == dates.last_day:
                values[name] = format_day(dates.first_day, language)
            else:
                values[name] = format_interval(dates.first_day, dates.last_day, "yMMMd", locale=language)
        elif name == "country":
            if not country:
                raise RenderError(f"campaign '{campaign.id}': the message uses {{country}} but no country was given")
            values[name] = default_reply_book().country_name(country.upper(), language)
    return values


def _unconfirmed_label(language: str) -> str:
    from jisr.content import default_reply_book

    return default_reply_book().text("date_unconfirmed", language)


def render(
    campaign: Campaign,
    language: Optional[str],
    event: Optional[CalendarEvent] = None,
    country: Optional[str] = None,
    region: Optional[str] = None,
) -> str:
    """The campaign's text for a contact: in their language (or the fallback), placeholders filled.

    Dates are written in the language of the text and use the region's own dates
    where the calendar has them. Dates not yet officially published are marked
    "to be confirmed" once, after the last date in the text, so an unconfirmed
    date is never shown as certain.
    """
    used = campaign.message_language(language)
    text = campaign.messages[used]
    pieces = list(string.Formatter().parse(text))
    # In reading order (not a set): an error always names the first missing value.
    values = _values(campaign, list(dict.fromkeys(n for _, n, _, _ in pieces if n)), used, event, country, region)
    mark_at = None
    if event is not None and not event.confirmed:
        dated = [i for i, (_, name, _, _) in enumerate(pieces) if name in DATE_PLACEHOLDERS]
        mark_at = dated[-1] if dated else None
    out = []
    for index, (literal, name, _, _) in enumerate(pieces):
        out.append(literal)
        if name is not None:
            out.append(values[name])
            if index == mark_at:
                out.append(f" ({_unconfirmed_label(used)})")
    return "".join(out)


def template_variables(
    campaign: Campaign,
    language: Optional[str],
    event: Optional[CalendarEvent] = None,
    country: Optional[str] = None,
    region: Optional[str] = None,
) -> dict[str, str]:
    """Twilio ContentVariables for the campaign's WhatsApp template: {"1": "...", "2": "..."}.

    Filled like ``render`` (same language choice, same dates); the last date
    variable carries the "to be confirmed" mark when the event is unconfirmed.
    """
    template = campaign.whatsapp_template
    if template is None:
        return {}
    used = campaign.message_language(language)
    values = _values(campaign, set(template.variables.values()), used, event, country, region)
    result = {str(number): values[name] for number, name in template.variables.items()}
    if event is not None and not event.confirmed:
        dated = [number for number, name in template.variables.items() if name in DATE_PLACEHOLDERS]
        if dated:
            result[str(dated[-1])] += f" ({_unconfirmed_label(used)})"
    return result
