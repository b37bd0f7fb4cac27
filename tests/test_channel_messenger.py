"""Messenger channel: recorded webhooks → normalised events, signatures, handshake, sends, errors.

Table-driven as in nyaruka/courier: every recorded payload in
tests/fixtures/messenger/ with the exact events it must give; every send
against the Graph simulator served for real on 127.0.0.1, asserting the exact
JSON it received.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

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
from connectors.messenger import MessengerConnector, graph_error, split_text
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
    WebhookRequest,
)
from jisr.settings import Settings
from jisr.simulators.graph import create_app
from jisr.simulators.server import BackgroundServer

FIXTURES = Path(__file__).parent / "fixtures" / "messenger"
APP_SECRET = "app-secret-for-tests-3f9a"
VERIFY_TOKEN = "verify-token-for-tests-77c1"
PAGE_TOKEN = "page-token-for-tests-EAAG0b"
UTC = dt.timezone.utc

LYON = "6543210987654321"     # the PSIDs of the recorded payloads
MADRID = "7012345678901234"
BOLOGNA = "5894471200318862"
PAGE_ID = "104857600000001"


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def message(psid: str, mid: str, when: dt.datetime, **fields: Any) -> InboundMessage:
    return InboundMessage(channel=Channel.MESSENGER, address=f"messenger:{psid}", provider_message_id=mid, received_at=when, **fields)


def status(psid: str, mid: str, state: DeliveryStatus, when: dt.datetime) -> StatusUpdate:
    return StatusUpdate(channel=Channel.MESSENGER, address=f"messenger:{psid}", provider_message_id=mid, status=state, at=when)


def signature(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook(body: bytes, headers: Optional[dict[str, str]] = None, *, signed: bool = True) -> WebhookRequest:
    all_headers = {"content-type": "application/json"}
    if signed:
        all_headers["x-hub-signature-256"] = signature(body)
    all_headers.update(headers or {})
    return WebhookRequest(method="POST", url="https://jisr.example/webhooks/messenger", headers=all_headers, body=body)


def connector(graph_api_base: str = "http://127.0.0.1:9/v19.0", *, timeout: float = 5.0, app_secret: str = APP_SECRET) -> MessengerConnector:
    return MessengerConnector(app_secret=app_secret, verify_token=VERIFY_TOKEN, page_token=PAGE_TOKEN, graph_api_base=graph_api_base, timeout=timeout)


# ------------------------------------------------------------ recorded inbound

INBOUND_CASES: list[tuple[str, list[InboundEvent]]] = [
    ("text_fr", [message(LYON, "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCY8fgt0rQtgCJ8tRpiaoWb0zBjwPzQH2dXu6l-MWa3Qx2O4mBPKjQ",
                         at(2025, 9, 8, 7, 41, 12, 345000), text="Bonjour, comment inscrire mon fils à l'école maternelle ?")]),
    ("text_es", [message(MADRID, "m_7cTq0yVbXk2LrT9mzP4sWnE1hJd8aFgQ5uIoR6eYtBvCxZlKjHg3NfDsMpA2q_Ww-UeRiOyTlPkJhGfDsA1zXc",
                         at(2025, 9, 9, 18, 3, 55, 17000), text="Hola, ¿cómo matriculo a mi hija en el colegio? Llegamos de Tetuán en agosto.")]),
    ("text_ar", [message(BOLOGNA, "m_Qm8xN3bV5cZ7aS9dF1gH2jK4lP6oI8uY0tR-eW_qE3rT5yU7iO9pA1sD3fG5hJ7kL9zX1cV3bN5mQ7wE9rT1yU3",
                         at(2025, 9, 10, 20, 15, 2, 880000), text="السلام عليكم، بغيت نسجل ولدي فالمدرسة")]),
    ("quick_reply", [message(LYON, "m_Lk2Jh4Gf6Ds8Aq0Wz1Xs3Ec5Rv7Tb9Yn_Um2Ik4Ol6Pq8Ar0Se2Td4Uf6Vg8Wh0Xi2Yj4Zk6Al8Bm0Cn2Do4Ep",
                             at(2025, 9, 8, 7, 42, 1, 5000), text="Maternelle", button_payload="SCHOOL_STAGE_MATERNELLE")]),
    ("postback", [message(LYON, "m_Pb1Xa3Zs5Ed7Rf9Tg1Yh3Uj5Ik7Ol9P0q2W4e6R8t0Y2u4I6o8P0a2S4d6F8g0H2j4K6l8Z0x2C4v6B8n0M2q",
                          at(2025, 9, 8, 7, 43, 20, 640000), text="Parler à un médiateur", button_payload="HUMAN_HANDOFF")]),
    # No mid on older postbacks: sender and timestamp make the de-duplication key.
    ("postback_without_mid", [message(MADRID, f"{MADRID}-1730737200001", at(2024, 11, 4, 16, 20, 0, 1000), text="Empezar", button_payload="GET_STARTED")]),
    ("image", [message(LYON, "m_Im4Ga2Ge6Ph8Ot0Ob1Ul2Le3Ti4In5Sc6Ol7Ai8Re9Aa0Bb1Cc2Dd3Ee4Ff5Gg6Hh7Ii8Jj9Kk0Ll1Mm2Nn3Oo",
                       at(2025, 9, 8, 8, 2, 44, 312000),
                       media=(Media(MediaKind.IMAGE, url="https://scontent.xx.fbcdn.net/v/t1.15752-9/458392017_1043876541237_4471093816602233344_n.jpg?_nc_cat=104&ccb=1-7&_nc_sid=fc17b8&_nc_ohc=Xk2sJ9Q&_nc_ad=z-m&_nc_cid=0&_nc_ht=scontent.xx&oh=03_Q7cD1Ab&oe=6725F1A3"),))]),
    ("audio", [message(BOLOGNA, "m_Au3Di0Oc1Li2Pa3Ud4Io5Cl6Ip7Da8Ri9Ja0Xx1Yy2Zz3Aa4Bb5Cc6Dd7Ee8Ff9Gg0Hh1Ii2Jj3Kk4Ll5Mm6Nn7",
                       at(2025, 9, 8, 8, 5, 9, 77000),
                       media=(Media(MediaKind.AUDIO, url="https://cdn.fbsbx.com/v/t59.3654-21/457902633_869341201874422_3301965532077841309_n.mp4/audioclip-1725782709000-14562.mp4?_nc_cat=109&ccb=1-7&_nc_sid=d61c36&_nc_ohc=pR4vT1w&_nc_ht=cdn.fbsbx.com&oh=03_Q7cD2Ef&oe=66DF5A11"),))]),
    ("video", [message(MADRID, "m_Vi8De0Oo2Cl4As6Se8Ro0Om2Yy4Ww6Uu8Ss0Qq2Oo4Mm6Kk8Ii0Gg2Ee4Cc6Aa8Zz0Xx2Vv4Tt6Rr8Pp0Nn2Ll4J",
                       at(2025, 9, 8, 8, 11, 31, 901000),
                       media=(Media(MediaKind.VIDEO, url="https://video.xx.fbcdn.net/v/t42.3356-2/458120447_1220044789012345_2207781234567890123_n.mp4/video-1725783091.mp4?_nc_cat=106&ccb=1-7&_nc_sid=060d78&_nc_ohc=Jq3zP7m&_nc_ht=video.xx&oh=03_Q7cD3Gh&oe=66DF7C22"),))]),
    ("file", [message(LYON, "m_Fi1Le2Pd3Fc4Er5Ti6Fi7Ca8Ts9Co0La1Ri2Te3Xx4Yy5Zz6Aa7Bb8Cc9Dd0Ee1Ff2Gg3Hh4Ii5Jj6Kk7Ll8Mm9N",
                      at(2025, 9, 8, 8, 14, 58, 230000),
                      media=(Media(MediaKind.DOCUMENT, url="https://cdn.fbsbx.com/v/t59.2708-21/458001122_512233445566778_9988776655443322110_n.pdf/certificat_de_scolarite.pdf?_nc_cat=100&ccb=1-7&_nc_sid=2b0e22&_nc_ohc=Zt8uK2n&_nc_ht=cdn.fbsbx.com&oh=03_Q7cD4Ij&oe=66DF8E33"),))]),
    ("location", [message(BOLOGNA, "m_Lo7Ca1Ti2On3Bo4Lo5Gn6Aa7Bb8Cc9Dd0Ee1Ff2Gg3Hh4Ii5Jj6Kk7Ll8Mm9Nn0Oo1Pp2Qq3Rr4Ss5Tt6Uu7Vv8W",
                          at(2025, 9, 8, 8, 20, 3, 456000), location=Location(44.494887, 11.342616, "Pinned Location"))]),
    # A sticker is an image carrying sticker_id (and a top-level sticker_id): one STICKER, not an image.
    ("sticker", [message(LYON, "m_St9Ic8Ke7Rl6Ik5Ee4Th3Um2Bs1Up0Aa9Bb8Cc7Dd6Ee5Ff4Gg3Hh2Ii1Jj0Kk9Ll8Mm7Nn6Oo5Pp4Qq3Rr2Ss1T",
                         at(2025, 9, 8, 8, 25, 41, 12000),
                         media=(Media(MediaKind.STICKER, provider_id="369239263222822", url="https://scontent.xx.fbcdn.net/v/t39.1997-6/851557_369239266556155_759568595_n.png?_nc_cat=1&ccb=1-7&_nc_sid=ac3552&_nc_ohc=Ha7nB0v&_nc_ht=scontent.xx&oh=00_AYC1d2E&oe=66E3A0B1"),))]),
    ("echo", []),       # our own message coming back
    ("reaction", []),   # not for the assistant
    ("delivery", [
        status(LYON, "m_sim000001a3f09c2e7d41b8e6", DeliveryStatus.DELIVERED, at(2025, 9, 8, 7, 41, 16, 880000)),
        status(LYON, "m_sim000002c71d5e0a9b34f2c8", DeliveryStatus.DELIVERED, at(2025, 9, 8, 7, 41, 16, 880000)),
    ]),
    ("read", [status(LYON, "read:1757317502610", DeliveryStatus.READ, at(2025, 9, 8, 7, 45, 2, 650000))]),
    ("batch", [
        message(LYON, "m_Ba1Tc2Hf3Ir4St5Aa6Bb7Cc8Dd9Ee0Ff1Gg2Hh3Ii4Jj5Kk6Ll7Mm8Nn9Oo0Pp1Qq2Rr3Ss4Tt5Uu6Vv7Ww8X",
                at(2025, 9, 15, 19, 0, 4, 100000), text="Merci beaucoup !"),
        message(MADRID, "m_Ba2Tc3Hs4Ec5On6Dd7Ee8Ff9Gg0Hh1Ii2Jj3Kk4Ll5Mm6Nn7Oo8Pp9Qq0Rr1Ss2Tt3Uu4Vv5Ww6Xx7Yy8Zz9A",
                at(2025, 9, 15, 19, 0, 4, 312000), text="¿Y el comedor escolar?"),
        message(BOLOGNA, "m_Ba3Tc4Hp5Os6Tb7Ac8Kk9Ll0Mm1Nn2Oo3Pp4Qq5Rr6Ss7Tt8Uu9Vv0Ww1Xx2Yy3Zz4Aa5Bb6Cc7Dd8Ee9Ff0G",
                at(2025, 9, 15, 19, 0, 5, 400000), text="Iscrizione scuola", button_payload="ENROL_SCHOOL"),
    ]),
]


def test_every_fixture_has_a_case() -> None:
    """A recorded payload without expectations would be dead weight."""
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(name for name, _ in INBOUND_CASES)


@pytest.mark.parametrize("name,expected", INBOUND_CASES, ids=[name for name, _ in INBOUND_CASES])
def test_recorded_webhook_gives_exact_events(name: str, expected: list[InboundEvent]) -> None:
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = webhook(body)
    messenger = connector()
    messenger.verify(request)  # signed over the raw bytes, \u and \/ escapes included
    assert messenger.parse(request) == expected


def test_sticker_during_metas_transition_is_reported_once() -> None:
    """Until 30 Aug 2026 a sticker comes both as an image and as a "sticker" attachment."""
    event = {"sender": {"id": LYON}, "recipient": {"id": PAGE_ID}, "timestamp": 1757320000000,
             "message": {"mid": "m_x", "attachments": [
                 {"type": "image", "payload": {"url": "https://scontent.xx.fbcdn.net/s.png", "sticker_id": 369239263222822}},
                 {"type": "sticker", "payload": {"url": "https://scontent.xx.fbcdn.net/s.png", "sticker_id": 369239263222822}}]}}
    body = json.dumps({"object": "page", "entry": [{"id": PAGE_ID, "time": 1757320000100, "messaging": [event]}]}).encode()
    (parsed,) = connector().parse(webhook(body))
    assert isinstance(parsed, InboundMessage)
    assert parsed.media == (Media(MediaKind.STICKER, url="https://scontent.xx.fbcdn.net/s.png", provider_id="369239263222822"),)


MALFORMED_CASES: list[tuple[str, bytes, str]] = [
    ("not json", b"object=page", "not JSON"),
    ("not utf-8", b"\xff\xfe{}", "not JSON"),
    ("a list", b"[]", "not a JSON object"),
    ("instagram object", b'{"object": "instagram", "entry": []}', "object must be 'page'"),
    ("no object", b'{"entry": []}', "object must be 'page'"),
    ("no entry", b'{"object": "page"}', "'entry' must be a list"),
    ("entry is an object", b'{"object": "page", "entry": {"id": "1"}}', "'entry' must be a list"),
    ("entry is a string", b'{"object": "page", "entry": ["x"]}', "an entry is not an object"),
    ("messaging not a list", b'{"object": "page", "entry": [{"id": "1", "messaging": {}}]}', "'messaging' must be a list"),
    ("no sender", b'{"object": "page", "entry": [{"id": "1", "messaging": [{"message": {"mid": "m_1", "text": "x"}}]}]}', "no sender.id"),
    ("message without mid", b'{"object": "page", "entry": [{"id": "1", "messaging": [{"sender": {"id": "9"}, "message": {"text": "x"}}]}]}', "no mid"),
    ("read without watermark", b'{"object": "page", "entry": [{"id": "1", "messaging": [{"sender": {"id": "9"}, "read": {}}]}]}', "watermark"),
]


@pytest.mark.parametrize("name,body,reason", MALFORMED_CASES, ids=[c[0] for c in MALFORMED_CASES])
def test_malformed_payload_is_refused_with_a_reason(name: str, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPayload, match=reason):
        connector().parse(webhook(body))


def test_entries_without_messaging_give_nothing() -> None:
    """Standby (another app owns the thread) and page-feed changes are not ours to answer."""
    body = b'{"object": "page", "entry": [{"id": "1", "time": 1, "standby": [{"sender": {"id": "9"}, "message": {"mid": "m", "text": "x"}}]}, {"id": "1", "time": 2, "changes": []}]}'
    assert connector().parse(webhook(body)) == []
    assert connector().parse(webhook(b'{"object": "page", "entry": []}')) == []


# ----------------------------------------------------------- handshake, signature


def handshake_request(**query: str) -> WebhookRequest:
    return WebhookRequest(method="GET", url="https://jisr.example/webhooks/messenger", headers={}, body=b"", query=query)


def test_handshake_with_the_right_token_returns_the_challenge() -> None:
    request = handshake_request(**{"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"})
    assert connector().handshake(request) == "1158201444"


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong-token", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN.upper(), "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": "vérifié", "hub.challenge": "1"},
    ],
    ids=["wrong token", "token case", "wrong mode", "no token", "no mode", "non-ascii token"],
)
def test_handshake_otherwise_is_forbidden(query: dict[str, str]) -> None:
    with pytest.raises(WebhookForbidden):
        connector().handshake(handshake_request(**query))


def test_handshake_with_no_configured_token_is_forbidden() -> None:
    unset = MessengerConnector(app_secret=APP_SECRET, verify_token="", page_token=PAGE_TOKEN)
    with pytest.raises(WebhookForbidden):
        unset.handshake(handshake_request(**{"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}))


def test_handshake_without_challenge_is_forbidden() -> None:
    with pytest.raises(WebhookForbidden):
        connector().handshake(handshake_request(**{"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}))


SIGNED_BODY = (FIXTURES / "text_fr.json").read_bytes()


def test_valid_signature_passes() -> None:
    connector().verify(webhook(SIGNED_BODY))
    connector().verify(webhook(SIGNED_BODY, {"x-hub-signature-256": signature(SIGNED_BODY).upper().replace("SHA256=", "sha256=")}))


FORBIDDEN_CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("forged with another secret", SIGNED_BODY, {"x-hub-signature-256": signature(SIGNED_BODY, "someone-else")}),
    ("missing", SIGNED_BODY, {}),
    ("sha1 only", SIGNED_BODY, {"x-hub-signature": "sha1=" + hmac.new(APP_SECRET.encode(), SIGNED_BODY, hashlib.sha1).hexdigest()}),
    ("tampered body", SIGNED_BODY.replace(b"maternelle", b"primaire!!"), {"x-hub-signature-256": signature(SIGNED_BODY)}),
    ("re-serialised body", json.dumps(json.loads(SIGNED_BODY)).encode(), {"x-hub-signature-256": signature(SIGNED_BODY)}),
    ("bare hex without prefix", SIGNED_BODY, {"x-hub-signature-256": signature(SIGNED_BODY).removeprefix("sha256=")}),
    ("truncated", SIGNED_BODY, {"x-hub-signature-256": signature(SIGNED_BODY)[:-2]}),
    ("non-ascii", SIGNED_BODY, {"x-hub-signature-256": "sha256=é" + "0" * 63}),
    ("empty", SIGNED_BODY, {"x-hub-signature-256": ""}),
]


@pytest.mark.parametrize("name,body,headers", FORBIDDEN_CASES, ids=[c[0] for c in FORBIDDEN_CASES])
def test_bad_signature_is_forbidden(name: str, body: bytes, headers: dict[str, str]) -> None:
    with pytest.raises(WebhookForbidden):
        connector().verify(webhook(body, headers, signed=False))


def test_empty_app_secret_accepts_nothing() -> None:
    """An HMAC keyed with "" can be computed by anyone."""
    unkeyed = connector(app_secret="")
    with pytest.raises(WebhookForbidden):
        unkeyed.verify(webhook(SIGNED_BODY, {"x-hub-signature-256": signature(SIGNED_BODY, "")}, signed=False))


def test_from_settings() -> None:
    settings = Settings(messenger_app_secret=APP_SECRET, messenger_verify_token=VERIFY_TOKEN, messenger_page_token=PAGE_TOKEN, graph_api_base="http://127.0.0.1:9/v19.0/")
    built = MessengerConnector.from_settings(settings)
    assert built.channel is Channel.MESSENGER
    built.verify(webhook(SIGNED_BODY))
    assert built.handshake(handshake_request(**{"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"})) == "42"


# --------------------------------------------------------------------- outbound


@pytest.fixture(scope="module")
def graph_server() -> Iterator[str]:
    with BackgroundServer(create_app(page_token=PAGE_TOKEN, app_secret=APP_SECRET, verify_token=VERIFY_TOKEN)) as url:
        yield url


@pytest.fixture
def graph(graph_server: str) -> str:
    """The simulator's URL, its record and failure plan reset."""
    httpx.post(f"{graph_server}/_sim/reset").raise_for_status()
    return graph_server


