"""Handoffs, their notes and their messages in SQL: the one place that reads and writes them.

A contact has at most one open handoff (waiting or assigned). ``open`` guarantees it under
concurrent messages and several gateway processes by first writing to the contact's row in the
same transaction: on PostgreSQL that row lock queues the second transaction behind the first,
on SQLite the write takes the database's write lock; either way the second one then sees the
first one's handoff and raises its priority instead of opening another.

State changes are conditional UPDATEs (``WHERE status IN (...)``): two mediators claiming at
once, or two gateway processes escalating at once, cannot both win.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr.store.schema import accounts, contacts, handoff_notes, handoffs, messages

UTC = dt.timezone.utc
OPEN = ("waiting", "assigned")
CLOSED = ("handed_back", "resolved")
# A mediator's text written outside WhatsApp's 24-hour window waits for the family to write
# back (a template asked them to); so does the assistant's notice about a handoff that the
# platform does not let go out now. This is their message status meanwhile.
AWAITING_WINDOW = "awaiting_window"
# The error code of a waiting message kept past held_messages_expire_after_days
# (content/mediation.yml): recorded failed instead of sent, its words being out of date by then.
EXPIRED = "expired"
MAX_NOTE_CHARS = 4000


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclass(frozen=True)
class Handoff:
    id: int
    contact_id: int
    channel: str
    status: str
    reason: str
    priority: int
    country: Optional[str]
    language: Optional[str]
    role: Optional[str]
    topics: tuple[str, ...]
    assigned_to: Optional[int]
    created_at: dt.datetime
    claimed_at: Optional[dt.datetime] = None
    first_response_at: Optional[dt.datetime] = None
    escalated_at: Optional[dt.datetime] = None
    ended_at: Optional[dt.datetime] = None
    last_inbound_at: Optional[dt.datetime] = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @classmethod
    def from_row(cls, row: Any) -> "Handoff":
        values = dict(row._mapping)
        values["topics"] = tuple(json.loads(values.get("topics") or "[]"))
        return cls(**{f: values[f] for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Opened:
    """What ``open`` did: opened a new handoff, raised an open one's priority, or neither."""

    handoff: Handoff
    created: bool
    raised: bool = False


@dataclass(frozen=True)
class Note:
    id: int
    handoff_id: int
    account_id: Optional[int]
    author_name: Optional[str]
    text: str
    at: dt.datetime


@dataclass
class Change:
    """The outcome of a claim, an assignment or a transfer: ok, or why not (for a 409)."""

    ok: bool
    handoff: Optional[Handoff] = None
    reason: str = ""


