"""A local Telegram Bot API: the subset Jisr uses, with Telegram's own formats and errors.

Bot API: ``POST`` (or ``GET``) ``/bot{token}/{method}`` with JSON, form or
query parameters, answered ``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": ..., "description": ...}`` like api.telegram.org.
Methods: getMe, sendMessage, setWebhook, deleteWebhook, getWebhookInfo,
getUpdates (long polling), answerCallbackQuery, getFile; files at
``GET /file/bot{token}/{file_path}``.

Simulator control (besides the shared /_sim/requests, /_sim/fail, /_sim/reset):
- ``POST /_sim/inbound``: build a real Update and POST it to a webhook with the
  secret-token header, re-sending the same update_id on non-2xx as Telegram does.
- ``POST /_sim/queue_update``: queue an Update for getUpdates.
- ``GET /_sim/deliveries``: the webhook deliveries made so far.

Everything is kept in memory and nothing is logged: chat ids and texts stay
out of the logs here too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qsl

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from jisr.simulators.base import Failure, SimulatorState, mount_control, redelivery_delays

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT = 4096              # UTF-16 code units
MAX_CALLBACK_DATA = 64       # bytes
MAX_LONG_POLL = 50.0         # Telegram caps getUpdates' timeout at 50 s
_SECRET_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

# Parameters Telegram expects as JSON-serialised strings in form bodies
# (python-telegram-bot sends them that way).
_JSON_PARAMS = frozenset({"reply_markup", "allowed_updates", "entities", "caption_entities", "link_preview_options", "reply_parameters"})
_INT_PARAMS = frozenset({"chat_id", "offset", "limit", "timeout", "message_id", "message_thread_id", "cache_time", "max_connections"})
_BOOL_PARAMS = frozenset({"drop_pending_updates", "disable_notification", "protect_content", "show_alert"})


class TelegramSimState(SimulatorState):
    """Recorded requests, planned failures, and Telegram's own state (webhook, updates, ids)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 123456
        self.bot_user: dict[str, Any] = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Jisr",
            "username": "jisr_dev_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self._clear()

    def _clear(self) -> None:
        self.webhook: dict[str, Any] = {}
        self.pending_updates: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self._message_ids: dict[str, int] = {}
        self._next_update_id = 810_000_001
        self._next_callback_id = 4_388_105_221_977_652_001

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._clear()

    def next_message_id(self, chat_id: Any) -> int:
        # Telegram numbers messages per chat, from 1 upwards.
        with self._lock:
            current = self._message_ids.get(str(chat_id), 0) + 1
            self._message_ids[str(chat_id)] = current
            return current

    def next_update_id(self, wanted: Optional[int] = None) -> int:
        with self._lock:
            if wanted is not None:
                self._next_update_id = max(self._next_update_id, wanted + 1)
                return wanted
            value = self._next_update_id
            self._next_update_id += 1
            return value

    def next_callback_id(self) -> str:
        with self._lock:
            self._next_callback_id += 1
            return str(self._next_callback_id)


# --------------------------------------------------------------------------- helpers


