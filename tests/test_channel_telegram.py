"""Telegram channel: recorded Updates → normalised events, secret checks, sends against the simulator.

Table-driven like courier's handler tests: every recorded payload in
tests/fixtures/telegram/ has its exact expected events; outbound cases assert
the exact request the (real, HTTP-served) simulator recorded. Nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import socket
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from connectors.errors import (
    ContactStopped,
    MalformedPayload,
    PermanentSendError,
    SendError,
    Throttled,
    TransientSendError,
    WebhookForbidden,
)
from connectors.telegram import ALLOWED_UPDATES, MAX_CALLBACK_DATA, OPT_OUT_PAYLOAD, SECRET_HEADER, TelegramConnector, split_text
from connectors.types import (
    Button,
    Channel,
    InboundEvent,
    InboundMessage,
    Location,
    Media,
    MediaKind,
    OutboundMessage,
    WebhookRequest,
)
from jisr.settings import Settings
from jisr.simulators.base import Failure, FailurePlan
from jisr.simulators.server import BackgroundServer
from jisr.simulators.telegram import TelegramSimState, build_update, create_app

FIXTURES = Path(__file__).parent / "fixtures" / "telegram"
TOKEN = "123456:AAH-test_token-for-jisr"
SECRET = "s3cret-Token_for_tests"
TG = Channel.TELEGRAM

# Button presses carry no date of their own: the event is stamped on arrival.
ARRIVAL = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def at(timestamp: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)


def webhook(body: bytes, secret: Optional[str] = SECRET) -> WebhookRequest:
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER.lower()] = secret
    return WebhookRequest(method="POST", url="https://jisr.example/webhooks/telegram", headers=headers, body=body)


def fixture_request(name: str) -> WebhookRequest:
    return webhook((FIXTURES / name).read_bytes())


def assert_events(actual: list[InboundEvent], expected: list[InboundEvent]) -> None:
    """Exact equality; an expected ``received_at`` of ARRIVAL means "stamped just now"."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        if want.received_at == ARRIVAL:  # type: ignore[union-attr]
            assert abs(dt.datetime.now(dt.timezone.utc) - got.received_at) < dt.timedelta(seconds=60)  # type: ignore[union-attr]
            got = dataclasses.replace(got, received_at=ARRIVAL)
        assert got == want


# --------------------------------------------------------------------------- inbound table

FATIMA, YOUSSEF, KHADIJA = "telegram:5012345678", "telegram:6123456789", "telegram:1987654321"

