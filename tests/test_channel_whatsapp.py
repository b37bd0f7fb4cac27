"""WhatsApp through Twilio: recorded payloads in, exact requests out, errors with policy.

Inbound cases are table-driven from tests/fixtures/whatsapp/*.json (the form
fields of Twilio's webhooks); outbound cases run the connector against the
Twilio simulator served for real on 127.0.0.1 and assert the exact request
it recorded. No network beyond localhost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from twilio.request_validator import RequestValidator

from connectors.errors import (
    ContactStopped,
    MalformedPayload,
    OutsideWindow,
    PermanentSendError,
    SendError,
    Throttled,
    TransientSendError,
    WebhookForbidden,
)
from connectors.types import (
    Button,
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
    Template,
    WebhookRequest,
)
from connectors.whatsapp_twilio import TwilioWhatsAppConnector, error_from_twilio, media_kind
from jisr.settings import Settings
from jisr.simulators.base import Failure, FailurePlan, SimulatorState
from jisr.simulators.server import BackgroundServer
from jisr.simulators.twilio import create_app

FIXTURES = Path(__file__).parent / "fixtures" / "whatsapp"
FORM = "application/x-www-form-urlencoded"
TOKEN = "test-auth-token-5f1c"
ACCOUNT = "AC5ef8732a3c49700934481addd5ce1659"
BOT = "whatsapp:+14155238886"
WEBHOOK_URL = "https://jisr.example.org/webhooks/whatsapp"
AT = dt.datetime(2026, 9, 1, 8, 0, tzinfo=dt.timezone.utc)
WA = Channel.WHATSAPP


def make_connector(api_base: str = "https://api.twilio.com", *, token: str = TOKEN, timeout: float = 5.0) -> TwilioWhatsAppConnector:
    return TwilioWhatsAppConnector(
        ACCOUNT, token, BOT, api_base=api_base, webhook_url=WEBHOOK_URL, status_callback=WEBHOOK_URL, timeout=timeout
    )


def load(name: str) -> dict[str, str]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def signed(form: dict[str, str], *, url: str = WEBHOOK_URL, token: str = TOKEN, body: Optional[bytes] = None) -> WebhookRequest:
    """The request Twilio would send: the form encoded, signed over url + sorted fields."""
    signature = RequestValidator(token).compute_signature(url, form)
    return WebhookRequest(
        method="POST",
        url=url,
        headers={"content-type": FORM, "x-twilio-signature": signature},
        body=urlencode(form).encode() if body is None else body,
    )


def unsigned(body: bytes, content_type: Optional[str] = FORM) -> WebhookRequest:
    headers = {"content-type": content_type} if content_type else {}
    return WebhookRequest(method="POST", url=WEBHOOK_URL, headers=headers, body=body)


def fixed_time(events: list[InboundEvent]) -> list[InboundEvent]:
    """Twilio sends no timestamp: the connector stamps "now"; pin it to compare whole events."""
    out: list[InboundEvent] = []
    for event in events:
        if isinstance(event, InboundMessage):
            out.append(dataclasses.replace(event, received_at=AT))
        else:
            out.append(dataclasses.replace(event, at=AT))
    return out


def media_url(sid: str) -> str:
    return f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}/Media/ME{sid[2:]}"


def msg(address: str, sid: str, text: str = "", **kw: Any) -> InboundMessage:
    return InboundMessage(channel=WA, address=address, provider_message_id=sid, text=text, received_at=AT, **kw)


def receipt(address: str, sid: str, status: DeliveryStatus, error_code: Optional[str] = None) -> StatusUpdate:
    return StatusUpdate(channel=WA, address=address, provider_message_id=sid, status=status, error_code=error_code, at=AT)


# --- inbound: every recorded payload → the exact normalised events -------------------------------

SENT_SID = "SMa1b2c3d4e5f60718293a4b5c6d7e8f90"

INBOUND_CASES: dict[str, list[InboundEvent]] = {
    "text": [
        msg(
            "whatsapp:+33612345678",
            "SM1f0e2d3c4b5a69788796a5b4c3d2e1f0",
            "Bonjour, mon fils entre en 6e en septembre. Quels papiers faut-il pour l'inscription ?",
        )
    ],
    "voice_note": [
        msg(
            "whatsapp:+34612345678",
            "MM2a9b8c7d6e5f40312a3b4c5d6e7f8091",
            media=(Media(MediaKind.AUDIO, url=media_url("MM2a9b8c7d6e5f40312a3b4c5d6e7f8091"), mime_type="audio/ogg"),),
        )
    ],
    "image_caption": [
        msg(
            "whatsapp:+393471234567",
            "MM3b8c7d6e5f4a3021b2c3d4e5f6a7b8c9",
            "Voici le certificat de scolarité de ma fille",
            media=(Media(MediaKind.IMAGE, url=media_url("MM3b8c7d6e5f4a3021b2c3d4e5f6a7b8c9"), mime_type="image/jpeg"),),
        )
    ],
    "document_pdf": [
        msg(
            "whatsapp:+4915123456789",
            "MM4c7d6e5f4a3b2c10c3d4e5f6a7b8c9d0",
            media=(Media(MediaKind.DOCUMENT, url=media_url("MM4c7d6e5f4a3b2c10c3d4e5f6a7b8c9d0"), mime_type="application/pdf"),),
        )
    ],
    "video": [
        msg(
            "whatsapp:+32471234567",
            "MM5d6e5f4a3b2c1d0fd4e5f6a7b8c9d0e1",
            media=(Media(MediaKind.VIDEO, url=media_url("MM5d6e5f4a3b2c1d0fd4e5f6a7b8c9d0e1"), mime_type="video/mp4"),),
        )
    ],
    "location": [
        msg(
            "whatsapp:+33698765432",
            "SM6e5f4a3b2c1d0e9fe5f6a7b8c9d0e1f2",
            location=Location(latitude=45.764043, longitude=4.835659, label="Collège Ampère"),
        )
    ],
    "button_reply": [msg("whatsapp:+33612345678", "SM7f4a3b2c1d0e9f8af6a7b8c9d0e1f2a3", "Oui", button_payload="consent_yes")],
    "arabic_script": [
        msg("whatsapp:+34698765432", "SM8a3b2c1d0e9f8a7bf7a8b9c0d1e2f3a4", "السلام عليكم، بغيت نعرف فوقاش كيبدا التسجيل فالمدرسة ديال ولدي")
    ],
    "darija_latin": [
        msg(
            "whatsapp:+33745123456",
            "SM9b2c1d0e9f8a7b6ca8b9c0d1e2f3a4b5",
            "Salam, bghit n3ref fin nsajel bnti f lycée 3afak, wach khasni chi wra9?",
        )
    ],
    "status_sent": [receipt("whatsapp:+33612345678", SENT_SID, DeliveryStatus.SENT)],
    "status_delivered": [receipt("whatsapp:+33612345678", SENT_SID, DeliveryStatus.DELIVERED)],
    "status_read": [receipt("whatsapp:+33612345678", SENT_SID, DeliveryStatus.READ)],
    "status_failed_63016": [receipt("whatsapp:+4915123456789", "SMb2c3d4e5f60718293a4b5c6d7e8f90a1", DeliveryStatus.FAILED, "63016")],
    "status_undelivered_30003": [
        receipt("whatsapp:+393471234567", "SMc3d4e5f60718293a4b5c6d7e8f90a1b2", DeliveryStatus.UNDELIVERED, "30003")
    ],
}


def test_every_fixture_has_a_case() -> None:
    """Like courier's unused-mock check: a fixture without an expectation is a test nobody runs."""
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(INBOUND_CASES)


