"""The assistant's notices about a handoff (handed back, resolved) are never dropped when the
platform's window does not let them go out: WhatsApp reopens with the configured template or
keeps the notice; Messenger uses the HUMAN_AGENT tag up to 7 days, then keeps it; a kept notice
is shown as waiting in the console and goes out, once and first, when the family writes again.

Our own gateway (as tests/test_privacy.py does): the real model, embedded Redis, SQLite, the
reply worker and the three provider simulators, so that one test can run it with no WhatsApp
template configured. Families write through the simulators; mediators call /api/mediation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import time
from typing import Any, Callable, Iterator

import httpx
import pytest
import sqlalchemy as sa

from jisr.auth.store import AccountStore
from jisr.content import default_reply_book
from jisr.mediation.config import default_config
from jisr.mediation.store import AWAITING_WINDOW
from jisr.store import schema
from tests.conftest import _slow_start_server, provider_simulators, simulator_settings
from tests.test_mediation import add_contact, backdate_window, open_handoff, recorded, settled, to_phone, to_psid, wait_for

UTC = dt.timezone.utc
REPLIES = default_reply_book()
_numbers = itertools.count(1)


def new_phone(country_code: str) -> str:
    return f"+{country_code}6{int(time.time()) % 100000:05d}{next(_numbers):03d}"


def new_psid() -> str:
    return f"55{int(time.time()) % 100000:05d}{next(_numbers):04d}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from jisr.gateway.app import create_app

    tmp = tmp_path_factory.mktemp("notices")
    with provider_simulators() as urls:
        settings = simulator_settings(urls, database_url=f"sqlite:///{tmp / 'jisr.db'}", redis_url=None, var_dir=tmp)
        app = create_app(settings)
        with _slow_start_server(app) as gateway_url:
            services = app.state.services
            accounts = AccountStore(services.store.engine)
            specs = {
                "es": ("Lucía Mediadora", "ES", "es"),
                "fr": ("Nadia Wassita", "FR", "fr,ar"),
                "de": ("Jonas Mediator", "DE", "de"),
                "it": ("Giulia Mediatrice", "IT", "it"),
            }
            people = {}
            for name, (display, countries, languages) in specs.items():
                account = accounts.create(f"notices_{name}", display, "mediator", "a long test password", countries=countries, languages=languages)
                people[name] = {"account": account, "token": accounts.create_token(account.id, "notice tests").token}
            clients = {
                name: httpx.Client(base_url=f"{gateway_url}/api/mediation", headers={"Authorization": f"Bearer {p['token']}"}, timeout=30)
                for name, p in people.items()
            }
            yield {"gateway": gateway_url, **urls, "services": services, "engine": services.store.engine, "people": people, "api": clients}
            for client in clients.values():
                client.close()


@contextlib.contextmanager
def mediation_config(gw: dict[str, Any], **changes: Any) -> Iterator[None]:
    """Run the gateway's mediation with content/mediation.yml changed as an operator would."""
    mediation = gw["services"].gateway.mediation
    before = mediation.config
    mediation.config = dataclasses.replace(before, **changes)
    try:
        yield
    finally:
        mediation.config = before


def whatsapp(gw: dict[str, Any], phone: str, body: str) -> None:
    spec = {"webhook_url": f"{gw['gateway']}/webhooks/whatsapp", "from": f"whatsapp:{phone}", "body": body}
    assert httpx.post(f"{gw['twilio']}/_sim/inbound", json=spec, timeout=60).status_code == 200


def messenger(gw: dict[str, Any], psid: str, text: str) -> None:
    spec = {"webhook_url": f"{gw['gateway']}/webhooks/messenger", "psid": psid, "text": text}
    assert httpx.post(f"{gw['graph']}/_sim/inbound", json=spec, timeout=60).status_code == 200