def recorded(graph: str) -> list[dict[str, Any]]:
    return httpx.get(f"{graph}/_sim/requests").json()["requests"]


def plan(graph: str, **failures: Any) -> None:
    httpx.post(f"{graph}/_sim/fail", json=failures).raise_for_status()


def send(graph_api_base: str, outbound: OutboundMessage, *, timeout: float = 5.0) -> SendResult:
    async def go() -> SendResult:
        messenger = connector(graph_api_base, timeout=timeout)
        try:
            return await messenger.send(outbound)
        finally:
            await messenger.close()

    return asyncio.run(go())


def out(text: str, psid: str = LYON, **fields: Any) -> OutboundMessage:
    return OutboundMessage(channel=Channel.MESSENGER, address=f"messenger:{psid}", text=text, **fields)


def test_text_inside_the_window_is_a_response(graph: str) -> None:
    result = send(f"{graph}/v19.0", out("La rentrée en maternelle est le 1er septembre."))
    (request,) = recorded(graph)
    assert request["path"] == "/v19.0/me/messages"
    assert request["json"] == {
        "recipient": {"id": LYON},
        "messaging_type": "RESPONSE",
        "message": {"text": "La rentrée en maternelle est le 1er septembre."},
    }
    assert result == SendResult(provider_message_id=request["message_id"])
    assert result.provider_message_id.startswith("m_")


