"""Contacts and the message log: the one place that reads and writes them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Any, Iterator, Mapping, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from jisr.store.migrations import migrate
from jisr.store.schema import campaign_sends, consent_events, contact_topic_stops, contact_topics, contacts, messages
from jisr.topics import SUBSCRIPTION_TOPICS, TopicStop, reaches, stop_topics

# Delivery statuses only move forward: a late "sent" receipt never undoes "read".
STATUS_ORDER = {"planned": -1, "queued": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4, "undelivered": 4}

PROFILE_FIELDS = ("language", "country", "region", "role", "school_level")
# What an import may set besides consent; timezone is not a profile field because the
# assistant does not answer with it (it is for scheduling campaigns).
IMPORTED_FIELDS = PROFILE_FIELDS + ("timezone",)

CONSENT_VALUES = ("opted_in", "opted_out")
CONSENT_SOURCES = ("conversation", "web_form", "import", "platform", "operator")
# An opt-in that a person did not give to Jisr itself must say how it was given.
SOURCES_NEEDING_BASIS = ("import", "operator")

# Outcomes of ContactStore.import_contacts, one per row.
IMPORTED = "imported"
UPDATED = "updated"
OPT_IN_REFUSED = "opt_in_refused"
SUPPRESSED = "suppressed"  # the person asked to be forgotten (jisr contacts forget): a list cannot bring them back


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _text(value: Optional[str]) -> Optional[str]:
    """Message text without NUL characters, which PostgreSQL cannot store in a text column."""
    return value.replace("\x00", "") if value else value


def _aware(value: Optional[dt.datetime]) -> Optional[dt.datetime]:
    """SQLite gives back naive datetimes: they were stored in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


@dataclass(frozen=True)
class Contact:
    id: int
    address: str
    channel: str
    profile_id: Optional[int]
    language: Optional[str]
    country: Optional[str]
    region: Optional[str]
    role: Optional[str]
    school_level: Optional[str]
    consent: str
    created_at: dt.datetime
    last_inbound_at: Optional[dt.datetime]
    last_outbound_at: Optional[dt.datetime]
    timezone: Optional[str] = None

    @classmethod
    def from_row(cls, row: Any) -> "Contact":
        data = dict(row._mapping)
        for key in ("created_at", "last_inbound_at", "last_outbound_at"):
            data[key] = _aware(data[key])
        return cls(**data)

    def profile(self) -> dict[str, str]:
        """What the assistant may use to answer: the known profile fields."""
        return {name: getattr(self, name) for name in PROFILE_FIELDS if getattr(self, name)}


@dataclass(frozen=True)
class ConsentEvent:
    """One consent change: what, when, where from, and on what basis."""

    id: int
    contact_id: int
    consent: str
    source: str
    basis: Optional[str]
    channel: Optional[str]
    at: dt.datetime

    @classmethod
    def from_row(cls, row: Any) -> "ConsentEvent":
        data = dict(row._mapping)
        data["at"] = _aware(data["at"])
        return cls(**data)


@dataclass(frozen=True)
class ChosenTopic:
    """A topic a contact holds (contact_topics): since when and where it came from."""

    topic: str
    source: str                      # conversation | web_form | import | operator
    at: dt.datetime


@dataclass(frozen=True)
class StoppedTopic:
    """A topic the family stopped (contact_topic_stops), kept like a consent event."""

    topic: str
    source: str
    channel: Optional[str]
    at: dt.datetime


@dataclass(frozen=True)
class ContactTopics:
    """A contact's reminder topics as one read: consent, the topics held and the stops, each in
    SUBSCRIPTION_TOPICS order. What it receives is jisr.topics.reaches asked topic by topic,
    the rule campaigns follow when planning and at send time, so an operator sees what the
    family will get, not a second reading of the rule."""

    consent: str
    chosen: tuple[ChosenTopic, ...]
    stopped: tuple[StoppedTopic, ...]

    @property
    def chose(self) -> bool:
        """False: it holds no topic, so every topic reaches it if it never stopped one, and none
        if it did (it stopped all it held): jisr.topics.reaches."""
        return bool(self.chosen)

    @property
    def receives(self) -> tuple[str, ...]:
        if self.consent != "opted_in":
            return ()
        held = [c.topic for c in self.chosen]
        stopped = [s.topic for s in self.stopped]
        return tuple(t for t in SUBSCRIPTION_TOPICS if reaches((t,), held, stopped))


@dataclass(frozen=True)
class ImportedContact:
    """A validated row of an imported list. Empty fields (None) leave what is known unchanged."""

    line: int
    address: str                     # "<channel>:<provider id>", as the gateway writes it
    channel: str
    consent: Optional[str]           # opted_in | opted_out; None: say nothing about consent
    language: Optional[str] = None
    country: Optional[str] = None
    region: Optional[str] = None
    role: Optional[str] = None
    school_level: Optional[str] = None
    timezone: Optional[str] = None
    topics: tuple[str, ...] = ()     # subscription topics to add (jisr/topics.py); none: unchanged