def messenger_window(gw: dict[str, Any], psid: str, is_open: bool) -> None:
    """The Graph simulator refuses untagged messages to a PSID whose window is closed, as Graph does."""
    assert httpx.post(f"{gw['graph']}/_sim/window", json={"psid": psid, "open": is_open}, timeout=30).status_code == 200


def texts_to_phone(gw: dict[str, Any], phone: str) -> list[str]:
    return [r["body"] for r in recorded(gw["twilio"]) if to_phone(phone)(r) and not r.get("content_sid")]


def messenger_sent(gw: dict[str, Any], psid: str) -> list[dict[str, Any]]:
    return [r["json"] for r in recorded(gw["graph"]) if to_psid(psid)(r)]


def notice_rows(gw: dict[str, Any], handoff_id: int, text: str) -> list[Any]:
    with gw["engine"].connect() as conn:
        return conn.execute(
            sa.select(schema.messages).where(schema.messages.c.handoff_id == handoff_id, schema.messages.c.direction == "out", schema.messages.c.text == text)
        ).all()


def shown_in_console(gw: dict[str, Any], who: str, handoff_id: int, text: str) -> dict[str, Any]:
    """The notice as the mediators' console shows it in the transcript."""
    detail = gw["api"][who].get(f"/handoffs/{handoff_id}")
    assert detail.status_code == 200, detail.text
    items = [m for m in detail.json()["transcript"] if m["text"] == text]
    assert len(items) == 1, items
    return items[0]


def quiet_for(seconds: float, sent: Callable[[], list[Any]]) -> list[Any]:
    """What was sent, checked again after ``seconds``: nothing may arrive meanwhile."""
    before = sent()
    time.sleep(seconds)
    after = sent()
    assert after == before, after[len(before):]
    return after


def open_case(gw: dict[str, Any], who: str, address: str, write: Callable[[], None], sent: Callable[[], list[Any]]) -> dict[str, Any]:
    """The family asks for a person; the mediator claims the case; the bot's answer has gone out."""
    write()
    handoff = open_handoff(gw["engine"], address)
    assert gw["api"][who].post(f"/handoffs/{handoff['id']}/claim").status_code == 200
    deadline = time.monotonic() + 30
    while not sent():
        assert time.monotonic() < deadline, "the bot's answer to the request never went out"
        time.sleep(0.1)
    quiet_for(1.0, sent)
    return handoff


def messenger_case(gw: dict[str, Any], language: str, country: str, text: str) -> tuple[str, str, dict[str, Any]]:
    """A new Messenger family of ``country`` writing ``text`` in ``language`` gets a case opened:
    (its PSID, its address, the handoff)."""
    psid = new_psid()
    address = f"messenger:{psid}"
    add_contact(gw["engine"], address, "messenger", country=country, language=language)
    handoff = open_case(gw, language, address, lambda: messenger(gw, psid, text), lambda: messenger_sent(gw, psid))
    return psid, address, handoff


# --- WhatsApp, 30 hours after the family's last message --------------------------------------------


