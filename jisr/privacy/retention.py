"""The retention purge: conversation content older than JISR_RETENTION_DAYS is emptied.

What a family wrote (and what was answered), media links, mediators' notes and idle Rasa
trackers are only needed while a conversation is alive. The rows stay, with intent,
language, status and times, so the indicators (questions by topic, language, country;
deliveries; handoffs and response times) still count them; only the content goes.
Running it twice does nothing more: two gateway processes may both run it safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr import keys
from jisr.privacy.state import ConversationRedis
from jisr.store.schema import handoff_notes, messages

logger = logging.getLogger(__name__)

BATCH = 1000
# The note column is NOT NULL: an emptied note keeps its row (who wrote when) with no text.
PURGED_NOTE = ""
# The gateway tries this often; the lock (a day long) lets one process in the cluster purge per day.
PURGE_EVERY_SECONDS = 24 * 3600
TRY_EVERY_SECONDS = 3600


@dataclass
class PurgeReport:
    cutoff: dt.datetime
    dry_run: bool
    messages: int = 0
    notes: int = 0
    trackers: Optional[int] = None            # None: Redis was not looked at

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "messages": self.messages,
            "handoff_notes": self.notes,
            "trackers": self.trackers,
        }

    def summary(self) -> str:
        verb = "would empty" if self.dry_run else "emptied"
        trackers = "not checked (no shared Redis)" if self.trackers is None else str(self.trackers)
        return (
            f"content before {self.cutoff:%Y-%m-%d %H:%M} UTC: {verb} {self.messages} messages, "
            f"{self.notes} mediator notes; idle conversation trackers: {trackers}"
        )


def cutoff_for(days: int, now: Optional[dt.datetime] = None) -> dt.datetime:
    return (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=days)


def _purge_sql(engine: Engine, cutoff: dt.datetime, dry_run: bool) -> tuple[int, int]:
    old_content = sa.and_(messages.c.created_at < cutoff, sa.or_(messages.c.text.isnot(None), messages.c.media.isnot(None)))
    old_notes = sa.and_(handoff_notes.c.at < cutoff, handoff_notes.c.text != PURGED_NOTE)
    if dry_run:
        with engine.connect() as conn:
            return (
                int(conn.execute(sa.select(sa.func.count()).where(old_content)).scalar() or 0),
                int(conn.execute(sa.select(sa.func.count()).select_from(handoff_notes).where(old_notes)).scalar() or 0),
            )
    emptied = [0, 0]
    # In batches: one statement over a year of messages would hold SQLite's write lock for long.
    for position, (table, condition, values) in enumerate(
        ((messages, old_content, {"text": None, "media": None}), (handoff_notes, old_notes, {"text": PURGED_NOTE}))
    ):
        while True:
            with engine.begin() as conn:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("PRAGMA secure_delete=ON")
                ids = conn.execute(sa.select(table.c.id).where(condition).order_by(table.c.id).limit(BATCH)).scalars().all()
                if ids:
                    conn.execute(table.update().where(table.c.id.in_(ids)).values(**values))
            emptied[position] += len(ids)
            if len(ids) < BATCH:
                break
    return emptied[0], emptied[1]


def _last_event_time(raw: bytes) -> Optional[float]:
    try:
        events = json.loads(raw).get("events") or []
    except (ValueError, AttributeError):
        return None
    stamps = [e.get("timestamp") for e in events if isinstance(e, dict) and isinstance(e.get("timestamp"), (int, float))]
    return max(stamps) if stamps else None


async def _purge_trackers(redis: ConversationRedis, cutoff: dt.datetime, dry_run: bool) -> int:
    """Trackers whose last event is older than the cutoff (an unreadable one is left alone)."""
    purged = 0
    limit = cutoff.timestamp()
    async for key in redis.trackers.scan_iter(match=keys.rasa_tracker("*"), count=500):
        raw = await redis.trackers.get(key)
        last = _last_event_time(raw) if raw is not None else None
        if last is not None and last < limit:
            purged += 1
            if not dry_run:
                await redis.trackers.delete(key)
    return purged


async def purge(engine: Engine, redis: Optional[ConversationRedis], days: int, dry_run: bool = False, now: Optional[dt.datetime] = None) -> PurgeReport:
    report = PurgeReport(cutoff=cutoff_for(days, now), dry_run=dry_run)
    report.messages, report.notes = await asyncio.to_thread(_purge_sql, engine, report.cutoff, dry_run)
    if redis is not None:
        report.trackers = await _purge_trackers(redis, report.cutoff, dry_run)
    return report


async def purge_daily(engine: Engine, redis: ConversationRedis, days: int, first_delay: float = 60.0) -> None:
    """The gateway's background task: once a day across every gateway process.

    Each process tries every hour to take a lock that lives a day; the one that gets it
    purges. The purge is idempotent, so a lock lost to a Redis restart only costs a
    second, harmless run.
    """
    await asyncio.sleep(first_delay)
    while True:
        try:
            if await redis.jisr.set(keys.PURGE_LOCK, str(os.getpid()), nx=True, ex=PURGE_EVERY_SECONDS):
                report = await purge(engine, redis, days)
                # Counts only: nothing personal in this line.
                logger.info("retention purge: %s", report.summary())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("retention purge failed; trying again in an hour")
            with contextlib.suppress(Exception):  # Redis itself may be what failed
                await redis.jisr.delete(keys.PURGE_LOCK)
        await asyncio.sleep(TRY_EVERY_SECONDS)
