"""A local Twilio: the Messages API (WhatsApp sends) and signed webhooks to the gateway.

Outbound: POST /2010-04-01/Accounts/{sid}/Messages.json, form-encoded with
HTTP basic auth, answered with Twilio's Message resource (201) or Twilio's
JSON error shape. Every authenticated request is recorded (``/_sim/requests``),
and failures are injected through the shared FailurePlan (``/_sim/fail``).

Inbound: POST /_sim/inbound and /_sim/status build the exact form Twilio
posts for a WhatsApp message or a status callback, sign it with
X-Twilio-Signature and deliver it to a webhook URL, retrying on 5xx and
timeouts when asked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hmac
import json
import math
import secrets
from typing import Any, Optional
from urllib.parse import parse_qsl

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from twilio.request_validator import RequestValidator

from jisr.simulators.base import Failure, SimulatorState, mount_control, redelivery_delays

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_WHATSAPP_SENDER = "whatsapp:+14155238886"  # Twilio's WhatsApp sandbox number
API_VERSION = "2010-04-01"
MAX_BODY = 1600  # Twilio's Body limit (error 21617 beyond)
WEBHOOK_TIMEOUT = 15.0  # Twilio gives a webhook 15 s to answer


def _sid(prefix: str) -> str:
    """A Twilio SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def _rfc2822_now() -> str:
    """Twilio's resource dates: "Thu, 24 Aug 2023 05:01:45 +0000"."""
    return email.utils.formatdate(usegmt=False).replace("-0000", "+0000")


