"""Property-based fuzzing (hypothesis) of every public route of the running gateway (the
`stack` fixture in conftest.py): random bytes, JSON, form fields, headers and query strings.

Whatever arrives, the gateway never answers 5xx (a provider would retry a 5xx for hours, and
a crash is a bug). A request without the right secret or signature gets 403; a correctly signed
request whose payload is not what the provider sends gets 400 with a JSON "detail" — so the
parsers are fuzzed too, not only the signature checks (the bodies are signed with the test
secrets: Telegram's secret header, Messenger's X-Hub-Signature-256, Twilio's X-Twilio-Signature).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
from typing import Any, Iterator, Optional
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from starlette.datastructures import QueryParams
from twilio.request_validator import RequestValidator

FUZZ = settings(
    max_examples=int(os.environ.get("JISR_FUZZ_EXAMPLES", "150")),  # per route; raise it for a longer hunt
    deadline=None,
    database=None,  # nothing written into the work tree; a failure prints its @reproduce_failure blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# ------------------------------------------------------------------------------- strategies

# Text without lone surrogates, for what must be URL- or form-encoded.
clean_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
# Any text, lone surrogates included: json.dumps escapes them ("\ud800"), and json.loads gives them back.
any_text = st.text(max_size=30)
big_ints = st.integers() | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([0, -1, 2**31, 2**63, 10**20, -(10**20)])
numbers = big_ints | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1_767_225_600_000, 1_767_225_600, 1e300, 1e16])
json_scalars = st.none() | st.booleans() | numbers | any_text
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=10,
)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the well-typed value, sometimes any JSON value in its place (so deep fields are reached too)."""
    return st.sampled_from(range(8)).flatmap(lambda pick: json_values if pick == 0 else strategy)


_fresh = itertools.count(1)


def _fresh_ids(value: Any, key: str) -> Any:
    """``value`` with every non-empty string under ``key`` made unique (a prefix), at any depth.

    The gateway answers a provider message id once: without fresh ids most well-formed
    examples would be "duplicate" and never reach the assistant, the database or the queue.
    """
    if isinstance(value, dict):
        return {k: (f"fuzz{next(_fresh)}.{v}" if k == key and isinstance(v, str) and v else _fresh_ids(v, key)) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh_ids(v, key) for v in value]
    return value


def _json_body(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity included, as Python's json reads them


# Header values as bytes: HTTP header values are latin-1 on the wire (no CR, LF or NUL).
header_values = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip()) | st.sampled_from(
    # Hosts and schemes that are none (the Host header and, from localhost, X-Forwarded-* make the request URL).
    [b"a:b", b"[::1", b"127.0.0.1:99999", b"h\xe9", b"https", b"a, b", b"sha256=", b"0" * 64, b"x.y"]
)
header_names = st.sampled_from(
    [
        "content-type",
        "content-encoding",
        "accept",
        "user-agent",
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-twilio-signature",
        "x-telegram-bot-api-secret-token",
        "x-hub-signature-256",
        "x-hub-signature",
        "x-jisr-session",
        "cookie",
    ]
) | st.from_regex(r"\Ax-[a-z0-9-]{1,20}\Z")
random_headers = st.dictionaries(header_names, header_values, max_size=4)


def _headers(extra: dict[str, Any], base: Optional[dict[str, str]] = None) -> list[tuple[bytes, bytes]]:
    headers = {k.lower(): v.encode("latin-1") for k, v in (base or {}).items()}
    headers.update({k.lower(): v if isinstance(v, bytes) else v.encode("latin-1") for k, v in extra.items()})
    return list(headers.items())


# ------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack["gateway"], timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def webchat_session(client: httpx.Client) -> str:
    return client.post("/api/webchat/session").json()["session"]


def _note(text: str) -> None:
    """A line of `pytest --hypothesis-show-statistics` (nothing outside a hypothesis test)."""
    try:
        event(text)
    except InvalidArgument:
        pass


def _check(response: httpx.Response, allowed: set[int], context: Any) -> None:
    """No 5xx; the status one of ``allowed``; a refusal says why in a JSON "detail"."""
    status = response.status_code
    _note(f"HTTP {status}")
    assert status < 500, f"{status} {response.text[:500]!r} for {context!r}"
    assert status in allowed, f"{status} (expected {sorted(allowed)}) {response.text[:300]!r} for {context!r}"
    if status in (400, 403):
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail, response.text
    elif status == 200 and response.headers.get("content-type", "").startswith("application/json"):
        for outcome in response.json().get("processed", ()):
            _note(f"gateway: {outcome}")


