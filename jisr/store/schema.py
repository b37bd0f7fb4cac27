"""Tables, described once with SQLAlchemy Core (portable between SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

import sqlalchemy as sa

metadata = sa.MetaData()


class UtcDateTime(sa.types.TypeDecorator):
    """A point in time: stored as UTC, always read back as an aware datetime in UTC.

    The two backends differ: SQLite has no time zones (SQLAlchemy writes the wall time and
    drops the offset, and reads naive datetimes back), while PostgreSQL's TIMESTAMP WITH TIME
    ZONE keeps the instant but reads it back in the session's time zone, and reads a naive
    value in that zone. Converting to UTC on the way in (a naive value is taken as UTC, as
    Jisr always wrote them) and on the way out makes both agree. The DDL is the impl's.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    @staticmethod
    def _utc(value: Optional[dt.datetime]) -> Optional[dt.datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)

    def process_bind_param(self, value: Optional[dt.datetime], dialect: Any) -> Optional[dt.datetime]:
        return self._utc(value)

    def process_result_value(self, value: Optional[dt.datetime], dialect: Any) -> Optional[dt.datetime]:
        return self._utc(value)


contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("address", sa.String(255), nullable=False, unique=True),   # "<channel>:<provider id>"
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("profile_id", sa.Integer, nullable=True, index=True),      # one family across channels
    sa.Column("language", sa.String(8)),
    sa.Column("country", sa.String(2)),
    sa.Column("region", sa.String(40)),
    sa.Column("role", sa.String(16)),
    sa.Column("school_level", sa.String(24)),
    sa.Column("consent", sa.String(16), nullable=False, server_default="unknown"),  # unknown | opted_in | opted_out
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("last_inbound_at", UtcDateTime()),                          # the 24-hour windows start here
    sa.Column("last_outbound_at", UtcDateTime()),
    sa.Column("timezone", sa.String(64)),                                 # IANA name ("Europe/Paris"), added in step 2
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("direction", sa.String(3), nullable=False),                 # in | out
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("provider_message_id", sa.String(128), index=True),
    sa.Column("idempotency_key", sa.String(128), unique=True),
    sa.Column("text", sa.Text),
    sa.Column("media", sa.Text),                                          # JSON list of {kind, url, provider_id, mime_type}
    sa.Column("intent", sa.String(64)),
    sa.Column("language", sa.String(8)),
    sa.Column("status", sa.String(16), nullable=False),                   # received | queued | sent | delivered | read | failed
    sa.Column("error_code", sa.String(32)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("author_account_id", sa.Integer),                            # step 6: the mediator who wrote an outbound message (None: the bot)
    sa.Column("handoff_id", sa.Integer, index=True),                       # step 6: the handoff the message belongs to, if any
)

# Every consent change, kept forever beside contacts.consent (which holds only the latest):
# campaigns may reach a contact only if its opt-in can be traced to a source and a basis.
consent_events = sa.Table(
    "consent_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("consent", sa.String(16), nullable=False),                  # opted_in | opted_out
    sa.Column("source", sa.String(16), nullable=False),                   # conversation | web_form | import | platform | operator
    sa.Column("basis", sa.Text),                                          # how the person agreed, in the operator's words
    sa.Column("channel", sa.String(16)),                                  # whatsapp | telegram | messenger | webchat
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Index("ix_consent_events_contact_at", "contact_id", "at"),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", UtcDateTime(), nullable=False),
)

# One run per campaign and occurrence ("exam:bac@DZ@2026-27", or the `at` date): planning the
# same campaign again finds the run instead of making a second one.
campaign_runs = sa.Table(
    "campaign_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("campaign_id", sa.String(64), nullable=False),
    sa.Column("occurrence", sa.String(160), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default="planned"),  # planned | running | paused | cancelled | done
    sa.Column("source_hash", sa.String(64)),                              # sha256 of the campaign file when planned
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("campaign_id", "occurrence", name="uq_campaign_runs_occurrence"),
)

