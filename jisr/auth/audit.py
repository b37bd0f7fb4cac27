"""The audit log: who did what to which thing, and when (table audit_log).

Rows say *that* a mediator read or answered a conversation, never what was said: ``detail``
is a short JSON object of identifiers and outcomes, and keys that would hold message text or a
family's address are refused outright, so a careless caller fails loudly in tests instead of
copying minors' data into a table kept for years.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr.auth.models import Account
from jisr.store.schema import audit_log

MAX_DETAIL_CHARS = 2000
MAX_LIST = 1000
# Keys that would carry what a family wrote or where to reach them.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {"text", "message", "body", "content", "address", "phone", "phone_number", "chat_id", "psid", "email", "password", "token"}
)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: dt.datetime
    account_id: Optional[int]
    action: str
    target_kind: Optional[str]
    target_id: Optional[str]
    country: Optional[str]
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "account_id": self.account_id,
            "action": self.action,
            "target_kind": self.target_kind,
            "target_id": self.target_id,
            "country": self.country,
            "detail": self.detail,
        }


def _check_detail(detail: Optional[dict[str, Any]]) -> Optional[str]:
    if not detail:
        return None
    bad = sorted(key for key in detail if str(key).lower() in FORBIDDEN_DETAIL_KEYS)
    if bad:
        raise ValueError(f"audit detail may not hold {', '.join(bad)}: no message text, addresses or secrets in the audit log")
    text = json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str)
    if len(text) > MAX_DETAIL_CHARS:
        raise ValueError(f"audit detail is at most {MAX_DETAIL_CHARS} characters of JSON")
    return text


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        account: Optional[Account],
        action: str,
        target_kind: Optional[str] = None,
        target_id: Optional[str | int] = None,
        country: Optional[str] = None,
        detail: Optional[dict[str, Any]] = None,
    ) -> int:
        """Write one row; its id. ``account`` None: the actor is unknown (a failed login) or
        the system. Accounts with id 0 (the legacy operator token) are recorded as None with
        ``detail.actor``."""
        if not action or len(action) > 48:
            raise ValueError("an audit action is 1 to 48 characters (login, handoff.read, …)")
        detail = dict(detail or {})
        account_id = account.id if account is not None and account.id > 0 else None
        if account is not None and account_id is None:
            detail.setdefault("actor", account.username)
        values = dict(
            at=dt.datetime.now(dt.timezone.utc),
            account_id=account_id,
            action=action,
            target_kind=target_kind,
            target_id=None if target_id is None else str(target_id)[:64],
            country=country.upper()[:2] if country else None,
            detail=_check_detail(detail),
        )
        with self.engine.begin() as conn:
            return int(conn.execute(audit_log.insert().values(**values)).inserted_primary_key[0])

    async def arecord(self, *args: Any, **kwargs: Any) -> int:
        """``record`` off the event loop, for async routes."""
        return await asyncio.to_thread(self.record, *args, **kwargs)

    def list(
        self,
        *,
        account_id: Optional[int] = None,
        action: Optional[str] = None,
        target_kind: Optional[str] = None,
        target_id: Optional[str | int] = None,
        country: Optional[str] = None,
        since: Optional[dt.datetime] = None,
        until: Optional[dt.datetime] = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first. ``action`` ending in "." matches a family of actions ("handoff.")."""
        query = sa.select(audit_log).order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(max(1, min(limit, MAX_LIST)))
        if account_id is not None:
            query = query.where(audit_log.c.account_id == account_id)
        if action:
            query = query.where(audit_log.c.action.startswith(action, autoescape=True) if action.endswith(".") else audit_log.c.action == action)
        if target_kind:
            query = query.where(audit_log.c.target_kind == target_kind)
        if target_id is not None:
            query = query.where(audit_log.c.target_id == str(target_id))
        if country:
            query = query.where(audit_log.c.country == country.upper())
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        if until is not None:
            query = query.where(audit_log.c.at < until)
        with self.engine.connect() as conn:
            return [
                AuditEntry(
                    int(row.id), row.at, row.account_id, row.action, row.target_kind, row.target_id, row.country, json.loads(row.detail) if row.detail else {}
                )
                for row in conn.execute(query)
            ]