# The addresses test_gateway.py looks for in the simulators' records (the gateway is shared): a
# fuzzed message must not get a reply they would take for theirs.
OTHER_TESTS_ADDRESSES = (b"9001", b"777001", b"33600000002", b"34600000001")


def _post(client: httpx.Client, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> httpx.Response:
    assume(not any(address in body for address in OTHER_TESTS_ADDRESSES))
    return client.post(path, content=body, headers=headers)


def _json_object(body: bytes) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------- WhatsApp (Twilio)

TWILIO_FIELDS = [
    "MessageSid", "SmsMessageSid", "AccountSid", "From", "To", "Body", "NumMedia", "MediaUrl0", "MediaContentType0",
    "MediaUrl1", "Latitude", "Longitude", "Label", "Address", "ButtonPayload", "ButtonText", "MessageType",
    "MessageStatus", "ErrorCode", "ProfileName", "WaId",
]
twilio_values = st.one_of(
    clean_text,
    st.sampled_from(["whatsapp:+33612345678", "whatsapp:", "+33612345678", "SM" + "0" * 32, "0", "1", "11", "-1", "abc",
                     "image/jpeg", "audio/ogg", "delivered", "failed", "received", "48.85", "200", "nan", "inf", "1e999", ""]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
twilio_forms = st.dictionaries(st.sampled_from(TWILIO_FIELDS) | clean_text, twilio_values, max_size=8)
# Messages as Twilio sends them, with random texts and button payloads: these reach the assistant.
twilio_plausible = st.fixed_dictionaries(
    {"MessageSid": st.from_regex(r"\ASM[0-9a-f]{32}\Z"), "AccountSid": st.just("AC" + "1" * 32), "From": st.sampled_from(["whatsapp:+33611111111", "whatsapp:+34622222222"]),
     "To": st.just("whatsapp:+14155238886"), "Body": clean_text, "NumMedia": st.sampled_from(["0", ""])},
    optional={"ButtonPayload": clean_text, "ButtonText": clean_text, "ProfileName": clean_text},
)
# Forms close to what Twilio sends (a message or a status callback), with random fields mixed in.
twilio_messages = st.builds(
    lambda base, extra: {**extra, **base},
    st.fixed_dictionaries(
        {"MessageSid": st.sampled_from(["SM" + "f" * 32]) | st.from_regex(r"\ASM[0-9a-f]{32}\Z") | twilio_values,
         "From": st.sampled_from(["whatsapp:+33611111111", "whatsapp:+34622222222"]) | twilio_values},
        optional={"Body": clean_text, "NumMedia": twilio_values, "MediaUrl0": twilio_values, "MediaContentType0": twilio_values,
                  "Latitude": twilio_values, "Longitude": twilio_values, "ButtonPayload": twilio_values, "MessageType": twilio_values,
                  "MessageStatus": twilio_values, "To": twilio_values, "ErrorCode": twilio_values},
    ),
    st.dictionaries(st.sampled_from(TWILIO_FIELDS) | clean_text, twilio_values, max_size=3),
)


@FUZZ
@given(data=st.data())
def test_whatsapp_webhook_never_fails(stack, client, data):
    url = f"{stack['gateway']}/webhooks/whatsapp"
    validator = RequestValidator(stack["twilio_auth_token"])
    case = data.draw(st.sampled_from(["forged", "signed_form", "signed_json_body"]), label="case")
    if case == "forged":
        body = data.draw(st.binary(max_size=300) | twilio_forms.map(lambda f: urlencode(f).encode()), label="body")
        headers = data.draw(random_headers, label="headers")
        signature = data.draw(st.none() | header_values, label="signature")
        if signature is not None:
            headers["x-twilio-signature"] = signature
        response = _post(client, "/webhooks/whatsapp", body, _headers(headers, {"content-type": "application/x-www-form-urlencoded"}))
        _check(response, {403}, (body, headers))
    elif case == "signed_form":
        form = data.draw(twilio_plausible | twilio_messages | twilio_forms, label="form")
        if form.get("MessageSid", "").strip():
            form["MessageSid"] += f".{next(_fresh)}"
        body = urlencode(form).encode()
        headers = {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": validator.compute_signature(url, form)}
        response = _post(client, "/webhooks/whatsapp", body, _headers(headers))
        if not body:
            # The connector verifies the decoded form fields: an empty body is not a form it can verify.
            _check(response, {403}, form)
        else:
            _check(response, {200, 400} if form.get("MessageSid", "").strip() else {400}, form)
    else:
        # Twilio's JSON-bodied webhooks sign a hash of the body carried in the URL; a message webhook is a form.
        body = _json_body(data.draw(json_values, label="json"))
        signed_url = f"{url}?bodySHA256={hashlib.sha256(body).hexdigest()}"
        headers = {"content-type": "application/json", "x-twilio-signature": validator.compute_signature(signed_url, {})}
        response = client.post(signed_url, content=body, headers=_headers(headers))
        _check(response, {400}, body)


# ------------------------------------------------------------------------------- Telegram

tg_user = st.fixed_dictionaries(
    {"id": maybe(big_ints), "is_bot": maybe(st.booleans()), "first_name": maybe(any_text)},
    optional={"language_code": maybe(st.sampled_from(["fr", "ar", "es", "de-DE", ""]) | any_text), "username": maybe(any_text)},
)
tg_chat = st.fixed_dictionaries(
    {"id": maybe(big_ints), "type": maybe(st.sampled_from(["private", "group", "supergroup", "channel", "sender"]))},
    optional={"title": maybe(any_text), "first_name": maybe(any_text)},
)
tg_file = st.fixed_dictionaries(
    {"file_id": maybe(any_text), "file_unique_id": maybe(any_text)},
    optional={"width": maybe(big_ints), "height": maybe(big_ints), "duration": maybe(numbers), "file_size": maybe(big_ints),
              "mime_type": maybe(any_text), "is_animated": maybe(st.booleans()), "is_video": maybe(st.booleans()), "type": maybe(any_text)},
)
tg_location = st.fixed_dictionaries({"latitude": maybe(numbers), "longitude": maybe(numbers)})
tg_message = st.fixed_dictionaries(
    {"message_id": maybe(big_ints), "date": maybe(numbers), "chat": maybe(tg_chat)},
    optional={
        "from": maybe(tg_user),
        "text": maybe(any_text),
        "caption": maybe(any_text),
        "photo": maybe(st.lists(maybe(tg_file), max_size=3)),
        "voice": maybe(tg_file),
        "audio": maybe(tg_file),
        "video": maybe(tg_file),
        "video_note": maybe(tg_file),
        "animation": maybe(tg_file),
        "document": maybe(tg_file),
        "sticker": maybe(tg_file),
        "location": maybe(tg_location),
        "venue": maybe(st.fixed_dictionaries({"location": maybe(tg_location), "title": maybe(any_text), "address": maybe(any_text)})),
        "entities": maybe(st.lists(json_values, max_size=2)),
    },
)
tg_callback = st.fixed_dictionaries(
    {"id": maybe(any_text), "from": maybe(tg_user), "chat_instance": maybe(any_text)},
    optional={"data": maybe(any_text), "message": maybe(tg_message)},
)
tg_member = st.fixed_dictionaries(
    {
        "chat": maybe(tg_chat),
        "from": maybe(tg_user),
        "date": maybe(numbers),
        "old_chat_member": maybe(st.fixed_dictionaries({"status": maybe(st.sampled_from(["member", "kicked"])), "user": maybe(tg_user)})),
        "new_chat_member": maybe(st.fixed_dictionaries({"status": maybe(st.sampled_from(["member", "kicked", "left"])), "user": maybe(tg_user)})),
    }
)
# Plausible updates (what Telegram sends, with random texts, ids and extras): these reach the assistant.
tg_plausible_chat = st.fixed_dictionaries({"id": st.integers(1, 10**12), "type": st.just("private")})
tg_plausible = st.one_of(
    st.fixed_dictionaries(
        {
            "update_id": st.just(0),
            "message": st.fixed_dictionaries(
                {"message_id": st.integers(1, 10**6), "date": st.integers(1_600_000_000, 1_900_000_000), "chat": tg_plausible_chat, "text": any_text},
                optional={"from": tg_user, "caption": any_text, "location": tg_location, "photo": st.lists(tg_file, max_size=2), "voice": tg_file},
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "update_id": st.just(0),
            "callback_query": st.fixed_dictionaries(
                {"id": any_text, "from": tg_user, "chat_instance": any_text, "data": any_text},
                optional={"message": st.fixed_dictionaries({"message_id": st.integers(1, 10**6), "date": st.integers(0, 2_000_000_000), "chat": tg_plausible_chat})},
            ),
        }
    ),
)
tg_updates = st.fixed_dictionaries(
    {"update_id": maybe(big_ints)},
    optional={"message": maybe(tg_message), "callback_query": maybe(tg_callback), "my_chat_member": maybe(tg_member), "edited_message": json_values},
)


@FUZZ
@given(data=st.data())
def test_telegram_webhook_never_fails(stack, client, data):
    secret = stack["telegram_secret"]
    case = data.draw(st.sampled_from(["forged", "signed_bytes", "signed_json", "signed_update", "signed_update"]), label="case")
    if case == "forged":
        body = data.draw(st.binary(max_size=300) | tg_updates.map(_json_body), label="body")
        headers = data.draw(random_headers, label="headers")
        if headers.get("x-telegram-bot-api-secret-token") == secret.encode():
            del headers["x-telegram-bot-api-secret-token"]
        response = _post(client, "/webhooks/telegram", body, _headers(headers, {"content-type": "application/json"}))
        _check(response, {403}, (body, headers))
        return
    if case == "signed_bytes":
        body = data.draw(st.binary(max_size=300), label="body")
    elif case == "signed_json":
        body = _json_body(data.draw(json_values, label="json"))
    else:
        update = data.draw(tg_plausible | tg_updates, label="update")
        if isinstance(update["update_id"], int) and not isinstance(update["update_id"], bool):
            update["update_id"] = 2_000_000_000 + next(_fresh)  # fresh, and far from the simulator's ids
        body = _json_body(update)
    headers = _headers({"x-telegram-bot-api-secret-token": secret}, {"content-type": "application/json"})
    response = _post(client, "/webhooks/telegram", body, headers)
    update = _json_object(body)
    update_id = update.get("update_id") if update is not None else None
    malformed = update is None or not isinstance(update_id, int) or isinstance(update_id, bool)
    _check(response, {400} if malformed else {200, 400}, body)


# ------------------------------------------------------------------------------- Messenger

fb_attachment = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["image", "audio", "video", "file", "location", "sticker", "fallback", "template"]))},
    optional={
        "payload": maybe(
            st.fixed_dictionaries(
                {},
                optional={"url": maybe(any_text), "sticker_id": maybe(big_ints),
                          "coordinates": maybe(st.fixed_dictionaries({"lat": maybe(numbers), "long": maybe(numbers)}))},
            )
        ),
        "title": maybe(any_text),
        "url": maybe(any_text),
    },
)
fb_message = st.fixed_dictionaries(
    {"mid": maybe(any_text)},
    optional={
        "text": maybe(any_text),
        "is_echo": maybe(st.booleans()),
        "attachments": maybe(st.lists(maybe(fb_attachment), max_size=3)),
        "quick_reply": maybe(st.fixed_dictionaries({"payload": maybe(any_text)})),
        "sticker_id": maybe(big_ints),
    },
)
fb_sender_ids = st.sampled_from(["1000001", "1000002", "1000003"]) | any_text | big_ints
fb_event = st.fixed_dictionaries(
    {"sender": maybe(st.fixed_dictionaries({"id": maybe(fb_sender_ids)})), "recipient": maybe(st.fixed_dictionaries({"id": maybe(any_text)}))},
    optional={
        "timestamp": maybe(numbers),
        "message": maybe(fb_message),
        "postback": maybe(st.fixed_dictionaries({}, optional={"mid": maybe(any_text), "title": maybe(any_text), "payload": maybe(any_text)})),
        "delivery": maybe(st.fixed_dictionaries({}, optional={"mids": maybe(st.lists(maybe(any_text), max_size=3)), "watermark": maybe(numbers)})),
        "read": maybe(st.fixed_dictionaries({}, optional={"watermark": maybe(numbers)})),
        "reaction": json_values,
    },
)
fb_entry = st.fixed_dictionaries(
    {"id": maybe(any_text), "time": maybe(numbers)},
    optional={"messaging": maybe(st.lists(maybe(fb_event), max_size=2)), "standby": json_values},
)
fb_payloads = st.fixed_dictionaries({"object": maybe(st.just("page")), "entry": maybe(st.lists(maybe(fb_entry), max_size=2))})


fb_plausible = st.fixed_dictionaries(
    {
        "object": st.just("page"),
        "entry": st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.just("PAGE_ID"),
                    "time": st.integers(1_600_000_000_000, 1_900_000_000_000),
                    "messaging": st.lists(
                        st.fixed_dictionaries(
                            {
                                "sender": st.fixed_dictionaries({"id": st.sampled_from(["1000001", "1000002", "1000003"]) | st.from_regex(r"\A[0-9]{5,16}\Z")}),
                                "recipient": st.just({"id": "PAGE_ID"}),
                                "timestamp": st.integers(1_600_000_000_000, 1_900_000_000_000),
                            },
                            optional={
                                "message": st.fixed_dictionaries(
                                    {"mid": st.text(min_size=1, max_size=20)},
                                    optional={"text": any_text, "quick_reply": st.fixed_dictionaries({"payload": any_text}),
                                              "attachments": st.lists(fb_attachment, max_size=2), "is_echo": st.booleans()},
                                ),
                                "postback": st.fixed_dictionaries({"mid": st.text(min_size=1, max_size=20), "title": any_text, "payload": any_text}),
                            },
                        ),
                        min_size=1,
                        max_size=2,
                    ),
                }
            ),
            min_size=1,
            max_size=2,
        ),
    }
)