def test_whatsapp_resolve_after_30_hours_reopens_with_the_template_and_the_notice_follows_the_answer_in_spanish(gw):
    phone = new_phone("34")
    address = f"whatsapp:{phone}"
    add_contact(gw["engine"], address, "whatsapp", country="ES", language="es")
    handoff = open_case(gw, "es", address, lambda: whatsapp(gw, phone, "quiero hablar con una persona"), lambda: texts_to_phone(gw, phone))
    before = len(texts_to_phone(gw, phone))
    backdate_window(gw["engine"], address, dt.timedelta(hours=30))
    notice = REPLIES.text("handoff_resolved", "es")

    assert gw["api"]["es"].post(f"/handoffs/{handoff['id']}/resolve").json()["handoff"]["status"] == "resolved"
    template = wait_for(gw["twilio"], lambda r: to_phone(phone)(r) and r.get("content_sid"))
    assert len(template) == 1
    assert template[0]["content_sid"] == default_config().whatsapp_template("es")
    assert template[0]["variables"] == {"1": gw["people"]["es"]["account"].display_name}
    assert notice not in quiet_for(1.0, lambda: texts_to_phone(gw, phone))  # a free text is refused outside 24 h
    assert shown_in_console(gw, "es", handoff["id"], notice)["status"] == AWAITING_WINDOW

    whatsapp(gw, phone, "hola")  # the family answers the template: the window is open again
    wait_for(gw["twilio"], lambda r: to_phone(phone)(r) and not r.get("content_sid"), count=before + 2)
    after = settled(gw["twilio"], lambda r: to_phone(phone)(r) and not r.get("content_sid"))[before:]
    bodies = [r["body"] for r in after]
    assert bodies[0] == notice and bodies.count(notice) == 1, bodies  # first, once
    assert len(bodies) >= 2  # then the assistant's answer to "hola": the case is closed
    assert [r.status for r in notice_rows(gw, handoff["id"], notice)] == ["sent"]
    assert shown_in_console(gw, "es", handoff["id"], notice)["status"] == "sent"
    assert len([r for r in recorded(gw["twilio"]) if to_phone(phone)(r) and r.get("content_sid")]) == 1


def test_whatsapp_resolve_after_30_hours_without_a_template_keeps_the_notice_in_arabic_for_a_darija_speaker(gw):
    phone = new_phone("33")
    address = f"whatsapp:{phone}"
    add_contact(gw["engine"], address, "whatsapp", country="FR", language="ary")
    all_to_phone = lambda: [r for r in recorded(gw["twilio"]) if to_phone(phone)(r)]  # noqa: E731
    handoff = open_case(gw, "fr", address, lambda: whatsapp(gw, phone, "salam bghit nhder m3a chi wa7ed 3afak"), all_to_phone)
    before = len(all_to_phone())
    backdate_window(gw["engine"], address, dt.timedelta(hours=30))
    notice = REPLIES.text("handoff_resolved", "ar")  # ary reads the Arabic texts

    with mediation_config(gw, whatsapp_templates={}):
        assert gw["api"]["fr"].post(f"/handoffs/{handoff['id']}/resolve").status_code == 200
        assert len(quiet_for(1.5, all_to_phone)) == before  # no template to reopen with, no free text either
        assert [r.status for r in notice_rows(gw, handoff["id"], notice)] == [AWAITING_WINDOW]  # kept in SQL
        item = shown_in_console(gw, "fr", handoff["id"], notice)
        assert (item["status"], item["author"]) == (AWAITING_WINDOW, "bot")

        whatsapp(gw, phone, "salam")
        wait_for(gw["twilio"], to_phone(phone), count=before + 2)
        bodies = [r["body"] for r in settled(gw["twilio"], to_phone(phone))[before:]]
    assert bodies[0] == notice and bodies.count(notice) == 1, bodies
    assert len(bodies) >= 2
    assert [r.status for r in notice_rows(gw, handoff["id"], notice)] == ["sent"]


# --- Messenger: HUMAN_AGENT up to 7 days, then kept ---------------------------------------------------


def test_messenger_resolve_after_3_days_goes_with_the_human_agent_tag_in_german(gw):
    psid, address, handoff = messenger_case(gw, "de", "DE", "mein Sohn wird in der Schule gemobbt")
    backdate_window(gw["engine"], address, dt.timedelta(days=3))
    messenger_window(gw, psid, False)
    notice = REPLIES.text("handoff_resolved", "de")
    try:
        assert gw["api"]["de"].post(f"/handoffs/{handoff['id']}/resolve").status_code == 200
        tagged = wait_for(gw["graph"], lambda r: to_psid(psid)(r) and ((r.get("json") or {}).get("message") or {}).get("text") == notice)
    finally:
        messenger_window(gw, psid, True)
    assert len(tagged) == 1
    assert (tagged[0]["json"]["messaging_type"], tagged[0]["json"]["tag"]) == ("MESSAGE_TAG", "HUMAN_AGENT")
    assert [r.status for r in notice_rows(gw, handoff["id"], notice)] == ["sent"]


