"""Schema migrations: numbered steps applied in order, each recorded in schema_version.

A step is a function of a connection, written with SQLAlchemy so it runs on
SQLite and PostgreSQL alike. Add a step to the end; never edit an applied one.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from jisr.store import schema

logger = logging.getLogger(__name__)


def _v1_initial(conn: Connection) -> None:
    schema.contacts.create(conn)
    schema.messages.create(conn)
    sa.Index("ix_messages_contact_created", schema.messages.c.contact_id, schema.messages.c.created_at).create(conn)


# Step 2's tables as they were when it was written. Step 1 creates its tables from the live
# schema module, so a later change there silently changes what step 1 builds; a frozen copy
# keeps this step's result the same whenever it runs. The one-column "contacts" is only
# there so the foreign key can be resolved.
_v2_metadata = sa.MetaData()
sa.Table("contacts", _v2_metadata, sa.Column("id", sa.Integer, primary_key=True))
_v2_consent_events = sa.Table(
    "consent_events",
    _v2_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("consent", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("basis", sa.Text),
    sa.Column("channel", sa.String(16)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_consent_events_contact_at", "contact_id", "at"),
)


def _v2_timezone_and_consent_events(conn: Connection) -> None:
    # A database created after the timezone column entered schema.py got it from step 1
    # already (see above): add the column only where it is missing.
    existing = {column["name"] for column in sa.inspect(conn).get_columns("contacts")}
    if "timezone" not in existing:
        quote = conn.dialect.identifier_preparer.quote
        column_type = sa.String(64).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {quote('contacts')} ADD COLUMN {quote('timezone')} {column_type}"))
    _v2_consent_events.create(conn)


# Step 3's tables, frozen for the same reason as step 2's (schema.py holds the live copy).
_v3_metadata = sa.MetaData()
sa.Table("contacts", _v3_metadata, sa.Column("id", sa.Integer, primary_key=True))
_v3_campaign_runs = sa.Table(
    "campaign_runs",
    _v3_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("campaign_id", sa.String(64), nullable=False),
    sa.Column("occurrence", sa.String(160), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default="planned"),
    sa.Column("source_hash", sa.String(64)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("campaign_id", "occurrence", name="uq_campaign_runs_occurrence"),
)
_v3_campaign_sends = sa.Table(
    "campaign_sends",
    _v3_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("campaign_runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),
    sa.Column("language", sa.String(8)),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("form", sa.String(40)),
    sa.Column("scheduled_at", sa.DateTime(timezone=True)),
    sa.Column("local_time", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_campaign_sends_run_status", "run_id", "status"),
    sa.Index("ix_campaign_sends_contact_scheduled", "contact_id", "scheduled_at"),
)


def _v3_campaign_runs_and_sends(conn: Connection) -> None:
    _v3_campaign_runs.create(conn)
    _v3_campaign_sends.create(conn)


def _v4_campaign_send_outcomes(conn: Connection) -> None:
    """What sending records on a campaign send: the provider's id (receipts find the send by
    it), the number of provider calls and when it was accepted."""
    quote = conn.dialect.identifier_preparer.quote
    existing = {column["name"] for column in sa.inspect(conn).get_columns("campaign_sends")}
    for name, column_type in (("provider_message_id", sa.String(128)), ("attempts", sa.Integer()), ("sent_at", sa.DateTime(timezone=True))):
        if name not in existing:
            compiled = column_type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {quote('campaign_sends')} ADD COLUMN {quote(name)} {compiled}"))
    conn.execute(sa.text(f"CREATE INDEX {quote('ix_campaign_sends_provider_message_id')} ON {quote('campaign_sends')} ({quote('provider_message_id')})"))


def _add_missing_columns(conn: Connection, table: str, columns: tuple[tuple[str, sa.types.TypeEngine], ...]) -> list[str]:
    """ALTER TABLE ... ADD COLUMN for those not there yet (a database created after schema.py
    gained them got them from step 1 already). Returns the names added."""
    quote = conn.dialect.identifier_preparer.quote
    existing = {column["name"] for column in sa.inspect(conn).get_columns(table)}
    added = []
    for name, column_type in columns:
        if name not in existing:
            compiled = column_type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {compiled}"))
            added.append(name)
    return added


# Steps 5 and 6, frozen copies (schema.py holds the live ones).
_v5_metadata = sa.MetaData()
_v5_accounts = sa.Table(
    "accounts",
    _v5_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("display_name", sa.String(120), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("countries", sa.String(255), nullable=False, server_default=""),
    sa.Column("languages", sa.String(64), nullable=False, server_default=""),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("password_changed_at", sa.DateTime(timezone=True)),
)
_v5_api_tokens = sa.Table(
    "api_tokens",
    _v5_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)
_v5_audit_log = sa.Table(
    "audit_log",
    _v5_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL")),
    sa.Column("action", sa.String(48), nullable=False),
    sa.Column("target_kind", sa.String(24)),
    sa.Column("target_id", sa.String(64)),
    sa.Column("country", sa.String(2)),
    sa.Column("detail", sa.Text),
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_target", "target_kind", "target_id"),
)


def _v5_accounts_tokens_audit(conn: Connection) -> None:
    _v5_metadata.create_all(conn)


_v6_metadata = sa.MetaData()
sa.Table("contacts", _v6_metadata, sa.Column("id", sa.Integer, primary_key=True))
sa.Table("accounts", _v6_metadata, sa.Column("id", sa.Integer, primary_key=True))
_v6_handoffs = sa.Table(
    "handoffs",
    _v6_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("country", sa.String(2)),
    sa.Column("language", sa.String(8)),
    sa.Column("role", sa.String(16)),
    sa.Column("topics", sa.Text),
    sa.Column("assigned_to", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL"), index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("first_response_at", sa.DateTime(timezone=True)),
    sa.Column("escalated_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("last_inbound_at", sa.DateTime(timezone=True)),
    sa.Index("ix_handoffs_status_priority", "status", "priority", "created_at"),
)
_v6_handoff_notes = sa.Table(
    "handoff_notes",
    _v6_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("handoff_id", sa.Integer, sa.ForeignKey("handoffs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL")),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


def _v6_handoffs_and_message_authors(conn: Connection) -> None:
    added = _add_missing_columns(conn, "messages", (("author_account_id", sa.Integer()), ("handoff_id", sa.Integer())))
    if "handoff_id" in added:
        quote = conn.dialect.identifier_preparer.quote
        conn.execute(sa.text(f"CREATE INDEX {quote('ix_messages_handoff_id')} ON {quote('messages')} ({quote('handoff_id')})"))
    _v6_handoffs.create(conn)
    _v6_handoff_notes.create(conn)


# Step 7's table, frozen (schema.py holds the live copy).
_v7_metadata = sa.MetaData()
_v7_suppressed_addresses = sa.Table(
    "suppressed_addresses",
    _v7_metadata,
    sa.Column("address_hash", sa.String(64), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


def _v7_suppressed_addresses_table(conn: Connection) -> None:
    _v7_suppressed_addresses.create(conn)


# Step 8: what the indicators (jisr/indicators.py) filter by — a period of the families'
# messages (in or out), of opt-outs, of handoffs. Without these every period read the whole
# message log (measured: 50–80 ms for a week of 300,000 messages on SQLite, 20 ms with them).
_V8_INDEXES = (
    ("messages", "ix_messages_direction_created", ("direction", "created_at")),
    ("consent_events", "ix_consent_events_consent_at", ("consent", "at")),
    ("handoffs", "ix_handoffs_created", ("created_at",)),
)


def _v8_indicator_indexes(conn: Connection) -> None:
    quote = conn.dialect.identifier_preparer.quote
    for table, name, columns in _V8_INDEXES:
        if name not in {index["name"] for index in sa.inspect(conn).get_indexes(table)}:
            conn.execute(sa.text(f"CREATE INDEX {quote(name)} ON {quote(table)} ({', '.join(quote(c) for c in columns)})"))


# Step 9's table, frozen (schema.py holds the live copy): the topics a contact subscribed to.
_v9_metadata = sa.MetaData()
sa.Table("contacts", _v9_metadata, sa.Column("id", sa.Integer, primary_key=True))
_v9_contact_topics = sa.Table(
    "contact_topics",
    _v9_metadata,
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("topic", sa.String(32), primary_key=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


def _v9_contact_topics_table(conn: Connection) -> None:
    _v9_contact_topics.create(conn)


def _v10_one_open_handoff_per_contact(conn: Connection) -> None:
    """The database itself refuses a second open handoff for a contact. HandoffStore.open
    already serialises openings on the contact's row; this index is the guarantee if another
    writer (a script, a future code path) forgets to. Partial unique indexes exist in both
    SQLite (3.8+) and PostgreSQL with this same syntax."""
    quote = conn.dialect.identifier_preparer.quote
    conn.execute(
        sa.text(
            f"CREATE UNIQUE INDEX {quote('uq_handoffs_one_open_per_contact')} ON {quote('handoffs')} ({quote('contact_id')}) "
            f"WHERE {quote('status')} IN ('waiting', 'assigned')"
        )
    )



# Step 11's table, frozen (schema.py holds the live copy): the topics a family stopped.
_v11_metadata = sa.MetaData()
sa.Table("contacts", _v11_metadata, sa.Column("id", sa.Integer, primary_key=True))
_v11_contact_topic_stops = sa.Table(
    "contact_topic_stops",
    _v11_metadata,
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("topic", sa.String(32), primary_key=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("channel", sa.String(16)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


def _v11_contact_topic_stops_table(conn: Connection) -> None:
    _v11_contact_topic_stops.create(conn)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "contacts and message log", _v1_initial),
    (2, "contacts.timezone and the consent history", _v2_timezone_and_consent_events),
    (3, "campaign runs and their planned sends", _v3_campaign_runs_and_sends),
    (4, "campaign sends: provider message id, attempts, sent_at", _v4_campaign_send_outcomes),
    (5, "accounts, API tokens and the audit log", _v5_accounts_tokens_audit),
    (6, "handoffs to mediators, their notes; messages.author_account_id and handoff_id", _v6_handoffs_and_message_authors),
    (7, "suppressed addresses: keyed hashes of forgotten contacts", _v7_suppressed_addresses_table),
    (8, "indexes for the indicators: messages by direction and time, opt-outs and handoffs by time", _v8_indicator_indexes),
    (9, "contact_topics: the reminder topics a contact subscribed to", _v9_contact_topics_table),
    (10, "at most one open handoff per contact (partial unique index)", _v10_one_open_handoff_per_contact),
    (11, "contact_topic_stops: the reminder topics a family asked to stop", _v11_contact_topic_stops_table),
]


def _run_step(step: Callable[[Connection], None], conn: Connection) -> None:
    """Run a step, then put the shared schema tables back as they were before it.

    Step 1 builds its index with ``sa.Index(name, schema.messages.c...)``, which SQLAlchemy
    attaches to the shared ``schema.messages`` Table: the next database created in the same
    process (tests, a CLI next to a gateway) would get the index from ``messages.create()``
    and then again from step 1, and fail with "index already exists". Applied steps are never
    edited, so the leak is undone here instead.
    """
    before = {table: set(table.indexes) for table in schema.metadata.tables.values()}
    try:
        step(conn)
    finally:
        for table, indexes in before.items():
            table.indexes.intersection_update(indexes)


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            return 0
        return int(conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar() or 0)


def migrate(engine: Engine) -> int:
    """Apply every pending step, each in its own transaction. Returns the schema version."""
    with engine.begin() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            schema.schema_version.create(conn)
    version = current_version(engine)
    for number, description, step in MIGRATIONS:
        if number <= version:
            continue
        with engine.begin() as conn:
            _run_step(step, conn)
            conn.execute(schema.schema_version.insert().values(version=number, applied_at=dt.datetime.now(dt.timezone.utc)))
        logger.info("database migrated to version %d (%s)", number, description)
        version = number
    return version