def twilio_error(status: int, code: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    """Twilio's JSON error body: {"code", "message", "more_info", "status"}."""
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


def _e164_ok(number: str) -> bool:
    digits = number[1:]
    return number.startswith("+") and digits.isdigit() and 7 <= len(digits) <= 15 and not digits.startswith("0")


def _basic_auth(request: Request) -> Optional[tuple[str, str]]:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


async def _failure_response(failure: Failure) -> JSONResponse:
    """The Twilio-shaped answer for an injected failure."""
    if failure.blocked:
        return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
    if failure.timeout:
        await asyncio.sleep(failure.timeout)
        return twilio_error(504, 20504, "Gateway timeout")
    status = failure.status or 500
    if status == 429:
        headers = {"Retry-After": str(math.ceil(failure.retry_after))} if failure.retry_after else None
        return twilio_error(429, 20429, "Too Many Requests", headers=headers)
    # Twilio's generic API errors are 20000 + the HTTP status (20404, 20429, 20500, 20503).
    return twilio_error(status, 20000 + status, "Service unavailable" if status >= 500 else "Injected failure")


class InboundMedia(BaseModel):
    url: Optional[str] = None
    content_type: str


class InboundSpec(BaseModel):
    """A WhatsApp message a family sends, to deliver to ``webhook_url``."""

    webhook_url: str
    from_: str = Field(..., alias="from")
    to: str = DEFAULT_WHATSAPP_SENDER
    body: str = ""
    profile_name: str = "Famille"
    media: list[InboundMedia] = []
    latitude: Optional[float] = None
    longitude: Optional[float] = None
    address: Optional[str] = None
    label: Optional[str] = None
    button_payload: Optional[str] = None
    button_text: Optional[str] = None
    message_sid: Optional[str] = None
    retries: int = 0
    retry_delays: Optional[list[float]] = None   # a redelivery schedule (base.REDELIVERY_DELAYS), instead of retries
    timeout: float = WEBHOOK_TIMEOUT


class StatusSpec(BaseModel):
    """A status callback for a message the bot sent."""

    webhook_url: str
    message_sid: str
    status: str
    to: Optional[str] = None
    from_: Optional[str] = Field(None, alias="from")
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    retries: int = 0
    timeout: float = WEBHOOK_TIMEOUT


def _message_type(spec: InboundSpec) -> str:
    if spec.button_payload or spec.button_text:
        return "button"
    if spec.latitude is not None:
        return "location"
    if spec.media:
        main = spec.media[0].content_type.split("/", 1)[0]
        return {"image": "image", "audio": "audio", "video": "video"}.get(main, "document")
    return "text"


def inbound_form(spec: InboundSpec, account_sid: str) -> dict[str, str]:
    """The form fields Twilio posts for an inbound WhatsApp message, in Twilio's order."""
    sid = spec.message_sid or _sid("MM" if spec.media else "SM")
    form: dict[str, str] = {
        "SmsMessageSid": sid,
        "NumMedia": str(len(spec.media)),
        "ProfileName": spec.profile_name,
        "MessageType": _message_type(spec),
        "SmsSid": sid,
        "WaId": spec.from_.split(":", 1)[-1].lstrip("+"),
        "SmsStatus": "received",
        "Body": spec.body,
        "To": spec.to,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": spec.from_,
        "ApiVersion": API_VERSION,
    }
    for i, item in enumerate(spec.media):
        form[f"MediaContentType{i}"] = item.content_type
        form[f"MediaUrl{i}"] = item.url or f"https://api.twilio.com/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media/{_sid('ME')}"
    if spec.latitude is not None and spec.longitude is not None:
        form["Latitude"] = repr(spec.latitude)
        form["Longitude"] = repr(spec.longitude)
        if spec.address:
            form["Address"] = spec.address
        if spec.label:
            form["Label"] = spec.label
    if spec.button_payload or spec.button_text:
        form["ButtonText"] = spec.button_text or spec.body
        form["ButtonPayload"] = spec.button_payload or spec.button_text or ""
    return form


def status_form(spec: StatusSpec, account_sid: str, to: str, from_: str) -> dict[str, str]:
    """The form fields of a WhatsApp status callback."""
    form = {
        "ChannelPrefix": "whatsapp",
        "ApiVersion": API_VERSION,
        "MessageStatus": spec.status,
        "SmsSid": spec.message_sid,
        "SmsStatus": spec.status,
        "ChannelInstallSid": "XE" + "0" * 32,
        "To": to,
        "From": from_,
        "MessageSid": spec.message_sid,
        "StructuredMessage": "false",
        "AccountSid": account_sid,
        "ChannelToAddress": to.split(":", 1)[-1],
    }
    if spec.error_code:
        form["ErrorCode"] = spec.error_code
        if spec.error_message:
            form["ErrorMessage"] = spec.error_message
    return form


async def deliver(
    url: str, form: dict[str, str], auth_token: str, *, retries: int = 0, timeout: float = WEBHOOK_TIMEOUT, retry_delays: Optional[list[float]] = None
) -> list[int]:
    """POST a signed form to ``url`` as Twilio does; retry on 5xx/timeouts. The statuses seen (0: no answer)."""
    signature = RequestValidator(auth_token).compute_signature(url, form)
    headers = {"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1", "I-Twilio-Idempotency-Token": secrets.token_hex(16)}
    statuses: list[int] = []
    waits = [0.0] + redelivery_delays(retries, 0.0, retry_delays)
    async with httpx.AsyncClient(timeout=timeout) as client:
        for wait in waits:
            if wait:
                await asyncio.sleep(wait)
            try:
                response = await client.post(url, data=form, headers=headers)
            except httpx.HTTPError:
                statuses.append(0)  # timeout or connection refused: Twilio's error 11200, retryable
                continue
            statuses.append(response.status_code)
            if response.status_code < 500:
                break
    return statuses


def create_app(auth_token: str = "dev", account_sid: str = DEFAULT_ACCOUNT_SID) -> FastAPI:
    """The Twilio simulator for one account."""
    app = FastAPI(title="Twilio simulator")
    state = SimulatorState()
    mount_control(app, state)
    created: dict[str, str] = {}  # message sid → date_created, for the message list (kept out of the recorded requests)

    @app.post(f"/{API_VERSION}/Accounts/{{sid}}/Messages.json")
    async def create_message(sid: str, request: Request) -> JSONResponse:
        credentials = _basic_auth(request)
        # Constant-time like the real thing would be; both parts checked before answering.
        user_ok = credentials is not None and hmac.compare_digest(credentials[0].encode(), account_sid.encode())
        token_ok = credentials is not None and hmac.compare_digest(credentials[1].encode(), auth_token.encode())
        if not (user_ok and token_ok and sid == account_sid):
            return twilio_error(401, 20003, "Authenticate")
        try:
            form = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return twilio_error(400, 21000, "Request body is not UTF-8")
        to, from_, body = form.get("To", ""), form.get("From", ""), form.get("Body")
        content_sid, variables_raw = form.get("ContentSid"), form.get("ContentVariables")
        variables: Any = None
        if variables_raw is not None:
            try:
                variables = json.loads(variables_raw)
            except ValueError:
                return twilio_error(400, 21658, "ContentVariables is not valid JSON")
        response: JSONResponse
        message_sid: Optional[str] = None
        if not to:
            response = twilio_error(400, 21604, "A 'To' phone number is required.")
        elif not from_:
            response = twilio_error(400, 21603, "A 'From' phone number is required.")
        elif not (body or content_sid or form.get("MediaUrl")):
            response = twilio_error(400, 21602, "Message body is required.")
        elif not _e164_ok(to.split(":", 1)[-1]) or to.startswith("whatsapp:") != from_.startswith("whatsapp:"):
            response = twilio_error(400, 21211, "Invalid 'To' Phone Number")
        elif body is not None and len(body) > MAX_BODY:
            response = twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        elif (failure := state.plan.next_failure(address=to)) is not None:
            # Only requests Twilio would accept consume a planned failure, so plans stay predictable.
            response = await _failure_response(failure)
        else:
            message_sid = _sid("SM")
            now = _rfc2822_now()
            uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{message_sid}"
            response = JSONResponse(
                {
                    "account_sid": account_sid,
                    "api_version": API_VERSION,
                    "body": body or "",
                    "date_created": now,
                    "date_sent": None,
                    "date_updated": now,
                    "direction": "outbound-api",
                    "error_code": None,
                    "error_message": None,
                    "from": from_,
                    "messaging_service_sid": None,
                    "num_media": "0",
                    "num_segments": "1",
                    "price": None,
                    "price_unit": "USD",
                    "sid": message_sid,
                    "status": "queued",
                    "subresource_uris": {"media": uri + "/Media.json"},
                    "to": to,
                    "uri": uri + ".json",
                },
                status_code=201,
            )
        state.record(
            **{
                "to": to,
                "from": from_,
                "body": body,
                "content_sid": content_sid,
                "variables": variables,
                "status_callback": form.get("StatusCallback"),
                "http_status": response.status_code,
                "sid": message_sid,
            }
        )
        if message_sid:
            created[message_sid] = now
        return response

    @app.get(f"/{API_VERSION}/Accounts/{{sid}}/Messages.json")
    async def list_messages(sid: str, request: Request) -> JSONResponse:
        """Twilio's message list (newest first, filtered by To and From, one page of PageSize):
        how a sender finds out whether a message it lost track of went out."""
        credentials = _basic_auth(request)
        if credentials != (account_sid, auth_token) or sid != account_sid:
            return twilio_error(401, 20003, "Authenticate")
        to, from_ = request.query_params.get("To"), request.query_params.get("From")
        try:
            size = max(1, min(1000, int(request.query_params.get("PageSize", "50"))))
        except ValueError:
            return twilio_error(400, 20001, "PageSize is not a number")
        accepted = [r for r in reversed(state.requests) if r.get("sid") and (not to or r["to"] == to) and (not from_ or r["from"] == from_)]
        uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        page = [
            {"account_sid": account_sid, "api_version": API_VERSION, "body": r.get("body") or "", "date_created": created.get(r["sid"]),
             "date_sent": None, "date_updated": created.get(r["sid"]), "direction": "outbound-api", "from": r["from"], "sid": r["sid"],
             "status": "queued", "to": r["to"], "uri": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{r['sid']}.json"}
            for r in accepted[:size]
        ]
        return JSONResponse({"messages": page, "first_page_uri": uri, "next_page_uri": None, "previous_page_uri": None,
                             "page": 0, "page_size": size, "start": 0, "end": max(0, len(page) - 1), "uri": uri})

    @app.post("/_sim/inbound")
    async def inbound(spec: InboundSpec) -> dict[str, Any]:
        """Deliver a signed inbound WhatsApp message to ``webhook_url``."""
        form = inbound_form(spec, account_sid)
        statuses = await deliver(spec.webhook_url, form, auth_token, retries=spec.retries, timeout=spec.timeout, retry_delays=spec.retry_delays)
        return {"message_sid": form["MessageSid"], "statuses": statuses}

    @app.post("/_sim/status")
    async def status(spec: StatusSpec) -> JSONResponse:
        """Deliver a signed status callback; to/from default to those of the message the simulator sent."""
        # The recorded requests double as the message store (and /_sim/reset clears both).
        known = next((r for r in reversed(state.requests) if r.get("sid") == spec.message_sid), {})
        to = spec.to or known.get("to")
        if not to:
            return JSONResponse({"error": "unknown message_sid: give 'to'"}, status_code=400)
        form = status_form(spec, account_sid, to, spec.from_ or known.get("from") or DEFAULT_WHATSAPP_SENDER)
        statuses = await deliver(spec.webhook_url, form, auth_token, retries=spec.retries, timeout=spec.timeout)
        return JSONResponse({"message_sid": spec.message_sid, "statuses": statuses})

    return app