def _check_consent(consent: str, source: str, basis: Optional[str]) -> None:
    if consent not in CONSENT_VALUES:
        raise ValueError(f"consent is one of {', '.join(CONSENT_VALUES)}, not {consent!r}")
    if source not in CONSENT_SOURCES:
        raise ValueError(f"consent source is one of {', '.join(CONSENT_SOURCES)}, not {source!r}")
    if consent == "opted_in" and source in SOURCES_NEEDING_BASIS and not (basis or "").strip():
        raise ValueError(f"an opt-in from source {source!r} needs its basis (how and where the person agreed)")


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``, creating the SQLite file's folder and migrating the schema."""
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # A pool of open connections: SQLAlchemy 1.4 defaults to NullPool for SQLite files, which
        # opened, set up and closed a connection for every query — and closing the last connection
        # of a WAL database checkpoints and deletes the WAL file: about 12 ms per write, several
        # writes per message (measured by `jisr bench gateway`).
        engine = sa.create_engine(
            url,
            future=True,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=sa.pool.QueuePool,
            pool_size=8,
            max_overflow=16,
            # An error's message must not carry the statement's values: a failed insert would log
            # a phone number or a message text (docs/privacy.md).
            hide_parameters=True,
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL: readers never wait for the writer; foreign keys: erasure cascades.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a commit survives a
            # crash of the process (kill -9), only a power loss may undo the last ones. FULL (the
            # default) fsynced every commit: two per campaign message sent, in every worker.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Deleted or overwritten content (an erased family, a purged text) is zeroed in the
            # pages written anyway, instead of lingering in the file's free space.
            cursor.execute("PRAGMA secure_delete=FAST")
            cursor.close()
    else:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True, hide_parameters=True)
    migrate(engine)
    return engine


class ContactStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get_or_create(self, address: str, channel: str) -> Contact:
        try:
            with self.engine.begin() as conn:
                return self._get_or_create(conn, address, channel)
        except sa.exc.IntegrityError:
            # Another process created it in between. Read it in a new transaction: on
            # PostgreSQL a failed statement aborts its transaction (SQLite's goes on).
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(contacts).where(contacts.c.address == address)).first()
        return Contact.from_row(row)

    @staticmethod
    def _get_or_create(conn: Connection, address: str, channel: str) -> Contact:
        query = sa.select(contacts).where(contacts.c.address == address)
        row = conn.execute(query).first()
        if row is None:
            conn.execute(contacts.insert().values(address=address, channel=channel, created_at=_now()))
            row = conn.execute(query).first()
        return Contact.from_row(row)

    def get(self, contact_id: int) -> Optional[Contact]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(contacts).where(contacts.c.id == contact_id)).first()
        return Contact.from_row(row) if row else None

    def by_address(self, address: str) -> Optional[Contact]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(contacts).where(contacts.c.address == address)).first()
        return Contact.from_row(row) if row else None

    def touch_inbound(self, contact_id: int, at: Optional[dt.datetime] = None) -> None:
        with self.engine.begin() as conn:
            self._touch_inbound(conn, contact_id, at or _now())

    @staticmethod
    def _touch_inbound(conn: Connection, contact_id: int, at: dt.datetime) -> None:
        conn.execute(contacts.update().where(contacts.c.id == contact_id).values(last_inbound_at=at))

    def update_profile(self, contact_id: int, **fields: Optional[str]) -> None:
        with self.engine.begin() as conn:
            self._update_profile(conn, contact_id, fields)

    @staticmethod
    def _update_profile(conn: Connection, contact_id: int, fields: dict[str, Optional[str]]) -> None:
        values = {k: v for k, v in fields.items() if k in PROFILE_FIELDS and v}
        if values:
            conn.execute(contacts.update().where(contacts.c.id == contact_id).values(**values))

    # -- one message's writes, each set in one transaction --------------------------------
    # A message costs the gateway a handful of SQL writes; each call is a thread hop and a
    # commit, and they ran one by one (about 0.5 ms of CPU each): these group the ones that
    # always go together.

    def receive_inbound(
        self, address: str, channel: str, provider_message_id: str, text: str, media: list[dict[str, Any]], received_at: dt.datetime
    ) -> tuple[Contact, int]:
        """A family's message arrives: its contact (created if new; as it was *before* this
        message, for the disclosure rule), the time of its last inbound message, and the message
        logged — ``get_or_create``, ``touch_inbound`` and ``log_inbound`` in one transaction."""
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    contact = self._get_or_create(conn, address, channel)
                    self._touch_inbound(conn, contact.id, received_at)
                    return contact, self._log_inbound(conn, contact.id, channel, provider_message_id, text, media)
            except sa.exc.IntegrityError:
                # Another process created the contact in between: the whole transaction again.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def record_understanding(
        self, message_id: int, intent: Optional[str], language: Optional[str], contact_id: int, learned: dict[str, Optional[str]]
    ) -> None:
        """What the assistant understood of a message, and what it learned of the family's profile."""
        with self.engine.begin() as conn:
            self._set_understanding(conn, message_id, intent, language)
            self._update_profile(conn, contact_id, learned)

    def log_outbound_many(self, contact_id: int, channel: str, parts: Sequence[tuple[str, str]]) -> list[int]:
        """``log_outbound`` for each (text, idempotency key) of one reply, in one transaction."""
        with self.engine.begin() as conn:
            return [self._log_outbound(conn, contact_id, channel, text, key) for text, key in parts]

    def set_consent(self, contact_id: int, consent: str) -> None:
        """Deprecated: leaves no trace in the consent history; use record_consent."""
        with self.engine.begin() as conn:
            conn.execute(contacts.update().where(contacts.c.id == contact_id).values(consent=consent))

    # -- consent -----------------------------------------------------------------------

    def record_consent(
        self,
        contact_id: int,
        consent: str,
        source: str,
        basis: Optional[str] = None,
        channel: Optional[str] = None,
        at: Optional[dt.datetime] = None,
    ) -> int:
        """Record a consent change in the history and make it the contact's current consent.

        ``channel`` defaults to the contact's own channel. An opt-in from an import or an
        operator must carry its ``basis``. Returns the event's id; raises LookupError for an
        unknown contact and ValueError for a value outside the documented ones.
        """
        _check_consent(consent, source, basis)
        with self.engine.begin() as conn:
            own_channel = conn.execute(sa.select(contacts.c.channel).where(contacts.c.id == contact_id)).scalar()
            if own_channel is None:
                raise LookupError(f"no contact {contact_id}")
            result = conn.execute(
                consent_events.insert().values(
                    contact_id=contact_id,
                    consent=consent,
                    source=source,
                    basis=(basis or "").strip() or None,
                    channel=channel or own_channel,
                    at=at or _now(),
                )
            )
            conn.execute(contacts.update().where(contacts.c.id == contact_id).values(consent=consent))
            return int(result.inserted_primary_key[0])

    def consent_history(self, contact_id: int) -> list[ConsentEvent]:
        """Every consent change of a contact, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(consent_events)
                .where(consent_events.c.contact_id == contact_id)
                .order_by(consent_events.c.at, consent_events.c.id)
            ).all()
        return [ConsentEvent.from_row(row) for row in rows]

    # -- subscription topics (jisr/topics.py) ------------------------------------------

    def subscribe_topics(self, contact_id: int, topics: Sequence[str], source: str, conn: Optional[Connection] = None) -> list[str]:
        """Subscribe a contact to ``topics`` (already held ones are kept as they were); the topics added.

        The family's own request (a conversation, the web form) lifts its earlier stop of those
        topics; an imported list or an operator does not subscribe it to a topic it stopped."""
        if conn is None:
            with self.engine.begin() as own:
                return self.subscribe_topics(contact_id, topics, source, own)
        wanted = list(dict.fromkeys(topics))
        stopped = self._stopped_topics(conn, contact_id)
        if source in SOURCES_NEEDING_BASIS:
            wanted = [t for t in wanted if t not in stopped]
        elif stopped & set(wanted):
            conn.execute(
                contact_topic_stops.delete().where(contact_topic_stops.c.contact_id == contact_id, contact_topic_stops.c.topic.in_(wanted))
            )
        held = self._held_topics(conn, contact_id)
        added = [t for t in wanted if t not in held]
        if added:
            now = _now()
            conn.execute(contact_topics.insert(), [{"contact_id": contact_id, "topic": t, "source": source, "at": now} for t in added])
        return added

    def stop_topics(self, contact_id: int, topics: Sequence[str], source: str, channel: Optional[str] = None) -> TopicStop:
        """Stop the reminders of ``topics`` only (the family's "no more exam reminders"); the
        contact's consent and its other topics stay. A contact that never chose topics but is
        subscribed gets "all the reminders" (``reminder_topics``): the others are recorded, so
        they continue. Each stop is kept (topic, source, channel, time), like a consent event."""
        with self.engine.begin() as conn:
            consent = conn.execute(sa.select(contacts.c.consent).where(contacts.c.id == contact_id).with_for_update()).scalar()
            held = self._reminder_topics(conn, contact_id, consent)
            change = stop_topics(held, topics)
            if not change.stopped:
                return change
            now = _now()
            conn.execute(contact_topics.delete().where(contact_topics.c.contact_id == contact_id, contact_topics.c.topic.in_(change.stopped)))
            missing = [t for t in change.kept if t not in self._held_topics(conn, contact_id)]
            if missing:
                conn.execute(contact_topics.insert(), [{"contact_id": contact_id, "topic": t, "source": source, "at": now} for t in missing])
            conn.execute(contact_topic_stops.delete().where(contact_topic_stops.c.contact_id == contact_id, contact_topic_stops.c.topic.in_(change.stopped)))
            conn.execute(
                contact_topic_stops.insert(),
                [{"contact_id": contact_id, "topic": t, "source": source, "channel": channel, "at": now} for t in change.stopped],
            )
        return change

    def reminder_topics(self, contact_id: int) -> tuple[str, ...]:
        """The topics whose reminders the family counts on (SUBSCRIPTION_TOPICS order): those it
        holds, or every topic for a subscribed contact that never chose any (it asked for "the
        reminders", or subscribed before topics existed) and never stopped one."""
        with self.engine.connect() as conn:
            consent = conn.execute(sa.select(contacts.c.consent).where(contacts.c.id == contact_id)).scalar()
            return self._reminder_topics(conn, contact_id, consent)

    def _reminder_topics(self, conn: Connection, contact_id: int, consent: Optional[str]) -> tuple[str, ...]:
        held = self._held_topics(conn, contact_id)
        if not held and consent == "opted_in":
            # Holding no topic: every topic, or none once one was stopped — campaigns' own rule.
            stopped = self._stopped_topics(conn, contact_id)
            return tuple(t for t in SUBSCRIPTION_TOPICS if reaches((t,), held, stopped))
        return tuple(t for t in SUBSCRIPTION_TOPICS if t in held)

    @staticmethod
    def _held_topics(conn: Connection, contact_id: int) -> set[str]:
        return set(conn.execute(sa.select(contact_topics.c.topic).where(contact_topics.c.contact_id == contact_id)).scalars())

    @staticmethod
    def _stopped_topics(conn: Connection, contact_id: int) -> set[str]:
        return set(conn.execute(sa.select(contact_topic_stops.c.topic).where(contact_topic_stops.c.contact_id == contact_id)).scalars())

    def topics_of(self, contact_id: int) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(self._held_topics(conn, contact_id))

    def stopped_topics_of(self, contact_id: int) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(self._stopped_topics(conn, contact_id))

    def topics_record(self, contact_id: int) -> Optional[ContactTopics]:
        """Consent, held topics and stops with their source and time, read together so the
        three agree (the operators' contact detail); None for an unknown contact."""
        order = {t: i for i, t in enumerate(SUBSCRIPTION_TOPICS)}
        with self.engine.connect() as conn:
            consent = conn.execute(sa.select(contacts.c.consent).where(contacts.c.id == contact_id)).scalar()
            if consent is None:
                return None
            held = conn.execute(
                sa.select(contact_topics.c.topic, contact_topics.c.source, contact_topics.c.at).where(contact_topics.c.contact_id == contact_id)
            ).all()
            stops = conn.execute(
                sa.select(contact_topic_stops.c.topic, contact_topic_stops.c.source, contact_topic_stops.c.channel, contact_topic_stops.c.at).where(
                    contact_topic_stops.c.contact_id == contact_id
                )
            ).all()

        def rank(row: Any) -> tuple[int, str]:
            # A topic no longer in SUBSCRIPTION_TOPICS (renamed since) sorts last, still shown.
            return order.get(row.topic, len(order)), row.topic

        return ContactTopics(
            consent=consent,
            chosen=tuple(ChosenTopic(r.topic, r.source, _aware(r.at)) for r in sorted(held, key=rank)),
            stopped=tuple(StoppedTopic(r.topic, r.source, r.channel, _aware(r.at)) for r in sorted(stops, key=rank)),
        )

    # -- imported lists ----------------------------------------------------------------

    def import_contacts(
        self,
        rows: Sequence[ImportedContact],
        basis: Optional[str],
        *,
        dry_run: bool = False,
        dry_run_seen: Optional[dict[str, str]] = None,
    ) -> list[str]:
        """Insert or update a batch of imported contacts in one transaction; one outcome per row.

        Outcomes: IMPORTED (a new contact), UPDATED (the address was known: the non-empty
        fields replace the known ones), OPT_IN_REFUSED (the contact opted out, other than by an
        earlier list, and a list cannot opt them back in: only they can, by subscribing again). A consent that
        differs from the current one is recorded in the history with source "import" and
        ``basis``. The addresses of a batch must be distinct (a repeated address must go in
        a later batch, so that it sees the first one's result).

        With ``dry_run`` nothing is written: the outcomes are computed against the database
        and ``dry_run_seen`` (address → consent of the rows "imported" by earlier batches of
        the same dry run, which this call updates).
        """
        addresses = [row.address for row in rows]
        if len(set(addresses)) != len(addresses):
            raise ValueError("the addresses of one import batch must be distinct")
        if not rows:
            return []
        if dry_run:
            with self.engine.connect() as conn:
                known = self._known(conn, addresses)
                suppressed = self._suppressed(conn, addresses)
            seen = dry_run_seen if dry_run_seen is not None else {}
            for address in addresses:
                if address not in known and address in seen:
                    known[address] = (0, seen[address], "import")
            outcomes = self._plan(rows, known, suppressed)
            if dry_run_seen is not None:
                for row, outcome in zip(rows, outcomes):
                    if outcome not in (OPT_IN_REFUSED, SUPPRESSED):
                        previous = known.get(row.address, (0, "unknown", None))[1]
                        dry_run_seen[row.address] = row.consent or previous
            return outcomes
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    return self._write_batch(conn, rows, basis)
            except sa.exc.IntegrityError:
                # A conversation created one of these contacts between our read and our
                # insert: read again (the whole batch was rolled back).
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _known(conn: Connection, addresses: Sequence[str]) -> dict[str, tuple[int, str, Optional[str]]]:
        """address → (id, consent, source of the last consent change) for the known addresses."""
        last_source = (
            sa.select(consent_events.c.source)
            .where(consent_events.c.contact_id == contacts.c.id)
            .order_by(consent_events.c.at.desc(), consent_events.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = sa.select(contacts.c.id, contacts.c.address, contacts.c.consent, last_source.label("last_source"))
        known: dict[str, tuple[int, str, Optional[str]]] = {}
        # SQLite before 3.32 takes at most 999 parameters in a statement.
        for start in range(0, len(addresses), 900):
            chunk = addresses[start : start + 900]
            for row in conn.execute(query.where(contacts.c.address.in_(chunk))):
                known[row.address] = (row.id, row.consent, row.last_source)
        return known

    @staticmethod
    def _suppressed(conn: Connection, addresses: Sequence[str]) -> set[str]:
        """The addresses among ``addresses`` of people who were forgotten (only keyed hashes are kept)."""
        from jisr.privacy.pseudonym import suppression_hash
        from jisr.store.schema import suppressed_addresses

        by_hash = {suppression_hash(address): address for address in addresses}
        hashes = list(by_hash)
        found: set[str] = set()
        for start in range(0, len(hashes), 900):
            query = sa.select(suppressed_addresses.c.address_hash).where(suppressed_addresses.c.address_hash.in_(hashes[start : start + 900]))
            found.update(by_hash[h] for h in conn.execute(query).scalars())
        return found

    @staticmethod
    def _plan(
        rows: Sequence[ImportedContact], known: Mapping[str, tuple[int, str, Optional[str]]], suppressed: AbstractSet[str] = frozenset()
    ) -> list[str]:
        outcomes = []
        for row in rows:
            current = known.get(row.address)
            if current is None and row.address in suppressed:
                # Forgotten, and not back by themselves: an old list must not bring them back.
                outcomes.append(SUPPRESSED)
                continue
            # An opt-out the person made (or one recorded before there was a history) stands
            # against any list; one that came from an earlier list may be replaced by a newer list.
            if current is not None and current[1] == "opted_out" and row.consent == "opted_in" and current[2] != "import":
                outcomes.append(OPT_IN_REFUSED)
            else:
                outcomes.append(UPDATED if current is not None else IMPORTED)
        return outcomes

    def _write_batch(self, conn: Connection, rows: Sequence[ImportedContact], basis: Optional[str]) -> list[str]:
        now = _now()
        basis = (basis or "").strip() or None
        known = self._known(conn, [row.address for row in rows])
        outcomes = self._plan(rows, known, self._suppressed(conn, [row.address for row in rows]))
        if any(row.consent == "opted_in" for row, outcome in zip(rows, outcomes) if outcome not in (OPT_IN_REFUSED, SUPPRESSED)):
            _check_consent("opted_in", "import", basis)

        new = [row for row, outcome in zip(rows, outcomes) if outcome == IMPORTED]
        changed = [row for row, outcome in zip(rows, outcomes) if outcome == UPDATED]
        if new:
            conn.execute(
                contacts.insert(),
                [
                    {
                        "address": row.address,
                        "channel": row.channel,
                        "consent": row.consent or "unknown",
                        "created_at": now,
                        **{name: getattr(row, name) for name in IMPORTED_FIELDS},
                    }
                    for row in new
                ],
            )
            # executemany gives no ids back on every driver: read them.
            known.update(self._known(conn, [row.address for row in new]))
        if changed:
            # One statement for the batch; COALESCE keeps what is known where the row is empty.
            update = (
                contacts.update()
                .where(contacts.c.id == sa.bindparam("b_id"))
                .values(
                    # None leaves the consent alone, so a concurrent opt-out is never overwritten.
                    consent=sa.func.coalesce(sa.bindparam("b_consent", type_=contacts.c.consent.type), contacts.c.consent),
                    **{
                        name: sa.func.coalesce(sa.bindparam(f"b_{name}", type_=contacts.c[name].type), contacts.c[name])
                        for name in IMPORTED_FIELDS
                    },
                )
            )
            conn.execute(
                update,
                [
                    {
                        "b_id": known[row.address][0],
                        "b_consent": row.consent if row.consent != known[row.address][1] else None,
                        **{f"b_{name}": getattr(row, name) for name in IMPORTED_FIELDS},
                    }
                    for row in changed
                ],
            )
        previous = {row.address: known[row.address][1] for row in changed}
        events = [
            {"contact_id": known[row.address][0], "consent": row.consent, "source": "import", "basis": basis, "channel": row.channel, "at": now}
            for row in new + changed
            if row.consent and row.consent != previous.get(row.address, "unknown")
        ]
        if events:
            conn.execute(consent_events.insert(), events)
        for row in new + changed:
            if row.topics:
                self.subscribe_topics(known[row.address][0], row.topics, "import", conn)
        return outcomes

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every contact reachable by a campaign channel, with the time of its last consent change
        and its subscription topics.

        Web chat sessions are left out: no campaign can reach them and an import would refuse them.
        Rows are streamed, so the connection stays open while the caller iterates.
        """
        last_change = (
            sa.select(consent_events.c.contact_id, sa.func.max(consent_events.c.at).label("consent_changed_at"))
            .group_by(consent_events.c.contact_id)
            .subquery()
        )
        query = (
            sa.select(contacts, last_change.c.consent_changed_at)
            .select_from(contacts.outerjoin(last_change, last_change.c.contact_id == contacts.c.id))
            .where(contacts.c.channel.in_(("whatsapp", "telegram", "messenger")))
            .order_by(contacts.c.id)
        )
        with self.engine.connect() as conn:
            for batch in conn.execution_options(stream_results=True).execute(query).partitions(1000):
                # The batch's topics in one query by id range (rows come in id order), a second
                # connection so the stream stays open: "exams;orientation", as an import reads it.
                with self.engine.connect() as side:
                    topic_rows = side.execute(
                        sa.select(contact_topics.c.contact_id, contact_topics.c.topic).where(
                            contact_topics.c.contact_id.between(batch[0].id, batch[-1].id)
                        )
                    ).all()
                held: dict[int, set[str]] = {}
                for contact_id, topic in topic_rows:
                    held.setdefault(contact_id, set()).add(topic)
                for row in batch:
                    data = dict(row._mapping)
                    data["consent_changed_at"] = _aware(data["consent_changed_at"])
                    data["topics"] = [t for t in SUBSCRIPTION_TOPICS if t in held.get(row.id, ())]
                    yield data

    def link(self, contact_ids: list[int]) -> int:
        """Link several channel addresses to one family profile (the smallest id names it)."""
        profile = min(contact_ids)
        with self.engine.begin() as conn:
            conn.execute(contacts.update().where(contacts.c.id.in_(contact_ids)).values(profile_id=profile))
        return profile

    def shared_profile(self, contact: Contact) -> dict[str, str]:
        """The profile the assistant uses: the contact's own fields, completed by the family's other channels.

        When a family writes from WhatsApp and Telegram and the two addresses
        are linked, what one channel learned (country, level…) serves the other;
        the most recently active address wins where they disagree.
        """
        profile = contact.profile()
        if contact.profile_id is None:
            return profile
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(contacts)
                .where(contacts.c.profile_id == contact.profile_id, contacts.c.id != contact.id)
                .order_by(contacts.c.last_inbound_at.desc())
            ).all()
        for row in rows:
            for name, value in Contact.from_row(row).profile().items():
                profile.setdefault(name, value)
        return profile

    def ids_for_addresses(self, addresses: list[str]) -> dict[str, Optional[int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(contacts.c.address, contacts.c.id).where(contacts.c.address.in_(addresses))).all()
        found = {r.address: r.id for r in rows}
        return {a: found.get(a) for a in addresses}

    # -- the message log ---------------------------------------------------------------

    def log_inbound(
        self,
        contact_id: int,
        channel: str,
        provider_message_id: str,
        text: str,
        media: list[dict[str, Any]],
        intent: Optional[str] = None,
        language: Optional[str] = None,
    ) -> int:
        with self.engine.begin() as conn:
            return self._log_inbound(conn, contact_id, channel, provider_message_id, text, media, intent, language)

    @staticmethod
    def _log_inbound(
        conn: Connection,
        contact_id: int,
        channel: str,
        provider_message_id: str,
        text: str,
        media: list[dict[str, Any]],
        intent: Optional[str] = None,
        language: Optional[str] = None,
    ) -> int:
        now = _now()
        result = conn.execute(
            messages.insert().values(
                contact_id=contact_id,
                direction="in",
                channel=channel,
                provider_message_id=provider_message_id,
                text=_text(text),
                media=json.dumps(media) if media else None,
                intent=intent,
                language=language,
                status="received",
                created_at=now,
                updated_at=now,
            )
        )
        return int(result.inserted_primary_key[0])

    def set_understanding(self, message_id: int, intent: Optional[str], language: Optional[str]) -> None:
        with self.engine.begin() as conn:
            self._set_understanding(conn, message_id, intent, language)

    @staticmethod
    def _set_understanding(conn: Connection, message_id: int, intent: Optional[str], language: Optional[str]) -> None:
        conn.execute(messages.update().where(messages.c.id == message_id).values(intent=intent, language=language, updated_at=_now()))

    def log_outbound(self, contact_id: int, channel: str, text: str, idempotency_key: str) -> int:
        """Record a reply before it is queued; the same idempotency key is recorded once."""
        with self.engine.begin() as conn:
            return self._log_outbound(conn, contact_id, channel, text, idempotency_key)

    @staticmethod
    def _log_outbound(conn: Connection, contact_id: int, channel: str, text: str, idempotency_key: str) -> int:
        now = _now()
        existing = conn.execute(sa.select(messages.c.id).where(messages.c.idempotency_key == idempotency_key)).scalar()
        if existing:
            return int(existing)
        result = conn.execute(
            messages.insert().values(
                contact_id=contact_id,
                direction="out",
                channel=channel,
                idempotency_key=idempotency_key,
                text=_text(text),
                status="queued",
                created_at=now,
                updated_at=now,
            )
        )
        return int(result.inserted_primary_key[0])

    def outbound_status(self, idempotency_key: str) -> Optional[str]:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(messages.c.status).where(messages.c.idempotency_key == idempotency_key)).scalar()

    # -- send claims (see jisr.outbox: why a send is claimed before the provider call) ----------

    def claim_outbound(
        self, idempotency_key: str, token: int, stale_token: Optional[int] = None, log: Optional[tuple[int, str, str]] = None
    ) -> tuple[str, Optional[dt.datetime], Optional[int]]:
        """Claim an outbound message for one provider call: status 'sending', ``attempts``
        holding ``token`` (unique per call), ``updated_at`` the claim's time, committed here.

        Claims a 'queued' message, or one still held by ``stale_token`` (a dead attempt the
        caller has reconciled); a message not logged yet is logged claimed when ``log``
        (contact id, channel, text) is given, in the same transaction. Returns ("claimed", at,
        token) or, when someone else holds it or it is settled, (status, claimed at, claim token).
        """
        now = _now()
        claimable = messages.c.status == "queued"
        if stale_token is not None:
            claimable = sa.or_(claimable, sa.and_(messages.c.status == "sending", messages.c.attempts == stale_token))
        with self.engine.begin() as conn:
            changed = conn.execute(
                messages.update()
                .where(messages.c.idempotency_key == idempotency_key, claimable)
                .values(status="sending", attempts=token, updated_at=now)
            ).rowcount
            if changed:
                return "claimed", now, token
            row = conn.execute(
                sa.select(messages.c.status, messages.c.updated_at, messages.c.attempts).where(messages.c.idempotency_key == idempotency_key)
            ).first()
            if row is None and log is not None:
                contact_id, channel, text = log
                conn.execute(
                    messages.insert().values(
                        contact_id=contact_id, direction="out", channel=channel, idempotency_key=idempotency_key, text=_text(text),
                        status="sending", attempts=token, created_at=now, updated_at=now,
                    )
                )
                return "claimed", now, token
        if row is None:
            return "missing", None, None
        return str(row.status), _aware(row.updated_at), row.attempts

    def claim_outbound_many(
        self, claims: Sequence[tuple[str, int, Optional[int], Optional[tuple[int, str, str]]]]
    ) -> list[tuple[str, Optional[dt.datetime], Optional[int]]]:
        """``claim_outbound`` for many (key, token, stale token, log), in one transaction: what a
        send worker's concurrent jobs claim within a few milliseconds (one commit, not one each).

        The claiming UPDATE runs first (it takes SQLite's write lock, PostgreSQL's row locks), then
        the rows are read back: a row 'sending' under its own token and time was claimed here."""
        if not claims:
            return []
        now = _now()
        by_key = {key: (token, stale, log) for key, token, stale, log in claims}
        claimable = sa.or_(
            messages.c.status == "queued",
            sa.and_(messages.c.status == "sending", messages.c.attempts == sa.bindparam("b_stale", type_=sa.Integer)),
        )
        with self.engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.idempotency_key == sa.bindparam("b_key"), claimable)
                .values(status="sending", attempts=sa.bindparam("b_token"), updated_at=now),
                [{"b_key": key, "b_token": token, "b_stale": stale if stale is not None else -1} for key, (token, stale, _) in by_key.items()],
            )
            found = {
                row.idempotency_key: row
                for row in conn.execute(
                    sa.select(messages.c.idempotency_key, messages.c.status, messages.c.updated_at, messages.c.attempts).where(
                        messages.c.idempotency_key.in_(list(by_key))
                    )
                )
            }
            new = [
                dict(contact_id=log[0], direction="out", channel=log[1], idempotency_key=key, text=_text(log[2]), status="sending",
                     attempts=token, created_at=now, updated_at=now)
                for key, (token, _, log) in by_key.items()
                if key not in found and log is not None
            ]
            if new:
                conn.execute(messages.insert(), new)
        results: list[tuple[str, Optional[dt.datetime], Optional[int]]] = []
        inserted = {row["idempotency_key"] for row in new}
        for key, token, _, _ in claims:
            row = found.get(key)
            # Ours: under our token *and* stamped with this transaction's time (a dead claim under the same
            # token, were the attempt counter ever reset, is not taken for ours).
            if key in inserted or (row is not None and row.status == "sending" and row.attempts == token and _aware(row.updated_at) == now):
                results.append(("claimed", now, token))
            elif row is None:
                results.append(("missing", None, None))
            else:
                results.append((str(row.status), _aware(row.updated_at), row.attempts))
        return results

    def mark_sent_many(self, sent: Sequence[tuple[str, str, int, Optional[int]]]) -> None:
        """``mark_sent`` for many (key, provider message id, attempts, campaign send id), in one transaction."""
        if not sent:
            return
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.idempotency_key == sa.bindparam("b_key"))
                .values(status="sent", provider_message_id=sa.bindparam("b_pid"), attempts=sa.bindparam("b_attempts"), updated_at=now),
                [{"b_key": key, "b_pid": pid, "b_attempts": attempts} for key, pid, attempts, _ in sent],
            )
            conn.execute(
                contacts.update()
                .where(contacts.c.id == sa.select(messages.c.contact_id).where(messages.c.idempotency_key == sa.bindparam("b_key")).scalar_subquery())
                .values(last_outbound_at=now),
                [{"b_key": key} for key, _, _, _ in sent],
            )
            campaign = [{"b_id": send_id, "b_pid": pid, "b_attempts": attempts} for _, pid, attempts, send_id in sent if send_id is not None]
            if campaign:
                conn.execute(
                    campaign_sends.update()
                    # (an OR, not IN: executemany cannot expand an IN list)
                    .where(campaign_sends.c.id == sa.bindparam("b_id"), sa.or_(campaign_sends.c.status == "planned", campaign_sends.c.status == "queued"))
                    .values(status="sent", provider_message_id=sa.bindparam("b_pid"), attempts=sa.bindparam("b_attempts"), sent_at=now, reason=None,
                            updated_at=now),
                    campaign,
                )

    def release_claim(self, idempotency_key: str, token: int) -> bool:
        """Back to 'queued' after a call the provider refused (429, 5xx): a retry may send it."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    messages.update()
                    .where(messages.c.idempotency_key == idempotency_key, messages.c.status == "sending", messages.c.attempts == token)
                    .values(status="queued", updated_at=_now())
                ).rowcount
            )

    def known_provider_ids(self, provider_message_ids: Sequence[str]) -> set[str]:
        """Which of these provider ids our log already holds (a reconciliation must not take
        another message of ours for the one in doubt)."""
        if not provider_message_ids:
            return set()
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(messages.c.provider_message_id).where(messages.c.provider_message_id.in_(list(provider_message_ids)))).scalars())

    def mark_sent(self, idempotency_key: str, provider_message_id: str, attempts: int, campaign_send_id: Optional[int] = None) -> None:
        """The provider accepted the message; a campaign send is updated in the same transaction,
        so a crash can never leave the log saying "sent" and the campaign saying "queued"."""
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.idempotency_key == idempotency_key)
                .values(status="sent", provider_message_id=provider_message_id, attempts=attempts, updated_at=now)
            )
            conn.execute(
                contacts.update()
                .where(contacts.c.id == sa.select(messages.c.contact_id).where(messages.c.idempotency_key == idempotency_key).scalar_subquery())
                .values(last_outbound_at=now)
            )
            if campaign_send_id is not None:
                conn.execute(
                    campaign_sends.update()
                    .where(campaign_sends.c.id == campaign_send_id, campaign_sends.c.status.in_(("planned", "queued")))
                    .values(status="sent", provider_message_id=provider_message_id, attempts=attempts, sent_at=now, reason=None, updated_at=now)
                )

    def mark_failed(self, idempotency_key: str, error_code: Optional[str], attempts: int, campaign_send_id: Optional[int] = None) -> None:
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.idempotency_key == idempotency_key)
                .values(status="failed", error_code=error_code, attempts=attempts, updated_at=now)
            )
            if campaign_send_id is not None:
                conn.execute(
                    campaign_sends.update()
                    .where(campaign_sends.c.id == campaign_send_id, campaign_sends.c.status.in_(("planned", "queued")))
                    .values(status="failed", reason=(error_code or "unknown")[:32], attempts=attempts, updated_at=now)
                )

    def apply_status(self, provider_message_id: str, status: str, error_code: Optional[str] = None) -> bool:
        """A delivery receipt; statuses only move forward (a late "sent" never undoes "read").

        A receipt for a campaign message also moves its campaign_sends row (found by the
        provider's id, stored when the message was sent), so reports count deliveries and reads.
        """
        order = STATUS_ORDER
        now = _now()
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(messages.c.id, messages.c.status).where(
                    messages.c.provider_message_id == provider_message_id, messages.c.direction == "out"
                )
            ).first()
            if row is None:
                return False
            if order.get(status, 0) <= order.get(row.status, 0):
                return True
            conn.execute(
                messages.update().where(messages.c.id == row.id).values(status=status, error_code=error_code, updated_at=now)
            )
            campaign_status = "failed" if status == "undelivered" else status
            behind = [name for name, rank in order.items() if 0 <= rank < order.get(status, 0) and name != "undelivered"]
            values: dict[str, Any] = {"status": campaign_status, "updated_at": now}
            if campaign_status == "failed":
                values["reason"] = (error_code or status)[:32]
            conn.execute(
                campaign_sends.update()
                .where(campaign_sends.c.provider_message_id == provider_message_id, campaign_sends.c.status.in_(behind))
                .values(**values)
            )
            return True

    def transcript(self, contact_id: int, limit: int = 200) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(messages).where(messages.c.contact_id == contact_id).order_by(messages.c.id).limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]