@pytest.mark.parametrize("name", sorted(INBOUND_CASES))
def test_inbound_fixture(name: str) -> None:
    connector = make_connector()
    request = signed(load(name))
    connector.verify(request)
    assert fixed_time(connector.parse(request)) == INBOUND_CASES[name]


@pytest.mark.parametrize(
    "fields",
    [
        {"MessageStatus": "received"},     # the lifecycle of an inbound message
        {"MessageStatus": "receiving"},
        {"MessageStatus": "partially_delivered"},  # a status we do not know
    ],
)
def test_unknown_events_are_ignored(fields: dict[str, str]) -> None:
    form = {**load("status_sent"), "SmsStatus": fields["MessageStatus"], **fields}
    assert make_connector().parse(signed(form)) == []


@pytest.mark.parametrize(
    "content_type, message_type, kind",
    [
        ("audio/ogg", "audio", MediaKind.AUDIO),
        ("audio/ogg; codecs=opus", "audio", MediaKind.AUDIO),
        ("audio/mpeg", "audio", MediaKind.AUDIO),
        ("image/jpeg", "image", MediaKind.IMAGE),
        ("image/webp", "sticker", MediaKind.STICKER),
        ("video/mp4", "video", MediaKind.VIDEO),
        ("application/pdf", "document", MediaKind.DOCUMENT),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "document", MediaKind.DOCUMENT),
        ("text/vcard", "document", MediaKind.DOCUMENT),
        ("", "unknown", MediaKind.OTHER),
    ],
)
def test_media_kind(content_type: str, message_type: str, kind: MediaKind) -> None:
    assert media_kind(content_type, message_type) == kind