def _messenger_signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


@FUZZ
@given(data=st.data())
def test_messenger_webhook_never_fails(stack, client, data):
    app_secret = stack["messenger_app_secret"]
    case = data.draw(st.sampled_from(["forged", "signed_bytes", "signed_json", "signed_event", "signed_event"]), label="case")
    if case == "forged":
        body = data.draw(st.binary(max_size=300) | fb_payloads.map(_json_body), label="body")
        headers = data.draw(random_headers, label="headers")
        if data.draw(st.booleans(), label="signed with another secret"):
            headers["x-hub-signature-256"] = _messenger_signature("not-" + app_secret, body).encode()
        response = _post(client, "/webhooks/messenger", body, _headers(headers, {"content-type": "application/json"}))
        _check(response, {403}, (body, headers))
        return
    if case == "signed_bytes":
        body = data.draw(st.binary(max_size=300), label="body")
    elif case == "signed_json":
        body = _json_body(data.draw(json_values, label="json"))
    else:
        body = _json_body(_fresh_ids(data.draw(fb_plausible | fb_payloads, label="payload"), "mid"))
    signature = _messenger_signature(app_secret, body)
    if data.draw(st.booleans(), label="upper-case hex"):
        signature = "sha256=" + signature[len("sha256="):].upper()
    response = _post(client, "/webhooks/messenger", body, _headers({"x-hub-signature-256": signature}, {"content-type": "application/json"}))
    payload = _json_object(body)
    malformed = payload is None or payload.get("object") != "page" or not isinstance(payload.get("entry"), list)
    _check(response, {400} if malformed else {200, 400}, body)


