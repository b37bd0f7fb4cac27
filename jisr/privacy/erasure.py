"""`jisr contacts forget`: erase one family from SQL, Redis, the send queues (the right to erasure).

Order matters: queued send jobs go first (a reply job whose log row is already gone would
otherwise still be sent), then every SQL row in one transaction, then the Redis
conversation state. What stays is a keyed hash of each address in suppressed_addresses,
so an old contact list cannot import the person again (docs/privacy.md). The logs hold no
address or text to erase: see jisr/privacy/logs.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connectors.types import address_id
from jisr import keys
from jisr.outbox import RETRY_JOB_PREFIX
from jisr.privacy.pseudonym import address_hash, suppression_hash
from jisr.privacy.state import ConversationRedis
from jisr.store.schema import campaign_sends, contacts, messages, metadata, suppressed_addresses


@dataclass
class ErasureTarget:
    """What one forget will remove, read before anything is deleted."""

    contact_ids: list[int]
    addresses: list[str]
    channels: list[str]
    inbound_ids: list[tuple[str, str]]        # (channel, provider message id): the dedupe keys
    part_keys: list[str]                      # outbound messages' idempotency keys
    job_ids: list[str]                        # arq job ids of the sends to these addresses
    campaign_sends: dict[int, list[str]] = field(default_factory=dict)  # run id → its sends' keys (in batches)


@dataclass
class ErasureReport:
    """Counts only: the report itself may be logged or audited."""

    contacts: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    jobs_removed: int = 0
    redis_keys: int = 0
    redis_erased: bool = False
    suppressed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "contacts": self.contacts,
            "rows": self.rows,
            "jobs_removed": self.jobs_removed,
            "redis_keys": self.redis_keys,
            "redis_erased": self.redis_erased,
            "suppressed": self.suppressed,
        }


def erasure_target(engine: Engine, contact_id: int, whole_profile: bool = False) -> Optional[ErasureTarget]:
    """The contact (with ``whole_profile``, every address linked to its profile) and its keys."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(contacts.c.id, contacts.c.profile_id).where(contacts.c.id == contact_id)).first()
        if row is None:
            return None
        query = sa.select(contacts.c.id, contacts.c.address, contacts.c.channel)
        if whole_profile and row.profile_id is not None:
            query = query.where(contacts.c.profile_id == row.profile_id)
        else:
            query = query.where(contacts.c.id == contact_id)
        people = conn.execute(query.order_by(contacts.c.id)).all()
        ids = [p.id for p in people]
        logged = conn.execute(
            sa.select(messages.c.direction, messages.c.channel, messages.c.provider_message_id, messages.c.idempotency_key).where(
                messages.c.contact_id.in_(ids)
            )
        ).all()
        sends = conn.execute(sa.select(campaign_sends.c.run_id, campaign_sends.c.idempotency_key).where(campaign_sends.c.contact_id.in_(ids))).all()
    send_keys = [send.idempotency_key for send in sends]
    by_run: dict[int, list[str]] = {}
    for send in sends:
        by_run.setdefault(send.run_id, []).append(send.idempotency_key)
    part_keys = [m.idempotency_key for m in logged if m.direction == "out" and m.idempotency_key]
    # A job's parts are keyed "<job id>:<index>" (jisr.outbox.SendJob.part_key).
    # A campaign send handed off by its batch is retried by the job "retry:<key>" (jisr.outbox.send_batch).
    job_ids = {key.rsplit(":", 1)[0] for key in part_keys if ":" in key} | set(send_keys) | {RETRY_JOB_PREFIX + key for key in send_keys}
    return ErasureTarget(
        contact_ids=ids,
        addresses=[p.address for p in people],
        channels=[p.channel for p in people],
        inbound_ids=[(m.channel, m.provider_message_id) for m in logged if m.direction == "in" and m.provider_message_id],
        part_keys=part_keys,
        job_ids=sorted(job_ids),
        campaign_sends=by_run,
    )


def referencing(parent: sa.Table) -> list[tuple[sa.Table, sa.Column]]:
    """(table, column) of every foreign key to ``parent``: a table added later (topics, a
    mediator's events…) is erased and exported without anyone remembering to list it here."""
    return [(table, fk.parent) for table in metadata.sorted_tables for fk in table.foreign_keys if fk.column.table is parent]