def test_human_agent_tag_is_a_message_tag(graph: str) -> None:
    send(graph, out("Bonjour, ici Samira, médiatrice. Je reprends votre demande.", messenger_tag="HUMAN_AGENT"))
    (request,) = recorded(graph)
    assert request["path"] == "/me/messages"
    assert request["json"] == {
        "recipient": {"id": LYON},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": {"text": "Bonjour, ici Samira, médiatrice. Je reprends votre demande."},
    }


def test_quick_replies_with_titles_cut_to_twenty_characters(graph: str) -> None:
    buttons = (Button("Maternelle", "SCHOOL_STAGE_MATERNELLE"), Button("Élémentaire", "SCHOOL_STAGE_ELEMENTAIRE"), Button("Bourses et aides sociales", "GRANTS"))
    send(f"{graph}/v19.0", out("Pour quelle étape scolaire ?", buttons=buttons))
    (request,) = recorded(graph)
    assert request["json"] == {
        "recipient": {"id": LYON},
        "messaging_type": "RESPONSE",
        "message": {
            "text": "Pour quelle étape scolaire ?",
            "quick_replies": [
                {"content_type": "text", "title": "Maternelle", "payload": "SCHOOL_STAGE_MATERNELLE"},
                {"content_type": "text", "title": "Élémentaire", "payload": "SCHOOL_STAGE_ELEMENTAIRE"},
                {"content_type": "text", "title": "Bourses et aides so…", "payload": "GRANTS"},
            ],
        },
    }