def test_messenger_hand_back_after_10_days_is_kept_then_sent_before_the_bots_answer_in_italian(gw):
    psid, address, handoff = messenger_case(gw, "it", "IT", "voglio parlare con una persona vera")
    before = len(messenger_sent(gw, psid))
    backdate_window(gw["engine"], address, dt.timedelta(days=10))
    messenger_window(gw, psid, False)
    notice = REPLIES.text("handoff_back", "it")

    assert gw["api"]["it"].post(f"/handoffs/{handoff['id']}/hand-back").status_code == 200
    assert len(quiet_for(1.5, lambda: messenger_sent(gw, psid))) == before  # beyond 7 days even the tag is refused
    assert shown_in_console(gw, "it", handoff["id"], notice)["status"] == AWAITING_WINDOW

    messenger_window(gw, psid, True)  # the family writes: Messenger opens the window again
    messenger(gw, psid, "ciao")
    wait_for(gw["graph"], to_psid(psid), count=before + 2)
    after = [r["json"] for r in settled(gw["graph"], to_psid(psid))[before:]]
    texts = [(m.get("message") or {}).get("text") for m in after]
    assert texts[0] == notice and texts.count(notice) == 1, texts
    assert len(texts) >= 2  # the assistant answers "ciao" after the notice: it holds the conversation again
    assert after[0].get("tag") is None  # inside the window now: a plain message
    assert [r.status for r in notice_rows(gw, handoff["id"], notice)] == ["sent"]
    with gw["engine"].connect() as conn:
        statuses = conn.execute(sa.select(schema.handoffs.c.status).where(schema.handoffs.c.contact_id == handoff["contact_id"])).scalars().all()
    assert statuses == ["handed_back"]  # "ciao" went to the assistant, no new case


# --- the store: each waiting message is taken once --------------------------------------------------


def test_two_processes_releasing_at_once_take_each_waiting_message_once(tmp_path):
    """The family's message (gateway) and a notice written at that moment (API) may both release:
    eight threads over two engines take three waiting messages; each is taken exactly once."""
    import concurrent.futures
    import threading

    from jisr.mediation.store import HandoffStore
    from jisr.store.contacts import ContactStore, create_db_engine

    url = f"sqlite:///{tmp_path / 'jisr.db'}"
    engines = [create_db_engine(url), create_db_engine(url)]
    try:
        contacts = ContactStore(engines[0])
        cid = add_contact(engines[0], f"whatsapp:{new_phone('39')}", "whatsapp", country="IT", language="it")
        stores = [HandoffStore(e) for e in engines]
        handoff = stores[0].open(cid, "whatsapp", "request", 5, "IT", "it", "parent").handoff
        texts = [REPLIES.text("handoff_back", "it"), "Buongiorno, sono la mediatrice.", REPLIES.text("handoff_resolved", "it")]
        ids = []
        for index, text in enumerate(texts):
            ids.append(contacts.log_outbound(cid, "whatsapp", text, f"notice-test:{cid}:{index}:0"))
            stores[0].tag_message(ids[-1], handoff.id, None, AWAITING_WINDOW)
        assert [m["id"] for m in stores[1].awaiting_window(cid)] == ids  # oldest first

        barrier = threading.Barrier(8)

        def release(index: int) -> list[int]:
            barrier.wait()
            return [m["id"] for m in stores[index % 2].take_awaiting(cid)]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            taken = [i for ids_taken in pool.map(release, range(8)) for i in ids_taken]
        assert sorted(taken) == ids
        assert stores[0].awaiting_window(cid) == []

        stores[1].wait_again(ids[1:])  # could not be queued: they wait for the next release
        assert [m["id"] for m in stores[0].take_awaiting(cid)] == ids[1:]
    finally:
        for engine in engines:
            engine.dispose()