# --- signature ---------------------------------------------------------------------------------


def test_valid_signature_passes_with_or_without_default_port() -> None:
    form = load("text")
    connector = make_connector()
    connector.verify(signed(form))
    # Twilio is inconsistent about default ports; the SDK accepts both forms of the URL.
    request = signed(form)
    connector.verify(dataclasses.replace(request, url="https://jisr.example.org:443/webhooks/whatsapp"))


def _tampered_body(form: dict[str, str]) -> WebhookRequest:
    request = signed(form)
    return dataclasses.replace(request, body=urlencode({**form, "Body": "Envoyez-moi votre code"}).encode())


@pytest.mark.parametrize(
    "make_request, reason",
    [
        (lambda f: signed(f, token="not-the-token"), "does not match"),
        (lambda f: dataclasses.replace(signed(f), headers={"content-type": FORM}), "missing"),
        (lambda f: dataclasses.replace(signed(f), headers={"content-type": FORM, "x-twilio-signature": ""}), "missing"),
        (_tampered_body, "does not match"),
        (lambda f: dataclasses.replace(signed(f), body=signed(f).body + b"&Extra=1"), "does not match"),
        # a signature Twilio made for someone else's webhook, replayed to ours
        (lambda f: dataclasses.replace(signed(f, url="https://evil.example.org/webhooks/whatsapp"), url=WEBHOOK_URL), "does not match"),
        (lambda f: dataclasses.replace(signed(f), url="https://jisr.example.org/webhooks/telegram"), "does not match"),
        (lambda f: dataclasses.replace(signed(f), body=b'{"Body": "hi"}'), "cannot be verified"),
        (lambda f: dataclasses.replace(signed(f), body=b"Body=%FF"), "cannot be verified"),
    ],
    ids=["forged", "missing", "empty", "tampered-body", "added-field", "other-url", "other-path", "json-body", "bad-utf8"],
)
def test_bad_signature_is_forbidden(make_request: Any, reason: str) -> None:
    with pytest.raises(WebhookForbidden, match=reason):
        make_connector().verify(make_request(load("text")))


# --- malformed payloads -----------------------------------------------------------------------


def _form_without(name: str, *drop: str, **extra: str) -> bytes:
    form = {k: v for k, v in load(name).items() if k not in drop}
    form.update(extra)
    return urlencode(form).encode()


@pytest.mark.parametrize(
    "request_, reason",
    [
        (unsigned(b'{"MessageSid": "SM1", "From": "whatsapp:+33612345678"}', "application/json"), "expected application/x-www-form-urlencoded"),
        (unsigned(b'{"MessageSid": "SM1"}', None), "not form-encoded"),
        (unsigned(b"", FORM), "empty body"),
        (unsigned(_form_without("text", "MessageSid")), "MessageSid is missing"),
        (unsigned(_form_without("text", "From")), "From is missing"),
        (unsigned(_form_without("text", From="+33612345678")), "From is not a WhatsApp address"),
        (unsigned(_form_without("status_sent", "MessageSid")), "MessageSid is missing"),
        (unsigned(_form_without("status_sent", "To")), "To is missing"),
        (unsigned(_form_without("text") + b"&Body=%FF%FE"), "not UTF-8"),
        (unsigned(b"\xff\xfeB\x00o\x00d\x00y\x00"), "not UTF-8"),
        (unsigned(_form_without("text", NumMedia="two")), "NumMedia is not a number"),
        (unsigned(_form_without("text", NumMedia="11")), "NumMedia out of range"),
        (unsigned(_form_without("voice_note", "MediaUrl0")), "MediaUrl0 is missing"),
        (unsigned(_form_without("location", Latitude="north")), "not numbers"),
        (unsigned(_form_without("location", "Longitude")), "come together"),
        (unsigned(_form_without("location", Latitude="123.0")), "out of range"),
    ],
    ids=[
        "json",
        "json-no-content-type",
        "empty",
        "no-message-sid",
        "no-from",
        "sms-from",
        "status-no-sid",
        "status-no-to",
        "bad-percent-utf8",
        "utf16-body",
        "num-media-text",
        "num-media-range",
        "media-no-url",
        "latitude-text",
        "latitude-alone",
        "latitude-range",
    ],
)
def test_malformed_payload(request_: WebhookRequest, reason: str) -> None:
    with pytest.raises(MalformedPayload, match=reason):
        make_connector().parse(request_)


