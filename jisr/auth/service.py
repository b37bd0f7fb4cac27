"""What signing in and out does, in one place: the rate limit, the password check, the session,
the audit rows. The HTTP routes (jisr.gateway.auth_routes) and the dependencies only translate.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Optional

import redis.asyncio as aioredis
from sqlalchemy.engine import Engine

from jisr.auth.audit import AuditLog
from jisr.auth.models import Account
from jisr.auth.ratelimit import LoginLimiter
from jisr.auth.sessions import Session, SessionStore
from jisr.auth.store import AccountStore
from jisr.settings import Settings

logger = logging.getLogger(__name__)


def client_hash(client: str) -> str:
    """What the audit log and logs say instead of a client's IP address."""
    return hashlib.sha256((client or "unknown").encode("utf-8", "surrogateescape")).hexdigest()[:12]


class LoginRefused(Exception):
    """Signing in failed; ``status`` 401 (wrong credentials) or 429 (too many failures)."""

    def __init__(self, status: int, message: str, retry_after: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class SignedIn:
    account: Account
    session: Session


class AuthService:
    """Accounts, sessions, the login limiter and the audit log of one running gateway."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, engine: Engine, owner: Any = None) -> None:
        self.settings = settings
        self.owner = owner  # the Services this was built from (see dependencies.get_auth)
        self.accounts = AccountStore(engine)
        self.audit = AuditLog(engine)
        self.sessions = SessionStore(redis, settings.session_idle_minutes * 60, settings.session_absolute_hours * 3600)
        self.limiter = LoginLimiter(
            redis, settings.login_failures_per_username, settings.login_failures_per_client, settings.login_failure_window_minutes * 60
        )

    @property
    def secure_cookies(self) -> bool:
        """Secure cookies whenever Jisr is reached over HTTPS (always in production)."""
        return self.settings.public_url.lower().startswith("https://")

    async def login(self, username: str, password: str, client: str) -> SignedIn:
        username = (username or "").strip().lower()[:64]
        refusal, attempt = await self.limiter.begin(username, client)
        if refusal is not None:
            logger.warning("login refused: too many failures per %s (client %s)", refusal.reason, client_hash(client))
            raise LoginRefused(429, f"too many failed sign-ins; try again in {refusal.retry_after} s", refusal.retry_after)
        account = await asyncio.to_thread(self.accounts.verify_login, username, password)
        if account is None:  # the attempt stays counted as a failure
            known = await asyncio.to_thread(self.accounts.get_by_username, username) if username else None
            reason = "unknown_username" if known is None else ("inactive" if not known.active else "wrong_password")
            # The typed username is recorded only when it names an account: a password typed
            # into the username field by mistake must not end up in the audit log.
            await self.audit.arecord(
                known,
                "login_failed",
                "account" if known else None,
                known.id if known else None,
                detail={"reason": reason, "client": client_hash(client)},
            )
            raise LoginRefused(401, "wrong username or password")
        await self.limiter.succeeded(username, client, attempt)
        session = await self.open_session(account.id)
        await self.audit.arecord(account, "login", "account", account.id, detail={"client": client_hash(client)})
        return SignedIn(account, session)

    async def open_session(self, account_id: int) -> Session:
        state = await asyncio.to_thread(self.accounts.with_password_stamp, account_id)
        return await self.sessions.create(account_id, state[1] if state else "")

    async def logout(self, account: Account, session: Session) -> None:
        await self.sessions.end(session.id, session.account_id)
        await self.audit.arecord(account, "logout", "account", account.id)

    async def end_sessions(self, account_id: int) -> int:
        return await self.sessions.end_all(account_id)