def _ok(result: Any, description: Optional[str] = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return JSONResponse(body)


def _error(code: int, description: str, parameters: Optional[dict[str, Any]] = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=code)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _coerce(key: str, value: Any) -> Any:
    """A form/query string parameter as the type Telegram reads it."""
    if not isinstance(value, str):
        return value
    if key in _JSON_PARAMS:
        try:
            return json.loads(value)
        except ValueError:
            return value
    if key in _INT_PARAMS and re.fullmatch(r"-?\d+", value):
        return int(value)
    if key in _BOOL_PARAMS:
        return value.lower() in ("true", "1")
    return value


async def _read_params(request: Request) -> tuple[dict[str, Any], str]:
    """Parameters from the query string and the body, whatever the encoding, and that encoding."""
    params: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    encoding = "query"
    if body:
        if content_type == "application/json":
            loaded = json.loads(body)
            if not isinstance(loaded, dict):
                raise ValueError("a JSON body must be an object")
            params.update(loaded)
            encoding = "json"
        elif content_type == "application/x-www-form-urlencoded":
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            encoding = "form"
        else:
            # multipart (file uploads): Jisr uploads nothing, so the simulator does not parse it.
            raise ValueError(f"unsupported content type {content_type or 'none'}")
    return {key: _coerce(key, value) for key, value in params.items()}, encoding


def _chat(chat_id: Any) -> dict[str, Any]:
    """A realistic Chat for an id: positive ids are private chats with a person."""
    if isinstance(chat_id, int) and chat_id > 0:
        return {"id": chat_id, "first_name": "Amina", "type": "private"}
    if isinstance(chat_id, int) and str(chat_id).startswith("-100"):
        return {"id": chat_id, "title": "Parents d'élèves", "type": "supergroup"}
    if isinstance(chat_id, int):
        return {"id": chat_id, "title": "Parents d'élèves", "type": "group"}
    return {"id": -1001000000001, "title": str(chat_id), "username": str(chat_id).lstrip("@"), "type": "channel"}


def _user(chat_id: Any, language_code: Optional[str]) -> dict[str, Any]:
    user: dict[str, Any] = {"id": chat_id if isinstance(chat_id, int) and chat_id > 0 else 5_000_000_001, "is_bot": False, "first_name": "Amina"}
    if language_code:
        user["language_code"] = language_code
    return user


def _check_keyboard(markup: Any) -> Optional[str]:
    """Telegram's complaint about an inline keyboard, or None when it is valid."""
    if not isinstance(markup, dict):
        return "Bad Request: can't parse reply keyboard markup JSON object"
    rows = markup.get("inline_keyboard")
    if rows is None:
        return None  # a reply keyboard or force_reply: not checked here
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        return "Bad Request: can't parse inline keyboard button: field \"inline_keyboard\" must be an Array of Arrays"
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not button.get("text"):
                return "Bad Request: can't parse inline keyboard button: Text must be non-empty"
            data = button.get("callback_data")
            if data is None and "url" not in button:
                return "Bad Request: can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
            if data is not None and not 1 <= len(str(data).encode("utf-8")) <= MAX_CALLBACK_DATA:
                return "Bad Request: BUTTON_DATA_INVALID"
    return None


def _failure_response(failure: Failure) -> Optional[JSONResponse]:
    """Telegram's answer to an injected failure (None: a timeout, handled by the caller)."""
    if failure.blocked:
        return _error(403, "Forbidden: bot was blocked by the user")
    status = failure.status or 500
    if status == 429:
        retry_after = int(failure.retry_after if failure.retry_after is not None else 1)
        return _error(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})
    if status == 400:
        return _error(400, "Bad Request: injected failure")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _error(status, phrase)


# --------------------------------------------------------------------------- updates