# --- error mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, code, retry_after, error, expected_code, expected_retry",
    [
        (400, 21610, None, ContactStopped, "21610", None),
        (400, 63016, None, OutsideWindow, "63016", None),
        (429, 63018, 12.0, Throttled, "63018", 12.0),
        (429, 20429, None, Throttled, "20429", 1.0),
        (429, None, None, Throttled, "429", 1.0),
        (400, 21611, None, Throttled, "21611", 60.0),
        (400, 21211, None, PermanentSendError, "21211", None),
        (400, 63003, None, PermanentSendError, "63003", None),
        (401, 20003, None, PermanentSendError, "20003", None),
        (500, 20500, None, TransientSendError, "20500", None),
        (503, None, 3.0, TransientSendError, "503", 3.0),
    ],
)
def test_error_from_twilio(
    status: int, code: Optional[int], retry_after: Optional[float], error: type, expected_code: str, expected_retry: Optional[float]
) -> None:
    mapped = error_from_twilio(status, code, retry_after=retry_after)
    assert type(mapped) is error
    assert mapped.code == expected_code
    assert mapped.retry_after == expected_retry
    assert mapped.contact_stopped == (error is ContactStopped)
    assert mapped.retryable == (error in (Throttled, TransientSendError))


# --- outbound against the simulator -----------------------------------------------------------


@pytest.fixture(scope="module")
def twilio_sim() -> Iterator[tuple[str, SimulatorState]]:
    app = create_app(auth_token=TOKEN, account_sid=ACCOUNT)
    with BackgroundServer(app) as url:
        yield url, app.state.simulator


@pytest.fixture
def sim(twilio_sim: tuple[str, SimulatorState]) -> tuple[str, SimulatorState]:
    twilio_sim[1].reset()
    return twilio_sim


def send(connector: TwilioWhatsAppConnector, message: OutboundMessage) -> SendResult:
    async def once() -> SendResult:
        try:
            return await connector.send(message)
        finally:
            await connector.close()

    return asyncio.run(once())


def out(text: str = "", **kw: Any) -> OutboundMessage:
    return OutboundMessage(channel=WA, address="whatsapp:+33612345678", text=text, **kw)


def expected_request(sid: str, *, body: Optional[str] = None, content_sid: Optional[str] = None, variables: Any = None) -> dict[str, Any]:
    return {
        "to": "whatsapp:+33612345678",
        "from": BOT,
        "body": body,
        "content_sid": content_sid,
        "variables": variables,
        "status_callback": WEBHOOK_URL,
        "http_status": 201,
        "sid": sid,
    }


@pytest.mark.parametrize(
    "message, expected",
    [
        (out("Bonjour ! La rentrée est le 1er septembre."), {"body": "Bonjour ! La rentrée est le 1er septembre."}),
        (out("مرحبا، الدخول المدرسي يوم 1 شتنبر"), {"body": "مرحبا، الدخول المدرسي يوم 1 شتنبر"}),
        (
            out(
                "Bonjour Fatima",  # ignored: a template's text lives at Twilio, Body would fail with 63016
                template=Template("HXb5b62575e6e4ff6129ad7c8efe1f983e", (("1", "Fatima"), ("2", "1er septembre"))),
            ),
            {"content_sid": "HXb5b62575e6e4ff6129ad7c8efe1f983e", "variables": {"1": "Fatima", "2": "1er septembre"}},
        ),
        (out(template=Template("HXb5b62575e6e4ff6129ad7c8efe1f983e")), {"content_sid": "HXb5b62575e6e4ff6129ad7c8efe1f983e"}),
        (
            out("Votre enfant est-il au collège ?", buttons=(Button("Oui", "yes"), Button("Non", "no"), Button("Je ne sais pas", "dk"))),
            {"body": "Votre enfant est-il au collège ?\n\n1. Oui\n2. Non\n3. Je ne sais pas"},
        ),
    ],
    ids=["text", "arabic", "template", "template-no-variables", "buttons"],
)
def test_send_exact_request(sim: tuple[str, SimulatorState], message: OutboundMessage, expected: dict[str, Any]) -> None:
    url, state = sim
    result = send(make_connector(url), message)
    assert result.status == DeliveryStatus.QUEUED
    assert result.provider_message_id.startswith("SM") and len(result.provider_message_id) == 34
    # "at" is the simulator's arrival clock (the soak measures latency with it), not part of the request.
    assert [{k: v for k, v in r.items() if k != "at"} for r in state.requests] == [expected_request(result.provider_message_id, **expected)]