@FUZZ
@given(data=st.data())
def test_messenger_handshake_never_fails(stack, client, data):
    case = data.draw(st.sampled_from(["fields", "raw"]), label="case")
    if case == "fields":
        fields = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "hub.mode": st.sampled_from(["subscribe", "unsubscribe", ""]) | clean_text,
                    "hub.verify_token": st.sampled_from([stack["messenger_verify_token"], ""]) | clean_text,
                    "hub.challenge": clean_text,
                },
            ),
            label="fields",
        )
        fields.update(data.draw(st.dictionaries(clean_text, clean_text, max_size=2), label="others"))
        query = urlencode(fields)
    else:
        query = data.draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="#"), max_size=80), label="query")
    response = client.get(f"/webhooks/messenger?{query}", headers=_headers(data.draw(random_headers, label="headers")))
    params = QueryParams(query)
    accepted = params.get("hub.mode") == "subscribe" and params.get("hub.verify_token") == stack["messenger_verify_token"] and bool(params.get("hub.challenge"))
    _check(response, {200} if accepted else {403}, query)
    if accepted:
        assert response.text == params["hub.challenge"]
        assert response.headers["content-type"].startswith("text/plain")


# ------------------------------------------------------------------------------- web chat

webchat_messages = st.fixed_dictionaries(
    {"client_message_id": maybe(st.text(max_size=70))},
    optional={
        "text": maybe(any_text),
        "payload": maybe(st.none() | any_text),
        "language": maybe(st.sampled_from(["fr-FR", "ar", "", "x" * 100]) | any_text),
    },
)