def test_long_text_is_split_at_paragraphs_with_quick_replies_on_the_last_part(graph: str) -> None:
    first, second, third = "A" * 1500, "B " * 700, "C" * 200   # 1500, 1400, 200 characters
    text = f"{first}\n\n{second.strip()}\n\n{third}"
    result = send(f"{graph}/v19.0", out(text, buttons=(Button("Merci", "THANKS"),), messenger_tag="HUMAN_AGENT"))
    requests = recorded(graph)
    envelope = {"recipient": {"id": LYON}, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
    assert [r["json"] for r in requests] == [
        {**envelope, "message": {"text": first}},
        {**envelope, "message": {"text": f"{second.strip()}\n\n{third}",
                                 "quick_replies": [{"content_type": "text", "title": "Merci", "payload": "THANKS"}]}},
    ]
    assert result.provider_message_id == requests[-1]["message_id"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("x" * 4500, ["x" * 2000, "x" * 2000, "x" * 500]),                                      # no break at all: hard cuts
        ("word " * 500, ["word " * 399 + "word", "word " * 99 + "word"]),                      # cut at the last space
        ("Phrase un. " * 200, ["Phrase un. " * 180 + "Phrase un.", "Phrase un. " * 18 + "Phrase un."]),  # at a sentence end
        ("x" + "e\u0301" * 1001, ["x" + "e\u0301" * 999, "e\u0301" * 2]),                        # never orphan a combining mark
        ("court", ["court"]),
    ],
    ids=["hard cut", "words", "sentences", "combining marks", "short"],
)
def test_split_text(text: str, expected: list[str]) -> None:
    assert split_text(text) == expected
    assert all(len(part) <= 2000 for part in expected)