@pytest.mark.parametrize(
    "plan, error, code, retry_after",
    [
        (FailurePlan(queue=[Failure(status=429, retry_after=7)]), Throttled, "20429", 7.0),
        (FailurePlan(queue=[Failure(status=503)]), TransientSendError, "20503", None),
        (FailurePlan(queue=[Failure(status=500)]), TransientSendError, "20500", None),
        (FailurePlan(blocked_addresses={"whatsapp:+33612345678"}), ContactStopped, "21610", None),
    ],
    ids=["429", "503", "500", "blocked"],
)
def test_send_failures(sim: tuple[str, SimulatorState], plan: FailurePlan, error: type, code: str, retry_after: Optional[float]) -> None:
    url, state = sim
    state.plan = plan
    with pytest.raises(error) as raised:
        send(make_connector(url), out("Bonjour"))
    assert type(raised.value) is error
    assert raised.value.code == code
    assert raised.value.retry_after == retry_after
    # After the injected failure, the same connector sends normally.
    state.plan = FailurePlan()
    assert send(make_connector(url), out("Bonjour")).provider_message_id.startswith("SM")


def test_send_timeout_is_transient(sim: tuple[str, SimulatorState]) -> None:
    url, state = sim
    state.plan = FailurePlan(queue=[Failure(timeout=1.0)])
    started = time.monotonic()
    with pytest.raises(TransientSendError) as raised:
        send(make_connector(url, timeout=0.3), out("Bonjour"))
    assert raised.value.code == "timeout"
    assert time.monotonic() - started < 1.0


def test_send_connection_refused_is_transient() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientSendError) as raised:
        send(make_connector(f"http://127.0.0.1:{port}"), out("Bonjour"))
    assert raised.value.code == "connection"


@pytest.mark.parametrize(
    "connector_kw, message, error, code",
    [
        ({"token": "wrong-token"}, out("Bonjour"), PermanentSendError, "20003"),
        ({}, OutboundMessage(channel=WA, address="whatsapp:+0123", text="Bonjour"), PermanentSendError, "21211"),
        ({}, out("x" * 1601), PermanentSendError, "21617"),
    ],
    ids=["bad-credentials", "bad-number", "too-long"],
)
def test_send_refused(sim: tuple[str, SimulatorState], connector_kw: dict[str, Any], message: OutboundMessage, error: type, code: str) -> None:
    url, _ = sim
    with pytest.raises(error) as raised:
        send(make_connector(url, **connector_kw), message)
    assert raised.value.code == code
    assert "+0123" not in str(raised.value)  # Twilio's own messages quote numbers: ours must not


@pytest.mark.parametrize(
    "message, code",
    [
        (out(""), "empty"),
        (OutboundMessage(channel=WA, address="+33612345678", text="Bonjour"), "address"),
        (OutboundMessage(channel=Channel.TELEGRAM, address="telegram:1", text="Bonjour"), "channel"),
    ],
)
def test_send_rejected_before_any_request(sim: tuple[str, SimulatorState], message: OutboundMessage, code: str) -> None:
    url, state = sim
    with pytest.raises(PermanentSendError) as raised:
        send(make_connector(url), message)
    assert raised.value.code == code
    assert state.requests == []


def test_send_does_not_block_the_event_loop(sim: tuple[str, SimulatorState]) -> None:
    url, state = sim
    state.plan = FailurePlan(queue=[Failure(timeout=0.4)])  # the simulator hangs, then answers 504
    connector = make_connector(url)

    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        with pytest.raises(TransientSendError):
            await connector.send(out("Bonjour"))
        task.cancel()
        return ticks

    assert asyncio.run(scenario()) >= 15


