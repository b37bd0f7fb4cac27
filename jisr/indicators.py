"""The strategy's indicators: what the outreach achieved, computed from the tables in SQL.

Each indicator is a small table (columns and rows) so that the operators' console draws it,
the JSON API returns it and the CSV export writes it from one result; nothing here knows
about HTTP or accounts. Every query takes the same ``Scope``: a period (``since`` inclusive,
``until`` exclusive) and the countries the reader may see (None = every country; contacts
whose country is unknown are then counted under "?").

The queries are portable SQLAlchemy Core (SQLite and PostgreSQL), group in the database
and read only the rows of the period through indexes on the time columns (migration step
7). Two figures are finished in Python because SQL has no portable way to do them: the
mediators' response-time percentiles (few rows: one per handoff) and the grouping of
unanswered questions by their redacted text (at most ``UNANSWERED_SCAN`` distinct texts).

Message text is shown in exactly one place, the unanswered questions, because content
writers need the words families use to write the missing answers. It is shown only
grouped (never with a contact, address or date), only when at least
``MIN_CONTACTS_FOR_TEXT`` different families asked it (a message only one family wrote
may describe that family), with phone numbers, e-mail addresses, links and long numbers
replaced by placeholders, and only to operators and admins (the API checks the role).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr.assistant.runtime import FALLBACK_INTENT
from jisr.store.schema import campaign_runs, campaign_sends, consent_events, contacts, handoffs, messages

UTC = dt.timezone.utc
UNKNOWN = "?"
# Inbound intents that mean the assistant had no answer: the classifier was unsure (the
# gateway records the fallback marker then) or the question is outside what Jisr covers.
UNANSWERED_INTENTS = (FALLBACK_INTENT, "out_of_scope")
# An outbound message that reached the family's phone.
REACHED_STATUSES = ("delivered", "read")
SEND_STATUS_COLUMNS = ("planned", "queued", "sent", "delivered", "read", "failed", "skipped")
MIN_CONTACTS_FOR_TEXT = 2
UNANSWERED_SCAN = 5000       # distinct texts read from the database, most frequent first
UNANSWERED_SHOWN = 50
SHOWN_TEXT_CHARS = 200


@dataclass(frozen=True)
class Scope:
    """What a reader asked for and may see. ``countries`` None = every country (admins, "*")."""

    since: Optional[dt.datetime] = None
    until: Optional[dt.datetime] = None
    countries: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if self.countries is not None:
            object.__setattr__(self, "countries", tuple(sorted({c.upper() for c in self.countries})))

    def period(self, column: sa.ColumnElement) -> list[sa.ColumnElement]:
        conditions = []
        if self.since is not None:
            conditions.append(column >= self.since)
        if self.until is not None:
            conditions.append(column < self.until)
        return conditions

    def country(self, column: sa.ColumnElement) -> list[sa.ColumnElement]:
        """Rows of the readable countries; an unknown country is readable only by those who see all."""
        if self.countries is None:
            return []
        return [sa.func.upper(column).in_(self.countries)]


@dataclass
class Indicator:
    """One indicator as a table, with what the console needs to draw it."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    chart: dict[str, Any] = field(default_factory=dict)   # {"kind": "bar"|"line", "label": col, "values": [cols]}
    note: str = ""
    note_values: dict[str, Any] = field(default_factory=dict)   # the note's figures, for a translated note in the console

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "columns": self.columns,
            "rows": [[json_cell(v) for v in row] for row in self.rows],
            "chart": self.chart,
            "note": self.note,
            "note_values": self.note_values,
        }

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow([csv_cell(c) for c in self.columns])
        for row in self.rows:
            writer.writerow([csv_cell(v) for v in row])
        return out.getvalue()


def json_cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection); a tab
# or carriage return first also triggers it in some.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A value as a CSV cell that no spreadsheet runs as a formula. Numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    text = json_cell(value)
    text = str(text)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


