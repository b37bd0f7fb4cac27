"""The HTTP transport of every connector's provider calls: aiohttp, one pooled session per event loop.

Why aiohttp rather than httpx (which python-telegram-bot uses by default): measured on these
2 cores against the local simulators (``python -m jisr.bench.campaigns`` and the figures in
the README), an httpx client spent ~1 ms of CPU per request with 1 to 8 requests in flight
and ~4 ms with 32 (its connection pool), an aiohttp one ~0.2 ms. At campaign rates the client
was the bottleneck, not the providers. The providers' SDKs stay in front of it: the Twilio SDK
through its own aiohttp client (``AsyncTwilioHttpClient``), python-telegram-bot through a
``BaseRequest`` (connectors/telegram_transport.py).

Why one session per event loop: an aiohttp session belongs to the loop that created it, and a
connector can outlive a loop (the CLI, tests, a worker restarted in-process). A session made on
a loop that has since closed is dropped, its sockets closed, and a new one made on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Optional

import aiohttp

# Connections kept per provider host: enough for a worker's jobs in flight (``--max-jobs``).
DEFAULT_CONNECTIONS = 100


class LoopSession:
    """``await transport.session()`` → the running loop's aiohttp session (created on first use)."""

    def __init__(self, timeout: float, connections: int = DEFAULT_CONNECTIONS) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.connections = connections
        self._session: Optional[aiohttp.ClientSession] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._drop()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections),
                timeout=self.timeout,
                # No proxies or .netrc from the environment: provider calls go where settings say.
                trust_env=False,
            )
            self._loop = loop
        return self._session

    def _drop(self) -> None:
        """Forget a session of another (closed) loop: its sockets are closed without awaiting."""
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed and session.connector is not None:
            with contextlib.suppress(Exception):  # its loop is closed: the sockets go with the objects
                session.connector._close()  # noqa: SLF001 - the only way to close it off its own loop
            session._connector = None  # noqa: SLF001 - marks it closed: no "unclosed session" warning

    async def close(self) -> None:
        session, loop = self._session, self._loop
        if session is None:
            return
        if loop is asyncio.get_running_loop():
            self._session, self._loop = None, None
            await session.close()
        else:
            self._drop()