def test_no_phone_number_text_or_token_in_logs(sim: tuple[str, SimulatorState], caplog: pytest.LogCaptureFixture) -> None:
    url, state = sim
    caplog.set_level(logging.DEBUG)
    connector = make_connector(url)
    send(connector, out("Message très personnel"))
    state.plan = FailurePlan(queue=[Failure(status=429, retry_after=2)])
    with pytest.raises(Throttled):
        send(connector, out("Message très personnel"))
    connector.parse(signed(load("text")))
    connector.parse(signed({**load("status_sent"), "MessageStatus": "received"}))
    for secret in ("33612345678", "personnel", "mon fils", TOKEN):
        assert secret not in caplog.text


def test_from_settings() -> None:
    settings = Settings(
        public_url="https://jisr.example.org/",
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=TOKEN,
        twilio_whatsapp_from=BOT,
        twilio_api_base="http://127.0.0.1:9",
    )
    connector = TwilioWhatsAppConnector.from_settings(settings)
    assert connector.webhook_url == WEBHOOK_URL
    assert connector.status_callback == WEBHOOK_URL
    assert connector.from_number == BOT
    assert connector.channel is Channel.WHATSAPP
    assert connector._http.rebase("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json") == (
        "http://127.0.0.1:9/2010-04-01/Accounts/AC1/Messages.json"
    )
    connector.verify(signed(load("text")))


# --- round trip: the simulator delivers signed webhooks to a receiver --------------------------