# -- redaction of shown text --------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# A phone number: an optional +, then 6 or more digits possibly split by spaces, dots, dashes
# or brackets ("+33 6 12 34 56 78", "06.12.34.56.78", "(0)612-345"). Any other long number
# (an id, a card) goes too.
_PHONE = re.compile(r"(?:\+|00)?\d(?:[\s().\-\u00a0]*\d){5,}")


def redact(text: str) -> str:
    """Text with e-mail addresses, links and phone or other long numbers replaced by placeholders."""
    text = _EMAIL.sub("[email]", text)
    text = _URL.sub("[link]", text)
    return _PHONE.sub("[number]", text)


def _normal_question(text: str) -> str:
    """The form under which questions are grouped: redacted, case-folded, spaces collapsed, trailing punctuation dropped."""
    text = unicodedata.normalize("NFKC", redact(text)).casefold()
    text = " ".join(text.split())
    return text.rstrip(" ?!.؟،,;:")[:SHOWN_TEXT_CHARS]


# -- time buckets ---------------------------------------------------------------------------


# Grouped expressions hold no bound parameters: PostgreSQL matches a SELECT expression to its
# GROUP BY one by text, and two parameters ($1, $2) of equal value do not match.


def _day(engine: Engine, column: sa.ColumnElement) -> sa.ColumnElement:
    """The UTC day of a time column as "YYYY-MM-DD", in the database's own dialect."""
    if engine.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone(sa.literal_column("'UTC'"), column), sa.literal_column("'YYYY-MM-DD'"))
    # SQLite holds the UTC wall time as text ("2026-10-01 08:00:00.000000").
    return sa.func.substr(column, sa.literal_column("1"), sa.literal_column("10"))


def _country(column: sa.ColumnElement) -> sa.ColumnElement:
    return sa.func.upper(column)


def _known(value: Any) -> Any:
    """What a report shows for an unknown (NULL) country, role, language or topic."""
    return UNKNOWN if value is None else value


# -- the indicators ---------------------------------------------------------------------------


def reached(engine: Engine, scope: Scope) -> Indicator:
    """Families (parents) and students reached per country: contacts with at least one
    delivered or read message in the period. Linked channels of one family count once."""
    family = sa.func.coalesce(contacts.c.profile_id, contacts.c.id)
    role = contacts.c.role
    country = _country(contacts.c.country)
    query = (
        sa.select(country.label("country"), role.label("role"), sa.func.count(sa.distinct(family)).label("reached"))
        .select_from(messages.join(contacts, contacts.c.id == messages.c.contact_id))
        .where(messages.c.direction == "out", messages.c.status.in_(REACHED_STATUSES), *scope.period(messages.c.created_at), *scope.country(contacts.c.country))
        .group_by(country, role)
    )
    by_country: dict[str, Counter] = defaultdict(Counter)
    with engine.connect() as conn:
        for row in conn.execute(query):
            by_country[_known(row.country)][_known(row.role)] += row.reached
    rows = [
        [c, counts["parent"], counts["student"], sum(v for k, v in counts.items() if k not in ("parent", "student")), sum(counts.values())]
        for c, counts in sorted(by_country.items())
    ]
    return Indicator(
        "reached",
        "Families and students reached per country",
        ["country", "parents", "students", "role_unknown", "total"],
        rows,
        {"kind": "bar", "label": "country", "values": ["parents", "students", "role_unknown"]},
        "Contacts with at least one message delivered or read in the period; a family's linked channels count once.",
    )


