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
from jisr.store.schema import campaign_runs, campaign_sends, consent_events, contact_topic_stops, contact_topics, contacts, messages

# Statuses of a send that count towards the weekly cap: everything but failed and skipped.
COUNTED_STATUSES = ("planned", "queued", "sent", "delivered", "read")
SEND_STATUSES = COUNTED_STATUSES + ("failed", "skipped")
RUN_STATES = ("planned", "running", "paused", "cancelled", "done")
# Sends a worker may still send; every other status is final for the sender.
PENDING_STATUSES = ("planned", "queued")


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

    def count_contacts(self, *, countries: Sequence[str] = (), channels: Sequence[str] = ()) -> int:
        """How many contacts ``iter_contact_batches`` would read with the same filters (a progress total)."""
        query = sa.select(sa.func.count()).select_from(contacts)
        if countries:
            query = query.where(sa.func.upper(contacts.c.country).in_([c.upper() for c in countries]))
        if channels:
            query = query.where(contacts.c.channel.in_(list(channels)))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def topics_between(self, first_contact: int, last_contact: int) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
        """(contact id → the topics it subscribed to, contact id → the topics it stopped), for
        contacts in [first_contact, last_contact]."""
        return self._topic_sets(lambda column: column.between(first_contact, last_contact))

    def _topic_sets(self, which: Any) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
        held: dict[int, set[str]] = {}
        stopped: dict[int, set[str]] = {}
        with self.engine.connect() as conn:
            for table, found in ((contact_topics, held), (contact_topic_stops, stopped)):
                for contact_id, topic in conn.execute(sa.select(table.c.contact_id, table.c.topic).where(which(table.c.contact_id))):
                    found.setdefault(contact_id, set()).add(topic)
        return held, stopped

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

    # -- sending ---------------------------------------------------------------------------------

    def run(self, run_id: int) -> Optional[dict[str, Any]]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(campaign_runs).where(campaign_runs.c.id == run_id)).first()
        return dict(row._mapping) if row else None

    def set_run_state(self, run_id: int, state: str, only_from: Sequence[str] = ()) -> bool:
        """Set the run's state (optionally only from some states); True if it changed."""
        if state not in RUN_STATES:
            raise ValueError(f"run state is one of {', '.join(RUN_STATES)}")
        query = campaign_runs.update().where(campaign_runs.c.id == run_id)
        if only_from:
            query = query.where(campaign_runs.c.state.in_(list(only_from)))
        with self.engine.begin() as conn:
            return bool(conn.execute(query.values(state=state)).rowcount)

    def pending_sends(self, run_id: int) -> list[dict[str, Any]]:
        """The run's sends not yet sent nor settled, with what rendering needs of their contact."""
        query = (
            sa.select(
                campaign_sends.c.id,
                campaign_sends.c.idempotency_key,
                campaign_sends.c.contact_id,
                campaign_sends.c.language,
                campaign_sends.c.channel,
                campaign_sends.c.scheduled_at,
                campaign_sends.c.status,
                contacts.c.address,
                contacts.c.country,
                contacts.c.region,
            )
            .select_from(campaign_sends.join(contacts, contacts.c.id == campaign_sends.c.contact_id))
            .where(campaign_sends.c.run_id == run_id, campaign_sends.c.status.in_(PENDING_STATUSES))
            .order_by(campaign_sends.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def mark_queued(self, send_ids: Sequence[int]) -> int:
        """planned → queued (never moves a send that a worker already settled)."""
        changed = 0
        with self.engine.begin() as conn:
            for start in range(0, len(send_ids), 900):
                chunk = list(send_ids[start : start + 900])
                result = conn.execute(
                    campaign_sends.update()
                    .where(campaign_sends.c.id.in_(chunk), campaign_sends.c.status == "planned")
                    .values(status="queued", updated_at=_now())
                )
                changed += result.rowcount
        return changed

    def skip_planned(self, run_id: int, reason: str) -> int:
        """Skip the run's sends that no job holds (still planned), e.g. on cancel."""
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    campaign_sends.update()
                    .where(campaign_sends.c.run_id == run_id, campaign_sends.c.status == "planned")
                    .values(status="skipped", reason=reason, updated_at=_now())
                ).rowcount
            )

    def send_state(self, send_id: int) -> Optional[dict[str, Any]]:
        """A send with its run's state and its contact's consent and window, as they are now."""
        return self.send_states([send_id])[0]

    def send_states(self, send_ids: Sequence[int]) -> list[Optional[dict[str, Any]]]:
        """``send_state`` of many sends in one query (a worker's concurrent jobs ask together)."""
        if not send_ids:
            return []
        query = (
            sa.select(
                campaign_sends.c.id,
                campaign_sends.c.status,
                campaign_sends.c.contact_id,
                campaign_sends.c.channel,
                campaign_runs.c.state.label("run_state"),
                contacts.c.consent,
                contacts.c.last_inbound_at,
            )
            .select_from(
                campaign_sends.join(campaign_runs, campaign_runs.c.id == campaign_sends.c.run_id).join(
                    contacts, contacts.c.id == campaign_sends.c.contact_id
                )
            )
            .where(campaign_sends.c.id.in_(sorted(set(send_ids))))
        )
        with self.engine.connect() as conn:
            found = {row.id: dict(row._mapping) for row in conn.execute(query)}
        # The contacts' topics, for a campaign about some (jisr.topics.reaches): a family that
        # stopped exam reminders after the run was scheduled gets none of its messages.
        contact_ids = sorted({state["contact_id"] for state in found.values()})
        held, stopped = self._topic_sets(lambda column: column.in_(contact_ids)) if contact_ids else ({}, {})
        for state in found.values():
            state["topics"] = held.get(state["contact_id"], set())
            state["stopped_topics"] = stopped.get(state["contact_id"], set())
        return [found.get(send_id) for send_id in send_ids]

    def skip_send(self, send_id: int, reason: str) -> bool:
        """Skip a send decided against at send time; only while it is still pending."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    campaign_sends.update()
                    .where(campaign_sends.c.id == send_id, campaign_sends.c.status.in_(PENDING_STATUSES))
                    .values(status="skipped", reason=reason[:32], updated_at=_now())
                ).rowcount
            )

    # -- reports ---------------------------------------------------------------------------------

    def report_rows(self, run_id: int) -> list[dict[str, Any]]:
        """One row per send of the run, with the contact's country and whether a reply or an
        opt-out followed (no addresses: reports are shared with people who need no phone numbers)."""
        replied = (
            sa.select(sa.func.count())
            .where(
                messages.c.contact_id == campaign_sends.c.contact_id,
                messages.c.direction == "in",
                messages.c.created_at > campaign_sends.c.sent_at,
            )
            .scalar_subquery()
        )
        query = (
            sa.select(
                campaign_sends.c.id,
                campaign_sends.c.contact_id,
                campaign_sends.c.channel,
                campaign_sends.c.language,
                campaign_sends.c.form,
                campaign_sends.c.status,
                campaign_sends.c.reason,
                campaign_sends.c.scheduled_at,
                campaign_sends.c.sent_at,
                campaign_sends.c.attempts,
                contacts.c.country,
                replied.label("replies_after"),
            )
            .select_from(campaign_sends.join(contacts, contacts.c.id == campaign_sends.c.contact_id))
            .where(campaign_sends.c.run_id == run_id)
            .order_by(campaign_sends.c.id)
        )
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
            first_sent = conn.execute(sa.select(sa.func.min(campaign_sends.c.sent_at)).where(campaign_sends.c.run_id == run_id)).scalar()
            opted_out: set[int] = set()
            if first_sent is not None:
                run_contacts = sa.select(campaign_sends.c.contact_id).where(campaign_sends.c.run_id == run_id)
                opted_out = set(
                    conn.execute(
                        sa.select(consent_events.c.contact_id).where(
                            consent_events.c.consent == "opted_out",
                            consent_events.c.at > first_sent,
                            consent_events.c.contact_id.in_(run_contacts),
                        )
                    ).scalars()
                )
        for row in rows:
            row["opted_out_after"] = row["contact_id"] in opted_out
            if row["sent_at"] is None:
                row["replies_after"] = 0
        return rows