def build_update(spec: dict[str, Any], update_id: int, bot_user: dict[str, Any], callback_id: str = "1") -> dict[str, Any]:
    """A real Bot API Update from a short spec (kind, chat_id, text, language_code, data, ...)."""
    kind = spec.get("kind", "text")
    chat_id = int(spec.get("chat_id", 5_012_345_678))
    text = spec.get("text") or ""
    user = _user(chat_id, spec.get("language_code"))
    chat = _chat(chat_id)
    now = int(spec.get("date") or time.time())
    message_id = int(spec.get("message_id") or 1000 + update_id % 1000)
    message: dict[str, Any] = {"message_id": message_id, "from": user, "chat": chat, "date": now}
    digest = hashlib.sha1(f"{update_id}:{kind}".encode()).hexdigest()

    def file_ids(prefix: str) -> dict[str, str]:
        return {"file_id": f"{prefix}AAxkBAAI{digest[:24]}", "file_unique_id": f"AgAD{digest[24:36]}"}

    if kind == "text":
        message["text"] = text
        if text.startswith("/"):
            message["entities"] = [{"offset": 0, "length": len(text.split()[0]), "type": "bot_command"}]
    elif kind == "voice":
        message["voice"] = {"duration": 6, "mime_type": "audio/ogg", **file_ids("AwACAgQ"), "file_size": 23040}
    elif kind == "photo":
        message["photo"] = [
            {**file_ids("AgACAgQ"), "file_size": size, "width": width, "height": height}
            for size, width, height in ((1_534, 90, 67), (21_760, 320, 240), (87_412, 800, 600), (160_224, 1280, 960))
        ]
        # All sizes of one photo share the file_unique_id prefix but not the file_id.
        for index, photo in enumerate(message["photo"]):
            photo["file_id"] += f"{index}"
        if text:
            message["caption"] = text
    elif kind == "document":
        message["document"] = {"file_name": spec.get("file_name", "certificat_scolarite.pdf"), "mime_type": spec.get("mime_type", "application/pdf"), **file_ids("BQACAgQ"), "file_size": 182_734}
        if text:
            message["caption"] = text
    elif kind == "location":
        message["location"] = {"latitude": float(spec.get("latitude", 45.764043)), "longitude": float(spec.get("longitude", 4.835659))}
    elif kind == "callback":
        bot_message = {
            "message_id": message_id,
            "from": bot_user,
            "chat": chat,
            "date": now - 30,
            "text": spec.get("question", "Dans quel pays habitez-vous ?"),
            "reply_markup": {"inline_keyboard": [[{"text": "France", "callback_data": spec.get("data", "")}]]},
        }
        return {
            "update_id": update_id,
            "callback_query": {"id": callback_id, "from": user, "message": bot_message, "chat_instance": "-4761234567890123456", "data": spec.get("data", "")},
        }
    elif kind == "edited":
        message["text"] = text
        message["edit_date"] = now + 20
        return {"update_id": update_id, "edited_message": message}
    elif kind == "blocked":
        return {
            "update_id": update_id,
            "my_chat_member": {
                "chat": chat,
                "from": user,
                "date": now,
                "old_chat_member": {"user": bot_user, "status": "member"},
                "new_chat_member": {"user": bot_user, "status": "kicked", "until_date": 0},
            },
        }
    else:
        raise ValueError(f"unknown kind {kind!r}: text, voice, photo, document, location, callback, edited or blocked")
    return {"update_id": update_id, "message": message}


# --------------------------------------------------------------------------- app