def campaigns(engine: Engine, scope: Scope) -> Indicator:
    """Campaign runs created in the period and their sends by status (sends of the readable countries)."""
    counts = [sa.func.sum(sa.case((campaign_sends.c.status == s, 1), else_=0)).label(s) for s in SEND_STATUS_COLUMNS]
    query = (
        sa.select(
            campaign_runs.c.id,
            campaign_runs.c.campaign_id,
            campaign_runs.c.occurrence,
            campaign_runs.c.state,
            campaign_runs.c.created_at,
            sa.func.count(campaign_sends.c.id).label("total"),
            *counts,
        )
        .select_from(
            campaign_runs.join(campaign_sends, campaign_sends.c.run_id == campaign_runs.c.id).join(
                contacts, contacts.c.id == campaign_sends.c.contact_id
            )
        )
        .where(*scope.period(campaign_runs.c.created_at), *scope.country(contacts.c.country))
        .group_by(campaign_runs.c.id, campaign_runs.c.campaign_id, campaign_runs.c.occurrence, campaign_runs.c.state, campaign_runs.c.created_at)
        .order_by(campaign_runs.c.id)
    )
    with engine.connect() as conn:
        rows = [
            [r.id, r.campaign_id, r.occurrence, r.state, r.created_at, r.total, *(int(getattr(r, s) or 0) for s in SEND_STATUS_COLUMNS)]
            for r in conn.execute(query)
        ]
    return Indicator(
        "campaigns",
        "Campaigns run and their sends by status",
        ["run", "campaign", "occurrence", "state", "created_at", "total", *SEND_STATUS_COLUMNS],
        rows,
        {"kind": "bar", "label": "campaign", "values": ["delivered", "read", "failed", "skipped"]},
        "Runs created in the period; sends counted for the countries you cover. Delivered excludes read.",
    )


def delivery(engine: Engine, scope: Scope) -> Indicator:
    """Outbound messages (replies and campaigns) per country and channel: sent, delivered, read, failed."""
    country = _country(contacts.c.country)
    status = messages.c.status

    def count_of(*statuses: str) -> sa.ColumnElement:
        return sa.func.sum(sa.case((status.in_(statuses), 1), else_=0))

    query = (
        sa.select(
            country.label("country"),
            messages.c.channel,
            sa.func.count().label("total"),
            count_of("sent", "delivered", "read").label("accepted"),
            count_of("delivered", "read").label("delivered"),
            count_of("read").label("read"),
            count_of("failed", "undelivered").label("failed"),
        )
        .select_from(messages.join(contacts, contacts.c.id == messages.c.contact_id))
        .where(messages.c.direction == "out", *scope.period(messages.c.created_at), *scope.country(contacts.c.country))
        .group_by(country, messages.c.channel)
    )
    with engine.connect() as conn:
        rows = [[_known(r.country), r.channel, r.total, int(r.accepted or 0), int(r.delivered or 0), int(r.read or 0), int(r.failed or 0)] for r in conn.execute(query)]
    rows.sort(key=lambda r: (r[0], r[1]))  # in Python: the databases sort NULL differently
    return Indicator(
        "delivery",
        "Messages delivered and read",
        ["country", "channel", "total", "accepted", "delivered", "read", "failed"],
        rows,
        {"kind": "bar", "label": "country", "values": ["delivered", "read", "failed"]},
        "Outbound messages written in the period, by their latest receipt: delivered counts read ones too.",
    )


def questions(engine: Engine, scope: Scope) -> Indicator:
    """Families' messages per topic (the understood intent), country and language."""
    country = _country(contacts.c.country)
    intent = messages.c.intent
    language = messages.c.language
    query = (
        sa.select(intent.label("topic"), country.label("country"), language.label("language"), sa.func.count().label("messages"))
        .select_from(messages.join(contacts, contacts.c.id == messages.c.contact_id))
        .where(messages.c.direction == "in", *scope.period(messages.c.created_at), *scope.country(contacts.c.country))
        .group_by(intent, country, language)
    )
    with engine.connect() as conn:
        rows = [[_known(r.topic), _known(r.country), _known(r.language), r.messages] for r in conn.execute(query)]
    rows.sort(key=lambda r: (-r[3], r[0], r[1], r[2]))
    return Indicator(
        "questions",
        "Questions by topic, country and language",
        ["topic", "country", "language", "messages"],
        rows,
        {"kind": "bar", "label": "topic", "values": ["messages"], "sum_by_label": True},
        f"Messages from families in the period. {FALLBACK_INTENT}: not understood; ?: no text (media) or not analysed.",
    )