INBOUND_CASES: list[tuple[str, list[InboundEvent]]] = [
    (
        "text_fr.json",
        [InboundMessage(TG, FATIMA, "734561201", text="Bonjour, mon fils entre en 6e à Lyon en septembre, quels papiers faut-il pour l'inscription ?", received_at=at(1725526800), language_hint="fr")],
    ),
    (
        "text_ar.json",
        [InboundMessage(TG, YOUSSEF, "734561202", text="السلام عليكم، كيف أسجل ابنتي في المدرسة الابتدائية في إسبانيا؟", received_at=at(1725613200), language_hint="ar")],
    ),
    (
        "text_darija_latin.json",
        # The language hint is the phone's language (Italian), not the message's: only a hint.
        [InboundMessage(TG, KHADIJA, "734561203", text="salam, bghit n9eyed weldi f lmadrasa f Torino, chno khassni?", received_at=at(1725699600), language_hint="it")],
    ),
    (
        "start_command.json",
        [InboundMessage(TG, "telegram:7034567812", "734561214", text="/start DE", received_at=at(1725786000), language_hint="de")],
    ),
    (
        "voice.json",
        [
            InboundMessage(
                TG, FATIMA, "734561204",
                media=(Media(MediaKind.AUDIO, provider_id="AwACAgQAAxkBAAIBO2bZxQ1h3qM4vYc7n2xk0Lw0pQABuAAC_xQAAmb80FKxR3Xo6nBzWTYE", mime_type="audio/ogg"),),
                received_at=at(1725527100), language_hint="fr",
            )
        ],
    ),
    (
        "photo_caption.json",
        [
            InboundMessage(
                TG, FATIMA, "734561205",
                text="Voici la convocation de l'école, je ne comprends pas la date",
                media=(Media(MediaKind.IMAGE, provider_id="AgACAgQAAxkBAAIBPGbZxVhQ7m2bX0cJ3kY1yQABcfAAAsG_MRtm_NBSAAHHqHqVvEcXAQADAgADeQADNgQ", mime_type="image/jpeg"),),
                received_at=at(1725527400), language_hint="fr",
            )
        ],
    ),
    (
        "document.json",
        [
            InboundMessage(
                TG, FATIMA, "734561206",
                media=(Media(MediaKind.DOCUMENT, provider_id="BQACAgQAAxkBAAIBPWbZxa5xWm2PQ3lD0A7c8cQKkH4LAAKUFQACZvzQUjJ9uUxk3cQyNgQ", mime_type="application/pdf"),),
                received_at=at(1725527700), language_hint="fr",
            )
        ],
    ),
    (
        "location.json",
        [InboundMessage(TG, FATIMA, "734561207", location=Location(45.764043, 4.835659), received_at=at(1725528000), language_hint="fr")],
    ),
    (
        "sticker.json",
        [
            InboundMessage(
                TG, YOUSSEF, "734561212",
                media=(Media(MediaKind.STICKER, provider_id="CAACAgIAAxkBAAIBDmbZxgsVd8u26oGJEdMcEOWc_cGPAAI9AAPANk8TBhiz_UaBaRM2BA", mime_type="application/x-tgsticker"),),
                received_at=at(1725613500), language_hint="ar",
            )
        ],
    ),
    (
        "video_note.json",
        [
            InboundMessage(
                TG, KHADIJA, "734561213",
                media=(Media(MediaKind.VIDEO, provider_id="DQACAgQAAxkBAAIBCGbZxw6oN0XSUISeKtgvUZmceJ15AAIXFgACZvzQUo9FeJu2ctgpNgQ", mime_type="video/mp4"),),
                received_at=at(1725700200), language_hint="it",
            )
        ],
    ),
    (
        "callback_query.json",
        [InboundMessage(TG, YOUSSEF, "734561208", button_payload='/inform{"country":"ES"}', received_at=ARRIVAL, language_hint="ar")],
    ),
    ("edited_message.json", []),
    (
        "my_chat_member_kicked.json",
        [InboundMessage(TG, KHADIJA, "734561210", text="", button_payload=OPT_OUT_PAYLOAD, received_at=at(1726304400), language_hint="it")],
    ),
    ("my_chat_member_unblocked.json", []),
    ("channel_post.json", []),
]


@pytest.fixture(scope="module")
def connector() -> Iterator[TelegramConnector]:
    """A connector for parsing only: its API base is never called."""
    conn = TelegramConnector(TOKEN, SECRET, "http://127.0.0.1:9")
    yield conn
    asyncio.run(conn.close())


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.json")) == sorted(name for name, _ in INBOUND_CASES)


@pytest.mark.parametrize("name,expected", INBOUND_CASES, ids=[name for name, _ in INBOUND_CASES])
def test_inbound_fixture(connector: TelegramConnector, name: str, expected: list[InboundEvent]) -> None:
    request = fixture_request(name)
    connector.verify(request)
    assert_events(connector.parse(request), expected)


# --------------------------------------------------------------------------- secret

@pytest.mark.parametrize(
    "secret",
    [None, "", "wrong-secret", SECRET + "x", SECRET[:-1], "s3cret-Tokén"],
    ids=["missing", "empty", "wrong", "longer", "shorter", "non-ascii"],
)
def test_wrong_or_missing_secret_is_forbidden(connector: TelegramConnector, secret: Optional[str]) -> None:
    with pytest.raises(WebhookForbidden):
        connector.verify(webhook((FIXTURES / "text_fr.json").read_bytes(), secret=secret))


def test_right_secret_passes(connector: TelegramConnector) -> None:
    connector.verify(fixture_request("text_fr.json"))


def test_an_unconfigured_secret_accepts_nothing() -> None:
    conn = TelegramConnector(TOKEN, "", "http://127.0.0.1:9")
    try:
        with pytest.raises(WebhookForbidden):
            conn.verify(webhook(b"{}", secret=""))
    finally:
        asyncio.run(conn.close())


# --------------------------------------------------------------------------- malformed