# ---------------------------------------------------------------- error mapping


def test_rate_limit_is_throttled_with_retry_after(graph: str) -> None:
    plan(graph, queue=[{"status": 429, "retry_after": 7}])
    with pytest.raises(Throttled) as caught:
        send(graph, out("Bonjour"))
    assert caught.value.retry_after == 7.0 and caught.value.code == "613" and caught.value.retryable


def test_blocked_person_is_contact_stopped(graph: str) -> None:
    plan(graph, blocked_addresses=[MADRID])
    with pytest.raises(ContactStopped) as caught:
        send(graph, out("Hola", psid=MADRID))
    assert caught.value.contact_stopped and caught.value.code == "551/1545041"
    send(graph, out("Bonjour", psid=LYON))  # only that person


def test_server_error_is_transient(graph: str) -> None:
    plan(graph, queue=[{"status": 503}])
    with pytest.raises(TransientSendError) as caught:
        send(graph, out("Bonjour"))
    assert caught.value.retryable and caught.value.code == "2"
    send(graph, out("Bonjour"))  # the next one goes through


def test_timeout_is_transient(graph: str) -> None:
    plan(graph, queue=[{"timeout": 0.8}])
    with pytest.raises(TransientSendError) as caught:
        send(graph, out("Bonjour"), timeout=0.2)
    assert caught.value.code == "timeout"