def unanswered(engine: Engine, scope: Scope, *, limit: int = UNANSWERED_SHOWN, min_contacts: int = MIN_CONTACTS_FOR_TEXT) -> Indicator:
    """The questions the assistant could not answer, most frequent first, as redacted text
    grouped across families (see the module's docstring for what is shown and why)."""
    text = messages.c.text
    family = sa.func.coalesce(contacts.c.profile_id, contacts.c.id)   # linked channels are one family
    query = (
        sa.select(
            text,
            family.label("family"),
            messages.c.language,
            sa.func.count().label("messages"),
        )
        .select_from(messages.join(contacts, contacts.c.id == messages.c.contact_id))
        .where(
            messages.c.direction == "in",
            messages.c.intent.in_(UNANSWERED_INTENTS),
            text.is_not(None),
            *scope.period(messages.c.created_at),
            *scope.country(contacts.c.country),
        )
        .group_by(text, family, messages.c.language)
        .order_by(sa.func.count().desc())
        .limit(UNANSWERED_SCAN)
    )
    grouped: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            key = _normal_question(row.text or "")
            if not key:
                continue
            group = grouped.setdefault(key, {"messages": 0, "contacts": set(), "languages": Counter()})
            group["messages"] += row.messages
            group["contacts"].add(row.family)
            group["languages"][_known(row.language)] += row.messages
    shown = [(key, g) for key, g in grouped.items() if len(g["contacts"]) >= min_contacts]
    shown.sort(key=lambda item: (-item[1]["messages"], -len(item[1]["contacts"]), item[0]))
    rows = [
        [key, g["messages"], len(g["contacts"]), ",".join(lang for lang, _ in g["languages"].most_common())] for key, g in shown[:limit]
    ]
    hidden = sum(g["messages"] for key, g in grouped.items() if len(g["contacts"]) < min_contacts)
    return Indicator(
        "unanswered",
        "Questions the assistant could not answer",
        ["question", "messages", "families", "languages"],
        rows,
        {"kind": "bar", "label": "question", "values": ["messages"]},
        f"Redacted text (numbers, e-mails and links removed), shown only when asked by at least {min_contacts} families; "
        f"{hidden} other unanswered messages were each written by one family only and are not shown.",
        {"min_families": min_contacts, "hidden": hidden},
    )


def handoffs_by_reason(engine: Engine, scope: Scope) -> Indicator:
    """Conversations handed to mediators in the period, per reason and country."""
    country = _country(handoffs.c.country)
    query = (
        sa.select(handoffs.c.reason, country.label("country"), sa.func.count().label("handoffs"))
        .where(*scope.period(handoffs.c.created_at), *scope.country(handoffs.c.country))
        .group_by(handoffs.c.reason, country)
    )
    with engine.connect() as conn:
        rows = sorted([r.reason, _known(r.country), r.handoffs] for r in conn.execute(query))
    return Indicator(
        "handoffs",
        "Handoffs to mediators per reason",
        ["reason", "country", "handoffs"],
        rows,
        {"kind": "bar", "label": "reason", "values": ["handoffs"], "sum_by_label": True},
        "Conversations handed to a person in the period.",
    )


def _minutes(seconds: float) -> float:
    return round(seconds / 60.0, 1)


