"""Facebook Messenger through the Graph API (Messenger Platform).

Inbound: Meta calls the webhook with ``{"object": "page", "entry": [...]}``,
batching several entries and several messaging events per entry, signed with
``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body, keyed with the app
secret). Subscribing starts with a GET handshake echoing ``hub.challenge``.

Outbound: ``POST {graph_api_base}/me/messages?access_token=<page token>``.
Every Graph failure is turned into a policy-carrying error in one place,
:func:`graph_error`.

Nothing here logs a PSID, a message text or the page token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import unicodedata
from typing import TYPE_CHECKING, Any, Mapping, Optional

import aiohttp

from connectors.http import LoopSession
from connectors.base import Connector
from connectors.errors import (
    ContactStopped,
    MalformedPayload,
    OutsideWindow,
    PermanentSendError,
    SendError,
    Throttled,
    TransientSendError,
    WebhookForbidden,
    error_from_http,
)
from connectors.types import (
    Channel,
    DeliveryStatus,
    InboundEvent,
    InboundMessage,
    Location,
    Media,
    MediaKind,
    OutboundMessage,
    SendResult,
    StatusUpdate,
    WebhookRequest,
    address_id,
)

if TYPE_CHECKING:  # only for the annotation: connectors stay importable without the settings machinery
    from jisr.settings import Settings

logger = logging.getLogger(__name__)

# Platform limits (developers.facebook.com/docs/messenger-platform/send-messages, .../quick-replies).
MAX_TEXT_CHARS = 2000
MAX_QUICK_REPLIES = 13
MAX_QUICK_REPLY_TITLE = 20
MAX_QUICK_REPLY_PAYLOAD = 1000

# Graph error codes, by the policy they call for.
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80006})       # app, user, page, API, Messenger rate limits
CONTACT_STOPPED_CODES = frozenset({551, 1545041})            # "This person isn't available right now"
CONTACT_STOPPED_SUBCODES = frozenset({1545041, 2018108})     # ... and "not reachable / not receiving messages"
OUTSIDE_WINDOW_SUBCODE = 2018278                             # (#10) sent outside of the allowed window
DEFAULT_RETRY_AFTER = 60.0                                   # Graph rate limits rarely say how long: wait a minute
# Messages read back when the send queue asks what went out after a crash: a lease (a minute) of
# replies and campaign sends to one person is far fewer.
LOOKUP_LIMIT = 50

SIGNATURE_HEADER = "x-hub-signature-256"
SIGNATURE_PREFIX = "sha256="

_ATTACHMENT_KINDS: dict[str, MediaKind] = {
    "audio": MediaKind.AUDIO,
    "image": MediaKind.IMAGE,
    "video": MediaKind.VIDEO,
    "file": MediaKind.DOCUMENT,
    "sticker": MediaKind.STICKER,
}


class MessengerConnector(Connector):
    """The Messenger channel: handshake, signature check, parsing, sending."""

    channel = Channel.MESSENGER

    def __init__(
        self,
        app_secret: str,
        verify_token: str,
        page_token: str,
        graph_api_base: str = "https://graph.facebook.com/v19.0",
        *,
        timeout: float = 10.0,
    ) -> None:
        self._app_secret = app_secret.encode("utf-8")
        self._verify_token = verify_token.encode("utf-8")
        self._page_token = page_token
        self._graph_api_base = graph_api_base.rstrip("/")
        self._timeout = timeout
        self._transport = LoopSession(timeout)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "MessengerConnector":
        """A connector configured from Jisr's settings (JISR_MESSENGER_*, JISR_GRAPH_API_BASE)."""
        return cls(
            app_secret=settings.messenger_app_secret,
            verify_token=settings.messenger_verify_token,
            page_token=settings.messenger_page_token,
            graph_api_base=settings.graph_api_base,
        )

    # ------------------------------------------------------------------ inbound

    def handshake(self, request: WebhookRequest) -> Optional[str]:
        """The ``hub.challenge`` to echo when Meta's subscribe GET carries our verify token.

        Raise WebhookForbidden for any other mode or token, or no challenge; the gateway must
        answer the challenge as text/plain (it is attacker-chosen text).
        """
        mode = request.query.get("hub.mode", "")
        token = request.query.get("hub.verify_token", "")
        # Compare the token even when the mode is wrong, so timing tells nothing about either.
        token_ok = bool(self._verify_token) and hmac.compare_digest(token.encode("utf-8"), self._verify_token)
        if mode != "subscribe" or not token_ok:
            raise WebhookForbidden("messenger handshake: wrong hub.mode or hub.verify_token")
        challenge = request.query.get("hub.challenge")
        if not challenge:
            # Meta always sends one: a handshake without it is not Meta's (and WebhookForbidden
            # is the one error the brief and the gateway expect from a handshake).
            raise WebhookForbidden("messenger handshake: hub.challenge is missing")
        return challenge

    def verify(self, request: WebhookRequest) -> None:
        """Raise WebhookForbidden unless X-Hub-Signature-256 signs the raw body with our app secret."""
        if not self._app_secret:
            # An HMAC keyed with nothing is forgeable by anyone: never accept it.
            raise WebhookForbidden("messenger: no app secret configured")
        # Meta writes lower-case hex; accepting upper case too gives a forger nothing.
        header = (request.header(SIGNATURE_HEADER) or "").strip().lower()
        if not header:
            # A SHA-1 X-Hub-Signature alone is not enough: SHA-1 is what Meta is retiring.
            raise WebhookForbidden("messenger: X-Hub-Signature-256 is missing")
        expected = SIGNATURE_PREFIX + hmac.new(self._app_secret, request.body, hashlib.sha256).hexdigest()
        # Bytes, not str: compare_digest refuses non-ASCII str, and a forged header may carry some.
        if not hmac.compare_digest(header.encode("utf-8", "surrogateescape"), expected.encode("ascii")):
            raise WebhookForbidden("messenger: X-Hub-Signature-256 does not match the body")

    def parse(self, request: WebhookRequest) -> list[InboundEvent]:
        """Messages and receipts of every entry and messaging event, in payload order."""
        try:
            payload = json.loads(request.body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
            raise MalformedPayload("messenger: body is not JSON") from exc
        if not isinstance(payload, dict):
            raise MalformedPayload("messenger: body is not a JSON object")
        if payload.get("object") != "page":
            raise MalformedPayload(f"messenger: object must be 'page', got {str(payload.get('object'))[:40]!r}")
        entries = payload.get("entry")
        if not isinstance(entries, list):
            raise MalformedPayload("messenger: 'entry' must be a list")

        events: list[InboundEvent] = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise MalformedPayload("messenger: an entry is not an object")
            # Entries without "messaging" ("standby" while another app owns the
            # thread, "changes" for page feed) are not conversations with us.
            messaging = entry.get("messaging", [])
            if not isinstance(messaging, list):
                raise MalformedPayload("messenger: 'messaging' must be a list")
            for event in messaging:
                if not isinstance(event, dict):
                    raise MalformedPayload("messenger: a messaging event is not an object")
                events.extend(_parse_event(event))
        return events

    # ----------------------------------------------------------------- outbound

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send text (split at 2,000 characters) with quick replies on the last part.

        Returns the Graph ``message_id`` of the last part, the one carrying the
        quick replies. A failure after the first part raises with the earlier
        parts already delivered: Graph has no idempotency key to prevent that.
        """
        payloads = build_payloads(message)
        result: Optional[SendResult] = None
        for payload in payloads:
            result = await self._post_message(payload)
        assert result is not None  # build_payloads never returns an empty list
        if len(payloads) > 1:
            logger.debug("messenger: long text sent in %d parts", len(payloads))
        return result

    async def sent_since(self, address: str, since: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """What the page sent to this person since ``since`` (message id, time), newest first.

        Graph's Conversations API: ``GET /me/conversations?platform=messenger&user_id=<psid>``
        finds the conversation, ``GET /<conversation-id>/messages`` lists its messages, newest
        first (the family's own are left out). The send queue asks it whether a send left in
        doubt by a crash went out, so that it is recorded, not sent a second time.
        """
        psid = address.split(":", 1)[-1]
        found = await self._lookup("/me/conversations", {"platform": "messenger", "user_id": psid})
        ids = [str(c["id"]) for c in found.get("data") or [] if isinstance(c, dict) and c.get("id")]
        if not ids:
            return []
        listed = await self._lookup(f"/{ids[0]}/messages", {"fields": "id,created_time,from", "limit": str(LOOKUP_LIMIT)})
        sent: list[tuple[str, dt.datetime]] = []
        for item in listed.get("data") or []:
            if not isinstance(item, dict) or not item.get("id") or str((item.get("from") or {}).get("id")) == psid:
                continue
            created = _graph_time(item.get("created_time"))
            if created is not None and created >= since:
                sent.append((str(item["id"]), created))
        return sent

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        await self._transport.close()

    async def _lookup(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """A Graph GET for the send queue's look-ups: any failure is transient (asked again later)."""
        url = f"{self._graph_api_base}{path}"
        try:
            async with self._transport.session().get(url, params={**params, "access_token": self._page_token}) as response:
                status, raw = response.status, await response.read()
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise TransientSendError(f"messenger: could not list sent messages ({type(exc).__name__})", code="lookup") from None
        body = _json_or_none(raw)
        if status != 200 or not isinstance(body, dict):
            raise TransientSendError(f"messenger: could not list sent messages (HTTP {status})", code="lookup")
        return body

    async def _post_message(self, payload: dict[str, Any]) -> SendResult:
        """The one place a request leaves for Graph; every failure goes through graph_error."""
        url = f"{self._graph_api_base}/me/messages"
        try:
            async with self._transport.session().post(url, params={"access_token": self._page_token}, json=payload) as response:
                status, headers, raw = response.status, response.headers, await response.read()
        except asyncio.TimeoutError as exc:
            # Graph may still have delivered it; the queue retries, accepting a rare duplicate.
            raise TransientSendError("messenger: Graph API timed out", code="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"messenger: cannot reach the Graph API ({type(exc).__name__})", code="connection") from exc

        body = _json_or_none(raw)
        if status >= 400:
            error = graph_error(status, body, headers)
            logger.warning("messenger: send failed: %s (code %s)", type(error).__name__, error.code)
            raise error
        message_id = body.get("message_id") if isinstance(body, dict) else None
        if not isinstance(message_id, str) or not message_id:
            # Not retried: Graph may have accepted it, and a retry could send it twice.
            raise PermanentSendError("messenger: Graph API answered without a message_id", code=str(status))
        return SendResult(provider_message_id=message_id)


# ---------------------------------------------------------------------- parsing


def _parse_event(event: Mapping[str, Any]) -> list[InboundEvent]:
    """The normalised events of one messaging event; unknown kinds give none."""
    psid = _sender_id(event)
    address = f"{Channel.MESSENGER.value}:{psid}"
    at = _timestamp(event.get("timestamp"))

    if "message" in event:
        message = event["message"]
        if not isinstance(message, dict):
            raise MalformedPayload("messenger: 'message' is not an object")
        if message.get("is_echo"):
            return []  # our own page's messages coming back: never answer ourselves
        return [_parse_message(address, message, at)]

    if "postback" in event:
        postback = event["postback"]
        if not isinstance(postback, dict):
            raise MalformedPayload("messenger: 'postback' is not an object")
        timestamp = event.get("timestamp")
        # Older postbacks carry no mid; sender + timestamp is unique enough to de-duplicate retries.
        provider_id = str(postback.get("mid") or f"{psid}-{timestamp}")
        return [
            InboundMessage(
                channel=Channel.MESSENGER,
                address=address,
                provider_message_id=provider_id,
                text=str(postback.get("title") or ""),
                button_payload=_optional_str(postback.get("payload")),
                received_at=at,
            )
        ]

    if "delivery" in event:
        delivery = event["delivery"]
        if not isinstance(delivery, dict):
            raise MalformedPayload("messenger: 'delivery' is not an object")
        mids = delivery.get("mids") or []
        if not isinstance(mids, list):
            raise MalformedPayload("messenger: 'delivery.mids' must be a list")
        when = _timestamp(event.get("timestamp") or delivery.get("watermark"))
        # Without mids the watermark cannot be tied to any message of ours: nothing to report.
        return [
            StatusUpdate(channel=Channel.MESSENGER, address=address, provider_message_id=str(mid), status=DeliveryStatus.DELIVERED, at=when)
            for mid in mids
        ]

    if "read" in event:
        read = event["read"]
        if not isinstance(read, dict) or "watermark" not in read:
            raise MalformedPayload("messenger: 'read' needs a watermark")
        # A read receipt names no message: everything sent before the watermark was read.
        when = _timestamp(event.get("timestamp") or read.get("watermark"))
        return [
            StatusUpdate(
                channel=Channel.MESSENGER,
                address=address,
                provider_message_id=f"read:{read['watermark']}",
                status=DeliveryStatus.READ,
                at=when,
            )
        ]

    return []  # reactions, referrals, optins, handover...: not for the assistant


def _parse_message(address: str, message: Mapping[str, Any], at: dt.datetime) -> InboundMessage:
    mid = message.get("mid")
    if not mid:
        raise MalformedPayload("messenger: a message has no mid")
    media: list[Media] = []
    location: Optional[Location] = None
    stickers: set[str] = set()

    attachments = message.get("attachments") or []
    if not isinstance(attachments, list):
        raise MalformedPayload("messenger: 'attachments' must be a list")
    for attachment in attachments:
        if not isinstance(attachment, dict):
            raise MalformedPayload("messenger: an attachment is not an object")
        kind = attachment.get("type")
        payload = attachment.get("payload") if isinstance(attachment.get("payload"), dict) else {}
        url = _optional_str(payload.get("url") or attachment.get("url"))
        if kind == "location":
            coordinates = payload.get("coordinates")
            if isinstance(coordinates, dict) and "lat" in coordinates and "long" in coordinates:
                try:
                    location = Location(float(coordinates["lat"]), float(coordinates["long"]), _optional_str(attachment.get("title")))
                except (TypeError, ValueError) as exc:
                    raise MalformedPayload("messenger: location coordinates are not numbers") from exc
            continue
        sticker_id = payload.get("sticker_id")
        if sticker_id is not None:
            # A sticker arrives as an image carrying sticker_id, and during Meta's 2026
            # transition also as a "sticker" attachment: report it once.
            if str(sticker_id) not in stickers:
                stickers.add(str(sticker_id))
                media.append(Media(MediaKind.STICKER, url=url, provider_id=str(sticker_id)))
            continue
        media.append(Media(_ATTACHMENT_KINDS.get(str(kind), MediaKind.OTHER), url=url))

    top_sticker = message.get("sticker_id")
    if top_sticker is not None and str(top_sticker) not in stickers:
        media.append(Media(MediaKind.STICKER, provider_id=str(top_sticker)))

    quick_reply = message.get("quick_reply")
    button_payload = _optional_str(quick_reply.get("payload")) if isinstance(quick_reply, dict) else None
    return InboundMessage(
        channel=Channel.MESSENGER,
        address=address,
        provider_message_id=str(mid),
        text=str(message.get("text") or ""),
        media=tuple(media),
        location=location,
        button_payload=button_payload,
        received_at=at,
    )


def _sender_id(event: Mapping[str, Any]) -> str:
    sender = event.get("sender")
    if not isinstance(sender, dict) or not sender.get("id"):
        raise MalformedPayload("messenger: a messaging event has no sender.id")
    return str(sender["id"])


def _timestamp(value: Any) -> dt.datetime:
    """Meta's epoch milliseconds as an aware UTC datetime (now when absent)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return dt.datetime.now(dt.timezone.utc)
    try:
        millis = int(value)
        # Integer arithmetic: a float division would round some milliseconds.
        return dt.datetime.fromtimestamp(millis // 1000, dt.timezone.utc) + dt.timedelta(milliseconds=millis % 1000)
    except (ValueError, OverflowError, OSError) as exc:  # NaN, infinity, or a date no calendar holds
        raise MalformedPayload("messenger: timestamp out of range") from exc


def _graph_time(value: Any) -> Optional[dt.datetime]:
    """Graph's times ("2026-12-05T06:00:00+0000"), aware; None for anything else."""
    try:
        return dt.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


def _optional_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


# ---------------------------------------------------------------------- sending


def build_payloads(message: OutboundMessage) -> list[dict[str, Any]]:
    """The Send API bodies for one outbound message, in order.

    Raise PermanentSendError for what Messenger cannot carry (templates,
    nothing to send, too many quick replies): retrying would not help.
    """
    if message.channel is not Channel.MESSENGER:
        raise PermanentSendError(f"messenger connector cannot send a {message.channel.value} message", code="wrong_channel")
    if message.template is not None:
        raise PermanentSendError("messenger has no templates: use a message tag outside the window", code="template_unsupported")
    psid = address_id(message.address)
    if not psid:
        raise PermanentSendError("messenger: the address has no PSID", code="no_recipient")
    if not message.text.strip():
        # Quick replies need a text to hang on; an empty text is refused by Graph (code 100).
        raise PermanentSendError("messenger: nothing to send (empty text)", code="empty")
    if len(message.buttons) > MAX_QUICK_REPLIES:
        # Dropping choices silently would change what the family can answer: refuse instead.
        raise PermanentSendError(f"messenger allows at most {MAX_QUICK_REPLIES} quick replies", code="too_many_quick_replies")

    envelope: dict[str, Any] = {"recipient": {"id": psid}}
    if message.messenger_tag:
        envelope["messaging_type"] = "MESSAGE_TAG"
        envelope["tag"] = message.messenger_tag
    else:
        envelope["messaging_type"] = "RESPONSE"

    parts = split_text(message.text)
    payloads: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        body: dict[str, Any] = {"text": part}
        if message.buttons and index == len(parts) - 1:
            # On the last part only: quick replies vanish as soon as another message arrives.
            body["quick_replies"] = [
                {"content_type": "text", "title": _shorten(button.title, MAX_QUICK_REPLY_TITLE), "payload": button.payload[:MAX_QUICK_REPLY_PAYLOAD]}
                for button in message.buttons
            ]
        payloads.append({**envelope, "message": body})
    return payloads


def split_text(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """Cut ``text`` into parts of at most ``limit`` characters, at paragraph, line, sentence or word ends."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]  # one more, so a break right after the limit still counts
        cut = _break_at(window, limit)
        part = rest[:cut].rstrip()
        parts.append(part)
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def _break_at(window: str, limit: int) -> int:
    """Where to cut a window of limit+1 characters: the latest natural break in its second half."""
    floor = limit // 2  # no tiny parts: a break in the first half is not worth it
    for separator in ("\n\n", "\n", ". ", "? ", "! ", "؟ ", " "):
        position = window.rfind(separator, floor, limit + 1)
        if position > 0:
            cut = position + len(separator.rstrip(" ")) if separator.strip() else position
            if 0 < cut <= limit:
                return cut
    cut = limit
    # No break at all (a URL, a run of characters): never separate a letter from its combining marks.
    while cut > 1 and unicodedata.combining(window[cut]):
        cut -= 1
    return cut


def _shorten(title: str, limit: int) -> str:
    return title if len(title) <= limit else title[: limit - 1].rstrip() + "…"


# ----------------------------------------------------------------------- errors


def graph_error(status: int, body: Any, headers: Mapping[str, str]) -> SendError:
    """The one mapping from a failed Graph API answer to an error carrying its policy."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = _int_or_none(error.get("code"))
    subcode = _int_or_none(error.get("error_subcode"))
    label = str(code) if code is not None else str(status)
    if subcode is not None:
        label = f"{label}/{subcode}"
    # Graph's own message says what went wrong; it names no person, so it may be logged.
    text = f"messenger: Graph API {status} ({label}): {str(error.get('message') or 'no error message')[:200]}"

    if status == 429 or code in RATE_LIMIT_CODES:
        return Throttled(text, code=label, retry_after=_retry_after(headers))
    if code in CONTACT_STOPPED_CODES or subcode in CONTACT_STOPPED_SUBCODES:
        return ContactStopped(text, code=label)
    if subcode == OUTSIDE_WINDOW_SUBCODE:
        return OutsideWindow(text, code=label)
    if error.get("is_transient") is True and status < 500:
        return TransientSendError(text, code=label)
    return error_from_http(status, text, code=label)


def _retry_after(headers: Mapping[str, str]) -> float:
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else DEFAULT_RETRY_AFTER
    except ValueError:  # an HTTP-date: rare enough that the default will do
        seconds = DEFAULT_RETRY_AFTER
    return seconds if seconds > 0 else DEFAULT_RETRY_AFTER


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