def test_connection_refused_is_transient() -> None:
    with pytest.raises(TransientSendError) as caught:
        send("http://127.0.0.1:1", out("Bonjour"), timeout=1.0)
    assert caught.value.code == "connection"


def test_outside_the_window_needs_a_tag(graph: str) -> None:
    psid = "4400011122233344"
    httpx.post(f"{graph}/_sim/window", json={"psid": psid}).raise_for_status()
    with pytest.raises(OutsideWindow) as caught:
        send(graph, out("Rappel : réunion parents-professeurs jeudi.", psid=psid))
    assert caught.value.code == "10/2018278" and not caught.value.retryable
    send(graph, out("Bonjour, ici Samira, médiatrice.", psid=psid, messenger_tag="HUMAN_AGENT"))  # a person may answer for 7 days


def _sent_since(graph_api_base: str, address: str, since: dt.datetime, page_token: str = PAGE_TOKEN) -> list[tuple[str, dt.datetime]]:
    async def go() -> list[tuple[str, dt.datetime]]:
        messenger = MessengerConnector(app_secret=APP_SECRET, verify_token=VERIFY_TOKEN, page_token=page_token, graph_api_base=graph_api_base)
        try:
            return await messenger.sent_since(address, since)
        finally:
            await messenger.close()

    return asyncio.run(go())


def test_what_the_page_sent_to_a_person_can_be_listed(graph: str) -> None:
    """The Conversations API: the send queue asks it whether a send cut by a crash went out."""
    before = dt.datetime.now(UTC) - dt.timedelta(seconds=2)
    first = send(f"{graph}/v19.0", out("La rentrée est le 1er septembre."))
    second = send(f"{graph}/v19.0", out("مرحبا، التسجيل يتم في البلدية"))
    other = send(f"{graph}/v19.0", out("Hola", psid="1111222233334444"))
    listed = _sent_since(f"{graph}/v19.0", f"messenger:{LYON}", before)
    assert [mid for mid, _ in listed] == [second.provider_message_id, first.provider_message_id]  # newest first, this person only
    assert other.provider_message_id not in {mid for mid, _ in listed}
    assert all(before - dt.timedelta(seconds=1) <= at <= dt.datetime.now(UTC) + dt.timedelta(seconds=1) and at.tzinfo for _, at in listed)
    assert _sent_since(graph, f"messenger:{LYON}", dt.datetime.now(UTC) + dt.timedelta(minutes=1)) == []
    assert _sent_since(graph, "messenger:9999999999", before) == []  # no conversation at all
    lookups = [r for r in recorded(graph) if r.get("method") == "GET"]
    assert [r["path"] for r in lookups][:2] == ["/v19.0/me/conversations", f"/v19.0/t_{LYON}/messages"]
    assert "json" not in lookups[0]  # a look-up is not a send


def test_a_failed_lookup_is_transient(graph: str) -> None:
    with pytest.raises(TransientSendError) as caught:
        _sent_since(graph, f"messenger:{LYON}", dt.datetime.now(UTC), page_token="expired")
    assert caught.value.code == "lookup"
    with pytest.raises(TransientSendError):
        _sent_since("http://127.0.0.1:9", f"messenger:{LYON}", dt.datetime.now(UTC))


def test_wrong_page_token_is_permanent(graph: str) -> None:
    async def go() -> None:
        wrong = MessengerConnector(app_secret=APP_SECRET, verify_token=VERIFY_TOKEN, page_token="expired", graph_api_base=graph)
        try:
            await wrong.send(out("Bonjour"))
        finally:
            await wrong.close()

    with pytest.raises(PermanentSendError) as caught:
        asyncio.run(go())
    assert caught.value.code == "190"