def create_app(token: str = "123456:dev") -> FastAPI:
    """The simulator app for one bot token."""
    app = FastAPI(title="Telegram Bot API simulator")
    state = TelegramSimState(token)
    mount_control(app, state)

    @app.api_route("/bot{given_token}/{method}", methods=["GET", "POST"])
    async def bot_api(given_token: str, method: str, request: Request) -> Response:
        try:
            params, encoding = await _read_params(request)
        except (ValueError, UnicodeDecodeError) as exc:
            state.record(method=method, params={}, encoding="invalid")
            return _error(400, f"Bad Request: {exc}")
        authorized = hmac.compare_digest(given_token.encode("utf-8"), token.encode("utf-8"))
        entry = state.record(method=method, params=params, encoding=encoding, authorized=authorized)
        if not authorized:
            return _error(401, "Unauthorized")
        handler = METHODS.get(method.lower())
        if handler is None:
            return _error(404, "Not Found")
        chat_id = params.get("chat_id")
        failure = state.plan.next_failure(f"telegram:{chat_id}" if chat_id is not None else None)
        if failure is None and chat_id is not None and str(chat_id) in state.plan.blocked_addresses:
            failure = Failure(blocked=True)
        if failure is not None:
            if failure.timeout and not failure.blocked:
                await asyncio.sleep(failure.timeout)
                return _error(504, "Gateway Timeout")
            response = _failure_response(failure)
            if response is not None:
                entry["http_status"] = response.status_code
                return response
        response = await handler(state, params)
        entry["http_status"] = response.status_code
        if response.status_code == 200 and method.lower() == "sendmessage":
            entry["message_id"] = json.loads(response.body).get("result", {}).get("message_id")
        return response

    @app.get("/file/bot{given_token}/{file_path:path}")
    def file(given_token: str, file_path: str) -> Response:
        if not hmac.compare_digest(given_token.encode("utf-8"), token.encode("utf-8")):
            return _error(401, "Unauthorized")
        content = state.files.get(file_path)
        if content is None:
            return _error(404, "Not Found")
        return Response(content, media_type="application/octet-stream")

    @app.post("/_sim/inbound")
    async def inbound(spec: dict[str, Any]) -> dict[str, Any]:
        """Build an Update and deliver it to the webhook, re-sending it on non-2xx up to ``retries`` times."""
        url = spec.get("webhook_url") or state.webhook.get("url")
        if not url:
            raise HTTPException(400, "no webhook_url and no webhook set")
        secret = spec["secret_token"] if "secret_token" in spec else state.webhook.get("secret_token")
        wanted = spec.get("update_id")
        update_id = state.next_update_id(int(wanted) if wanted is not None else None)
        try:
            update = build_update(spec, update_id, state.bot_user, state.next_callback_id())
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        waits = redelivery_delays(int(spec.get("retries", 0)), float(spec.get("retry_delay", 0.0)), spec.get("retry_delays"))
        statuses = await _deliver(url, secret, update, len(waits), 0.0, waits)
        delivery = {"update_id": update_id, "statuses": statuses, "delivered": bool(statuses) and 200 <= statuses[-1] < 300}
        with state._lock:
            state.deliveries.append(delivery)
        return {**delivery, "update": update}

    @app.get("/_sim/deliveries")
    def deliveries() -> dict[str, Any]:
        return {"deliveries": state.deliveries}

    @app.post("/_sim/queue_update")
    def queue_update(spec: dict[str, Any]) -> dict[str, Any]:
        """Queue an Update for getUpdates: ``{"update": {...}}`` as is, or a spec as for /_sim/inbound."""
        if isinstance(spec.get("update"), dict):
            update = dict(spec["update"])
            update["update_id"] = state.next_update_id(update.get("update_id"))
        else:
            wanted = spec.get("update_id")
            update_id = state.next_update_id(int(wanted) if wanted is not None else None)
            try:
                update = build_update(spec, update_id, state.bot_user, state.next_callback_id())
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
        with state._lock:
            state.pending_updates.append(update)
        return {"update_id": update["update_id"], "update": update}

    return app


async def _deliver(
    url: str, secret: Optional[str], update: dict[str, Any], retries: int, retry_delay: float, waits: Optional[list[float]] = None
) -> list[int]:
    """POST one update like Telegram: same update_id on every attempt; 0 for a connection failure."""
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SECRET_HEADER] = secret
    body = json.dumps(update, ensure_ascii=False).encode("utf-8")
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        for attempt in range(1 + max(retries, 0)):
            wait = (waits[attempt - 1] if waits is not None else retry_delay) if attempt else 0.0
            if wait:
                await asyncio.sleep(wait)
            try:
                response = await client.post(url, content=body, headers=headers)
                statuses.append(response.status_code)
            except httpx.HTTPError:
                statuses.append(0)
                continue
            if 200 <= response.status_code < 300:
                break
    return statuses


# --------------------------------------------------------------------------- methods


async def _get_me(state: TelegramSimState, params: dict[str, Any]) -> JSONResponse:
    return _ok(state.bot_user)


async def _send_message(state: TelegramSimState, params: dict[str, Any]) -> JSONResponse:
    chat_id = params.get("chat_id")
    if chat_id in (None, ""):
        return _error(400, "Bad Request: chat_id is empty")
    text = params.get("text")
    if not isinstance(text, str) or not text.strip():
        return _error(400, "Bad Request: message text is empty")
    if _utf16_len(text) > MAX_TEXT:
        return _error(400, "Bad Request: message is too long")
    markup = params.get("reply_markup")
    if markup is not None:
        complaint = _check_keyboard(markup)
        if complaint:
            return _error(400, complaint)
    message: dict[str, Any] = {
        "message_id": state.next_message_id(chat_id),
        "from": state.bot_user,
        "chat": _chat(chat_id),
        "date": int(time.time()),
        "text": text,
    }
    if params.get("entities"):
        message["entities"] = params["entities"]
    if markup is not None:
        message["reply_markup"] = markup
    return _ok(message)


