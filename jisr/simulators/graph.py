"""A local Graph API (Messenger Send API) and a Meta webhook sender.

- ``POST /me/messages`` and ``POST /{version}/me/messages``: checks the page
  token and the request the way Graph does, records it, answers
  ``{"recipient_id", "message_id"}``, or fails as planned (``/_sim/fail``) in
  Graph's error shape: 429 → (#613) with Retry-After, a blocked PSID (or
  "messenger:<psid>") → (#551)/1545041, 5xx → (#2) transient, timeouts → 504.
- ``POST /_sim/inbound``: builds a real webhook body, signs it with
  ``X-Hub-Signature-256`` and posts it to Jisr, re-sending the same bytes on
  non-2xx answers as Meta does.
- ``GET /_sim/handshake``: performs the subscribe handshake against Jisr.
- ``POST /_sim/window``: closes (or reopens) a PSID's 24-hour window, so that
  RESPONSE messages to it fail with Graph's (#10)/2018278.
- ``GET /me/conversations?platform=messenger&user_id=<psid>`` and
  ``GET /{conversation-id}/messages``: the Conversations API, listing what the
  page sent to a person (newest first), which the send queue asks after a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import secrets
import time
from typing import Any, Optional, Union

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from jisr.simulators.base import Failure, SimulatorState, mount_control, redelivery_delays

PAGE_ID = "104857600000001"
APP_ID = 1517776481860111
MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG"})
MESSAGE_TAGS = frozenset({"HUMAN_AGENT", "ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "CUSTOMER_FEEDBACK"})
INBOUND_KINDS = frozenset({"text", "image", "audio", "video", "file", "location", "quick_reply", "postback", "echo", "delivery", "read"})


class InboundRequest(BaseModel):
    """What a test asks the simulator to deliver to Jisr's webhook."""

    webhook_url: str
    psid: str = "6543210987654321"
    text: str = ""
    kind: str = "text"
    payload: Optional[Union[str, dict[str, Any]]] = None  # a button payload, a media URL, or {"lat", "long"}
    mid: Optional[str] = None
    batch: int = 1                                          # messaging events in the one entry
    retries: int = 0                                        # re-sends of the same body on non-2xx
    retry_delay: float = 0.0
    retry_delays: Optional[list[float]] = None              # a redelivery schedule (base.REDELIVERY_DELAYS) instead


class WindowRequest(BaseModel):
    """Close (``open: false``) or reopen a PSID's 24-hour window."""

    psid: str
    open: bool = False


