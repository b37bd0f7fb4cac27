"""Contacts and the message log: the one place that reads and writes them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr.store.migrations import migrate
from jisr.store.schema import contacts, messages

PROFILE_FIELDS = ("language", "country", "region", "role", "school_level")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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

    @classmethod
    def from_row(cls, row: Any) -> "Contact":
        data = dict(row._mapping)
        for key in ("created_at", "last_inbound_at", "last_outbound_at"):
            data[key] = _aware(data[key])
        return cls(**data)

    def profile(self) -> dict[str, str]:
        """What the assistant may use to answer: the known profile fields."""
        return {name: getattr(self, name) for name in PROFILE_FIELDS if getattr(self, name)}


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``, creating the SQLite file's folder and migrating the schema."""
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, future=True, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL: readers never wait for the writer; foreign keys: erasure cascades.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    migrate(engine)
    return engine


class ContactStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get_or_create(self, address: str, channel: str) -> Contact:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(contacts).where(contacts.c.address == address)).first()
            if row is None:
                try:
                    conn.execute(contacts.insert().values(address=address, channel=channel, created_at=_now()))
                except sa.exc.IntegrityError:
                    pass  # another process created it in between
                row = conn.execute(sa.select(contacts).where(contacts.c.address == address)).first()
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
            conn.execute(contacts.update().where(contacts.c.id == contact_id).values(last_inbound_at=at or _now()))

    def update_profile(self, contact_id: int, **fields: Optional[str]) -> None:
        values = {k: v for k, v in fields.items() if k in PROFILE_FIELDS and v}
        if values:
            with self.engine.begin() as conn:
                conn.execute(contacts.update().where(contacts.c.id == contact_id).values(**values))

    def set_consent(self, contact_id: int, consent: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(contacts.update().where(contacts.c.id == contact_id).values(consent=consent))

    def link(self, contact_ids: list[int]) -> int:
        """Link several channel addresses to one family profile (the smallest id names it)."""
        profile = min(contact_ids)
        with self.engine.begin() as conn:
            conn.execute(contacts.update().where(contacts.c.id.in_(contact_ids)).values(profile_id=profile))
        return profile

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
        now = _now()
        with self.engine.begin() as conn:
            result = conn.execute(
                messages.insert().values(
                    contact_id=contact_id,
                    direction="in",
                    channel=channel,
                    provider_message_id=provider_message_id,
                    text=text,
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
            conn.execute(messages.update().where(messages.c.id == message_id).values(intent=intent, language=language, updated_at=_now()))

    def log_outbound(self, contact_id: int, channel: str, text: str, idempotency_key: str) -> int:
        """Record a reply before it is queued; the same idempotency key is recorded once."""
        now = _now()
        with self.engine.begin() as conn:
            existing = conn.execute(sa.select(messages.c.id).where(messages.c.idempotency_key == idempotency_key)).scalar()
            if existing:
                return int(existing)
            result = conn.execute(
                messages.insert().values(
                    contact_id=contact_id,
                    direction="out",
                    channel=channel,
                    idempotency_key=idempotency_key,
                    text=text,
                    status="queued",
                    created_at=now,
                    updated_at=now,
                )
            )
            return int(result.inserted_primary_key[0])

    def outbound_status(self, idempotency_key: str) -> Optional[str]:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(messages.c.status).where(messages.c.idempotency_key == idempotency_key)).scalar()

    def mark_sent(self, idempotency_key: str, provider_message_id: str, attempts: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.idempotency_key == idempotency_key)
                .values(status="sent", provider_message_id=provider_message_id, attempts=attempts, updated_at=_now())
            )
            conn.execute(
                contacts.update()
                .where(contacts.c.id == sa.select(messages.c.contact_id).where(messages.c.idempotency_key == idempotency_key).scalar_subquery())
                .values(last_outbound_at=_now())
            )

    def mark_failed(self, idempotency_key: str, error_code: Optional[str], attempts: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.idempotency_key == idempotency_key)
                .values(status="failed", error_code=error_code, attempts=attempts, updated_at=_now())
            )

    def apply_status(self, provider_message_id: str, status: str, error_code: Optional[str] = None) -> bool:
        """A delivery receipt; statuses only move forward (a late "sent" never undoes "read")."""
        order = {"queued": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4, "undelivered": 4}
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
                messages.update().where(messages.c.id == row.id).values(status=status, error_code=error_code, updated_at=_now())
            )
            return True

    def transcript(self, contact_id: int, limit: int = 200) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(messages).where(messages.c.contact_id == contact_id).order_by(messages.c.id).limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]