def _webchat_valid(body: bytes) -> bool:
    """What the web chat API accepts (connectors/webchat.py's contract)."""
    if len(body) > 20_000:
        return False
    if not body:
        body = b"{}"
    message = _json_object(body)
    if message is None:
        return False
    text, payload, client_id = message.get("text", ""), message.get("payload"), message.get("client_message_id")
    return isinstance(text, str) and (payload is None or isinstance(payload, str)) and isinstance(client_id, str) and 1 <= len(client_id) <= 64


@FUZZ
@given(data=st.data())
def test_webchat_send_never_fails(stack, client, webchat_session, data):
    case = data.draw(st.sampled_from(["no_session", "forged_session", "bytes", "json", "message", "message"]), label="case")
    if case == "bytes":
        body = data.draw(st.binary(max_size=300), label="body")
    elif case == "json":
        body = _json_body(data.draw(json_values, label="json"))
    else:
        message = data.draw(webchat_messages, label="message")
        client_id = message.get("client_message_id")
        if isinstance(client_id, str) and 1 <= len(client_id) <= 64:
            message["client_message_id"] = f"{next(_fresh)}.{client_id}"[:64]
        body = _json_body(message)
    headers = data.draw(random_headers, label="headers")
    headers.pop("x-jisr-session", None)
    if case == "forged_session":
        token, _, signature = webchat_session.partition(".")
        headers["x-jisr-session"] = data.draw(
            header_values | st.sampled_from([f"{token}.{'0' * len(signature)}", f"{token}x.{signature}", f"{token}.{signature}.x", f"{token}.{signature[:-1]}é".encode("latin-1")]),
            label="session",
        )
    elif case != "no_session":
        headers["x-jisr-session"] = webchat_session
        headers = {k: v for k, v in headers.items() if k not in ("content-type",)}
    response = _post(client, "/api/webchat/messages", body, _headers(headers, {"content-type": "application/json"}))
    if case in ("no_session", "forged_session"):
        _check(response, {403}, (body, headers))
    else:
        _check(response, {200} if _webchat_valid(body) else {400}, body)
        if response.status_code == 200:
            assert response.json()["ok"] is True


