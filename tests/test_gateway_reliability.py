"""The gateway when things go wrong: provider outages, 429s, floods, media, receipts — nothing lost, nothing twice."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from jisr.content import default_reply_book
from jisr.store.contacts import create_db_engine
from jisr.store.schema import contacts, messages

_numbers = itertools.count(100)


def _new_number() -> str:
    return f"whatsapp:+3360000{next(_numbers):04d}"


def _sent_to(sim_url: str, address: str) -> list[dict[str, Any]]:
    requests = httpx.get(f"{sim_url}/_sim/requests").json()["requests"]
    return [r for r in requests if r.get("to") == address and r.get("http_status") in (200, 201)]


def _wait(predicate, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def _whatsapp(stack: dict[str, Any], address: str, body: str, **extra: Any) -> dict[str, Any]:
    payload = {"webhook_url": f"{stack['gateway']}/webhooks/whatsapp", "from": address, "body": body, **extra}
    return httpx.post(f"{stack['twilio']}/_sim/inbound", json=payload, timeout=60).json()


def _log(stack: dict[str, Any], address: str) -> list[dict[str, Any]]:
    engine = create_db_engine(stack["database_url"])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages).join(contacts, contacts.c.id == messages.c.contact_id).where(contacts.c.address == address).order_by(messages.c.id)
        ).all()
    engine.dispose()
    return [dict(r._mapping) for r in rows]


@pytest.fixture(autouse=True)
def _no_failures_left(stack):
    yield
    httpx.post(f"{stack['twilio']}/_sim/fail", json={})


def test_provider_outage_delays_the_reply_but_never_loses_it(stack):
    address = _new_number()
    httpx.post(f"{stack['twilio']}/_sim/fail", json={"queue": [{"status": 503}, {"status": 503}]})
    _whatsapp(stack, address, "bonjour")
    sent = _wait(lambda: _sent_to(stack["twilio"], address))
    assert len(sent) == 1
    outbound = [m for m in _log(stack, address) if m["direction"] == "out"]
    assert outbound and all(m["status"] == "sent" for m in outbound)
    assert outbound[0]["attempts"] >= 3, "two 503s, then the send that worked"


def test_a_429_pauses_the_channel_and_the_reply_still_arrives(stack):
    address = _new_number()
    httpx.post(f"{stack['twilio']}/_sim/fail", json={"queue": [{"status": 429, "retry_after": 2}]})
    started = time.monotonic()
    _whatsapp(stack, address, "hola")
    _wait(lambda: _sent_to(stack["twilio"], address))
    assert time.monotonic() - started >= 1.5, "the channel waited for the retry-after"


def test_a_blocked_contact_is_opted_out_and_the_failure_recorded(stack):
    address = _new_number()
    httpx.post(f"{stack['twilio']}/_sim/fail", json={"blocked_addresses": [address]})
    _whatsapp(stack, address, "salam")
    outbound = _wait(lambda: [m for m in _log(stack, address) if m["direction"] == "out" and m["status"] == "failed"])
    assert outbound[0]["error_code"] == "21610"
    engine = create_db_engine(stack["database_url"])
    with engine.connect() as conn:
        consent = conn.execute(sa.select(contacts.c.consent).where(contacts.c.address == address)).scalar()
    engine.dispose()
    assert consent == "opted_out"


def test_voice_note_gets_a_helpful_reply_and_is_kept(stack):
    address = _new_number()
    _whatsapp(stack, address, "hola buenas")
    _wait(lambda: _sent_to(stack["twilio"], address))
    _whatsapp(stack, address, "", media=[{"url": "https://media.example/voice.ogg", "content_type": "audio/ogg"}])
    book = default_reply_book()
    expected = book.text("media_received", "es", media_kind=book.raw("media_kinds", "es")["audio"])
    _wait(lambda: [r for r in _sent_to(stack["twilio"], address) if r.get("body") == expected])
    inbound = [m for m in _log(stack, address) if m["direction"] == "in"]
    assert json.loads(inbound[-1]["media"])[0]["kind"] == "audio", "the voice note is kept for a mediator"


def test_flooding_sender_gets_one_polite_answer(stack):
    address = _new_number()
    for i in range(8):
        _whatsapp(stack, address, f"bonjour {i}")
    book = default_reply_book()
    time.sleep(3)
    bodies = [r.get("body") for r in _sent_to(stack["twilio"], address)]
    polite = [b for b in bodies if b == book.text("too_many_messages", "fr")]
    assert len(polite) == 1, bodies
    assert len([m for m in _log(stack, address) if m["direction"] == "in"]) == 8, "every message is logged"


def test_delivery_receipts_update_the_log(stack):
    address = _new_number()
    _whatsapp(stack, address, "buongiorno")
    sent = _wait(lambda: _sent_to(stack["twilio"], address))
    sid = sent[0]["sid"]
    for status in ("delivered", "read", "sent"):  # a late "sent" must not undo "read"
        httpx.post(
            f"{stack['twilio']}/_sim/status",
            json={"webhook_url": f"{stack['gateway']}/webhooks/whatsapp", "message_sid": sid, "status": status, "to": address},
            timeout=30,
        )
    assert _wait(lambda: [m for m in _log(stack, address) if m["provider_message_id"] == sid and m["status"] == "read"])


@pytest.mark.parametrize(
    "stop, start",
    [("STOP", "je veux recevoir les rappels"), ("safi baraka mn les messages", "bghit nwsalni les rappels"), ("توقفوا عن ارسال الرسائل", "أريد أن أتلقى التذكيرات"), ("bitte keine nachrichten mehr", "ich möchte die erinnerungen bekommen")],
)
def test_opt_out_and_back_in_are_recorded_with_their_history(stack, stop, start):
    address = _new_number()
    _whatsapp(stack, address, stop)
    engine = create_db_engine(stack["database_url"])

    def consent() -> str:
        with engine.connect() as conn:
            return conn.execute(sa.select(contacts.c.consent).where(contacts.c.address == address)).scalar()

    assert _wait(lambda: consent() == "opted_out")
    _whatsapp(stack, address, start)
    assert _wait(lambda: consent() == "opted_in")
    from jisr.store.contacts import ContactStore

    history = ContactStore(engine).consent_history(ContactStore(engine).by_address(address).id)
    assert [(h["consent"] if isinstance(h, dict) else h.consent) for h in history] == ["opted_out", "opted_in"]
    engine.dispose()
