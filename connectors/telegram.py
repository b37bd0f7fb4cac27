"""Telegram Bot API channel: verify and parse webhook Updates, send through python-telegram-bot.

Inbound: Telegram POSTs one ``Update`` per request, with the secret given to
``setWebhook`` in the ``X-Telegram-Bot-Api-Secret-Token`` header. Telegram
re-sends the *same* update (same ``update_id``) until the webhook answers 2xx,
so ``update_id`` is the de-duplication key (``provider_message_id``).

Outbound: every call goes through ``telegram.Bot`` (pointed at
``settings.telegram_api_base``, the local simulator in development and tests);
python-telegram-bot's typed errors are mapped to Jisr's error policy in one
place, :func:`error_from_telegram`.

Privacy: nothing here logs a chat id, a message text or the bot token, and
:func:`_install_log_redaction` keeps python-telegram-bot and httpx from doing
so (httpx logs every request URL at INFO, and the URL carries the token).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Sequence
from urllib.parse import quote

import telegram
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message
from telegram.constants import InlineKeyboardButtonLimit, MessageLimit
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

from connectors.base import Connector
from connectors.telegram_transport import AiohttpRequest
from connectors.errors import (
    ContactStopped,
    MalformedPayload,
    PermanentSendError,
    SendError,
    Throttled,
    TransientSendError,
    WebhookForbidden,
)
from connectors.types import (
    Button,
    Channel,
    InboundEvent,
    InboundMessage,
    Location,
    Media,
    MediaKind,
    OutboundMessage,
    SendResult,
    WebhookRequest,
    address_id,
)

if TYPE_CHECKING:  # connectors depend on no Jisr module at run time
    from jisr.settings import Settings

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

# The update types Jisr acts on; asking Telegram for no others saves traffic
# (edits and channel posts would only be parsed into nothing).
ALLOWED_UPDATES: tuple[str, ...] = ("message", "callback_query", "my_chat_member")

# The payload the gateway already treats as "stop messaging me" (a platform opt-out).
OPT_OUT_PAYLOAD = "/opt_out"

MAX_TEXT = int(MessageLimit.MAX_TEXT_LENGTH)                 # 4096, counted in UTF-16 code units
MAX_CALLBACK_DATA = int(InlineKeyboardButtonLimit.MAX_CALLBACK_DATA)  # 64 bytes
_SHORT_ID_MARK = "~"
_SHORT_ID_HEX = 10
_MAX_REMEMBERED_PAYLOADS = 10_000

# setWebhook's own rule for secret_token: 1-256 characters A-Z, a-z, 0-9, _ and -.
_SECRET_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

# Telegram 403 descriptions that mean the person cannot be reached on this
# channel any more: treated as an opt-out, as courier's ErrContactStopped does.
# Other 403s ("bot can't initiate conversation with a user") are permanent
# failures but not an opt-out: the person never started the bot.
_STOPPED_403 = ("bot was blocked by the user", "user is deactivated", "bot was kicked")

# Telegram sends no mime type for these; the values are what Telegram serves.
_PHOTO_MIME = "image/jpeg"
_VIDEO_NOTE_MIME = "video/mp4"

UpdateHandler = Callable[[InboundEvent], Awaitable[None]]


# --------------------------------------------------------------------------- errors


def _retry_after_seconds(err: RetryAfter) -> float:
    # PTB 22 returns an int or a timedelta depending on PTB_TIMEDELTA, and warns
    # about the int form: accept both and keep the deprecation out of the logs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = err.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def error_from_telegram(err: TelegramError) -> SendError:
    """The one mapping from a python-telegram-bot error to a Jisr error with its policy.

    Order matters: ``BadRequest`` and ``TimedOut`` are subclasses of ``NetworkError``.
    """
    message = str(err)
    if isinstance(err, RetryAfter):
        return Throttled(message, code="429", retry_after=_retry_after_seconds(err))
    if isinstance(err, Forbidden):
        if any(reason in message.lower() for reason in _STOPPED_403):
            return ContactStopped(message, code="403")
        return PermanentSendError(message, code="403")
    if isinstance(err, BadRequest):
        return PermanentSendError(message, code="400")
    if isinstance(err, TimedOut):
        return TransientSendError(message, code="timeout")
    if isinstance(err, NetworkError):
        # Connection refused/reset and every 5xx: PTB raises NetworkError for both.
        return TransientSendError(message, code="network")
    if isinstance(err, InvalidToken):
        return PermanentSendError("the bot token was rejected", code="401")
    if isinstance(err, ChatMigrated):
        # A group became a supergroup: the address itself is stale; the new id is in the error.
        return PermanentSendError(message, code="chat_migrated")
    if isinstance(err, Conflict):
        return PermanentSendError(message, code="409")
    return PermanentSendError(message, code="telegram")


# --------------------------------------------------------------------------- logging


_REDACTED = "<redacted>"
_tokens_to_redact: set[str] = set()
_redaction_installed = False


class _RedactFilter(logging.Filter):
    """Keep bot tokens, chat ids and texts out of PTB's and httpx's log records.

    PTB logs call parameters and results at DEBUG (chat ids, texts) and its base
    URL (with the token); httpx logs each request URL at INFO (with the token).
    """

    def __init__(self, keep_identifiers_only: bool) -> None:
        super().__init__()
        self.keep_identifiers_only = keep_identifiers_only

    def filter(self, record: logging.LogRecord) -> bool:
        if self.keep_identifiers_only and record.args:
            # Endpoint names ("sendMessage") are identifiers and safe; parameters,
            # results and URLs are not.
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(a if isinstance(a, str) and a.isidentifier() else _REDACTED for a in args)
        if _tokens_to_redact:
            rendered = record.getMessage()
            if any(token in rendered for token in _tokens_to_redact):
                for token in _tokens_to_redact:
                    rendered = rendered.replace(token, _REDACTED)
                record.msg, record.args = rendered, ()
        return True


def _install_log_redaction(token: str) -> None:
    """Register a token to redact and, once per process, attach the filters."""
    global _redaction_installed
    # File download URLs carry the token percent-encoded ("123:abc" → "123%3Aabc").
    _tokens_to_redact.update({token, quote(token, safe="")})
    if _redaction_installed:
        return
    # PTB's logger names (telegram/_utils/logging.py: get_logger).
    for name in ("telegram.Bot", "telegram.ext.ExtBot", "telegram.request.BaseRequest", "telegram.request.HTTPXRequest"):
        logging.getLogger(name).addFilter(_RedactFilter(keep_identifiers_only=True))
    logging.getLogger("httpx").addFilter(_RedactFilter(keep_identifiers_only=False))
    _redaction_installed = True


# --------------------------------------------------------------------------- text helpers


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split ``text`` into chunks Telegram accepts (``limit`` UTF-16 code units each).

    Telegram counts length in UTF-16 code units (an emoji counts 2). Cuts at a
    paragraph break, else the last line break or space within the limit, so
    words stay whole; a word longer than the limit is cut hard.
    """
    chunks: list[str] = []
    rest = text
    while _utf16_len(rest) > limit:
        # The longest prefix within the limit, in characters.
        end, units = 0, 0
        for end, char in enumerate(rest):
            units += 2 if ord(char) > 0xFFFF else 1
            if units > limit:
                break
        window = rest[:end]
        # A paragraph break in the second half of the window beats a later line
        # break or space: parts then read as whole paragraphs.
        cut = next((i for i in (window.rfind(sep) for sep in ("\n\n", "\n")) if i > len(window) // 2), -1)
        if cut <= 0:
            cut = max(window.rfind("\n"), window.rfind(" "))
        if cut <= 0:
            cut = end
        chunk, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if chunk:
            chunks.append(chunk)
    if rest.strip() or not chunks:
        chunks.append(rest)
    return chunks


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def _chat_address(chat_id: int) -> str:
    return f"{Channel.TELEGRAM.value}:{chat_id}"


# --------------------------------------------------------------------------- connector


class TelegramConnector(Connector):
    """The Telegram channel, one bot per instance."""

    channel = Channel.TELEGRAM

    def __init__(
        self,
        token: str,
        secret_token: str,
        api_base: str = "https://api.telegram.org",
        *,
        timeout: float = 10.0,
        poll_timeout: int = 30,
        payload_store: Optional[MutableMapping[str, str]] = None,
        pending_callbacks: int = 1024,
    ) -> None:
        """Build the connector.

        ``timeout`` bounds each Bot API call (connect, write and read);
        ``poll_timeout`` is the long-polling wait of :meth:`poll`.
        ``payload_store`` maps shortened callback data back to full button
        payloads: the default lives in this process only; pass a shared
        mapping (e.g. Redis-backed) when the sender and the webhook run in
        different processes.
        """
        if not token:
            raise ValueError("a Telegram bot token is required")
        self._token = token
        self._secret = secret_token
        self.api_base = api_base.rstrip("/")
        self.poll_timeout = poll_timeout
        _install_log_redaction(token)
        # PTB builds the calls; aiohttp carries them (connectors/http.py: httpx cost ~5x the CPU),
        # with a connection per job in flight in a send worker.
        self._request = AiohttpRequest(timeout=timeout)
        # getUpdates holds its connection open for poll_timeout seconds; PTB adds
        # that to this read timeout, so it needs its own request object.
        self._updates_request = AiohttpRequest(timeout=timeout, connections=1)
        self.bot = telegram.Bot(
            token,
            base_url=f"{self.api_base}/bot",
            base_file_url=f"{self.api_base}/file/bot",
            request=self._request,
            get_updates_request=self._updates_request,
        )
        self._payloads: MutableMapping[str, str] = payload_store if payload_store is not None else OrderedDict()
        # update_id -> callback_query id, so acknowledge() can stop the button's spinner.
        self._callbacks: OrderedDict[str, str] = OrderedDict()
        self._max_callbacks = pending_callbacks

    @classmethod
    def from_settings(cls, settings: "Settings") -> "TelegramConnector":
        """The connector for ``jisr.settings.Settings`` (token, secret token, API base)."""
        return cls(
            token=settings.telegram_bot_token,
            secret_token=settings.telegram_secret_token,
            api_base=settings.telegram_api_base,
        )

    # ------------------------------------------------------------------ inbound

    def verify(self, request: WebhookRequest) -> None:
        """Raise WebhookForbidden unless the secret-token header equals the configured secret."""
        given = request.header(SECRET_HEADER)
        if not given or not self._secret:
            raise WebhookForbidden("missing Telegram secret token")
        # Constant time, on bytes: compare_digest refuses non-ASCII str.
        if not hmac.compare_digest(given.encode("utf-8"), self._secret.encode("utf-8")):
            raise WebhookForbidden("wrong Telegram secret token")

    def parse(self, request: WebhookRequest) -> list[InboundEvent]:
        """The normalised messages in one webhook Update (see :meth:`parse_update`)."""
        try:
            data = json.loads(request.body)
        except (UnicodeDecodeError, ValueError):
            raise MalformedPayload("the body is not JSON: a Telegram Update is a JSON object") from None
        return self.parse_update(data)

    def parse_update(self, data: Any) -> list[InboundEvent]:
        """The normalised messages in one Update given as decoded JSON (webhook or getUpdates).

        Only the parts Jisr handles are handed to python-telegram-bot: an update
        type Jisr ignores is never parsed, so a new or odd Telegram type cannot
        turn into a 400 that Telegram would keep re-sending.
        """
        if not isinstance(data, dict):
            raise MalformedPayload("a Telegram Update is a JSON object")
        update_id = data.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            raise MalformedPayload("not a Telegram Update: no integer update_id")
        try:
            if "message" in data:
                return self._from_message(update_id, _section(data, "message"))
            if "callback_query" in data:
                return self._from_callback(update_id, _section(data, "callback_query"))
            if "my_chat_member" in data:
                return self._from_chat_member(update_id, _section(data, "my_chat_member"))
        except MalformedPayload:
            raise
        except (TypeError, KeyError, ValueError, AttributeError, OverflowError, OSError) as exc:
            # OverflowError, OSError: a date or duration out of range (datetime.fromtimestamp, timedelta).
            # No payload content in the reason: it would carry chat ids and texts.
            raise MalformedPayload(f"not a Telegram Update: {type(exc).__name__} in update {update_id}") from None
        # edited_message (Jisr answers the first version only), channel_post,
        # edited_channel_post, inline_query, poll, message_reaction, ...: nothing for Jisr.
        return []

    def _from_message(self, update_id: int, raw: dict[str, Any]) -> list[InboundEvent]:
        message = Message.de_json(raw, None)
        if message.chat is None or not isinstance(message.chat.id, int):
            raise MalformedPayload("not a Telegram Update: message without chat")
        text = _string(message.text, "text") or _string(message.caption, "caption") or ""
        media: tuple[Media, ...] = ()
        location: Optional[Location] = None
        if message.voice:
            media = (Media(MediaKind.AUDIO, provider_id=message.voice.file_id, mime_type=message.voice.mime_type),)
        elif message.audio:
            media = (Media(MediaKind.AUDIO, provider_id=message.audio.file_id, mime_type=message.audio.mime_type),)
        elif message.photo:
            largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
            media = (Media(MediaKind.IMAGE, provider_id=largest.file_id, mime_type=_PHOTO_MIME),)
        elif message.video:
            media = (Media(MediaKind.VIDEO, provider_id=message.video.file_id, mime_type=message.video.mime_type),)
        elif message.video_note:
            media = (Media(MediaKind.VIDEO, provider_id=message.video_note.file_id, mime_type=_VIDEO_NOTE_MIME),)
        elif message.animation:
            # Checked before document: Telegram sends a GIF as both "animation" and "document".
            media = (Media(MediaKind.VIDEO, provider_id=message.animation.file_id, mime_type=message.animation.mime_type),)
        elif message.document:
            media = (Media(MediaKind.DOCUMENT, provider_id=message.document.file_id, mime_type=message.document.mime_type),)
        elif message.sticker:
            media = (Media(MediaKind.STICKER, provider_id=message.sticker.file_id, mime_type=_sticker_mime(message.sticker)),)
        if message.venue:
            venue_location = message.venue.location
            location = Location(venue_location.latitude, venue_location.longitude, label=message.venue.title)
        elif message.location:
            location = Location(message.location.latitude, message.location.longitude)
        if not text and not media and location is None:
            # Service messages (member joined, pinned, ...), contacts, polls, dice:
            # nothing a family says to the assistant.
            return []
        user = message.from_user
        return [
            InboundMessage(
                channel=self.channel,
                address=_chat_address(message.chat.id),
                provider_message_id=str(update_id),
                text=text,
                media=media,
                location=location,
                received_at=message.date,
                language_hint=_string(user.language_code, "language_code") if user else None,
            )
        ]

    def _from_callback(self, update_id: int, raw: dict[str, Any]) -> list[InboundEvent]:
        query = telegram.CallbackQuery.de_json(raw, None)
        if query.data is None:
            return []  # a game button: Jisr sends none
        _string(query.data, "callback data")
        if query.message is not None and query.message.chat is not None:
            chat_id = query.message.chat.id
        else:
            # A button on an inline-mode message carries no message; in a private
            # chat the chat id is the user's id.
            chat_id = query.from_user.id
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            raise MalformedPayload("not a Telegram Update: callback query without a chat id")
        self._remember_callback(str(update_id), query.id)
        return [
            InboundMessage(
                channel=self.channel,
                address=_chat_address(chat_id),
                provider_message_id=str(update_id),
                button_payload=self._payloads.get(query.data, query.data),
                language_hint=_string(query.from_user.language_code, "language_code"),
            )
        ]

    def _from_chat_member(self, update_id: int, raw: dict[str, Any]) -> list[InboundEvent]:
        # The person blocked the bot (in a private chat, the bot's new status is
        # "kicked"). The interface has no opt-out event and a StatusUpdate is a
        # receipt for a message Jisr sent, so this becomes an InboundMessage with
        # the opt-out payload the gateway already honours, and no text: the
        # gateway records the opt-out and must not reply (Telegram would refuse
        # anyway with 403). Unblocking ("member") needs nothing: the person's
        # next message, usually /start, speaks for itself.
        new_status = (raw.get("new_chat_member") or {}).get("status")
        if new_status != "kicked":
            return []
        member = telegram.ChatMemberUpdated.de_json(raw, None)
        return [
            InboundMessage(
                channel=self.channel,
                address=_chat_address(member.chat.id),
                provider_message_id=str(update_id),
                text="",
                button_payload=OPT_OUT_PAYLOAD,
                received_at=member.date,
                language_hint=_string(member.from_user.language_code, "language_code") if member.from_user else None,
            )
        ]

    def _remember_callback(self, update_id: str, callback_query_id: str) -> None:
        self._callbacks[update_id] = callback_query_id
        while len(self._callbacks) > self._max_callbacks:
            self._callbacks.popitem(last=False)

    async def acknowledge(self, event: InboundEvent) -> None:
        """Answer the callback query behind a button press, so the button stops spinning.

        Telegram shows a progress indicator on the pressed button until
        answerCallbackQuery; call this after :meth:`parse`, in the same process.
        A no-op for anything but a button press; failures are not worth a retry.
        """
        callback_query_id = self._callbacks.pop(event.provider_message_id, None)
        if callback_query_id is None:
            return
        try:
            await self.bot.answer_callback_query(callback_query_id)
        except TelegramError as err:
            logger.info("answerCallbackQuery failed: %s", type(err).__name__)

    # ------------------------------------------------------------------ outbound

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send a text (split past 4096 characters) with inline buttons under its last part.

        Returns the first part's message id. If a later part fails, the earlier
        ones were delivered: the raised error says what to do about the rest.
        """
        if message.channel != self.channel or not message.address.startswith(f"{self.channel.value}:"):
            raise PermanentSendError("not a Telegram address", code="address")
        chat_id = address_id(message.address)
        if not message.text.strip():
            raise PermanentSendError("Telegram refuses an empty text", code="empty_text")
        markup = self._keyboard(message.buttons)
        parts = split_text(message.text)
        first_id: Optional[str] = None
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            sent = await self._call(self.bot.send_message(chat_id=chat_id, text=part, reply_markup=markup if last else None))
            if first_id is None:
                first_id = str(sent.message_id)
        assert first_id is not None  # split_text returns at least one part
        return SendResult(provider_message_id=first_id)

    def _keyboard(self, buttons: Sequence[Button]) -> Optional[InlineKeyboardMarkup]:
        # One button per row: titles in Arabic or German are long, and a column
        # reads the same on every phone.
        if not buttons:
            return None
        return InlineKeyboardMarkup(
            [[InlineKeyboardButton(text=button.title, callback_data=self.callback_data(button.payload))] for button in buttons]
        )

    def callback_data(self, payload: str) -> str:
        """``payload`` as Telegram callback data (at most 64 bytes).

        A longer payload keeps its start (a Rasa payload starts with its intent)
        plus a short hash id, and is remembered so :meth:`parse` restores it.
        """
        if len(payload.encode("utf-8")) <= MAX_CALLBACK_DATA:
            return payload
        short_id = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:_SHORT_ID_HEX]
        head = _truncate_utf8(payload, MAX_CALLBACK_DATA - len(_SHORT_ID_MARK) - _SHORT_ID_HEX)
        data = f"{head}{_SHORT_ID_MARK}{short_id}"
        self._payloads[data] = payload
        if isinstance(self._payloads, OrderedDict):
            # The in-process default: bounded, the most recently sent kept.
            self._payloads.move_to_end(data)
            while len(self._payloads) > _MAX_REMEMBERED_PAYLOADS:
                self._payloads.popitem(last=False)
        return data

    async def _call(self, call: Awaitable[Any]) -> Any:
        """Await one Bot API call, turning PTB's errors into Jisr's (the one place it happens)."""
        try:
            return await call
        except TelegramError as err:
            raise error_from_telegram(err) from err

    async def set_webhook(self, url: str, *, drop_pending_updates: bool = False) -> bool:
        """Point Telegram at ``url`` with the secret token and the update types Jisr handles."""
        if not _SECRET_TOKEN_RE.match(self._secret):
            raise ValueError("the Telegram secret token must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return bool(
            await self._call(
                self.bot.set_webhook(
                    url,
                    secret_token=self._secret,
                    allowed_updates=list(ALLOWED_UPDATES),
                    drop_pending_updates=drop_pending_updates,
                )
            )
        )

    async def delete_webhook(self, *, drop_pending_updates: bool = False) -> bool:
        """Remove the webhook (needed before long polling)."""
        return bool(await self._call(self.bot.delete_webhook(drop_pending_updates=drop_pending_updates)))

    async def download(self, file_id: str) -> bytes:
        """The bytes of a file a family sent (``Media.provider_id``), via getFile.

        The download URL embeds the bot token: it is never returned or stored.
        """
        file = await self._call(self.bot.get_file(file_id))
        return bytes(await self._call(file.download_as_bytearray()))

    async def poll(
        self,
        handler: UpdateHandler,
        *,
        stop: Optional[asyncio.Event] = None,
        idle_delay: float = 1.0,
    ) -> None:
        """Long-polling for development: getUpdates in a loop, each event to ``handler``.

        Removes the webhook first (Telegram refuses getUpdates while one is set).
        Each update is confirmed (offset) once handled, even if the handler
        failed: a poison update must not block the loop. Throttling and network
        errors pause, then the loop goes on; it ends when ``stop`` is set.
        """
        stop = stop or asyncio.Event()
        await self.delete_webhook()
        offset: Optional[int] = None
        while not stop.is_set():
            try:
                updates = await self._call(
                    self.bot.get_updates(offset=offset, timeout=self.poll_timeout, allowed_updates=list(ALLOWED_UPDATES))
                )
            except (Throttled, TransientSendError) as err:
                await _sleep_or_stop(stop, err.retry_after or idle_delay)
                continue
            for update in updates:
                offset = update.update_id + 1
                try:
                    events = self.parse_update(update.to_dict())
                except MalformedPayload as err:
                    logger.warning("skipped a Telegram update: %s", err)
                    continue
                for event in events:
                    try:
                        await handler(event)
                        await self.acknowledge(event)
                    except Exception:  # noqa: BLE001 - keep polling whatever the handler does
                        logger.exception("the Telegram update handler failed (update %s)", update.update_id)
                if stop.is_set():
                    break

    async def close(self) -> None:
        """Close the HTTP clients (the Bot was never "initialized": that would call getMe)."""
        await asyncio.gather(self._request.shutdown(), self._updates_request.shutdown())


def _string(value: Any, name: str) -> Optional[str]:
    """A string field as python-telegram-bot left it (it checks no types): a string or None."""
    if value is not None and not isinstance(value, str):
        raise MalformedPayload(f"not a Telegram Update: {name} is not a string")
    return value


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise MalformedPayload(f"not a Telegram Update: {key} is not an object")
    return value


def _sticker_mime(sticker: telegram.Sticker) -> str:
    if sticker.is_animated:
        return "application/x-tgsticker"
    if sticker.is_video:
        return "video/webm"
    return "image/webp"


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
