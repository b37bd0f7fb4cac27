"""The web chat served by Jisr itself: no provider account, the way a new user tries Jisr.

A page gets a signed session id (HMAC of a random token with the server's
secret: nothing to store, nothing to guess); its messages carry it. Replies
are "sent" by appending them to the session's inbox in Redis, which the page
reads (long polling) — so web chat replies go through the same send queue as
every other channel, and a mediator's reply (later) reaches the page the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any, AsyncIterator, Optional

import redis.asyncio as aioredis

from connectors.base import Connector
from connectors.errors import MalformedPayload, WebhookForbidden
from connectors.types import Channel, InboundEvent, InboundMessage, OutboundMessage, SendResult, WebhookRequest, address_id
from jisr import keys

logger = logging.getLogger(__name__)

MAX_TEXT_BYTES = 20_000
INBOX_TTL_SECONDS = 24 * 3600


class WebChatConnector(Connector):
    channel = Channel.WEBCHAT

    def __init__(self, secret: str, redis: aioredis.Redis) -> None:
        self._secret = secret.encode()
        self.redis = redis
        # Long polls waiting in this process, by session id; woken by one shared subscription.
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener: Optional[asyncio.Task] = None
        self._subscribed: Optional[asyncio.Event] = None

    # -- sessions -------------------------------------------------------------------
    def new_session(self) -> str:
        token = secrets.token_urlsafe(18)
        return f"{token}.{self._sign(token)}"

    def _sign(self, token: str) -> str:
        return hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()[:32]

    def session_valid(self, session: Optional[str]) -> bool:
        if not session or session.count(".") != 1:
            return False
        token, signature = session.split(".")
        # Bytes, not str: compare_digest refuses non-ASCII str, and a forged header may carry some (latin-1).
        return hmac.compare_digest(signature.encode("utf-8"), self._sign(token).encode("ascii"))

    # -- the connector interface ----------------------------------------------------------
    def verify(self, request: WebhookRequest) -> None:
        if not self.session_valid(request.header("x-jisr-session")):
            raise WebhookForbidden("missing or invalid web chat session")

    def parse(self, request: WebhookRequest) -> list[InboundEvent]:
        if len(request.body) > MAX_TEXT_BYTES:
            raise MalformedPayload(f"message body over {MAX_TEXT_BYTES} bytes")
        try:
            data: Any = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError) as error:
            raise MalformedPayload(f"body is not JSON: {error}") from error
        if not isinstance(data, dict):
            raise MalformedPayload("body must be a JSON object")
        text, payload, client_id = data.get("text", ""), data.get("payload"), data.get("client_message_id")
        if not isinstance(text, str) or (payload is not None and not isinstance(payload, str)):
            raise MalformedPayload("'text' and 'payload' must be strings")
        if not isinstance(client_id, str) or not (1 <= len(client_id) <= 64):
            raise MalformedPayload("'client_message_id' (1-64 characters) is required: it makes a resent message count once")
        session = request.header("x-jisr-session") or ""
        return [
            InboundMessage(
                channel=Channel.WEBCHAT,
                address=f"webchat:{session.split('.')[0]}",
                provider_message_id=f"{session.split('.')[0]}:{client_id}",
                text=text,
                button_payload=payload,
                language_hint=(data.get("language") or None) if isinstance(data.get("language"), str) else None,
            )
        ]

    async def send(self, message: OutboundMessage) -> SendResult:
        inbox = keys.webchat_inbox(address_id(message.address))
        item = {
            "id": message.idempotency_key,
            "text": message.text,
            "buttons": [{"title": b.title, "payload": b.payload} for b in message.buttons],
        }
        # One round trip: append, keep the inbox a day, and tell the waiting long polls (in any
        # gateway process). A lost notice only delays the reply to the poll's next re-read.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(inbox, json.dumps(item, ensure_ascii=False))
            pipe.expire(inbox, INBOX_TTL_SECONDS)
            pipe.publish(keys.WEBCHAT_ARRIVALS, address_id(message.address))
            length, expired, notified = await pipe.execute(raise_on_error=False)
        for result in (length, expired):
            if isinstance(result, Exception):
                raise result
        if isinstance(notified, Exception):
            logger.warning("web chat arrival notice failed: %s", type(notified).__name__)
        return SendResult(provider_message_id=f"webchat-{length}")

    async def messages_after(self, session: str, after: int) -> list[dict[str, Any]]:
        inbox = keys.webchat_inbox(session.split(".")[0])
        return [json.loads(raw) for raw in await self.redis.lrange(inbox, after, -1)]

    # -- waiting for replies (long polling) -----------------------------------------------
    @contextlib.asynccontextmanager
    async def arrivals(self, session: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever a message lands in ``session``'s inbox, while the context is open.

        Clear it before reading the inbox, then wait on it: a message appended in between sets it.
        """
        await self._ensure_listener()
        session_id = session.split(".")[0]
        event = asyncio.Event()
        self._waiters.setdefault(session_id, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._waiters.get(session_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[session_id]

    async def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._subscribed = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(self._subscribed), name="webchat-arrivals")
        if not self._subscribed.is_set():  # type: ignore[union-attr]
            # The first poll waits (briefly) for the subscription, so no notice is missed after it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), 2.0)  # type: ignore[union-attr]

    async def _listen(self, subscribed: asyncio.Event) -> None:
        """The process's one subscription to inbox arrivals; it reconnects after an error."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(keys.WEBCHAT_ARRIVALS)
                subscribed.set()
                async for notice in pubsub.listen():
                    if notice.get("type") != "message":
                        continue
                    data = notice.get("data")
                    session_id = data.decode() if isinstance(data, bytes) else str(data)
                    for event in self._waiters.get(session_id, ()):
                        event.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis restarted or the connection dropped: polls re-read meanwhile
                logger.warning("web chat arrival notices interrupted (%s); resubscribing", type(error).__name__)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.reset()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