@dataclass
class ListedHandoff:
    handoff: Handoff
    assigned_name: Optional[str]
    unread: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class HandoffStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- opening and reading ------------------------------------------------------------------

    def open(
        self,
        contact_id: int,
        channel: str,
        reason: str,
        priority: int,
        country: Optional[str],
        language: Optional[str],
        role: Optional[str],
        topics: Iterable[str] = (),
        now: Optional[dt.datetime] = None,
    ) -> Opened:
        """Open a handoff for the contact, or raise the open one's priority if this reason is more urgent."""
        now = now or _now()
        with self.engine.begin() as conn:
            # The lock that makes "one open handoff per contact" hold under concurrency (see module doc).
            conn.execute(contacts.update().where(contacts.c.id == contact_id).values(id=contacts.c.id))
            row = conn.execute(
                sa.select(handoffs).where(handoffs.c.contact_id == contact_id, handoffs.c.status.in_(OPEN)).order_by(handoffs.c.id).limit(1)
            ).first()
            if row is not None:
                current = Handoff.from_row(row)
                if priority < current.priority:
                    conn.execute(handoffs.update().where(handoffs.c.id == current.id).values(priority=priority, reason=reason))
                    return Opened(self._get(conn, current.id), created=False, raised=True)
                return Opened(current, created=False)
            new_id = conn.execute(
                handoffs.insert().values(
                    contact_id=contact_id,
                    channel=channel,
                    status="waiting",
                    reason=reason,
                    priority=priority,
                    country=(country or "").upper() or None,
                    language=language,
                    role=role,
                    topics=json.dumps(sorted(set(topics))),
                    created_at=now,
                    last_inbound_at=now,
                )
            ).inserted_primary_key[0]
            return Opened(self._get(conn, int(new_id)), created=True)

    @staticmethod
    def _get(conn: Any, handoff_id: int) -> Handoff:
        return Handoff.from_row(conn.execute(sa.select(handoffs).where(handoffs.c.id == handoff_id)).first())

    def get(self, handoff_id: int) -> Optional[Handoff]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(handoffs).where(handoffs.c.id == handoff_id)).first()
        return Handoff.from_row(row) if row else None

    def open_for_contact(self, contact_id: int) -> Optional[Handoff]:
        """The contact's open handoff: the question the gateway asks of every message."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(handoffs).where(handoffs.c.contact_id == contact_id, handoffs.c.status.in_(OPEN)).order_by(handoffs.c.id).limit(1)
            ).first()
        return Handoff.from_row(row) if row else None

    def on_family_message(self, contact_id: int) -> tuple[bool, Optional[Handoff]]:
        """The two questions asked of every family message, in one read: does anything wait for
        the family's window (``awaiting_window``), and the contact's open handoff, if any."""
        with self.engine.connect() as conn:
            waiting = conn.execute(
                sa.select(messages.c.id).where(messages.c.contact_id == contact_id, messages.c.status == AWAITING_WINDOW).limit(1)
            ).first()
            row = conn.execute(
                sa.select(handoffs).where(handoffs.c.contact_id == contact_id, handoffs.c.status.in_(OPEN)).order_by(handoffs.c.id).limit(1)
            ).first()
        return waiting is not None, (Handoff.from_row(row) if row else None)

    def held_message(self, handoff_id: int, message_id: int, at: dt.datetime, intent: Optional[str] = None) -> None:
        """A family message received while held: part of the handoff, and its latest activity."""
        with self.engine.begin() as conn:
            conn.execute(messages.update().where(messages.c.id == message_id).values(handoff_id=handoff_id, intent=intent))
            conn.execute(handoffs.update().where(handoffs.c.id == handoff_id).values(last_inbound_at=at))
            if intent:
                row = conn.execute(sa.select(handoffs.c.topics).where(handoffs.c.id == handoff_id)).first()
                topics = set(json.loads(row.topics or "[]")) if row else set()
                if intent not in topics:
                    conn.execute(handoffs.update().where(handoffs.c.id == handoff_id).values(topics=json.dumps(sorted(topics | {intent}))))

    def add_topics(self, handoff_id: int, topics: Iterable[str]) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(handoffs.c.topics).where(handoffs.c.id == handoff_id)).first()
            if row is None:
                return
            merged = sorted(set(json.loads(row.topics or "[]")) | {t for t in topics if t})
            conn.execute(handoffs.update().where(handoffs.c.id == handoff_id).values(topics=json.dumps(merged)))

    def list(self, statuses: Iterable[str], country: Optional[str] = None, language: Optional[str] = None, limit: int = 500) -> list[ListedHandoff]:
        """Handoffs in ``statuses``, most urgent first then longest waiting, with the assignee's
        name and the family messages not yet answered by a mediator (``unread``)."""
        replied = messages.alias("replied")
        last_reply = (
            sa.select(sa.func.max(replied.c.id))
            .where(replied.c.handoff_id == handoffs.c.id, replied.c.direction == "out", replied.c.author_account_id.isnot(None))
            .correlate(handoffs)
            .scalar_subquery()
        )
        unread = (
            sa.select(sa.func.count(messages.c.id))
            .where(messages.c.handoff_id == handoffs.c.id, messages.c.direction == "in", messages.c.id > sa.func.coalesce(last_reply, 0))
            .correlate(handoffs)
            .scalar_subquery()
        )
        query = (
            sa.select(handoffs, accounts.c.display_name.label("assigned_name"), unread.label("unread"))
            .select_from(handoffs.outerjoin(accounts, accounts.c.id == handoffs.c.assigned_to))
            .where(handoffs.c.status.in_(tuple(statuses)))
            .order_by(handoffs.c.priority, handoffs.c.created_at, handoffs.c.id)
            .limit(limit)
        )
        if country:
            query = query.where(handoffs.c.country == country.upper())
        if language:
            query = query.where(handoffs.c.language == language)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [ListedHandoff(Handoff.from_row(r), r.assigned_name, int(r.unread or 0)) for r in rows]

    # -- who holds it ---------------------------------------------------------------------------

    def claim(self, handoff_id: int, account_id: int, now: Optional[dt.datetime] = None) -> Change:
        """Take the handoff: only if nobody else holds it."""
        unheld_or_mine = sa.or_(handoffs.c.assigned_to.is_(None), handoffs.c.assigned_to == account_id)
        return self._give(handoff_id, account_id, [unheld_or_mine], "another mediator holds this conversation", now)

    def assign(self, handoff_id: int, account_id: int, expected_holder: Optional[int] = None, only_if_unheld: bool = False, now: Optional[dt.datetime] = None) -> Change:
        """Give the handoff to ``account_id`` (auto-assign: only if unheld; transfer: only if still
        held by ``expected_holder``, so two transfers at once cannot both win)."""
        conditions = []
        if only_if_unheld:
            conditions.append(handoffs.c.assigned_to.is_(None))
        if expected_holder is not None:
            conditions.append(handoffs.c.assigned_to == expected_holder)
        return self._give(handoff_id, account_id, conditions, "another mediator holds this conversation now", now)

    def _give(self, handoff_id: int, account_id: int, conditions: list[Any], held_elsewhere: str, now: Optional[dt.datetime]) -> Change:
        """Assign an open handoff to ``account_id`` where ``conditions`` still hold, in one
        conditional UPDATE (two mediators acting at once: one wins), then say what happened."""
        now = now or _now()
        with self.engine.begin() as conn:
            changed = conn.execute(
                handoffs.update()
                .where(handoffs.c.id == handoff_id, handoffs.c.status.in_(OPEN), *conditions)
                .values(status="assigned", assigned_to=account_id, claimed_at=sa.func.coalesce(handoffs.c.claimed_at, now))
            ).rowcount
            current = conn.execute(sa.select(handoffs).where(handoffs.c.id == handoff_id)).first()
        if current is None:
            return Change(False, None, "no such handoff")
        handoff = Handoff.from_row(current)
        if changed:
            return Change(True, handoff)
        if not handoff.is_open:
            return Change(False, handoff, f"this conversation is closed ({handoff.status})")
        return Change(False, handoff, held_elsewhere)

    def end(self, handoff_id: int, status: str, now: Optional[dt.datetime] = None) -> Change:
        """Hand back or resolve.

        A mediator's texts still waiting for the family's window keep waiting: they go out when
        the family next writes, before the notice that the case ended (oldest first), so the
        family never reads "resolved" without the mediator's answer.
        """
        assert status in CLOSED
        now = now or _now()
        with self.engine.begin() as conn:
            changed = conn.execute(
                handoffs.update().where(handoffs.c.id == handoff_id, handoffs.c.status.in_(OPEN)).values(status=status, ended_at=now)
            ).rowcount
            current = conn.execute(sa.select(handoffs).where(handoffs.c.id == handoff_id)).first()
        if current is None:
            return Change(False, None, "no such handoff")
        handoff = Handoff.from_row(current)
        return Change(True, handoff) if changed else Change(False, handoff, f"this conversation is already closed ({handoff.status})")

    def open_load(self) -> dict[int, int]:
        """Open handoffs held by each account: what "least loaded" compares."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(handoffs.c.assigned_to, sa.func.count()).where(handoffs.c.status.in_(OPEN), handoffs.c.assigned_to.isnot(None)).group_by(handoffs.c.assigned_to)
            ).all()
        return {int(a): int(n) for a, n in rows}

    # -- escalation -----------------------------------------------------------------------------

    def escalate_due(self, wait: dt.timedelta, now: Optional[dt.datetime] = None) -> list[Handoff]:
        """Mark every handoff nobody claimed for ``wait`` as escalated; those *this* call marked.

        The UPDATE is conditional on escalated_at still being empty, so when two gateway
        processes run this at the same moment each handoff is escalated (and notified) once.
        """
        now = now or _now()
        with self.engine.connect() as conn:
            due = conn.execute(
                sa.select(handoffs.c.id).where(handoffs.c.status == "waiting", handoffs.c.escalated_at.is_(None), handoffs.c.created_at <= now - wait)
            ).scalars().all()
        escalated = []
        for handoff_id in due:
            with self.engine.begin() as conn:
                won = conn.execute(
                    handoffs.update()
                    .where(handoffs.c.id == handoff_id, handoffs.c.status == "waiting", handoffs.c.escalated_at.is_(None))
                    .values(escalated_at=now)
                ).rowcount
                if won:
                    escalated.append(self._get(conn, handoff_id))
        return escalated

    # -- messages of a handoff -------------------------------------------------------------------

    def tag_message(self, message_id: int, handoff_id: int, author_account_id: Optional[int] = None, status: Optional[str] = None) -> None:
        values: dict[str, Any] = {"handoff_id": handoff_id, "author_account_id": author_account_id}
        if status:
            values["status"] = status
        with self.engine.begin() as conn:
            conn.execute(messages.update().where(messages.c.id == message_id).values(**values))

    def first_response(self, handoff_id: int, now: Optional[dt.datetime] = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(handoffs.update().where(handoffs.c.id == handoff_id, handoffs.c.first_response_at.is_(None)).values(first_response_at=now or _now()))

    def awaiting_window(self, contact_id: int) -> list[dict[str, Any]]:
        """What waits for the family to write (mediators' texts, the assistant's notices about a
        handoff), oldest first. Per contact, not per handoff: the window is the family's, and a
        notice of a closed handoff waits as well."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(messages.c.id, messages.c.text, messages.c.idempotency_key, messages.c.handoff_id)
                .where(messages.c.contact_id == contact_id, messages.c.status == AWAITING_WINDOW)
                .order_by(messages.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def expire_awaiting(self, contact_id: int, logged_before: dt.datetime, now: Optional[dt.datetime] = None) -> list[dict[str, Any]]:
        """Record as failed (``expired``) the contact's waiting messages logged before ``logged_before``;
        those *this* call moved (conditional on still waiting, as ``take_awaiting``), oldest first."""
        expired = []
        with self.engine.begin() as conn:
            stale = conn.execute(
                sa.select(messages.c.id, messages.c.handoff_id)
                .where(messages.c.contact_id == contact_id, messages.c.status == AWAITING_WINDOW, messages.c.created_at < logged_before)
                .order_by(messages.c.id)
            ).all()
            for item in stale:
                moved = conn.execute(
                    messages.update()
                    .where(messages.c.id == item.id, messages.c.status == AWAITING_WINDOW)
                    .values(status="failed", error_code=EXPIRED, updated_at=now or _now())
                ).rowcount
                if moved:
                    expired.append(dict(item._mapping))
        return expired

    def take_awaiting(self, contact_id: int) -> list[dict[str, Any]]:
        """The waiting messages (``awaiting_window``) that *this* call moved to 'queued', oldest first.

        Each move is conditional on the message still waiting, so two processes releasing at
        once (the family's message in the gateway, a notice written at that moment in the API)
        take each message once, and it is queued once.
        """
        waiting = self.awaiting_window(contact_id)
        if not waiting:
            return []  # the common case, on every family message: one indexed read, no write
        taken = []
        with self.engine.begin() as conn:
            for item in waiting:
                moved = conn.execute(
                    messages.update().where(messages.c.id == item["id"], messages.c.status == AWAITING_WINDOW).values(status="queued", updated_at=_now())
                ).rowcount
                if moved:
                    taken.append(item)
        return taken

    def wait_again(self, message_ids: Iterable[int]) -> None:
        """Taken messages that could not be queued (Redis down) wait again for the next release."""
        ids = list(message_ids)
        if ids:
            with self.engine.begin() as conn:
                conn.execute(messages.update().where(messages.c.id.in_(ids), messages.c.status == "queued").values(status=AWAITING_WINDOW, updated_at=_now()))

    def transcript(self, contact_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """The contact's messages (the bot's and the mediators' included) with each author's name."""
        query = (
            sa.select(messages, accounts.c.display_name.label("author_name"))
            .select_from(messages.outerjoin(accounts, accounts.c.id == messages.c.author_account_id))
            .where(messages.c.contact_id == contact_id)
            .order_by(messages.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [dict(r._mapping) for r in reversed(rows)]

    def topics_seen(self, contact_id: int) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(messages.c.intent).where(messages.c.contact_id == contact_id, messages.c.direction == "in", messages.c.intent.isnot(None)).distinct()
            ).scalars().all()
        return sorted({r for r in rows if r and r != "nlu_fallback"})

    # -- notes -------------------------------------------------------------------------------------

    def add_note(self, handoff_id: int, account_id: int, text: str, now: Optional[dt.datetime] = None) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(handoff_notes.insert().values(handoff_id=handoff_id, account_id=account_id, text=text, at=now or _now())).inserted_primary_key[0])

    def notes(self, handoff_id: int) -> list[Note]:
        query = (
            sa.select(handoff_notes, accounts.c.display_name)
            .select_from(handoff_notes.outerjoin(accounts, accounts.c.id == handoff_notes.c.account_id))
            .where(handoff_notes.c.handoff_id == handoff_id)
            .order_by(handoff_notes.c.id)
        )
        with self.engine.connect() as conn:
            return [Note(r.id, r.handoff_id, r.account_id, r.display_name, r.text, r.at) for r in conn.execute(query)]

    # -- figures -----------------------------------------------------------------------------------

    def between(self, since: Optional[dt.datetime], until: Optional[dt.datetime]) -> list[Handoff]:
        query = sa.select(handoffs).order_by(handoffs.c.id)
        if since is not None:
            query = query.where(handoffs.c.created_at >= since)
        if until is not None:
            query = query.where(handoffs.c.created_at < until)
        with self.engine.connect() as conn:
            return [Handoff.from_row(r) for r in conn.execute(query)]