class Receiver:
    """A tiny gateway: verify, parse, keep the events; can fail or stall its next requests."""

    def __init__(self) -> None:
        self.connector = make_connector()
        self.events: list[InboundEvent] = []
        self.fail_next = 0
        self.stall_next = 0.0
        self.app = FastAPI()
        self.app.post("/webhooks/whatsapp")(self.webhook)

    async def webhook(self, request: Request) -> PlainTextResponse:
        # The body is read first: a stalled request outlives the sender's timeout and its connection.
        webhook = WebhookRequest(
            method=request.method,
            url=str(request.url),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        if self.stall_next:
            delay, self.stall_next = self.stall_next, 0.0
            await asyncio.sleep(delay)
        if self.fail_next:
            self.fail_next -= 1
            return PlainTextResponse("busy", status_code=500)
        try:
            self.connector.verify(webhook)
            self.events.extend(self.connector.parse(webhook))
        except WebhookForbidden:
            return PlainTextResponse("forbidden", status_code=403)
        except MalformedPayload as exc:
            return PlainTextResponse(str(exc), status_code=400)
        return PlainTextResponse("<Response/>", media_type="text/xml")


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[tuple[str, Receiver]]:
    receiver = Receiver()
    with BackgroundServer(receiver.app) as url:
        yield url + "/webhooks/whatsapp", receiver


@pytest.fixture
def receiver(receiver_server: tuple[str, Receiver]) -> tuple[str, Receiver]:
    url, rec = receiver_server
    rec.connector, rec.events, rec.fail_next, rec.stall_next = make_connector(), [], 0, 0.0
    return url, rec


def sim_post(sim_url: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(sim_url + path, json=payload, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "payload, expected",
    [
        ({"body": "Salam, wach kayn chi mo3in f lmadrasa?"}, {"text": "Salam, wach kayn chi mo3in f lmadrasa?"}),
        (
            {"media": [{"url": "https://api.twilio.com/media/ME1", "content_type": "audio/ogg"}]},
            {"media": (Media(MediaKind.AUDIO, url="https://api.twilio.com/media/ME1", mime_type="audio/ogg"),)},
        ),
        (
            {"latitude": 40.4168, "longitude": -3.7038, "label": "Colegio Cervantes", "address": "Calle Mayor 1, Madrid"},
            {"location": Location(40.4168, -3.7038, "Colegio Cervantes")},
        ),
        ({"body": "Non", "button_payload": "consent_no"}, {"text": "Non", "button_payload": "consent_no"}),
    ],
    ids=["text", "voice-note", "location", "button"],
)
def test_sim_inbound_round_trip(
    sim: tuple[str, SimulatorState], receiver: tuple[str, Receiver], payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    sim_url, _ = sim
    webhook_url, rec = receiver
    answer = sim_post(sim_url, "/_sim/inbound", {"webhook_url": webhook_url, "from": "whatsapp:+33612345678", **payload})
    assert answer["statuses"] == [200]
    assert fixed_time(rec.events) == [msg("whatsapp:+33612345678", answer["message_sid"], **expected)]


def test_sim_inbound_retries_on_5xx_and_timeouts(sim: tuple[str, SimulatorState], receiver: tuple[str, Receiver]) -> None:
    sim_url, _ = sim
    webhook_url, rec = receiver
    rec.stall_next, rec.fail_next = 0.6, 1  # first attempt times out (and then answers 500 to nobody), second gets 500
    answer = sim_post(
        sim_url,
        "/_sim/inbound",
        {"webhook_url": webhook_url, "from": "whatsapp:+33612345678", "body": "Salam", "message_sid": "SM" + "1" * 32, "retries": 2, "timeout": 0.3},
    )
    assert answer["statuses"] == [0, 500, 200]  # 0: no answer within the timeout
    # The stalled first delivery still completes on the receiver's side, after the sender gave up:
    # wait for it so it cannot land in the next test's receiver.
    deadline = time.monotonic() + 5
    while len(rec.events) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    # Every delivery carries the same MessageSid: the gateway's de-duplication key.
    assert [e.provider_message_id for e in rec.events] == ["SM" + "1" * 32] * 2


def test_sim_inbound_no_retry_on_403(sim: tuple[str, SimulatorState], receiver: tuple[str, Receiver]) -> None:
    sim_url, _ = sim
    webhook_url, rec = receiver
    rec.connector = make_connector(token="another-account-token")  # the simulator signs with TOKEN
    answer = sim_post(sim_url, "/_sim/inbound", {"webhook_url": webhook_url, "from": "whatsapp:+33612345678", "body": "Salam", "retries": 3})
    assert answer["statuses"] == [403]
    assert rec.events == []


def test_sim_status_round_trip(sim: tuple[str, SimulatorState], receiver: tuple[str, Receiver]) -> None:
    sim_url, _ = sim
    webhook_url, rec = receiver
    sid = send(make_connector(sim_url), out("Bonjour")).provider_message_id
    for status, error_code in (("sent", None), ("delivered", None), ("read", None), ("failed", "63016")):
        answer = sim_post(sim_url, "/_sim/status", {"webhook_url": webhook_url, "message_sid": sid, "status": status, "error_code": error_code})
        assert answer["statuses"] == [200]
    assert fixed_time(rec.events) == [
        receipt("whatsapp:+33612345678", sid, DeliveryStatus.SENT),
        receipt("whatsapp:+33612345678", sid, DeliveryStatus.DELIVERED),
        receipt("whatsapp:+33612345678", sid, DeliveryStatus.READ),
        receipt("whatsapp:+33612345678", sid, DeliveryStatus.FAILED, "63016"),
    ]


def test_sim_control_routes(sim: tuple[str, SimulatorState]) -> None:
    """The shared control routes drive the Twilio simulator over HTTP too."""
    sim_url, state = sim
    httpx.post(sim_url + "/_sim/fail", json={"queue": [{"status": 429, "retry_after": 4}]}).raise_for_status()
    with pytest.raises(Throttled) as raised:
        send(make_connector(sim_url), out("Bonjour"))
    assert raised.value.retry_after == 4.0
    recorded = httpx.get(sim_url + "/_sim/requests").json()["requests"]
    assert [r["http_status"] for r in recorded] == [429]
    httpx.post(sim_url + "/_sim/reset").raise_for_status()
    assert state.requests == []


def test_sim_api_shapes(sim: tuple[str, SimulatorState]) -> None:
    """The resource and error bodies match Twilio's JSON."""
    sim_url, _ = sim
    endpoint = f"{sim_url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    form = {"To": "whatsapp:+33612345678", "From": BOT, "Body": "Bonjour"}
    created = httpx.post(endpoint, data=form, auth=(ACCOUNT, TOKEN))
    assert created.status_code == 201
    resource = created.json()
    assert resource["status"] == "queued" and resource["direction"] == "outbound-api"
    assert resource["uri"] == f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{resource['sid']}.json"
    assert {"to", "from", "body", "date_created", "account_sid", "num_segments", "error_code"} <= set(resource)
    denied = httpx.post(endpoint, data=form, auth=(ACCOUNT, "nope"))
    assert denied.status_code == 401
    assert denied.json() == {"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}
