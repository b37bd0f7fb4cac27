"""Campaign runs and their sends: the queries the campaign planner needs.

Contacts are read in id order, one batch at a time (keyset pagination), so
planning 100,000 contacts never holds them all in memory nor one long-lived
cursor; the per-batch queries then select by contact-id *range* rather than
``IN (…)`` lists, which SQLite caps at 999 parameters on older builds.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any, Iterator, Mapping, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr.store.contacts import Contact
from jisr.store.schema import campaign_runs, campaign_sends, contacts

# Statuses of a send that count towards the weekly cap: everything but failed and skipped.
COUNTED_STATUSES = ("planned", "queued", "sent", "delivered", "read")
SEND_STATUSES = COUNTED_STATUSES + ("failed", "skipped")
RUN_STATES = ("planned", "running", "paused", "cancelled", "done")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CampaignStore:
    """Reads contacts for planning and writes campaign runs and sends."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- contacts -------------------------------------------------------------------------

    def iter_contact_batches(
        self,
        *,
        countries: Sequence[str] = (),
        channels: Sequence[str] = (),
        batch_size: int = 5000,
    ) -> Iterator[list[Contact]]:
        """Contacts in id order, ``batch_size`` at a time, narrowed in SQL by country and channel.

        The rest of the audience (languages, roles, levels, regions) is checked by
        ``Audience.includes`` so there is one definition of who is in an audience.
        """
        query = sa.select(contacts).order_by(contacts.c.id).limit(batch_size)
        if countries:
            query = query.where(sa.func.upper(contacts.c.country).in_([c.upper() for c in countries]))
        if channels:
            query = query.where(contacts.c.channel.in_(list(channels)))
        last_id = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(query.where(contacts.c.id > last_id)).all()
            if not rows:
                return
            batch = [Contact.from_row(row) for row in rows]
            last_id = batch[-1].id
            yield batch
            if len(rows) < batch_size:
                return

    # -- sends around a time (the weekly cap) -------------------------------------------------

    def counted_sends(
        self, first_contact: int, last_contact: int, start: dt.datetime, end: dt.datetime
    ) -> dict[int, dict[str, dt.datetime]]:
        """contact id → {idempotency key: scheduled_at} of the sends that count towards the cap,
        for contacts in [first_contact, last_contact] scheduled in [start, end]."""
        query = sa.select(campaign_sends.c.contact_id, campaign_sends.c.idempotency_key, campaign_sends.c.scheduled_at).where(
            campaign_sends.c.contact_id.between(first_contact, last_contact),
            campaign_sends.c.scheduled_at.between(start, end),
            campaign_sends.c.status.in_(COUNTED_STATUSES),
        )
        found: dict[int, dict[str, dt.datetime]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                found.setdefault(row.contact_id, {})[row.idempotency_key] = row.scheduled_at
        return found

    # -- runs -----------------------------------------------------------------------------------

    def get_or_create_run(self, campaign_id: str, occurrence: str, source_hash: Optional[str]) -> tuple[int, bool]:
        """The run of this campaign occurrence: (id, created now?). Safe against a concurrent planner."""
        select = sa.select(campaign_runs.c.id).where(campaign_runs.c.campaign_id == campaign_id, campaign_runs.c.occurrence == occurrence)
        for _attempt in range(2):
            with self.engine.begin() as conn:
                existing = conn.execute(select).scalar()
                if existing is not None:
                    return int(existing), False
            try:
                with self.engine.begin() as conn:
                    result = conn.execute(
                        campaign_runs.insert().values(
                            campaign_id=campaign_id, occurrence=occurrence, state="planned", source_hash=source_hash, created_at=_now()
                        )
                    )
                    return int(result.inserted_primary_key[0]), True
            except sa.exc.IntegrityError:
                continue  # another planner created it between our read and our insert: read it
        raise RuntimeError(f"could not create or find the run of {campaign_id} {occurrence}")

    def runs(self, campaign_id: Optional[str] = None) -> list[dict[str, Any]]:
        query = sa.select(campaign_runs).order_by(campaign_runs.c.id)
        if campaign_id is not None:
            query = query.where(campaign_runs.c.campaign_id == campaign_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # -- sends ----------------------------------------------------------------------------------

    def insert_sends(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert the sends whose idempotency key is new, in one transaction; returns how many.

        Check-then-insert works the same on SQLite and PostgreSQL (no dialect-specific
        ON CONFLICT). The rows of one call must belong to contacts in one id range of one
        run, which is how the planner batches them. A concurrent planner inserting the same
        keys between the check and the insert makes the UNIQUE key refuse the batch; it is
        then read again and retried, so no send is ever planned twice.
        """
        if not rows:
            return 0
        keys_of_batch = [row["idempotency_key"] for row in rows]
        run_ids = {row["run_id"] for row in rows}
        first, last = min(row["contact_id"] for row in rows), max(row["contact_id"] for row in rows)
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    existing = set(
                        conn.execute(
                            sa.select(campaign_sends.c.idempotency_key).where(
                                campaign_sends.c.run_id.in_(list(run_ids)),
                                campaign_sends.c.contact_id.between(first, last),
                            )
                        ).scalars()
                    )
                    new = [row for row, key in zip(rows, keys_of_batch) if key not in existing]
                    if new:
                        conn.execute(campaign_sends.insert(), list(new))
                    return len(new)
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def sends(self, run_id: Optional[int] = None) -> list[dict[str, Any]]:
        query = sa.select(campaign_sends).order_by(campaign_sends.c.id)
        if run_id is not None:
            query = query.where(campaign_sends.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def status_counts(self, run_id: int) -> Counter:
        """status → number of sends of the run (skipped ones by "skipped:<reason>")."""
        query = (
            sa.select(campaign_sends.c.status, campaign_sends.c.reason, sa.func.count())
            .where(campaign_sends.c.run_id == run_id)
            .group_by(campaign_sends.c.status, campaign_sends.c.reason)
        )
        counts: Counter = Counter()
        with self.engine.connect() as conn:
            for status, reason, count in conn.execute(query):
                counts[f"{status}:{reason}" if reason else status] += count
        return counts
