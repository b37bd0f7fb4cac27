"""The one interface every channel implements (see connectors/<channel>.py)."""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from typing import Optional

from connectors.types import Channel, InboundEvent, OutboundMessage, SendResult, WebhookRequest

# The platforms' customer-service window: free-form messages only within it.
SERVICE_WINDOW = dt.timedelta(hours=24)


class Connector(ABC):
    """A messaging channel: verify and parse webhooks, send messages.

    Connectors hold no queue and no rate limit: retries, pacing and ordering
    belong to the send queue, which reads the policy on the errors raised here
    (connectors/errors.py).
    """

    channel: Channel

    @abstractmethod
    def verify(self, request: WebhookRequest) -> None:
        """Raise WebhookForbidden unless the request provably comes from the provider."""

    @abstractmethod
    def parse(self, request: WebhookRequest) -> list[InboundEvent]:
        """Normalised messages and receipts in the payload (possibly none: unknown events are ignored).

        Raise MalformedPayload when the payload is not what the provider sends.
        """

    @abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Deliver one message to the provider; raise a SendError subclass on failure."""

    async def sent_since(self, address: str, since: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """(provider message id, created at) of the messages the provider accepted for ``address``
        since ``since``, newest first, so the send queue can settle a send left in doubt by a
        crash (Twilio's message list, Messenger's Conversations API). NotImplementedError where
        the platform cannot be asked (Telegram, the web chat)."""
        raise NotImplementedError(f"{self.channel.value} cannot list the messages it sent")

    def handshake(self, request: WebhookRequest) -> Optional[str]:
        """Answer to a provider's GET verification (Messenger); None where the channel has none."""
        return None

    async def close(self) -> None:
        """Release HTTP clients."""


def window_open(last_inbound_at: Optional[dt.datetime], now: Optional[dt.datetime] = None, window: dt.timedelta = SERVICE_WINDOW) -> bool:
    """Is the contact inside the platform's customer-service window?"""
    if last_inbound_at is None:
        return False
    now = now or dt.datetime.now(dt.timezone.utc)
    if last_inbound_at.tzinfo is None:
        last_inbound_at = last_inbound_at.replace(tzinfo=dt.timezone.utc)
    return now - last_inbound_at < window