async def _set_webhook(state: TelegramSimState, params: dict[str, Any]) -> JSONResponse:
    url = params.get("url")
    if not url:
        return await _delete_webhook(state, params)  # Telegram: an empty url removes the webhook
    secret = params.get("secret_token")
    if secret is not None and not _SECRET_TOKEN_RE.match(str(secret)):
        return _error(400, "Bad Request: secret token contains unallowed characters")
    with state._lock:
        state.webhook = {"url": url, "secret_token": secret, "allowed_updates": params.get("allowed_updates")}
        if params.get("drop_pending_updates"):
            state.pending_updates.clear()
    return _ok(True, "Webhook was set")


async def _delete_webhook(state: TelegramSimState, params: dict[str, Any]) -> JSONResponse:
    with state._lock:
        had = bool(state.webhook)
        state.webhook = {}
        if params.get("drop_pending_updates"):
            state.pending_updates.clear()
    return _ok(True, "Webhook was deleted" if had else "Webhook is already deleted")


async def _get_webhook_info(state: TelegramSimState, params: dict[str, Any]) -> JSONResponse:
    info: dict[str, Any] = {"url": state.webhook.get("url", ""), "has_custom_certificate": False, "pending_update_count": len(state.pending_updates)}
    if state.webhook.get("allowed_updates"):
        info["allowed_updates"] = state.webhook["allowed_updates"]
    return _ok(info)


async def _get_updates(state: TelegramSimState, params: dict[str, Any]) -> JSONResponse:
    if state.webhook:
        return _error(409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first")
    offset = params.get("offset")
    limit = max(1, min(int(params.get("limit") or 100), 100))
    timeout = max(0.0, min(float(params.get("timeout") or 0), MAX_LONG_POLL))
    allowed = params.get("allowed_updates") or None
    deadline = time.monotonic() + timeout
    while True:
        with state._lock:
            if isinstance(offset, int) and offset > 0:
                # An offset confirms every update before it: Telegram forgets them.
                state.pending_updates = [u for u in state.pending_updates if u["update_id"] >= offset]
            batch = [u for u in state.pending_updates if not allowed or any(key in u for key in allowed)][:limit]
        if batch or time.monotonic() >= deadline:
            return _ok(batch)
        await asyncio.sleep(0.02)


async def _answer_callback_query(state: TelegramSimState, params: dict[str, Any]) -> JSONResponse:
    if not params.get("callback_query_id"):
        return _error(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
    return _ok(True)


async def _get_file(state: TelegramSimState, params: dict[str, Any]) -> JSONResponse:
    file_id = params.get("file_id")
    if not file_id:
        return _error(400, "Bad Request: invalid file_id")
    digest = hashlib.sha1(str(file_id).encode()).hexdigest()
    path = f"documents/file_{digest[:12]}.bin"
    content = b"jisr simulated file " + str(file_id).encode()
    with state._lock:
        state.files[path] = content
    return _ok({"file_id": file_id, "file_unique_id": f"AgAD{digest[:12]}", "file_size": len(content), "file_path": path})


MethodHandler = Callable[[TelegramSimState, dict[str, Any]], Awaitable[JSONResponse]]

METHODS: dict[str, MethodHandler] = {
    "getme": _get_me,
    "sendmessage": _send_message,
    "setwebhook": _set_webhook,
    "deletewebhook": _delete_webhook,
    "getwebhookinfo": _get_webhook_info,
    "getupdates": _get_updates,
    "answercallbackquery": _answer_callback_query,
    "getfile": _get_file,
}