# One row per contact of a run, planned or skipped (with the reason), so "why did this family
# not get it?" has an answer. idempotency_key = sha256(campaign id, occurrence, contact id).
campaign_sends = sa.Table(
    "campaign_sends",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("campaign_runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),
    sa.Column("language", sa.String(8)),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("form", sa.String(40)),                                     # text | template | tag:<MESSENGER TAG>
    sa.Column("scheduled_at", UtcDateTime()),                             # None only when no time zone is known
    sa.Column("local_time", sa.String(64)),                               # "2026-10-25 18:00 Europe/Paris", for people
    sa.Column("status", sa.String(16), nullable=False),                   # planned | queued | sent | delivered | read | failed | skipped
    sa.Column("reason", sa.String(32)),                                   # why skipped: opted_out | no_consent | capped | …; why failed: the error code
    sa.Column("provider_message_id", sa.String(128), index=True),         # step 4: links delivery receipts to the send
    sa.Column("attempts", sa.Integer),                                    # step 4: provider calls made for it
    sa.Column("sent_at", UtcDateTime()),                                  # step 4: when the provider accepted it
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Index("ix_campaign_sends_run_status", "run_id", "status"),
    # The weekly cap counts a contact's sends around a time.
    sa.Index("ix_campaign_sends_contact_scheduled", "contact_id", "scheduled_at"),
)


# --- Accounts, API tokens and the audit log (step 5) ---------------------------------------
# People who use the consoles. Families are contacts, never accounts.
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("display_name", sa.String(120), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),              # "scrypt$n$r$p$salt$hash", never the password
    sa.Column("role", sa.String(16), nullable=False),                      # admin | operator | mediator
    sa.Column("countries", sa.String(255), nullable=False, server_default=""),  # "FR,BE"; "*" = every country
    sa.Column("languages", sa.String(64), nullable=False, server_default=""),   # "fr,ar" (ary is read by ar speakers)
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("password_changed_at", UtcDateTime()),
)

# Tokens for automation: only a hash is stored; the token is shown once when created.
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),     # sha256 hex of the token
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("last_used_at", UtcDateTime()),
    sa.Column("revoked_at", UtcDateTime()),
)

# Every read of a family's conversation and every action on it, by whom. No message text here.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL")),
    sa.Column("action", sa.String(48), nullable=False),                    # login | login_failed | handoff.read | handoff.reply | …
    sa.Column("target_kind", sa.String(24)),                               # handoff | contact | campaign | account
    sa.Column("target_id", sa.String(64)),
    sa.Column("country", sa.String(2)),
    sa.Column("detail", sa.Text),                                          # short JSON, never message text or addresses
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_target", "target_kind", "target_id"),
)


# --- Handoffs to mediators (step 6) -----------------------------------------------------------
# One row per time a conversation is handed to a person; a contact has at most one open
# (waiting or assigned) handoff at a time.
handoffs = sa.Table(
    "handoffs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),                    # waiting | assigned | handed_back | resolved
    sa.Column("reason", sa.String(32), nullable=False),                    # request | not_understood | dropout | school_conflict | discrimination | harassment | safety
    sa.Column("priority", sa.Integer, nullable=False),                     # 1 = most urgent (a child's safety)
    sa.Column("country", sa.String(2)),                                    # copied from the contact when opened: access control and figures
    sa.Column("language", sa.String(8)),
    sa.Column("role", sa.String(16)),
    sa.Column("topics", sa.Text),                                          # JSON list of intents seen in the conversation
    sa.Column("assigned_to", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL"), index=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("claimed_at", UtcDateTime()),
    sa.Column("first_response_at", UtcDateTime()),
    sa.Column("escalated_at", UtcDateTime()),
    sa.Column("ended_at", UtcDateTime()),
    sa.Column("last_inbound_at", UtcDateTime()),                           # the family's latest message while held
    sa.Index("ix_handoffs_status_priority", "status", "priority", "created_at"),
)

handoff_notes = sa.Table(
    "handoff_notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("handoff_id", sa.Integer, sa.ForeignKey("handoffs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL")),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
)


# --- Forgotten addresses (step 7) -------------------------------------------------------------
# After `jisr contacts forget`, only a keyed hash of the address stays (HMAC with
# JISR_LOG_PSEUDONYM_KEY, see jisr/privacy/pseudonym.py): an old list cannot import the person
# again. Nothing else about them is kept; if they write again themselves, they are a new contact.
suppressed_addresses = sa.Table(
    "suppressed_addresses",
    metadata,
    sa.Column("address_hash", sa.String(64), primary_key=True),
    sa.Column("at", UtcDateTime(), nullable=False),
)


# --- Subscription topics (step 9) -------------------------------------------------------------
# The reminders a contact asked for (campaigns/definitions.py SUBSCRIPTION_TOPICS: exams,
# orientation, programmes…); a campaign with audience.topics reaches only contacts holding one.
# One row per topic, with where the subscription came from (conversation, import, operator).
contact_topics = sa.Table(
    "contact_topics",
    metadata,
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("topic", sa.String(32), primary_key=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
)

# --- Topics a family stopped (step 11) ----------------------------------------------------------
# "Stop the exam reminders": the family's own word, kept like a consent event. It tells a contact
# who stopped every topic it held from one who never chose (no topic rows: "all the reminders"),
# and an imported list or an operator cannot subscribe the family to that topic again; only the
# family can (ContactStore.subscribe_topics).
contact_topic_stops = sa.Table(
    "contact_topic_stops",
    metadata,
    sa.Column("contact_id", sa.Integer, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("topic", sa.String(32), primary_key=True),
    sa.Column("source", sa.String(16), nullable=False),       # conversation (a mediator's held conversation too)
    sa.Column("channel", sa.String(16)),                       # whatsapp | telegram | messenger | webchat
    sa.Column("at", UtcDateTime(), nullable=False),
)