MALFORMED_CASES: list[tuple[str, bytes, str]] = [
    ("not-json", b"update_id=1&text=salam", "not JSON"),
    ("not-utf8", b"\xff\xfe\x00{", "not JSON"),
    ("array", b"[1, 2]", "JSON object"),
    ("no-update-id", json.dumps({"message": {"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private"}, "text": "salam"}}).encode(), "update_id"),
    ("string-update-id", b'{"update_id": "12", "message": {}}', "update_id"),
    ("bool-update-id", b'{"update_id": true}', "update_id"),
    ("message-not-object", b'{"update_id": 5, "message": "salam"}', "message is not an object"),
    ("message-without-chat", b'{"update_id": 5, "message": {"message_id": 1, "date": 1, "text": "salam"}}', "without chat"),
    ("message-without-id", b'{"update_id": 5, "message": {"date": 1, "chat": {"id": 1, "type": "private"}, "text": "salam"}}', "not a Telegram Update"),
]


@pytest.mark.parametrize("body,reason", [(body, reason) for _, body, reason in MALFORMED_CASES], ids=[c[0] for c in MALFORMED_CASES])
def test_malformed_payload(connector: TelegramConnector, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPayload) as caught:
        connector.parse(webhook(body))
    assert reason in str(caught.value)
    assert "salam" not in str(caught.value)  # reasons never echo what a family wrote


def test_unknown_update_types_are_ignored(connector: TelegramConnector) -> None:
    for update in (
        {"update_id": 9, "message_reaction": {"odd": "shape"}},
        {"update_id": 9, "poll": {"id": "1"}},
        {"update_id": 9, "message": {"message_id": 3, "date": 1, "chat": {"id": 7, "type": "private"}, "new_chat_members": []}},
    ):
        assert connector.parse(webhook(json.dumps(update).encode())) == []


# --------------------------------------------------------------------------- simulator-built updates

SIM_KINDS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"kind": "text", "text": "Salam"}, {"text": "Salam", "language_hint": "fr"}),
    ({"kind": "voice"}, {"media_kind": MediaKind.AUDIO, "mime_type": "audio/ogg"}),
    ({"kind": "photo", "text": "la convocation"}, {"media_kind": MediaKind.IMAGE, "text": "la convocation", "provider_suffix": "3"}),
    ({"kind": "document"}, {"media_kind": MediaKind.DOCUMENT, "mime_type": "application/pdf"}),
    ({"kind": "location", "latitude": 40.4168, "longitude": -3.7038}, {"location": Location(40.4168, -3.7038)}),
    ({"kind": "callback", "data": "/affirm"}, {"button_payload": "/affirm"}),
    ({"kind": "edited", "text": "Salam"}, {"empty": True}),
    ({"kind": "blocked"}, {"button_payload": OPT_OUT_PAYLOAD, "text": ""}),
]


@pytest.mark.parametrize("spec,expected", SIM_KINDS, ids=[s["kind"] for s, _ in SIM_KINDS])
def test_simulator_updates_parse(connector: TelegramConnector, spec: dict[str, Any], expected: dict[str, Any]) -> None:
    bot_user = TelegramSimState(TOKEN).bot_user
    update = build_update({"chat_id": 42, "language_code": "fr", **spec}, 810000042, bot_user, "77")
    events = connector.parse(webhook(json.dumps(update).encode()))
    if expected.get("empty"):
        assert events == []
        return
    (event,) = events
    assert isinstance(event, InboundMessage)
    assert (event.address, event.provider_message_id, event.language_hint) == ("telegram:42", "810000042", "fr")
    if "text" in expected:
        assert event.text == expected["text"]
    if "media_kind" in expected:
        assert event.media[0].kind == expected["media_kind"] and event.media[0].provider_id
        if "mime_type" in expected:
            assert event.media[0].mime_type == expected["mime_type"]
        if "provider_suffix" in expected:  # the largest photo size
            assert event.media[0].provider_id.endswith(expected["provider_suffix"])
    if "location" in expected:
        assert event.location == expected["location"]
    if "button_payload" in expected:
        assert event.button_payload == expected["button_payload"]


# --------------------------------------------------------------------------- outbound against the simulator


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[FastAPI, str]]:
    app = create_app(TOKEN)
    with BackgroundServer(app) as url:
        yield app, url


@pytest.fixture
def state(sim: tuple[FastAPI, str]) -> TelegramSimState:
    sim_state: TelegramSimState = sim[0].state.simulator
    sim_state.reset()
    return sim_state