@pytest.mark.parametrize(
    "outbound,code",
    [
        (OutboundMessage(channel=Channel.TELEGRAM, address="telegram:1", text="x"), "wrong_channel"),
        (out("   "), "empty"),
        (out("x", buttons=tuple(Button(str(i), str(i)) for i in range(14))), "too_many_quick_replies"),
    ],
    ids=["other channel", "empty", "14 quick replies"],
)
def test_unsendable_messages_are_refused_before_any_request(outbound: OutboundMessage, code: str) -> None:
    with pytest.raises(PermanentSendError) as caught:
        send("http://127.0.0.1:1", outbound)
    assert caught.value.code == code


def graph_body(code: int, subcode: Optional[int] = None, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"message": "(#%d) something" % code, "type": "OAuthException", "code": code, "fbtrace_id": "AbC"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": {**error, **extra}}


GRAPH_ERRORS: list[tuple[str, int, Any, dict[str, str], type[SendError], str, Optional[float]]] = [
    ("429 with Retry-After", 429, graph_body(613), {"retry-after": "12"}, Throttled, "613", 12.0),
    ("613 without header", 400, graph_body(613), {}, Throttled, "613", 60.0),
    ("app rate limit 4", 403, graph_body(4), {}, Throttled, "4", 60.0),
    ("messenger rate limit 80006", 400, graph_body(80006), {}, Throttled, "80006", 60.0),
    ("429 not JSON", 429, None, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, Throttled, "429", 60.0),
    ("person unavailable 551", 400, graph_body(551, 1545041), {}, ContactStopped, "551/1545041", None),
    ("not reachable 2018108", 400, graph_body(100, 2018108), {}, ContactStopped, "100/2018108", None),
    ("outside window", 400, graph_body(10, 2018278), {}, OutsideWindow, "10/2018278", None),
    ("503", 503, graph_body(2, is_transient=True), {}, TransientSendError, "2", None),
    ("502 from a proxy", 502, "<html>Bad gateway</html>", {}, TransientSendError, "502", None),
    ("is_transient on a 400", 400, graph_body(1, is_transient=True), {}, TransientSendError, "1", None),
    ("bad token 190", 400, graph_body(190), {}, PermanentSendError, "190", None),
    ("invalid parameter 100", 400, graph_body(100), {}, PermanentSendError, "100", None),
    ("no matching user", 400, graph_body(100, 2018001), {}, PermanentSendError, "100/2018001", None),
]


@pytest.mark.parametrize("name,http_status,body,headers,kind,code,retry_after", GRAPH_ERRORS, ids=[c[0] for c in GRAPH_ERRORS])
def test_graph_error_mapping(name: str, http_status: int, body: Any, headers: dict[str, str], kind: type[SendError], code: str, retry_after: Optional[float]) -> None:
    error = graph_error(http_status, body, httpx.Headers(headers))
    assert type(error) is kind and error.code == code
    if retry_after is not None:
        assert error.retry_after == retry_after


def test_simulator_refuses_message_tag_without_tag(graph: str) -> None:
    answer = httpx.post(f"{graph}/v19.0/me/messages", params={"access_token": PAGE_TOKEN},
                        json={"recipient": {"id": LYON}, "messaging_type": "MESSAGE_TAG", "message": {"text": "x"}})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == 100


def test_nothing_personal_reaches_the_logs(graph: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    text = "Mon fils Youssef est en CE2."
    send(graph, out(text, psid=BOLOGNA))
    send(graph, out(text + " " + "x" * 2500, psid=BOLOGNA))
    plan(graph, blocked_addresses=[f"messenger:{BOLOGNA}"])  # planned by Jisr address this time
    with pytest.raises(ContactStopped):
        send(graph, out(text, psid=BOLOGNA))
    connector().parse(webhook((FIXTURES / "text_ar.json").read_bytes()))
    assert caplog.records  # httpx did log its requests...
    for secret in (BOLOGNA, "Youssef", PAGE_TOKEN, "السلام"):
        assert secret not in caplog.text  # ...with the page token redacted


# --------------------------------------------------- webhooks from the simulator


def receiver_app(received: list[list[InboundEvent]], answers: list[int]) -> FastAPI:
    """A stand-in for Jisr's webhook route: the connector's checks, then the planned status."""
    app = FastAPI()
    good = connector()
    other_key = connector(app_secret="another-app-secret")

    def as_webhook(request: Request, body: bytes) -> WebhookRequest:
        return WebhookRequest(method=request.method, url=str(request.url), headers={k.lower(): v for k, v in request.headers.items()},
                              body=body, query=dict(request.query_params))

    async def handle(request: Request, messenger: MessengerConnector) -> Response:
        incoming = as_webhook(request, await request.body())
        try:
            messenger.verify(incoming)
        except WebhookForbidden:
            return Response(status_code=403)
        received.append(messenger.parse(incoming))
        return Response(status_code=answers.pop(0) if answers else 200)

    @app.post("/webhooks/messenger")
    async def webhook_route(request: Request) -> Response:
        return await handle(request, good)

    @app.post("/webhooks/other-key")
    async def other_key_route(request: Request) -> Response:
        return await handle(request, other_key)

    @app.get("/webhooks/messenger")
    async def subscribe(request: Request) -> Response:
        try:
            challenge = good.handshake(as_webhook(request, b""))
        except WebhookForbidden:
            return Response(status_code=403)
        return PlainTextResponse(challenge or "")

    return app


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, list[list[InboundEvent]], list[int]]]:
    received: list[list[InboundEvent]] = []
    answers: list[int] = []
    with BackgroundServer(receiver_app(received, answers)) as url:
        yield url, received, answers


