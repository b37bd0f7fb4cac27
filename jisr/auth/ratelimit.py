"""Login rate limiting: failed attempts per username and per client, over a sliding window.

Each failure is a member of a Redis sorted set scored by its time; the count is the members
younger than the window, and Retry-After is when the oldest of them leaves it. Over the limit,
even the right password is refused (429): otherwise the limit would only slow down guessing
of wrong passwords, while telling the guesser when one is right. A successful login clears
the username's failures (not the client's: one address trying many usernames stays limited).
Usernames and client addresses are hashed in the keys (no address in Redis in clear).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from typing import Optional

import redis.asyncio as aioredis

from jisr import keys


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass(frozen=True)
class Refusal:
    retry_after: int  # seconds
    reason: str       # "username" | "client"


class LoginLimiter:
    def __init__(self, redis: aioredis.Redis, per_username: int, per_client: int, window_seconds: int) -> None:
        self.redis = redis
        self.per_username = per_username
        self.per_client = per_client
        self.window = window_seconds

    def _keys(self, username: str, client: str) -> dict[str, tuple[str, int]]:
        return {
            "username": (keys.login_failures("user", _hash((username or "").strip().lower())), self.per_username),
            "client": (keys.login_failures("client", _hash(client or "unknown")), self.per_client),
        }

    async def check(self, username: str, client: str) -> Optional[Refusal]:
        """A Refusal if this username or this client has failed too often lately."""
        now = time.time()
        for reason, (key, limit) in self._keys(username, client).items():
            await self.redis.zremrangebyscore(key, "-inf", now - self.window)
            if await self.redis.zcard(key) >= limit:
                # The attempt that will leave the window first, once the count is back under the limit.
                oldest = await self.redis.zrange(key, -limit, -limit, withscores=True)
                leaves_at = (oldest[0][1] if oldest else now) + self.window
                return Refusal(max(1, math.ceil(leaves_at - now)), reason)
        return None

    async def failed(self, username: str, client: str) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, _limit in self._keys(username, client).values():
                pipe.zadd(key, {f"{now!r}:{secrets.token_hex(4)}": now})
                pipe.zremrangebyscore(key, "-inf", now - self.window)
                pipe.expire(key, self.window)
            await pipe.execute()

    async def succeeded(self, username: str) -> None:
        await self.redis.delete(self._keys(username, "")["username"][0])