def graph_error_body(message: str, code: int, *, subcode: Optional[int] = None, error_type: str = "OAuthException", transient: bool = False) -> dict[str, Any]:
    """An error as Graph writes it."""
    error: dict[str, Any] = {"message": message, "type": error_type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient:
        error["is_transient"] = True
    error["fbtrace_id"] = "A" + secrets.token_hex(10)
    return {"error": error}


def sign(body: bytes, app_secret: str) -> dict[str, str]:
    """The signature headers Meta puts on a webhook call (SHA-1 legacy and SHA-256)."""
    key = app_secret.encode("utf-8")
    return {
        "X-Hub-Signature": "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest(),
    }


def meta_json(payload: Any) -> bytes:
    """JSON bytes as Meta's encoder writes them: ASCII with \\u escapes and escaped slashes.

    Connectors that re-serialise the parsed body before checking the signature fail on these.
    """
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/").encode("ascii")


def create_app(page_token: str = "dev", app_secret: str = "dev", verify_token: str = "dev") -> FastAPI:
    """The Graph API simulator as an ASGI app."""
    app = FastAPI(title="Graph API simulator")
    state = SimulatorState()
    closed_windows: set[str] = set()
    message_numbers = itertools.count(1)
    mount_control(app, state)

    def token_refused(request: Request, **recorded: Any) -> Optional[JSONResponse]:
        """Graph's (#190) answer when the page token is not the configured one (recorded); else None."""
        token = request.query_params.get("access_token", "")
        if hmac.compare_digest(token.encode("utf-8"), page_token.encode("utf-8")):
            return None
        state.record(path=request.url.path, status=400, error=190, **recorded)
        return JSONResponse(graph_error_body("Invalid OAuth access token.", 190), status_code=400)

    async def send_message(request: Request) -> JSONResponse:
        """The Send API: check the token and the body as Graph does, then answer or fail as planned."""
        path = request.url.path
        refused = token_refused(request, json=None)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        problem = _invalid(body)
        if problem:
            state.record(path=path, json=body, status=400, error=100)
            return JSONResponse(graph_error_body(problem, 100), status_code=400)
        psid = str(body["recipient"]["id"])

        # Blocked contacts may be planned by PSID or by Jisr address ("messenger:<psid>").
        plan = state.plan
        address = f"messenger:{psid}"
        failure = plan.next_failure(address if address in plan.blocked_addresses else psid)
        if failure is not None:
            response = await _failure_response(failure)
            state.record(path=path, json=body, status=response.status_code)
            return response
        if body.get("messaging_type") != "MESSAGE_TAG" and psid in closed_windows:
            state.record(path=path, json=body, status=400, error=10)
            return JSONResponse(
                graph_error_body("(#10) This message is sent outside of allowed window.", 10, subcode=2018278),
                status_code=400,
            )
        message_id = f"m_sim{next(message_numbers):06d}{secrets.token_hex(8)}"
        state.record(path=path, json=body, status=200, message_id=message_id)
        return JSONResponse({"recipient_id": psid, "message_id": message_id})

    app.add_api_route("/me/messages", send_message, methods=["POST"])
    app.add_api_route("/{version}/me/messages", send_message, methods=["POST"])

    def page_messages(psid: str) -> list[dict[str, Any]]:
        """What the page sent to ``psid`` and accepted (the Send API's records), newest first."""
        sent = [r for r in list(state.requests) if r.get("status") == 200 and r.get("message_id")
                and str(((r.get("json") or {}).get("recipient") or {}).get("id")) == psid]
        return [
            {"id": r["message_id"], "created_time": _graph_time(r["at"]), "from": {"id": PAGE_ID, "name": "Jisr"},
             "to": {"data": [{"id": psid}]}}
            for r in reversed(sent)
        ]

    async def conversations(request: Request) -> JSONResponse:
        """The Page's conversations; with ``user_id`` (a PSID) and ``platform=messenger``, that person's one."""
        refused = token_refused(request, method="GET")
        if refused is not None:
            return refused
        psid = request.query_params.get("user_id")
        platform = request.query_params.get("platform", "messenger")
        if not psid or platform != "messenger":
            state.record(path=request.url.path, method="GET", status=400, error=100)
            return JSONResponse(graph_error_body("(#100) The simulator lists conversations by user_id on platform messenger only", 100), status_code=400)
        found = page_messages(psid)
        state.record(path=request.url.path, method="GET", status=200, user_id=psid)
        data = [{"id": f"t_{psid}", "updated_time": found[0]["created_time"]}] if found else []
        return JSONResponse({"data": data})

    async def conversation_messages(request: Request, conversation_id: str) -> JSONResponse:
        """A conversation's messages, newest first (``limit``, default 25)."""
        refused = token_refused(request, method="GET")
        if refused is not None:
            return refused
        if not conversation_id.startswith("t_"):
            state.record(path=request.url.path, method="GET", status=400, error=100)
            return JSONResponse(graph_error_body(f"Unsupported get request. Object with ID '{conversation_id}' does not exist", 100, error_type="GraphMethodException"), status_code=400)
        try:
            limit = max(1, min(int(request.query_params.get("limit", "25")), 100))
        except ValueError:
            limit = 25
        state.record(path=request.url.path, method="GET", status=200)
        return JSONResponse({"data": page_messages(conversation_id[2:])[:limit]})

    app.add_api_route("/me/conversations", conversations, methods=["GET"])
    app.add_api_route("/{version}/me/conversations", conversations, methods=["GET"])
    app.add_api_route("/{conversation_id}/messages", conversation_messages, methods=["GET"])
    app.add_api_route("/{version}/{conversation_id}/messages", conversation_messages, methods=["GET"])

    @app.post("/_sim/window")
    def window(request: WindowRequest) -> dict[str, Any]:
        """Close or reopen a PSID's 24-hour window."""
        if request.open:
            closed_windows.discard(request.psid)
        else:
            closed_windows.add(request.psid)
        return {"closed": len(closed_windows)}

    @app.post("/_sim/inbound")
    async def inbound(request: InboundRequest) -> JSONResponse:
        """Deliver a signed webhook to Jisr; re-send the same bytes on non-2xx, as Meta does."""
        if request.kind not in INBOUND_KINDS:
            return JSONResponse({"error": f"kind must be one of {sorted(INBOUND_KINDS)}"}, status_code=422)
        now = int(time.time() * 1000)
        events = [_event(request, index, now) for index in range(min(max(1, request.batch), 100))]
        payload = {"object": "page", "entry": [{"id": PAGE_ID, "time": now, "messaging": events}]}
        body = meta_json(payload)
        headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua", **sign(body, app_secret)}
        statuses: list[int] = []
        async with httpx.AsyncClient(timeout=10.0) as client:
            for wait in [0.0] + redelivery_delays(request.retries, request.retry_delay, request.retry_delays):
                if wait:
                    await asyncio.sleep(wait)
                try:
                    answer = await client.post(request.webhook_url, content=body, headers=headers)
                    statuses.append(answer.status_code)
                except httpx.HTTPError:
                    statuses.append(0)  # unreachable: Meta retries that too
                if 200 <= statuses[-1] < 300:
                    break
        mids = [_event_id(event) for event in events]
        return JSONResponse({"statuses": statuses, "mids": mids, "payload": payload})

    @app.get("/_sim/handshake")
    async def handshake(webhook_url: str, verify_token_override: Optional[str] = None) -> dict[str, Any]:
        """Subscribe as Meta does: GET with hub.mode, hub.verify_token, hub.challenge."""
        challenge = str(secrets.randbelow(10**9))
        params = {"hub.mode": "subscribe", "hub.verify_token": verify_token_override or verify_token, "hub.challenge": challenge}
        async with httpx.AsyncClient(timeout=10.0) as client:
            try:
                answer = await client.get(webhook_url, params=params)
            except httpx.HTTPError:
                return {"status": 0, "body": "", "challenge": challenge, "verified": False}
        return {"status": answer.status_code, "body": answer.text, "challenge": challenge, "verified": answer.status_code == 200 and answer.text == challenge}

    return app


def _graph_time(at: float) -> str:
    """A time as Graph writes it: 2026-12-05T06:00:00+0000."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(at))


def _invalid(body: Any) -> Optional[str]:
    """Graph's (#100) reasons for refusing a Send API body; None when it is fine."""
    if not isinstance(body, dict):
        return "(#100) The parameter recipient is required"
    recipient = body.get("recipient")
    if not isinstance(recipient, dict) or not recipient.get("id"):
        return "(#100) The parameter recipient is required"
    messaging_type = body.get("messaging_type", "RESPONSE")
    if messaging_type not in MESSAGING_TYPES:
        return "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}"
    if messaging_type == "MESSAGE_TAG":
        if not body.get("tag"):
            return "(#100) Tag is required for MESSAGE_TAG messaging type"
        if body["tag"] not in MESSAGE_TAGS:
            return "(#100) Param tag must be one of " + ", ".join(sorted(MESSAGE_TAGS))
    message = body.get("message")
    if not isinstance(message, dict) or not (message.get("text") or message.get("attachment")):
        return "(#100) The parameter message[text] or message[attachment] is required"
    text = message.get("text") or ""
    if len(text) > 2000:
        return "(#100) Length of param message[text] must be less than or equal to 2000"
    quick_replies = message.get("quick_replies", [])
    if not isinstance(quick_replies, list) or len(quick_replies) > 13:
        return "(#100) param message[quick_replies] must have at most 13 elements"
    for reply in quick_replies:
        if not isinstance(reply, dict) or reply.get("content_type") != "text" or not reply.get("payload"):
            return "(#100) Invalid quick reply"
        # Graph truncates longer titles; refusing them here catches a connector that ignores the limit.
        if not reply.get("title") or len(reply["title"]) > 20:
            return "(#100) param message[quick_replies][title] must be at most 20 characters"
    return None


async def _failure_response(failure: Failure) -> JSONResponse:
    """A planned failure, written as Graph writes it."""
    if failure.blocked:
        return JSONResponse(graph_error_body("(#551) This person isn't available right now.", 551, subcode=1545041), status_code=400)
    if failure.timeout:
        await asyncio.sleep(failure.timeout)
        return JSONResponse(graph_error_body("Gateway timeout", 2, transient=True), status_code=504)
    status = failure.status or 500
    headers = {"Retry-After": str(int(failure.retry_after))} if failure.retry_after else {}
    if status == 429:
        return JSONResponse(graph_error_body("(#613) Calls to this api have exceeded the rate limit.", 613), status_code=429, headers=headers)
    if status >= 500:
        body = graph_error_body("An unexpected error has occurred. Please retry your request later.", 2, transient=True)
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse(graph_error_body("(#100) Invalid parameter", 100, error_type="GraphMethodException"), status_code=status, headers=headers)


def _event(request: InboundRequest, index: int, now: int) -> dict[str, Any]:
    """One messaging event of the requested kind, as the Messenger Platform writes it."""
    mid = request.mid or "m_" + secrets.token_urlsafe(60)
    if request.batch > 1:
        mid = f"{mid}.{index}"  # every event of a batch has its own id
    timestamp = now + index
    user = {"id": request.psid}
    page = {"id": PAGE_ID}
    base: dict[str, Any] = {"sender": user, "recipient": page, "timestamp": timestamp}
    payload = request.payload
    kind = request.kind

    if kind == "text":
        return {**base, "message": {"mid": mid, "text": request.text}}
    if kind == "quick_reply":
        return {**base, "message": {"mid": mid, "text": request.text, "quick_reply": {"payload": str(payload or "")}}}
    if kind == "postback":
        return {**base, "postback": {"title": request.text, "payload": str(payload or ""), "mid": mid}}
    if kind in ("image", "audio", "video", "file"):
        url = str(payload) if isinstance(payload, str) and payload else f"https://cdn.fbsbx.com/v/sim/{kind}/{secrets.token_hex(6)}"
        return {**base, "message": {"mid": mid, "attachments": [{"type": kind, "payload": {"url": url}}]}}
    if kind == "location":
        coordinates = payload if isinstance(payload, dict) else {}
        attachment = {
            "title": request.text or "Pinned Location",
            "url": "https://l.facebook.com/l.php?u=https%3A%2F%2Fwww.bing.com%2Fmaps",
            "type": "location",
            "payload": {"coordinates": {"lat": coordinates.get("lat", 48.8566), "long": coordinates.get("long", 2.3522)}},
        }
        return {**base, "message": {"mid": mid, "attachments": [attachment]}}
    if kind == "echo":
        # Our page's own message, sent back: sender and recipient swapped.
        return {"sender": page, "recipient": user, "timestamp": timestamp, "message": {"is_echo": True, "app_id": APP_ID, "mid": mid, "text": request.text}}
    if kind == "delivery":
        mids = [str(payload)] if isinstance(payload, str) and payload else [mid]
        return {"sender": user, "recipient": page, "delivery": {"mids": mids, "watermark": timestamp}}
    # read
    return {**base, "read": {"watermark": timestamp}}


def _event_id(event: dict[str, Any]) -> str:
    for key in ("message", "postback"):
        if key in event:
            return str(event[key].get("mid", ""))
    if "delivery" in event:
        return str(event["delivery"]["mids"][0])
    return f"read:{event['read']['watermark']}"