@pytest.fixture
def jisr(receiver: tuple[str, list[list[InboundEvent]], list[int]]) -> tuple[str, list[list[InboundEvent]], list[int]]:
    url, received, answers = receiver
    received.clear()
    answers.clear()
    return receiver


def test_inbound_round_trip_is_resent_after_a_500(graph: str, jisr: tuple[str, list[list[InboundEvent]], list[int]]) -> None:
    url, received, answers = jisr
    answers.append(500)
    text = "Bonjour, l'école reprend le 1/09 ? Merci 🙏"
    result = httpx.post(f"{graph}/_sim/inbound", json={"webhook_url": f"{url}/webhooks/messenger", "psid": LYON, "text": text, "retries": 3}).json()
    assert result["statuses"] == [500, 200]
    assert len(received) == 2 and received[0] == received[1]  # the same body, so the same de-duplication key
    (event,) = received[1]
    assert isinstance(event, InboundMessage)
    assert (event.address, event.provider_message_id, event.text) == (f"messenger:{LYON}", result["mids"][0], text)


def test_inbound_batch_gives_one_event_per_messaging_event(graph: str, jisr: tuple[str, list[list[InboundEvent]], list[int]]) -> None:
    url, received, _ = jisr
    result = httpx.post(f"{graph}/_sim/inbound", json={"webhook_url": f"{url}/webhooks/messenger", "psid": MADRID, "kind": "quick_reply",
                                                        "text": "Sí", "payload": "CONSENT_YES", "batch": 3}).json()
    assert result["statuses"] == [200]
    (events,) = received
    assert [(e.provider_message_id, e.text, e.button_payload) for e in events if isinstance(e, InboundMessage)] == [(mid, "Sí", "CONSENT_YES") for mid in result["mids"]]
    assert len(set(result["mids"])) == 3


@pytest.mark.parametrize(
    "kind,payload,check",
    [
        ("image", "https://cdn.fbsbx.com/v/photo.jpg", lambda e: e.media == (Media(MediaKind.IMAGE, url="https://cdn.fbsbx.com/v/photo.jpg"),)),
        ("audio", None, lambda e: e.media[0].kind is MediaKind.AUDIO),
        ("file", None, lambda e: e.media[0].kind is MediaKind.DOCUMENT),
        ("location", {"lat": 40.4168, "long": -3.7038}, lambda e: (e.location.latitude, e.location.longitude) == (40.4168, -3.7038)),
        ("postback", "ENROL_SCHOOL", lambda e: e.button_payload == "ENROL_SCHOOL" and e.text == "Inscription"),
        ("echo", None, None),
    ],
    ids=["image", "audio", "file", "location", "postback", "echo"],
)
def test_simulator_webhooks_parse(graph: str, jisr: tuple[str, list[list[InboundEvent]], list[int]], kind: str, payload: Any, check: Any) -> None:
    url, received, _ = jisr
    result = httpx.post(f"{graph}/_sim/inbound", json={"webhook_url": f"{url}/webhooks/messenger", "kind": kind, "text": "Inscription", "payload": payload}).json()
    assert result["statuses"] == [200]
    (events,) = received
    if check is None:
        assert events == []
    else:
        (event,) = events
        assert check(event)


def test_webhook_signed_with_another_secret_is_refused_every_time(graph: str, jisr: tuple[str, list[list[InboundEvent]], list[int]]) -> None:
    url, received, _ = jisr
    result = httpx.post(f"{graph}/_sim/inbound", json={"webhook_url": f"{url}/webhooks/other-key", "text": "x", "retries": 1}).json()
    assert result["statuses"] == [403, 403] and received == []


def test_handshake_through_the_simulator(graph: str, jisr: tuple[str, list[list[InboundEvent]], list[int]]) -> None:
    url, _, _ = jisr
    ok = httpx.get(f"{graph}/_sim/handshake", params={"webhook_url": f"{url}/webhooks/messenger"}).json()
    assert ok["verified"] and ok["status"] == 200 and ok["body"] == ok["challenge"]
    refused = httpx.get(f"{graph}/_sim/handshake", params={"webhook_url": f"{url}/webhooks/messenger", "verify_token_override": "guess"}).json()
    assert refused["status"] == 403 and not refused["verified"]