@FUZZ
@given(data=st.data())
def test_webchat_receive_never_fails(stack, client, webchat_session, data):
    session_case = data.draw(st.sampled_from(["valid", "valid", "none", "forged"]), label="session")
    if data.draw(st.booleans(), label="fields"):
        fields = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "after": st.one_of(big_ints.map(str), clean_text, st.sampled_from(["-1", "1e3", "0x10", "9" * 40, " 1", "+1"])),
                    # Bounded waits (the route long-polls for up to 25 s) and what is not a number.
                    "wait": st.one_of(
                        st.floats(max_value=0.2, allow_nan=False).map(repr),
                        st.sampled_from(["nan", "-inf", "abc", "", "0", "-1e999"]),
                    ),
                },
            ),
            label="fields",
        )
        if session_case == "valid":
            fields.setdefault("wait", "0")  # no 20-second long poll
        query = urlencode(fields)
    else:
        query = data.draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="#"), max_size=60), label="query")
        query += "&wait=0"  # the last value wins: a random query must not long-poll for 25 s
    headers = data.draw(random_headers, label="headers")
    headers.pop("x-jisr-session", None)
    if session_case == "valid":
        headers["x-jisr-session"] = webchat_session
    elif session_case == "forged":
        headers["x-jisr-session"] = data.draw(header_values, label="forged")
    response = client.get(f"/api/webchat/messages?{query}", headers=_headers(headers))
    _check(response, {200, 400, 403, 422}, (query, headers))
    params = QueryParams(query)
    well_formed = _int_or_none(params.get("after", "0")) is not None and _float_or_none(params.get("wait", "20")) is not None
    if session_case != "valid" and well_formed:
        assert response.status_code == 403, response.text
    if response.status_code == 200:
        answer = response.json()
        assert isinstance(answer["messages"], list) and answer["next"] == int(params.get("after", "0")) + len(answer["messages"])


def _int_or_none(value: str) -> Optional[int]:
    try:
        return int(value)
    except ValueError:
        return None


