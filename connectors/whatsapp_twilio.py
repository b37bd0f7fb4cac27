"""WhatsApp through Twilio: signed form webhooks in, the Messages API out.

Inbound: Twilio POSTs application/x-www-form-urlencoded forms (messages and
status callbacks) signed with X-Twilio-Signature (HMAC-SHA1 of the full URL
and the sorted parameters, keyed with the auth token). Outbound: the twilio
SDK's ``messages.create``, pointed at ``twilio_api_base`` so development and
tests talk to the local simulator (jisr/simulators/twilio.py).

Nothing here logs a phone number or a message text: log lines and error
messages carry only message SIDs, HTTP statuses and Twilio error codes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import contextvars
from typing import TYPE_CHECKING, Any, Mapping, Optional
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from connectors.base import Connector
from connectors.http import LoopSession
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
)

if TYPE_CHECKING:  # connectors stay importable without the app's settings module
    from jisr.settings import Settings

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/whatsapp"
WHATSAPP_PREFIX = "whatsapp:"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Twilio error codes that carry a policy (https://www.twilio.com/docs/api/errors/<code>).
ERR_STOPPED = 21610          # the person sent STOP: opt them out of WhatsApp
ERR_OUTSIDE_WINDOW = 63016   # free-form message outside the 24-hour window: needs a template
ERR_WA_THROTTLED = 63018     # WhatsApp rate limit for this sender
ERR_TOO_MANY_REQUESTS = 20429
ERR_QUEUE_FULL = (21611, 30001)  # the sender's queue overflowed: slow down, then retry

# Twilio's MessageStatus values → ours. "sending"/"accepted"/"scheduled" are
# still on Twilio's side, which for the send queue means "queued".
_STATUSES: dict[str, DeliveryStatus] = {
    "accepted": DeliveryStatus.QUEUED,
    "scheduled": DeliveryStatus.QUEUED,
    "queued": DeliveryStatus.QUEUED,
    "sending": DeliveryStatus.QUEUED,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "undelivered": DeliveryStatus.UNDELIVERED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}


# --- inbound -----------------------------------------------------------------


class _FormParams(dict[str, str]):
    """A form as {name: first value}, keeping every value for the signature.

    RequestValidator signs every value of a repeated parameter; it asks for
    them through ``getall`` (the MultiDict protocol), which this provides.
    """

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        self._all: dict[str, list[str]] = {}
        for name, value in pairs:
            self._all.setdefault(name, []).append(value)
            self.setdefault(name, value)

    def getall(self, name: str) -> list[str]:
        return self._all[name]


def _decode_form(request: WebhookRequest) -> _FormParams:
    """The request's form fields; MalformedPayload when it is not a UTF-8 form."""
    content_type = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type and content_type != FORM_CONTENT_TYPE:
        raise MalformedPayload(f"expected {FORM_CONTENT_TYPE}, got {content_type}")
    if not request.body.strip():
        raise MalformedPayload("empty body: expected Twilio's form fields")
    try:
        text = request.body.decode("utf-8")
        # strict: a field without "=" or a percent-escape that is not UTF-8 is not something Twilio sends.
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedPayload("body is not UTF-8 form data") from exc
    except ValueError as exc:
        raise MalformedPayload("body is not form-encoded (name=value&…)") from exc
    return _FormParams(pairs)


def media_kind(content_type: str, message_type: str = "") -> MediaKind:
    """Our media kind for a MediaContentType (WhatsApp voice notes are audio/ogg)."""
    main = content_type.split(";", 1)[0].strip().lower()
    if main.startswith("audio/"):
        return MediaKind.AUDIO
    if main.startswith("image/"):
        # WhatsApp stickers arrive as image/webp; only MessageType tells them apart from photos.
        return MediaKind.STICKER if message_type == "sticker" else MediaKind.IMAGE
    if main.startswith("video/"):
        return MediaKind.VIDEO
    if main.startswith(("application/", "text/")):
        return MediaKind.DOCUMENT
    return MediaKind.OTHER


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise MalformedPayload(f"{name} is missing")
    return value


def _media(form: Mapping[str, str]) -> tuple[Media, ...]:
    raw = form.get("NumMedia", "0").strip() or "0"
    try:
        count = int(raw)
    except ValueError as exc:
        raise MalformedPayload("NumMedia is not a number") from exc
    if not 0 <= count <= 10:  # Twilio carries at most 10 media per message
        raise MalformedPayload("NumMedia out of range (0-10)")
    message_type = form.get("MessageType", "")
    media = []
    for i in range(count):
        url = _required(form, f"MediaUrl{i}")
        content_type = form.get(f"MediaContentType{i}", "")
        media.append(Media(kind=media_kind(content_type, message_type), url=url, mime_type=content_type or None))
    return tuple(media)