def response_times(engine: Engine, scope: Scope) -> Indicator:
    """How long families waited for a mediator's first answer, per country: median and 90th
    percentile in minutes over the handoffs of the period that were answered."""
    country = _country(handoffs.c.country)
    query = sa.select(country.label("country"), handoffs.c.created_at, handoffs.c.first_response_at).where(
        *scope.period(handoffs.c.created_at), *scope.country(handoffs.c.country)
    )
    waits: dict[str, list[float]] = defaultdict(list)
    unanswered_count: Counter = Counter()
    with engine.connect() as conn:
        for row in conn.execute(query):
            if row.first_response_at is None:
                unanswered_count[_known(row.country)] += 1
            else:
                waits[_known(row.country)].append(max(0.0, (row.first_response_at - row.created_at).total_seconds()))
    rows = []
    for c in sorted(set(waits) | set(unanswered_count)):
        values = sorted(waits.get(c, []))
        rows.append(
            [
                c,
                len(values) + unanswered_count[c],
                len(values),
                unanswered_count[c],
                _minutes(statistics.median(values)) if values else None,
                _minutes(_percentile(values, 0.9)) if values else None,
            ]
        )
    return Indicator(
        "response_times",
        "Mediators' response times",
        ["country", "handoffs", "answered", "not_answered", "median_minutes", "p90_minutes"],
        rows,
        {"kind": "bar", "label": "country", "values": ["median_minutes", "p90_minutes"]},
        "From the handoff to the mediator's first message; handoffs opened in the period.",
    )


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was really observed (rounding first, so 0.9 × 10 is 9)."""
    rank = math.ceil(round(fraction * len(sorted_values), 9))
    return sorted_values[max(0, min(len(sorted_values), rank) - 1)]


def opt_outs(engine: Engine, scope: Scope) -> Indicator:
    """Opt-outs per day, channel and country (from the consent history: every opt-out counts,
    also one later undone by subscribing again)."""
    day = _day(engine, consent_events.c.at)
    country = _country(contacts.c.country)
    channel = consent_events.c.channel
    query = (
        sa.select(day.label("day"), channel.label("channel"), country.label("country"), sa.func.count().label("opt_outs"))
        .select_from(consent_events.join(contacts, contacts.c.id == consent_events.c.contact_id))
        .where(consent_events.c.consent == "opted_out", *scope.period(consent_events.c.at), *scope.country(contacts.c.country))
        .group_by(day, channel, country)
    )
    with engine.connect() as conn:
        rows = sorted([r.day, _known(r.channel), _known(r.country), r.opt_outs] for r in conn.execute(query))
    return Indicator(
        "opt_outs",
        "Opt-outs over time",
        ["day", "channel", "country", "opt_outs"],
        rows,
        {"kind": "line", "label": "day", "values": ["opt_outs"], "series": "channel"},
        "Opt-out events in the period (UTC days), including platform signals such as a blocked bot.",
    )


INDICATORS: dict[str, Callable[[Engine, Scope], Indicator]] = {
    "reached": reached,
    "campaigns": campaigns,
    "delivery": delivery,
    "questions": questions,
    "unanswered": unanswered,
    "handoffs": handoffs_by_reason,
    "response_times": response_times,
    "opt_outs": opt_outs,
}


def compute(engine: Engine, name: str, scope: Scope) -> Indicator:
    """One indicator by name; KeyError for an unknown name."""
    return INDICATORS[name](engine, scope)


def compute_all(engine: Engine, scope: Scope) -> list[Indicator]:
    return [function(engine, scope) for function in INDICATORS.values()]


def parse_bound(value: Optional[str], *, end: bool = False) -> Optional[dt.datetime]:
    """A period bound from a query string: a date ("2026-10-01") or an ISO date-time (no offset: UTC).

    A date as ``until`` (``end``) includes that whole day. Raises ValueError for anything else.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > 40:
        raise ValueError("a date is at most 40 characters")
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        day = parsed.date()
    else:
        parsed = dt.datetime.combine(day, dt.time(), tzinfo=UTC)
        if end:
            parsed += dt.timedelta(days=1)
    if not dt.date(2000, 1, 1) <= day <= dt.date(2099, 12, 31):
        raise ValueError("dates are between 2000 and 2099")
    return parsed