def _float_or_none(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


# ------------------------------------------------------------------------------- what the fuzzing found
# Each of these answered 500 or 503 (a 503 makes the provider retry the same poison message for hours).


def _telegram(client: httpx.Client, secret: str, update: dict[str, Any]) -> httpx.Response:
    return client.post("/webhooks/telegram", content=_json_body(update), headers={"x-telegram-bot-api-secret-token": secret})


def _messenger(client: httpx.Client, app_secret: str, event: dict[str, Any]) -> httpx.Response:
    body = _json_body({"object": "page", "entry": [{"id": "PAGE_ID", "time": 1, "messaging": [event]}]})
    return client.post("/webhooks/messenger", content=body, headers={"x-hub-signature-256": _messenger_signature(app_secret, body)})


def test_regressions_found_by_fuzzing(stack, client, webchat_session):
    secret, app_secret = stack["telegram_secret"], stack["messenger_app_secret"]
    chat = {"id": 31_337, "type": "private"}
    sender = {"sender": {"id": "31337"}, "recipient": {"id": "PAGE_ID"}}
    non_ascii_session = [(b"x-jisr-session", webchat_session[:-1].encode() + b"\xe9")]

    # A non-ASCII web chat session header: hmac.compare_digest refuses non-ASCII str (TypeError).
    _check(client.post("/api/webchat/messages", json={"text": "x", "client_message_id": "r1"}, headers=non_ascii_session), {403}, "session")
    _check(client.get("/api/webchat/messages?wait=0", headers=non_ascii_session), {403}, "session")
    # A Host header that is no host: the Twilio signature check parsed it (ValueError).
    for host in (b"a:b", b"[::1", b"127.0.0.1:99999"):
        forged = [(b"host", host), (b"content-type", b"application/x-www-form-urlencoded"), (b"x-twilio-signature", b"abc")]
        _check(client.post("/webhooks/whatsapp", content=b"From=whatsapp%3A%2B1&Body=hi&MessageSid=SMx", headers=forged), {403}, host)
    # A Redis list index past 64 bits.
    _check(client.get(f"/api/webchat/messages?after={2**63}&wait=0", headers={"x-jisr-session": webchat_session}), {400}, "after")
    # Dates no calendar holds (datetime.fromtimestamp raises OverflowError or OSError).
    _check(_telegram(client, secret, {"update_id": 2_100_000_001, "message": {"message_id": 1, "date": 10**20, "chat": chat, "text": "x"}}), {400}, "date")
    _check(_messenger(client, app_secret, {**sender, "timestamp": 10**20, "message": {"mid": "r-ts", "text": "x"}}), {400}, "timestamp")
    _check(_messenger(client, app_secret, {**sender, "timestamp": float("nan"), "message": {"mid": "r-nan", "text": "x"}}), {400}, "timestamp")
    # python-telegram-bot checks no types: a number as text reached the database.
    _check(_telegram(client, secret, {"update_id": 2_100_000_002, "message": {"message_id": 1, "date": 1, "chat": chat, "text": 5}}), {400}, "text")
    _check(_telegram(client, secret, {"update_id": 2_100_000_003, "callback_query": {"id": "1", "from": {"id": 1, "is_bot": False, "first_name": "A"}, "chat_instance": "1", "data": 5}}), {400}, "data")
    # A lone UTF-16 surrogate (JSON "\\ud800", half an emoji): no database or Redis key can encode it. Answered, with U+FFFD.
    half_emoji = "bonjour \ud83d"
    # A session of its own: the fuzzed messages of the shared session may have handed its
    # conversation to a mediator (two misunderstood messages in a row), and then the bot is silent.
    fresh_session = client.post("/api/webchat/session").json()["session"]
    response = client.post("/api/webchat/messages", content=_json_body({"text": half_emoji, "client_message_id": "r-surrogate"}), headers={"x-jisr-session": fresh_session})
    _check(response, {200}, "surrogate")
    assert response.json()["processed"] in (["processed"], ["flood"], ["flood_ignored"])
    _check(_telegram(client, secret, {"update_id": 2_100_000_004, "message": {"message_id": 1, "date": 1, "chat": chat, "text": half_emoji}}), {200}, "surrogate")
    _check(_messenger(client, app_secret, {**sender, "timestamp": 1, "message": {"mid": "r-\udc80", "text": half_emoji}}), {200}, "surrogate")