def _location(form: Mapping[str, str]) -> Optional[Location]:
    latitude, longitude = form.get("Latitude", "").strip(), form.get("Longitude", "").strip()
    if not latitude and not longitude:
        return None
    if not (latitude and longitude):
        raise MalformedPayload("Latitude and Longitude come together")
    try:
        lat, lon = float(latitude), float(longitude)
    except ValueError as exc:
        raise MalformedPayload("Latitude/Longitude are not numbers") from exc
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise MalformedPayload("Latitude/Longitude out of range")
    # Label is the place's name when the person shared a place, Address its street address.
    label = form.get("Label", "").strip() or form.get("Address", "").strip() or None
    return Location(latitude=lat, longitude=lon, label=label)


def _whatsapp_address(value: str, field: str) -> str:
    if not value.startswith(WHATSAPP_PREFIX) or len(value) == len(WHATSAPP_PREFIX):
        # An SMS number wired to the WhatsApp webhook by mistake: a 400 shows in Twilio's debugger.
        raise MalformedPayload(f"{field} is not a WhatsApp address (whatsapp:+…)")
    return value


# --- outbound ----------------------------------------------------------------

# The last error response's headers, per send: the SDK's TwilioRestException drops headers, and
# Retry-After lives there. Each send is one task, so a context variable set inside its request is
# what that send reads back.
_last_error_headers: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("twilio_last_error_headers", default={})