def make(url: str, **kwargs: Any) -> TelegramConnector:
    return TelegramConnector(TOKEN, SECRET, url, **kwargs)


async def send_with(url: str, message: OutboundMessage, **kwargs: Any) -> Any:
    conn = make(url, **kwargs)
    try:
        return await conn.send(message)
    finally:
        await conn.close()


def sent(state: TelegramSimState, method: str = "sendMessage") -> list[dict[str, Any]]:
    return [r["params"] for r in state.requests if r["method"] == method]


def test_send_text(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    result = asyncio.run(send_with(sim[1], OutboundMessage(TG, "telegram:5012345678", "Bonjour Fatima 👋")))
    assert result.provider_message_id == "1"
    assert sent(state) == [{"chat_id": 5012345678, "text": "Bonjour Fatima 👋"}]
    assert state.requests[0]["authorized"] is True


def test_send_inline_buttons_one_per_row(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    message = OutboundMessage(
        TG, "telegram:6123456789", "في أي بلد تقيمون؟",
        buttons=(Button("إسبانيا", '/inform{"country":"ES"}'), Button("فرنسا", '/inform{"country":"FR"}'), Button("Autre", "/other")),
    )
    asyncio.run(send_with(sim[1], message))
    (params,) = sent(state)
    assert params["reply_markup"] == {
        "inline_keyboard": [
            [{"text": "إسبانيا", "callback_data": '/inform{"country":"ES"}'}],
            [{"text": "فرنسا", "callback_data": '/inform{"country":"FR"}'}],
            [{"text": "Autre", "callback_data": "/other"}],
        ]
    }


def test_long_button_payload_is_shortened_and_restored(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    payload = '/inform{"school_stage":"secondaire","region":"Auvergne-Rhône-Alpes","country":"FR"}'
    assert len(payload.encode()) > MAX_CALLBACK_DATA

    async def scenario() -> list[InboundEvent]:
        conn = make(sim[1])
        try:
            await conn.send(OutboundMessage(TG, "telegram:42", "Votre situation ?", buttons=(Button("Lycée", payload),)))
            data = sent(state)[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
            assert len(data.encode()) <= MAX_CALLBACK_DATA and data.startswith("/inform{")
            update = build_update({"kind": "callback", "chat_id": 42, "data": data}, 810000100, state.bot_user, "5")
            return conn.parse(webhook(json.dumps(update).encode()))
        finally:
            await conn.close()

    (event,) = asyncio.run(scenario())
    assert isinstance(event, InboundMessage) and event.button_payload == payload


def test_long_text_is_split(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    paragraph = "Pour inscrire votre enfant, adressez-vous à la mairie de votre commune avec le livret de famille. "
    text = (paragraph * 60).strip()  # about 5,900 characters
    result = asyncio.run(send_with(sim[1], OutboundMessage(TG, "telegram:42", text, buttons=(Button("Merci", "/thanks"),))))
    parts = sent(state)
    assert len(parts) == 2
    assert all(len(p["text"]) <= 4096 for p in parts)
    assert " ".join(p["text"] for p in parts) == text
    assert "reply_markup" not in parts[0] and parts[1]["reply_markup"] == {"inline_keyboard": [[{"text": "Merci", "callback_data": "/thanks"}]]}
    assert result.provider_message_id == "1"  # the first part's id


@pytest.mark.parametrize(
    "text,limit,expected",
    [
        ("court", 4096, ["court"]),
        ("un deux trois", 8, ["un deux", "trois"]),
        ("ligne un\nligne deux", 12, ["ligne un", "ligne deux"]),
        ("Premier paragraphe.\n\nDeux mots encore", 30, ["Premier paragraphe.", "Deux mots encore"]),
        ("abcdefghij", 4, ["abcd", "efgh", "ij"]),
        ("😀😀😀", 4, ["😀😀", "😀"]),  # an emoji is two UTF-16 units, never cut in half
        ("سلام عليكم", 5, ["سلام", "عليكم"]),
    ],
)
def test_split_text(text: str, limit: int, expected: list[str]) -> None:
    assert split_text(text, limit) == expected


ERROR_CASES: list[tuple[str, Failure, type[SendError], dict[str, Any]]] = [
    ("429", Failure(status=429, retry_after=7), Throttled, {"retry_after": 7.0, "code": "429", "retryable": True}),
    ("blocked", Failure(blocked=True), ContactStopped, {"code": "403", "contact_stopped": True, "retryable": False}),
    ("503", Failure(status=503), TransientSendError, {"retryable": True}),
    ("502", Failure(status=502), TransientSendError, {"retryable": True}),
    ("400", Failure(status=400), PermanentSendError, {"code": "400", "retryable": False, "contact_stopped": False}),
    ("timeout", Failure(timeout=1.0), TransientSendError, {"code": "timeout", "retryable": True}),
]


@pytest.mark.parametrize("failure,error,attributes", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_send_error_mapping(sim: tuple[FastAPI, str], state: TelegramSimState, failure: Failure, error: type[SendError], attributes: dict[str, Any]) -> None:
    state.plan = FailurePlan(queue=[failure])
    with pytest.raises(error) as caught:
        asyncio.run(send_with(sim[1], OutboundMessage(TG, "telegram:42", "Salam"), timeout=0.3))
    for name, value in attributes.items():
        assert getattr(caught.value, name) == value, name


def test_blocked_address_is_contact_stopped(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    state.plan = FailurePlan(blocked_addresses={"telegram:42"})
    with pytest.raises(ContactStopped):
        asyncio.run(send_with(sim[1], OutboundMessage(TG, "telegram:42", "Salam")))
    asyncio.run(send_with(sim[1], OutboundMessage(TG, "telegram:43", "Salam")))  # others still reachable


def test_wrong_token_is_permanent(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    conn = TelegramConnector("999:wrong", SECRET, sim[1])

    async def scenario() -> None:
        try:
            await conn.send(OutboundMessage(TG, "telegram:42", "Salam"))
        finally:
            await conn.close()

    with pytest.raises(PermanentSendError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == "401"


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientSendError):
        asyncio.run(send_with(f"http://127.0.0.1:{port}", OutboundMessage(TG, "telegram:42", "Salam"), timeout=1.0))


@pytest.mark.parametrize(
    "message",
    [OutboundMessage(TG, "telegram:42", "   "), OutboundMessage(Channel.WHATSAPP, "whatsapp:+33612345678", "Salam")],
    ids=["empty-text", "other-channel"],
)
def test_refused_before_calling_telegram(sim: tuple[FastAPI, str], state: TelegramSimState, message: OutboundMessage) -> None:
    with pytest.raises(PermanentSendError):
        asyncio.run(send_with(sim[1], message))
    assert state.requests == []


def test_set_webhook_records_the_secret(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    async def scenario() -> bool:
        conn = make(sim[1])
        try:
            return await conn.set_webhook("https://jisr.example/webhooks/telegram")
        finally:
            await conn.close()

    assert asyncio.run(scenario()) is True
    (params,) = sent(state, "setWebhook")
    assert params["url"] == "https://jisr.example/webhooks/telegram"
    assert params["secret_token"] == SECRET
    assert params["allowed_updates"] == list(ALLOWED_UPDATES)
    assert state.webhook["secret_token"] == SECRET


def test_set_webhook_refuses_a_secret_telegram_would_refuse() -> None:
    conn = TelegramConnector(TOKEN, "not allowed: spaces", "http://127.0.0.1:9")
    try:
        with pytest.raises(ValueError):
            asyncio.run(conn.set_webhook("https://jisr.example/webhooks/telegram"))
    finally:
        asyncio.run(conn.close())


def test_acknowledge_answers_the_callback_query(sim: tuple[FastAPI, str], state: TelegramSimState, connector: TelegramConnector) -> None:
    async def scenario() -> None:
        conn = make(sim[1])
        try:
            (event,) = conn.parse(fixture_request("callback_query.json"))
            await conn.acknowledge(event)
            await conn.acknowledge(event)  # once only
            (text_event,) = conn.parse(fixture_request("text_fr.json"))
            await conn.acknowledge(text_event)  # nothing to answer
        finally:
            await conn.close()

    asyncio.run(scenario())
    assert sent(state, "answerCallbackQuery") == [{"callback_query_id": "2153487365123456789"}]


def test_download_media(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    async def scenario() -> bytes:
        conn = make(sim[1])
        try:
            return await conn.download("AwACAgQAAxkBAAIBO2bZ")
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == b"jisr simulated file AwACAgQAAxkBAAIBO2bZ"


def test_poll_delivers_queued_updates(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    httpx.post(f"{sim[1]}/_sim/queue_update", json={"kind": "text", "chat_id": 42, "text": "Salam", "language_code": "ar"}, trust_env=False).raise_for_status()
    received: list[InboundEvent] = []

    async def scenario() -> None:
        conn = make(sim[1], poll_timeout=1)
        stop = asyncio.Event()

        async def handler(event: InboundEvent) -> None:
            received.append(event)
            stop.set()

        try:
            await asyncio.wait_for(conn.poll(handler, stop=stop), timeout=5)
        finally:
            await conn.close()

    asyncio.run(scenario())
    (event,) = received
    assert isinstance(event, InboundMessage)
    assert (event.address, event.text, event.language_hint) == ("telegram:42", "Salam", "ar")
    assert [r["method"] for r in state.requests][:2] == ["deleteWebhook", "getUpdates"]


def test_from_settings(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    settings = Settings(telegram_bot_token=TOKEN, telegram_secret_token=SECRET, telegram_api_base=sim[1] + "/")
    conn = TelegramConnector.from_settings(settings)
    conn.verify(fixture_request("text_fr.json"))

    async def scenario() -> None:
        try:
            await conn.send(OutboundMessage(TG, "telegram:42", "Salam"))
        finally:
            await conn.close()

    asyncio.run(scenario())
    assert sent(state) == [{"chat_id": 42, "text": "Salam"}]


def test_logs_carry_no_token_chat_id_or_text(sim: tuple[FastAPI, str], state: TelegramSimState, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # The gateway holds these libraries at WARNING (jisr.privacy.logs); the test opens them up to
    # DEBUG so that what they would print, if someone turned them up, is checked too.
    for library in ("telegram", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=library)
    chat, text = "telegram:987654321", "Mon fils s'appelle Ayoub"

    async def scenario() -> None:
        conn = make(sim[1])
        try:
            await conn.send(OutboundMessage(TG, chat, text, buttons=(Button("Oui", "/affirm"),)))
            await conn.download("AwACAgQ")
            conn.parse(fixture_request("text_fr.json"))
            state.plan = FailurePlan(queue=[Failure(status=429, retry_after=3)])
            with pytest.raises(Throttled):
                await conn.send(OutboundMessage(TG, chat, text))
        finally:
            await conn.close()

    asyncio.run(scenario())
    assert "sendMessage" in caplog.text  # PTB did log, redacted
    for secret in (TOKEN, "123456%3AAAH", "987654321", "Ayoub", "5012345678", "Bonjour"):
        assert secret not in caplog.text, secret


# --------------------------------------------------------------------------- simulator behaviour


def test_simulator_speaks_the_bot_api(sim: tuple[FastAPI, str], state: TelegramSimState) -> None:
    base = f"{sim[1]}/bot{TOKEN}"
    with httpx.Client(trust_env=False) as client:
        wrong = client.post(f"{sim[1]}/bot999:nope/getMe")
        assert (wrong.status_code, wrong.json()) == (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        me = client.get(f"{base}/getMe").json()
        assert me["ok"] is True and me["result"]["is_bot"] is True and me["result"]["id"] == 123456
        first = client.post(f"{base}/sendMessage", json={"chat_id": 42, "text": "un"}).json()["result"]
        second = client.post(f"{base}/sendMessage", data={"chat_id": "42", "text": "deux"}).json()["result"]
        assert (first["message_id"], second["message_id"]) == (1, 2)
        assert second["chat"] == {"id": 42, "first_name": "Amina", "type": "private"} and second["text"] == "deux"
        empty = client.post(f"{base}/sendMessage", json={"chat_id": 42, "text": ""})
        assert empty.status_code == 400 and empty.json()["description"] == "Bad Request: message text is empty"
        bad_button = client.post(f"{base}/sendMessage", json={"chat_id": 42, "text": "x", "reply_markup": {"inline_keyboard": [[{"text": "t", "callback_data": "x" * 65}]]}})
        assert bad_button.json()["description"] == "Bad Request: BUTTON_DATA_INVALID"
        state.plan = FailurePlan(queue=[Failure(status=429, retry_after=12)])
        throttled = client.post(f"{base}/sendMessage", json={"chat_id": 42, "text": "x"})
        assert (throttled.status_code, throttled.json()) == (
            429,
            {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 12", "parameters": {"retry_after": 12}},
        )
        assert client.post(f"{base}/setWebhook", json={"url": "https://jisr.example/hook", "secret_token": "abc"}).json()["description"] == "Webhook was set"
        conflict = client.post(f"{base}/getUpdates")
        assert conflict.status_code == 409
        assert client.post(f"{base}/noSuchMethod").status_code == 404
    assert [r["method"] for r in state.requests][:3] == ["getMe", "getMe", "sendMessage"]


# --------------------------------------------------------------------------- webhook round trip


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, dict[str, Any]]]:
    """A tiny gateway: verify, parse, answer 500 as many times as asked first."""
    seen: dict[str, Any] = {"events": [], "update_ids": [], "statuses": [], "fail_next": 0}
    conn = TelegramConnector(TOKEN, SECRET, "http://127.0.0.1:9")
    app = FastAPI()

    @app.post("/webhooks/telegram")
    async def telegram_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        incoming = WebhookRequest(
            method=request.method, url=str(request.url), headers={k.lower(): v for k, v in request.headers.items()}, body=body, query=dict(request.query_params)
        )
        try:
            conn.verify(incoming)
        except WebhookForbidden:
            seen["statuses"].append(403)
            return JSONResponse({"detail": "forbidden"}, status_code=403)
        seen["update_ids"].append(json.loads(body)["update_id"])
        if seen["fail_next"]:
            seen["fail_next"] -= 1
            seen["statuses"].append(500)
            return JSONResponse({"detail": "database unavailable"}, status_code=500)
        seen["events"].extend(conn.parse(incoming))
        seen["statuses"].append(200)
        return JSONResponse({"ok": True})

    with BackgroundServer(app) as url:
        yield f"{url}/webhooks/telegram", seen
    asyncio.run(conn.close())


def _reset(seen: dict[str, Any]) -> None:
    seen.update(events=[], update_ids=[], statuses=[], fail_next=0)


def test_inbound_round_trip(sim: tuple[FastAPI, str], state: TelegramSimState, receiver: tuple[str, dict[str, Any]]) -> None:
    hook, seen = receiver
    _reset(seen)
    answer = httpx.post(
        f"{sim[1]}/_sim/inbound",
        json={"webhook_url": hook, "secret_token": SECRET, "chat_id": 5012345678, "text": "Bonjour", "language_code": "fr", "kind": "text"},
        trust_env=False,
    ).json()
    assert answer["statuses"] == [200] and answer["delivered"] is True
    (event,) = seen["events"]
    assert isinstance(event, InboundMessage)
    assert (event.address, event.text, event.language_hint, event.provider_message_id) == ("telegram:5012345678", "Bonjour", "fr", str(answer["update_id"]))


def test_inbound_same_update_id_resent_after_500(sim: tuple[FastAPI, str], state: TelegramSimState, receiver: tuple[str, dict[str, Any]]) -> None:
    hook, seen = receiver
    _reset(seen)
    seen["fail_next"] = 1
    answer = httpx.post(
        f"{sim[1]}/_sim/inbound",
        json={"webhook_url": hook, "secret_token": SECRET, "chat_id": 42, "kind": "callback", "data": "/affirm", "update_id": 900000001, "retries": 3},
        trust_env=False,
    ).json()
    assert answer["statuses"] == [500, 200]
    assert seen["update_ids"] == [900000001, 900000001]
    (event,) = seen["events"]
    assert isinstance(event, InboundMessage) and (event.provider_message_id, event.button_payload) == ("900000001", "/affirm")


def test_inbound_with_wrong_secret_is_refused_every_time(sim: tuple[FastAPI, str], state: TelegramSimState, receiver: tuple[str, dict[str, Any]]) -> None:
    hook, seen = receiver
    _reset(seen)
    answer = httpx.post(f"{sim[1]}/_sim/inbound", json={"webhook_url": hook, "secret_token": "guess", "chat_id": 42, "text": "x", "retries": 1}, trust_env=False).json()
    assert answer["statuses"] == [403, 403] and answer["delivered"] is False
    assert seen["events"] == [] and seen["update_ids"] == []