# --- a mediator's answer outlives the case; nothing held goes out after its expiry ---------------------


def contact_messages(gw: dict[str, Any], contact_id: int) -> list[Any]:
    with gw["engine"].connect() as conn:
        return conn.execute(sa.select(schema.messages).where(schema.messages.c.contact_id == contact_id).order_by(schema.messages.c.id)).all()


def templates_to_phone(gw: dict[str, Any], phone: str) -> list[dict[str, Any]]:
    return [r for r in recorded(gw["twilio"]) if to_phone(phone)(r) and r.get("content_sid")]


def test_whatsapp_mediators_answer_waiting_when_the_case_is_resolved_goes_out_before_the_notice_in_spanish(gw):
    """30 hours after the family's last message the mediator answers (a template asks the family to
    write), then resolves the case. When the family writes: the answer, then "resolved", then the
    bot's reply to that message, each once; one template in all."""
    phone = new_phone("34")
    address = f"whatsapp:{phone}"
    contact_id = add_contact(gw["engine"], address, "whatsapp", country="ES", language="es")
    handoff = open_case(gw, "es", address, lambda: whatsapp(gw, phone, "quiero hablar con una persona"), lambda: texts_to_phone(gw, phone))
    before = len(texts_to_phone(gw, phone))
    backdate_window(gw["engine"], address, dt.timedelta(hours=30))
    answer = "Hola, soy Lucía. He hablado con el colegio: la reunión es el lunes a las 10:00."
    notice = REPLIES.text("handoff_resolved", "es")

    reply = gw["api"]["es"].post(f"/handoffs/{handoff['id']}/reply", json={"text": answer, "idempotency_key": f"held-es-{phone}"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["form"] == "template"
    assert len(wait_for(gw["twilio"], lambda r: to_phone(phone)(r) and r.get("content_sid"))) == 1
    assert gw["api"]["es"].post(f"/handoffs/{handoff['id']}/resolve").json()["handoff"]["status"] == "resolved"
    assert len(quiet_for(1.5, lambda: templates_to_phone(gw, phone))) == 1  # the answer's template already asked
    assert len(texts_to_phone(gw, phone)) == before
    assert shown_in_console(gw, "es", handoff["id"], answer)["status"] == AWAITING_WINDOW  # not failed: still going out
    assert shown_in_console(gw, "es", handoff["id"], notice)["status"] == AWAITING_WINDOW

    whatsapp(gw, phone, "hola, ¿qué tal?")
    wait_for(gw["twilio"], lambda r: to_phone(phone)(r) and not r.get("content_sid"), count=before + 3)
    bodies = [r["body"] for r in settled(gw["twilio"], lambda r: to_phone(phone)(r) and not r.get("content_sid"))[before:]]
    assert bodies[:2] == [answer, notice], bodies
    assert bodies.count(answer) == 1 and bodies.count(notice) == 1, bodies

    rows = contact_messages(gw, contact_id)
    family = max(r.id for r in rows if r.direction == "in")
    bot_reply = [r.text for r in rows if r.direction == "out" and r.id > family]
    assert bot_reply and bodies[2:] == bot_reply  # the assistant's answer to "hola", once, after both
    assert [r.status for r in notice_rows(gw, handoff["id"], answer)] == ["sent"]
    assert [r.status for r in notice_rows(gw, handoff["id"], notice)] == ["sent"]
    assert len(templates_to_phone(gw, phone)) == 1


def test_messenger_notice_kept_past_the_expiry_is_not_sent_and_shown_expired_in_italian(gw):
    """A hand-back notice kept (Messenger, 10 days) for longer than held_messages_expire_after_days
    is recorded failed ("expired") when the family writes, not sent; the bot answers them."""
    psid, address, handoff = messenger_case(gw, "it", "IT", "voglio parlare con una persona vera")
    before = len(messenger_sent(gw, psid))
    backdate_window(gw["engine"], address, dt.timedelta(days=10))
    messenger_window(gw, psid, False)
    notice = REPLIES.text("handoff_back", "it")
    try:
        assert gw["api"]["it"].post(f"/handoffs/{handoff['id']}/hand-back").status_code == 200
        assert len(quiet_for(1.0, lambda: messenger_sent(gw, psid))) == before
    finally:
        messenger_window(gw, psid, True)
    [row] = notice_rows(gw, handoff["id"], notice)
    assert row.status == AWAITING_WINDOW
    kept = default_config().held_messages_expire_after + dt.timedelta(hours=1)
    with gw["engine"].begin() as conn:  # the family stays silent longer than the expiry
        conn.execute(schema.messages.update().where(schema.messages.c.id == row.id).values(created_at=dt.datetime.now(UTC) - kept))

    messenger(gw, psid, "ciao, una domanda sulla mensa")
    wait_for(gw["graph"], to_psid(psid), count=before + 1)
    texts = [((m.get("message") or {}).get("text")) for m in (r["json"] for r in settled(gw["graph"], to_psid(psid))[before:])]
    assert notice not in texts, texts
    assert texts  # the assistant answered the family's message
    [row] = notice_rows(gw, handoff["id"], notice)
    assert (row.status, row.error_code) == ("failed", "expired")  # recorded by the release, before any console read
    assert shown_in_console(gw, "it", handoff["id"], notice)["status"] == "expired"


def test_expiry_takes_only_waiting_messages_older_than_the_cutoff(tmp_path):
    from jisr.mediation.store import EXPIRED, HandoffStore
    from jisr.store.contacts import ContactStore, create_db_engine

    engine = create_db_engine(f"sqlite:///{tmp_path / 'jisr.db'}")
    try:
        contacts, store = ContactStore(engine), HandoffStore(engine)
        cid = add_contact(engine, f"whatsapp:{new_phone('213')}", "whatsapp", country="DZ", language="ar")
        handoff = store.open(cid, "whatsapp", "request", 5, "DZ", "ar", "parent").handoff
        now = dt.datetime.now(UTC)
        ids = []
        for index, age in enumerate((dt.timedelta(days=20), dt.timedelta(days=15), dt.timedelta(days=2))):
            ids.append(contacts.log_outbound(cid, "whatsapp", REPLIES.text("handoff_back", "ar"), f"expiry-test:{cid}:{index}:0"))
            store.tag_message(ids[-1], handoff.id, None, AWAITING_WINDOW)
            with engine.begin() as conn:
                conn.execute(schema.messages.update().where(schema.messages.c.id == ids[-1]).values(created_at=now - age))
        cutoff = now - dt.timedelta(days=14)
        assert [m["id"] for m in store.expire_awaiting(cid, cutoff)] == ids[:2]
        assert store.expire_awaiting(cid, cutoff) == []  # once
        assert [m["id"] for m in store.take_awaiting(cid)] == ids[2:]
        with engine.connect() as conn:
            rows = conn.execute(sa.select(schema.messages.c.status, schema.messages.c.error_code).where(schema.messages.c.id.in_(ids[:2]))).all()
        assert [tuple(r) for r in rows] == [("failed", EXPIRED)] * 2
    finally:
        engine.dispose()


@pytest.mark.parametrize("value", [0, -3, "two weeks", True, None])
def test_a_wrong_expiry_is_refused_naming_the_file_and_the_field(value):
    import yaml

    from jisr.mediation.config import CONFIG_PATH, MediationConfig, MediationConfigError

    data = yaml.safe_load(CONFIG_PATH.read_text(encoding="utf-8"))
    data["held_messages_expire_after_days"] = value
    with pytest.raises(MediationConfigError, match=r"content/mediation\.yml: held_messages_expire_after_days must be a positive number of days"):
        MediationConfig.from_mapping(data)
    data["held_messages_expire_after_days"] = 3
    assert MediationConfig.from_mapping(data).held_messages_expire_after == dt.timedelta(days=3)