class RebasedHttpClient(AsyncHttpClient):
    """The SDK's asynchronous HTTP client role, sending to ``api_base`` instead of api.twilio.com.

    The SDK builds absolute URLs on its own hosts (api.twilio.com, or regional ones); we swap
    scheme and host for the configured base and keep the path. The bytes travel on aiohttp
    (connectors/http.py), like the SDK's own ``AsyncTwilioHttpClient``; unlike it, nothing is
    logged (its request log prints query strings, which carry phone numbers when listing).
    """

    def __init__(self, api_base: str, timeout: Optional[float] = None) -> None:
        super().__init__(log, True, timeout)
        base = urlsplit(api_base.rstrip("/"))
        if not base.scheme or not base.netloc:
            raise ValueError("twilio_api_base must be an absolute URL")
        self._base = base
        self.transport = LoopSession(timeout or 10.0)

    def rebase(self, url: str) -> str:
        """``https://api.twilio.com/2010-04-01/…`` → ``<api_base>/2010-04-01/…``."""
        parts = urlsplit(url)
        return urlunsplit((self._base.scheme, self._base.netloc, self._base.path + parts.path, parts.query, parts.fragment))

    async def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: Optional[dict[str, object]] = None,
        data: Optional[dict[str, object]] = None,
        headers: Optional[dict[str, str]] = None,
        auth: Optional[tuple[str, str]] = None,
        timeout: Optional[float] = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        _last_error_headers.set({})
        options: dict[str, Any] = {"params": params, "data": data, "headers": headers, "allow_redirects": allow_redirects}
        if auth:
            options["auth"] = aiohttp.BasicAuth(*auth)
        if timeout:  # else the session's (passing None to aiohttp would mean no timeout at all)
            options["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self.transport.session().request(method.upper(), self.rebase(url), **options) as response:
            text = await response.text()
            if response.status >= 400:
                _last_error_headers.set({k.lower(): v for k, v in response.headers.items()})
            return TwilioResponse(response.status, text, response.headers)


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: rare at Twilio; the queue falls back to its default pause


def _twilio_code(exc: TwilioRestException) -> Optional[int]:
    """Twilio's error code; None where the SDK fell back to the HTTP status (no JSON error body)."""
    try:
        code = int(exc.code) if exc.code is not None else None
    except (TypeError, ValueError):
        return None
    return None if code == exc.status else code


def error_from_twilio(
    status: int,
    code: Optional[int],
    *,
    retry_after: Optional[float] = None,
    queue_full_retry_after: float = 60.0,
) -> SendError:
    """Twilio's refusal (HTTP status + Twilio error code) → a SendError with its policy.

    The message names only the status and the code: Twilio's own messages
    quote the phone number ("The 'To' number whatsapp:+33… is not valid").
    """
    label = f"Twilio refused the message (HTTP {status}" + (f", error {code})" if code else ")")
    code_str = str(code) if code else None
    if code == ERR_STOPPED:
        return ContactStopped(label + ": the person sent STOP", code=code_str)
    if code == ERR_OUTSIDE_WINDOW:
        return OutsideWindow(label + ": outside the 24-hour window, send a template", code=code_str)
    if code in (ERR_WA_THROTTLED, ERR_TOO_MANY_REQUESTS) or status == 429:
        return Throttled(label + ": throttled", code=code_str or "429", retry_after=retry_after if retry_after is not None else 1.0)
    if code in ERR_QUEUE_FULL:
        return Throttled(
            label + ": sender queue full",
            code=code_str,
            retry_after=retry_after if retry_after is not None else queue_full_retry_after,
        )
    return error_from_http(status, label, code=code_str, retry_after=retry_after)


def render_text(message: OutboundMessage) -> str:
    """The Body of a free-form message: buttons become numbered lines.

    Free-form WhatsApp through Twilio's Body has no buttons (those need a
    Content template), so the choices are listed and the person answers
    with the number or the words.
    """
    lines = [f"{i}. {button.title}" for i, button in enumerate(message.buttons, start=1)]
    if not lines:
        return message.text
    return (message.text.rstrip() + "\n\n" if message.text.strip() else "") + "\n".join(lines)


class TwilioWhatsAppConnector(Connector):
    """WhatsApp through Twilio's Programmable Messaging API."""

    channel = Channel.WHATSAPP

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        *,
        api_base: str = "https://api.twilio.com",
        webhook_url: Optional[str] = None,
        status_callback: Optional[str] = None,
        timeout: float = 10.0,
        queue_full_retry_after: float = 60.0,
    ) -> None:
        """``from_number`` is the WhatsApp sender ("whatsapp:+1415…"); ``webhook_url`` the public URL Twilio signs.

        ``status_callback``, when set, asks Twilio to post this message's
        receipts there (normally the same webhook URL).
        """
        if not from_number.startswith(WHATSAPP_PREFIX):
            from_number = WHATSAPP_PREFIX + from_number
        self.account_sid = account_sid
        self.from_number = from_number
        self.webhook_url = webhook_url
        self.status_callback = status_callback
        self.timeout = timeout
        self.queue_full_retry_after = queue_full_retry_after
        self._validator = RequestValidator(auth_token)
        self._http = RebasedHttpClient(api_base, timeout=timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)

    @classmethod
    def from_settings(cls, settings: "Settings", **overrides: Any) -> "TwilioWhatsAppConnector":
        """Build from jisr.settings.Settings; the webhook URL is ``public_url`` + /webhooks/whatsapp."""
        webhook_url = settings.public_url.rstrip("/") + WEBHOOK_PATH
        kwargs: dict[str, Any] = dict(
            api_base=settings.twilio_api_base,
            webhook_url=webhook_url,
            status_callback=webhook_url,
        )
        kwargs.update(overrides)
        return cls(settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_whatsapp_from, **kwargs)

    # --- webhooks ---

    def verify(self, request: WebhookRequest) -> None:
        """Check X-Twilio-Signature over ``request.url`` and the form fields.

        ``request.url`` must be the URL Twilio called (behind a proxy, the
        gateway rebuilds it from the public URL). The SDK compares in
        constant time and accepts the URL with and without its default port.
        """
        signature = request.header("x-twilio-signature")
        if not signature:
            raise WebhookForbidden("X-Twilio-Signature is missing")
        try:
            # The URL's host comes from the request's Host header, which anyone can set.
            url = urlsplit(request.url)
            url.port  # noqa: B018 - raises ValueError for a port that is no port, as the SDK would
        except ValueError as exc:
            raise WebhookForbidden("the request URL cannot be verified") from exc
        query = dict(parse_qsl(url.query))
        params: Any
        if "bodySHA256" in query:
            # JSON-bodied Twilio webhooks sign a hash of the raw body carried in the URL.
            try:
                params = request.body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WebhookForbidden("body cannot be verified: not UTF-8") from exc
        else:
            try:
                params = _decode_form(request)
            except MalformedPayload as exc:
                # Twilio signs the decoded fields: a body that does not decode cannot carry a valid signature.
                raise WebhookForbidden(f"body cannot be verified: {exc}") from exc
        if not self._validator.validate(request.url, params, signature):
            raise WebhookForbidden("X-Twilio-Signature does not match")

    def parse(self, request: WebhookRequest) -> list[InboundEvent]:
        """A message (text, media, location, button reply) or a status callback; [] for what we do not handle."""
        form = _decode_form(request)
        if "MessageStatus" in form and "Body" not in form:
            return self._status(form)
        sid = _required(form, "MessageSid")
        address = _whatsapp_address(_required(form, "From"), "From")
        button = form.get("ButtonPayload", "").strip() or form.get("ButtonText", "").strip() or None
        return [
            InboundMessage(
                channel=self.channel,
                address=address,
                provider_message_id=sid,
                text=form.get("Body", ""),
                media=_media(form),
                location=_location(form),
                button_payload=button,
            )
        ]

    def _status(self, form: Mapping[str, str]) -> list[InboundEvent]:
        sid = _required(form, "MessageSid")
        status = _STATUSES.get(form["MessageStatus"].strip().lower())
        if status is None:
            # e.g. "received"/"receiving": the lifecycle of an inbound message, nothing to record.
            log.debug("ignored Twilio status %r for %s", form["MessageStatus"][:20], sid)
            return []
        address = _whatsapp_address(_required(form, "To"), "To")
        error_code = form.get("ErrorCode", "").strip() or None
        return [StatusUpdate(channel=self.channel, address=address, provider_message_id=sid, status=status, error_code=error_code)]

    # --- sending ---

    def build_params(self, message: OutboundMessage) -> dict[str, Any]:
        """The keyword arguments of ``client.messages.create`` for one message (no I/O)."""
        if message.channel != self.channel:
            raise PermanentSendError(f"not a WhatsApp message ({message.channel.value})", code="channel")
        if not message.address.startswith(WHATSAPP_PREFIX):
            raise PermanentSendError("address is not a WhatsApp address (whatsapp:+…)", code="address")
        params: dict[str, Any] = {"to": message.address, "from_": self.from_number}
        if message.template is not None:
            # Templates go by ContentSid; since April 2025 template text in Body fails with 63016.
            params["content_sid"] = message.template.content_sid
            if message.template.variables:
                params["content_variables"] = json.dumps(dict(message.template.variables), ensure_ascii=False)
        else:
            body = render_text(message)
            if not body.strip():
                raise PermanentSendError("nothing to send: no text, buttons or template", code="empty")
            params["body"] = body
        if self.status_callback:
            params["status_callback"] = self.status_callback
        return params

    async def _create(self, params: dict[str, Any]) -> SendResult:
        """The SDK call; errors mapped here, where Retry-After is known."""
        try:
            resource = await self._client.messages.create_async(**params)
        except TwilioRestException as exc:
            code = _twilio_code(exc)
            raise error_from_twilio(
                exc.status, code, retry_after=_retry_after(_last_error_headers.get()), queue_full_retry_after=self.queue_full_retry_after
            ) from None
        except asyncio.TimeoutError:
            raise TransientSendError(f"Twilio did not answer within {self.timeout:g} s", code="timeout") from None
        except aiohttp.ClientConnectionError:
            raise TransientSendError("could not connect to Twilio", code="connection") from None
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"HTTP error talking to Twilio ({type(exc).__name__})", code="http") from None
        except (TwilioException, ValueError) as exc:
            # A 2xx we cannot read: the message may exist; the queue decides whether to retry.
            raise TransientSendError(f"unreadable answer from Twilio ({type(exc).__name__})", code="bad_response") from None
        status = _STATUSES.get(str(resource.status or "").lower(), DeliveryStatus.QUEUED)
        return SendResult(provider_message_id=str(resource.sid), status=status)

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send one message through the SDK's asynchronous API (no thread per send)."""
        params = self.build_params(message)
        try:
            result = await self._create(params)
        except SendError as exc:
            log.info("twilio send failed: %s (code %s, retryable %s)", type(exc).__name__, exc.code, exc.retryable)
            raise
        log.debug("twilio accepted %s (%s)", result.provider_message_id, result.status.value)
        return result

    async def sent_since(self, address: str, since: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """Twilio lists the messages of an account (GET Messages.json?To=&From=, newest first):
        the send queue asks it whether a send left in doubt by a crash went out."""
        try:
            found = await self._client.messages.list_async(to=address, from_=self.from_number, limit=50)
        except (TwilioException, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TransientSendError(f"could not list Twilio messages ({type(exc).__name__})", code="lookup") from None
        return [(str(m.sid), m.date_created) for m in found if m.date_created is not None and m.date_created >= since]

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.transport.close()