def _delete_under(conn: Connection, parent: sa.Table, parent_ids: Sequence[int], counts: dict[str, int]) -> None:
    """Delete the rows referencing ``parent_ids`` of ``parent``, their own dependents first
    (explicitly: SQLite applies ON DELETE CASCADE only with foreign keys on)."""
    for child, column in referencing(parent):
        if referencing(child) and parent_ids:
            child_ids = conn.execute(sa.select(child.c.id).where(column.in_(parent_ids))).scalars().all()
            _delete_under(conn, child, child_ids, counts)
        deleted = conn.execute(child.delete().where(column.in_(parent_ids))).rowcount if parent_ids else 0
        counts[child.name] = counts.get(child.name, 0) + deleted


def _erase_sql(engine: Engine, target: ErasureTarget) -> dict[str, int]:
    """Delete every row in one transaction and leave the suppression hashes."""
    ids = target.contact_ids
    counts: dict[str, int] = {}
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            # Overwrite deleted content with zeros in the database file, not just unlink it.
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        _delete_under(conn, contacts, ids, counts)
        counts["contacts"] = conn.execute(contacts.delete().where(contacts.c.id.in_(ids))).rowcount
        hashes = {suppression_hash(address) for address in target.addresses}
        known = set(
            conn.execute(sa.select(suppressed_addresses.c.address_hash).where(suppressed_addresses.c.address_hash.in_(hashes))).scalars()
        )
        new = [{"address_hash": h, "at": now} for h in sorted(hashes - known)]
        if new:
            conn.execute(suppressed_addresses.insert(), new)
        counts["suppressed_addresses"] = len(new)
    if engine.dialect.name == "sqlite":
        # The WAL file still holds the pages as they were before the delete: fold it into the
        # database (now zeroed) and empty it. Busy readers may delay this to the next checkpoint.
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return counts


async def _erase_redis(redis: ConversationRedis, target: ErasureTarget) -> int:
    deleted = 0
    for address, channel in zip(target.addresses, target.channels):
        deleted += int(await redis.trackers.delete(keys.rasa_tracker(address)))
        deleted += int(await redis.locks.delete(keys.rasa_lock(address)))
        pseudonym = address_hash(address)
        deleted += await redis.scan_delete(redis.jisr, keys.sender_rate(pseudonym, 0).rsplit(":", 1)[0] + ":*")
        deleted += int(await redis.jisr.delete(keys.disclosure_claim(pseudonym)))
        if channel == "webchat":
            deleted += int(await redis.jisr.delete(keys.webchat_inbox(address_id(address))))
    dedupes = [keys.dedupe(channel, provider_id) for channel, provider_id in target.inbound_ids]
    names = dedupes + [keys.attempts(key) for key in target.part_keys]
    # Keys of the reliability and mediation pieces, when this version has them: a message still
    # being processed (its text and address, by dedupe key), a conversation's reply order, the
    # count of not-understood messages in a row.
    reply_order = getattr(keys, "reply_order", None)
    if reply_order is not None:
        names += [reply_order(channel, address) for address, channel in zip(target.addresses, target.channels)]
    fallbacks = getattr(keys, "fallbacks_in_a_row", None)
    if fallbacks is not None:
        names += [fallbacks(contact_id) for contact_id in target.contact_ids]
    for start in range(0, len(names), 500):
        deleted += int(await redis.jisr.delete(*names[start : start + 500]))
    pending = getattr(keys, "INBOUND_PENDING", None)
    if pending is not None:
        for start in range(0, len(dedupes), 500):
            deleted += int(await redis.jisr.hdel(pending, *dedupes[start : start + 500]))
    return deleted


async def forget(engine: Engine, redis: Optional[ConversationRedis], contact_id: int, whole_profile: bool = False) -> Optional[ErasureReport]:
    """Erase a contact (or its whole profile); None if there is no such contact.

    Without ``redis`` (a CLI with no shared Redis) only SQL is erased and the report says so.
    """
    target = await asyncio.to_thread(erasure_target, engine, contact_id, whole_profile)
    if target is None:
        return None
    report = ErasureReport(contacts=len(target.contact_ids))
    if redis is not None:
        jobs: set[str] = set(target.job_ids)
        for address in target.addresses:
            jobs |= await redis.reply_jobs_to(address)
        report.jobs_removed = await redis.remove_jobs(sorted(jobs))
        # Campaign sends queued in batches (jisr.outbox.send_batch) leave their batch; the other
        # families' sends in it stay queued.
        report.jobs_removed += await redis.remove_from_batches(target.campaign_sends)
    report.rows = await asyncio.to_thread(_erase_sql, engine, target)
    report.suppressed = report.rows.pop("suppressed_addresses", 0)
    if redis is not None:
        report.redis_keys = await _erase_redis(redis, target)
        report.redis_erased = True
    return report


def is_suppressed(engine: Engine, address: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(suppressed_addresses.c.address_hash).where(suppressed_addresses.c.address_hash == suppression_hash(address))
        ).first() is not None
