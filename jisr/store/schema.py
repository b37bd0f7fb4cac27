"""Tables, described once with SQLAlchemy Core (portable between SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

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
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_inbound_at", sa.DateTime(timezone=True)),             # the 24-hour windows start here
    sa.Column("last_outbound_at", sa.DateTime(timezone=True)),
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
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)
