"""Normalised, immutable message types shared by every channel.

A connector turns a provider's payload into these, and these into a
provider's request; nothing else in Jisr knows a provider's format.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Union


class Channel(str, Enum):
    WHATSAPP = "whatsapp"
    TELEGRAM = "telegram"
    MESSENGER = "messenger"
    WEBCHAT = "webchat"


class MediaKind(str, Enum):
    AUDIO = "audio"
    IMAGE = "image"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    OTHER = "other"


class DeliveryStatus(str, Enum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    UNDELIVERED = "undelivered"


@dataclass(frozen=True)
class Media:
    kind: MediaKind
    url: Optional[str] = None          # where the provider serves it (Twilio MediaUrl0, Messenger attachment URL)
    provider_id: Optional[str] = None  # or its id at the provider (Telegram file_id)
    mime_type: Optional[str] = None


@dataclass(frozen=True)
class Location:
    latitude: float
    longitude: float
    label: Optional[str] = None


@dataclass(frozen=True)
class InboundMessage:
    """One message from a family, whatever the channel."""

    channel: Channel
    address: str                       # "<channel>:<id at the provider>", e.g. "whatsapp:+33612345678", "telegram:12345"
    provider_message_id: str           # the provider's id: the key for de-duplicating retried webhooks
    text: str = ""
    media: tuple[Media, ...] = ()
    location: Optional[Location] = None
    button_payload: Optional[str] = None  # a quick reply / postback / inline button's payload
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    language_hint: Optional[str] = None   # e.g. Telegram's user.language_code


@dataclass(frozen=True)
class StatusUpdate:
    """A delivery or read receipt for a message Jisr sent."""

    channel: Channel
    address: str
    provider_message_id: str
    status: DeliveryStatus
    error_code: Optional[str] = None
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))


InboundEvent = Union[InboundMessage, StatusUpdate]


@dataclass(frozen=True)
class Button:
    title: str
    payload: str


@dataclass(frozen=True)
class Template:
    """A pre-approved WhatsApp template (Twilio Content API): needed outside the 24-hour window."""

    content_sid: str
    variables: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OutboundMessage:
    channel: Channel
    address: str
    text: str = ""
    buttons: tuple[Button, ...] = ()
    template: Optional[Template] = None
    messenger_tag: Optional[str] = None   # e.g. HUMAN_AGENT, outside Messenger's 24-hour window
    idempotency_key: Optional[str] = None


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str
    status: DeliveryStatus = DeliveryStatus.SENT


@dataclass(frozen=True)
class WebhookRequest:
    """What a connector needs of an HTTP request, independent of the web framework."""

    method: str
    url: str                           # the full URL the provider called (Twilio signs it)
    headers: dict[str, str]            # lower-case names
    body: bytes
    query: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


def address_id(address: str) -> str:
    """The provider-side id of an address: "telegram:123" → "123"."""
    return address.split(":", 1)[1] if ":" in address else address
