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
import ipaddress
import math
import secrets
import time
from dataclasses import dataclass
from typing import Optional

import redis.asyncio as aioredis

from jisr import keys


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def client_bucket(address: str) -> str:
    """The unit a client is limited by: its IPv4 address, or its IPv6 /64 (one subscriber gets a
    whole /64 and could otherwise try from a new address at every attempt)."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


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
            "client": (keys.login_failures("client", _hash(client_bucket(client))), self.per_client),
        }

    async def begin(self, username: str, client: str) -> tuple[Optional[Refusal], str]:
        """Count this attempt as a failure *before* checking the password, atomically with the
        count, so a burst of parallel attempts cannot all slip in under the limit; ``succeeded``
        takes it back. Returns a Refusal if this username or client is over its limit (the attempt
        is then not counted), and the attempt's id."""
        now = time.time()
        attempt = f"{now!r}:{secrets.token_hex(6)}"
        targets = self._keys(username, client)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, _limit in targets.values():
                pipe.zremrangebyscore(key, "-inf", now - self.window)
                pipe.zadd(key, {attempt: now})
                pipe.zcard(key)
                pipe.expire(key, self.window)
            results = await pipe.execute()
        counts = results[2::4]
        for (reason, (key, limit)), count in zip(targets.items(), counts):
            if count > limit:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for other, _limit in targets.values():
                        pipe.zrem(other, attempt)
                    await pipe.execute()
                # The failure whose leaving the window brings the count back under the limit.
                oldest = await self.redis.zrange(key, -limit, -limit, withscores=True)
                leaves_at = (oldest[0][1] if oldest else now) + self.window
                return Refusal(max(1, math.ceil(leaves_at - now)), reason), attempt
        return None, attempt

    async def succeeded(self, username: str, client: str, attempt: str) -> None:
        """The attempt was right: it is no failure for the client, and the username starts afresh."""
        targets = self._keys(username, client)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(targets["username"][0])
            pipe.zrem(targets["client"][0], attempt)
            await pipe.execute()
