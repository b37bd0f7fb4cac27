"""Everything Jisr holds about one contact, as one JSON document (the right of access).

Read from the same tables and Redis keys that erasure.py deletes, so "what export shows"
and "what forget removes" are one list: SQL rows of the contact (its linked profile's
other addresses, messages, consent history, campaign sends, handoffs and their notes) and
the Rasa conversation state in Redis.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from jisr.privacy.erasure import referencing
from jisr.privacy.state import ConversationRedis
from jisr.store.schema import campaign_runs, campaign_sends, consent_events, contacts, handoff_notes, handoffs, messages

FORMAT_VERSION = 1
# Tables with their own section above; every other table referring to a contact gets one by its name.
SECTIONS = frozenset({"messages", "consent_events", "campaign_sends", "handoffs"})


def resolve_contact(engine: Engine, reference: str) -> Optional[int]:
    """A contact id from "42" or from an address ("whatsapp:+33612345678"); None if unknown."""
    reference = reference.strip()
    with engine.connect() as conn:
        if reference.isdigit():
            found = conn.execute(sa.select(contacts.c.id).where(contacts.c.id == int(reference))).scalar()
        else:
            found = conn.execute(sa.select(contacts.c.id).where(contacts.c.address == reference)).scalar()
    return int(found) if found is not None else None


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat()
    return value


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [{name: _plain(value) for name, value in row._mapping.items()} for row in conn.execute(query)]


def _json_field(row: dict[str, Any], name: str) -> None:
    if isinstance(row.get(name), str):
        try:
            row[name] = json.loads(row[name])
        except ValueError:
            pass


def sql_export(engine: Engine, contact_id: int) -> Optional[dict[str, Any]]:
    """The SQL part of the export, or None for an unknown contact."""
    with engine.connect() as conn:
        found = _rows(conn, sa.select(contacts).where(contacts.c.id == contact_id))
        if not found:
            return None
        contact = found[0]
        linked: list[dict[str, Any]] = []
        if contact["profile_id"] is not None:
            linked = _rows(
                conn,
                sa.select(contacts.c.id, contacts.c.address, contacts.c.channel, contacts.c.consent, contacts.c.created_at)
                .where(contacts.c.profile_id == contact["profile_id"], contacts.c.id != contact_id)
                .order_by(contacts.c.id),
            )
        logged = _rows(conn, sa.select(messages).where(messages.c.contact_id == contact_id).order_by(messages.c.id))
        for row in logged:
            _json_field(row, "media")
        consent = _rows(
            conn, sa.select(consent_events).where(consent_events.c.contact_id == contact_id).order_by(consent_events.c.at, consent_events.c.id)
        )
        sends = _rows(
            conn,
            sa.select(campaign_sends, campaign_runs.c.campaign_id, campaign_runs.c.occurrence)
            .select_from(campaign_sends.join(campaign_runs, campaign_runs.c.id == campaign_sends.c.run_id))
            .where(campaign_sends.c.contact_id == contact_id)
            .order_by(campaign_sends.c.id),
        )
        held = _rows(conn, sa.select(handoffs).where(handoffs.c.contact_id == contact_id).order_by(handoffs.c.id))
        notes = _rows(
            conn,
            sa.select(handoff_notes)
            .where(handoff_notes.c.handoff_id.in_([h["id"] for h in held] or [-1]))
            .order_by(handoff_notes.c.id),
        )
        # Every other table that refers to a contact (subscription topics, and whatever is added
        # later): the same list erasure.py deletes from.
        other = {
            table.name: _rows(conn, sa.select(table).where(column == contact_id))
            for table, column in referencing(contacts)
            if table.name not in SECTIONS
        }
    for handoff in held:
        _json_field(handoff, "topics")
        handoff["notes"] = [note for note in notes if note["handoff_id"] == handoff["id"]]
    return {
        "contact": contact,
        "linked_addresses": linked,
        "messages": logged,
        "consent_history": consent,
        "campaign_sends": sends,
        "handoffs": held,
        **{name: rows for name, rows in sorted(other.items())},
    }


async def export_contact(engine: Engine, redis: Optional[ConversationRedis], contact_id: int) -> Optional[dict[str, Any]]:
    """The whole export: SQL rows, then the conversation state (None when Redis was not given)."""
    import asyncio

    data = await asyncio.to_thread(sql_export, engine, contact_id)
    if data is None:
        return None
    document: dict[str, Any] = {
        "format": f"jisr-contact-export/{FORMAT_VERSION}",
        "exported_at": _plain(dt.datetime.now(dt.timezone.utc)),
        **data,
        "conversation_state": None,
    }
    if redis is None:
        document["conversation_state_note"] = "not read: no shared Redis configured (REDIS_URL); use the admin API of the gateway"
    else:
        document["conversation_state"] = await redis.tracker(data["contact"]["address"])
    return document
