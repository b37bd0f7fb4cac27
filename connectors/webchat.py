"""The web chat served by Jisr itself: no provider account, the way a new user tries Jisr.

A page gets a signed session id (HMAC of a random token with the server's
secret: nothing to store, nothing to guess); its messages carry it. Replies
are "sent" by appending them to the session's inbox in Redis, which the page
reads (long polling) — so web chat replies go through the same send queue as
every other channel, and a mediator's reply (later) reaches the page the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any, Optional

import redis.asyncio as aioredis

from connectors.base import Connector
from connectors.errors import MalformedPayload, WebhookForbidden
from connectors.types import Channel, InboundEvent, InboundMessage, OutboundMessage, SendResult, WebhookRequest, address_id
from jisr import keys

MAX_TEXT_BYTES = 20_000
INBOX_TTL_SECONDS = 24 * 3600


class WebChatConnector(Connector):
    channel = Channel.WEBCHAT

    def __init__(self, secret: str, redis: aioredis.Redis) -> None:
        self._secret = secret.encode()
        self.redis = redis

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
        return hmac.compare_digest(signature, self._sign(token))

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
        length = await self.redis.rpush(inbox, json.dumps(item, ensure_ascii=False))
        await self.redis.expire(inbox, INBOX_TTL_SECONDS)
        return SendResult(provider_message_id=f"webchat-{length}")

    async def messages_after(self, session: str, after: int) -> list[dict[str, Any]]:
        inbox = keys.webchat_inbox(session.split(".")[0])
        return [json.loads(raw) for raw in await self.redis.lrange(inbox, after, -1)]
