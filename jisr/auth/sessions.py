"""Console sessions in Redis: a random id in the `jisr_session` cookie, a CSRF token beside it.

Redis keeps only the sha256 of the id, so a copy of Redis holds no cookie anyone can use. A
session ends after ``idle`` without a request (the key's TTL, pushed back at each request) and
in any case ``absolute`` after signing in. Each account's session digests are kept in a set so
deactivating an account or changing its password ends them all at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Optional

import redis.asyncio as aioredis

from jisr import keys

COOKIE = "jisr_session"
ID_BYTES = 32
CSRF_BYTES = 32


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Session:
    id: str            # the cookie's value; never stored as is
    account_id: int
    csrf_token: str
    created_at: float    # epoch seconds
    password_stamp: str  # when the account's password last changed, as it was at sign-in

    def csrf_matches(self, given: Optional[str]) -> bool:
        return bool(given) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.csrf_token.encode("ascii"))


class SessionStore:
    def __init__(self, redis: aioredis.Redis, idle_seconds: int, absolute_seconds: int) -> None:
        if idle_seconds <= 0 or absolute_seconds <= 0:
            raise ValueError("session lifetimes must be positive")
        self.redis = redis
        self.idle = idle_seconds
        self.absolute = absolute_seconds

    def _ttl_ms(self, created_at: float, now: float) -> int:
        """How long the key may live from now: the idle time, cut short by the absolute end."""
        return int(min(self.idle, created_at + self.absolute - now) * 1000)

    async def create(self, account_id: int, password_stamp: str) -> Session:
        session = Session(secrets.token_urlsafe(ID_BYTES), account_id, secrets.token_urlsafe(CSRF_BYTES), time.time(), password_stamp)
        digest = _digest(session.id)
        key = keys.session(digest)
        index = keys.account_sessions(account_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"account": account_id, "csrf": session.csrf_token, "created": repr(session.created_at), "pw": password_stamp})
            pipe.pexpire(key, self._ttl_ms(session.created_at, session.created_at))
            pipe.sadd(index, digest)
            pipe.expire(index, self.absolute)
            await pipe.execute()
        return session

    async def get(self, session_id: Optional[str]) -> Optional[Session]:
        """The live session with this id (its idle time restarted), or None."""
        if not session_id or len(session_id) > 128:
            return None
        key = keys.session(_digest(session_id))
        fields = await self.redis.hgetall(key)
        if not fields:
            return None
        try:
            account_id = int(fields[b"account"])
            csrf = fields[b"csrf"].decode("ascii")
            created = float(fields[b"created"])
            stamp = fields[b"pw"].decode("utf-8")
        except (KeyError, ValueError, UnicodeDecodeError):
            await self.redis.delete(key)
            return None
        ttl_ms = self._ttl_ms(created, time.time())
        if ttl_ms <= 0:
            await self.end(session_id, account_id)
            return None
        await self.redis.pexpire(key, ttl_ms)
        return Session(session_id, account_id, csrf, created, stamp)

    async def end(self, session_id: str, account_id: Optional[int] = None) -> None:
        digest = _digest(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.session(digest))
            if account_id is not None:
                pipe.srem(keys.account_sessions(account_id), digest)
            await pipe.execute()

    async def end_all(self, account_id: int) -> int:
        """End every session of an account; how many were live."""
        index = keys.account_sessions(account_id)
        digests = await self.redis.smembers(index)
        if not digests:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for digest in digests:
                pipe.delete(keys.session(digest.decode("ascii")))
            pipe.delete(index)
            deleted = await pipe.execute()
        return sum(int(n) for n in deleted[:-1])
