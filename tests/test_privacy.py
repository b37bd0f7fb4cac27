"""Privacy end to end: a contact's export, its erasure leaving no trace (SQL, Redis, queues, logs),
the retention purge, the bot's disclosure, keyed pseudonyms and the admins-only API.

Real pieces only: one gateway of our own (model, embedded Redis, SQLite, reply worker) wired to
the three provider simulators, the real stores, a real bulk worker, the `jisr` CLI. Every log
record of the module (root logger at INFO, the gateway runs in this process) is kept and
searched at the end for addresses, chat ids, texts and the bot token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pytest
import redis as redis_sync
import sqlalchemy as sa

from jisr.auth.audit import AuditLog
from jisr.auth.store import AccountStore
from jisr.content import default_reply_book
from jisr.outbox import BULK_QUEUE, CampaignBatch, Outbox, SendContext, SendJob, build_worker
from jisr.privacy import pseudonym
from jisr.privacy.disclosure import needs_disclosure, with_disclosure
from jisr.privacy.retention import purge
from jisr.privacy.state import ConversationRedis
from jisr.redisconn import connect_redis
from jisr.settings import Settings
from jisr.store import schema
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import ContactStore, create_db_engine
from jisr.store.csv_io import import_csv
from tests.conftest import STACK_SECRETS, _slow_start_server, provider_simulators, simulator_settings

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
PSEUDONYM_KEY = "pseudonym-key-for-the-privacy-tests"
BOOK = default_reply_book()

# The families of this module. Distinctive ids and texts, so a search finds only their traces.
AMINA_PHONE = "+33745190263"
AMINA = f"whatsapp:{AMINA_PHONE}"
AMINA_TEXT = "Bonjour, ma fille Loubna entre au collège Jean-Macé de Lyon, quels papiers faut-il pour l'inscription ?"
AMINA_NOTE = "La maman de Loubna rappelle jeudi après 18h"
YOUSSEF_CHAT = "7391846205"
YOUSSEF = f"telegram:{YOUSSEF_CHAT}"
YOUSSEF_TEXT = "salam, bghit n3ref imta lbac f fransa l weldi Ayoub"
KARIM_PSID = "8462019375113"
KARIM = f"messenger:{KARIM_PSID}"
KARIM_TEXT = "Wie melde ich meinen Sohn Idriss in der Grundschule in Köln an?"
SOFIA_TEXT = "Buongiorno, come iscrivo mia figlia Samira alla scuola media a Torino?"


# -- the logs of the whole module ---------------------------------------------------------------


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))  # with the traceback of logger.exception, if any
        except Exception as error:  # a record that cannot be formatted is a finding too
            self.lines.append(f"UNFORMATTABLE {record.name}: {error}")


@pytest.fixture(scope="module")
def logs() -> Iterator[_Keep]:
    root = logging.getLogger()
    keep, level = _Keep(), root.level
    root.addHandler(keep)
    root.setLevel(logging.INFO)  # what an operator running `jisr serve -v` sees
    yield keep
    root.removeHandler(keep)
    root.setLevel(level)


@pytest.fixture(scope="module")
def gw(logs: _Keep, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Our own gateway (the shared `stack` hides its Redis): its app, its services, the simulators."""
    from jisr.gateway.app import create_app

    tmp = tmp_path_factory.mktemp("privacy")
    with provider_simulators() as urls:
        settings = simulator_settings(
            urls,
            database_url=f"sqlite:///{tmp / 'jisr.db'}",
            redis_url=None,
            var_dir=tmp,
            log_pseudonym_key=PSEUDONYM_KEY,
        )
        app = create_app(settings)
        with _slow_start_server(app) as gateway_url:
            # Loading Rasa sets the root logger to WARNING: back to INFO, as `jisr serve -v` runs.
            logging.getLogger().setLevel(logging.INFO)
            services = app.state.services
            engine = services.store.engine
            accounts = AccountStore(engine)
            tokens = {}
            for role in ("admin", "operator", "mediator"):
                account = accounts.create(f"{role}1", f"The {role}", role, "a long enough password 123", countries="FR,DE,DZ,IT")
                tokens[role] = accounts.create_token(account.id, "privacy tests").token
            yield {
                "gateway": gateway_url,
                **urls,
                "services": services,
                "engine": engine,
                "settings": settings,
                "tokens": tokens,
                "tmp": tmp,
            }


def _requests(sim_url: str) -> list[dict[str, Any]]:
    return httpx.get(f"{sim_url}/_sim/requests").json()["requests"]


def _sent_texts(gw: dict[str, Any], address: str) -> list[str]:
    """What the simulators received for ``address``, in order."""
    channel, ident = address.split(":", 1)
    if channel == "whatsapp":
        return [r.get("body") or "" for r in _requests(gw["twilio"]) if r.get("to") == address and r.get("body")]
    if channel == "telegram":
        return [
            str((r.get("params") or {}).get("text"))
            for r in _requests(gw["telegram"])
            if r.get("method", "").lower() == "sendmessage" and str((r.get("params") or {}).get("chat_id")) == ident
        ]
    return [
        str(((r.get("json") or {}).get("message") or {}).get("text"))
        for r in _requests(gw["graph"])
        if str(((r.get("json") or {}).get("recipient") or {}).get("id")) == ident and r.get("status") == 200
    ]


def _wait_texts(gw: dict[str, Any], address: str, count: int, timeout: float = 40.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = _sent_texts(gw, address)
        if len(texts) >= count:
            return texts
        time.sleep(0.2)
    raise AssertionError(f"{count} replies expected, got {_sent_texts(gw, address)}")


def _say(gw: dict[str, Any], address: str, text: str) -> None:
    channel, ident = address.split(":", 1)
    if channel == "whatsapp":
        body = {"webhook_url": f"{gw['gateway']}/webhooks/whatsapp", "from": address, "body": text}
        httpx.post(f"{gw['twilio']}/_sim/inbound", json=body, timeout=60)
    elif channel == "telegram":
        body = {"webhook_url": f"{gw['gateway']}/webhooks/telegram", "secret_token": STACK_SECRETS["telegram_secret"], "chat_id": int(ident), "text": text}
        httpx.post(f"{gw['telegram']}/_sim/inbound", json=body, timeout=60)
    else:
        body = {"webhook_url": f"{gw['gateway']}/webhooks/messenger", "psid": ident, "text": text}
        httpx.post(f"{gw['graph']}/_sim/inbound", json=body, timeout=60)


def _contact(gw: dict[str, Any], address: str) -> Any:
    return ContactStore(gw["engine"]).by_address(address)


def _api(gw: dict[str, Any], role: str) -> httpx.Client:
    return httpx.Client(base_url=gw["gateway"], headers={"Authorization": f"Bearer {gw['tokens'][role]}"}, timeout=30)


# -- disclosure: the first reply says it is a bot, once, in the family's language ---------------


def test_first_reply_discloses_the_bot_in_the_family_language_once(gw):
    cases = [(AMINA, AMINA_TEXT, "fr"), (YOUSSEF, YOUSSEF_TEXT, "ar"), (KARIM, KARIM_TEXT, "de")]
    for address, text, _language in cases:
        _say(gw, address, text)
    for address, _text, language in cases:
        first = _wait_texts(gw, address, 1)[0]
        assert first.startswith(BOOK.text("bot_disclosure", language)), (address, first)
        assert first.strip() != BOOK.text("bot_disclosure", language), "the answer follows the line"
    # A second message is not the start of a conversation: no second disclosure.
    _say(gw, AMINA, "et pour la cantine, comment faire l'inscription ?")
    texts = _wait_texts(gw, AMINA, 2)
    assert not any(BOOK.text("bot_disclosure", "fr") in t for t in texts[1:]), texts


def test_web_chat_in_italian_discloses_too(gw):
    session = httpx.post(f"{gw['gateway']}/api/webchat/session").json()["session"]
    headers = {"X-Jisr-Session": session}
    httpx.post(f"{gw['gateway']}/api/webchat/messages", json={"text": SOFIA_TEXT, "client_message_id": "s-1"}, headers=headers, timeout=60)
    messages = httpx.get(f"{gw['gateway']}/api/webchat/messages?after=0&wait=20", headers=headers, timeout=40).json()["messages"]
    assert messages and messages[0]["text"].startswith(BOOK.text("bot_disclosure", "it"))
    gw["sofia"] = f"webchat:{session.split('.')[0]}"


def test_a_greeting_is_not_disclosed_twice():
    greet = BOOK.text("greet", "es")
    from jisr.assistant.runtime import Reply

    assert [r.text for r in with_disclosure([Reply(greet)], BOOK, "es")] == [greet]
    question = [Reply("Para inscribir a su hijo…"), Reply("¿Algo más?")]
    disclosed = with_disclosure(question, BOOK, "ary")  # Darija in Latin letters is answered in Arabic
    assert disclosed[0].text.startswith(BOOK.text("bot_disclosure", "ar")) and disclosed[1].text == "¿Algo más?"
    now = dt.datetime(2026, 12, 4, tzinfo=UTC)
    assert needs_disclosure(None, now, 30) and needs_disclosure(now - dt.timedelta(days=31), now, 30)
    assert not needs_disclosure(now - dt.timedelta(days=2), now, 30)


# -- export ------------------------------------------------------------------------------------


def _seed_the_rest(gw: dict[str, Any]) -> dict[str, Any]:
    """Through the real stores: consent, a linked channel, a handoff with a note, a campaign send."""
    from jisr.mediation.store import HandoffStore

    engine = gw["engine"]
    store = ContactStore(engine)
    amina, youssef = _contact(gw, AMINA), _contact(gw, YOUSSEF)
    store.update_profile(amina.id, country="FR", language="fr")
    store.record_consent(amina.id, "opted_in", "conversation", None, "whatsapp")
    store.subscribe_topics(amina.id, ["exams", "orientation"], "conversation")
    store.link([amina.id, youssef.id])  # the same family on WhatsApp and Telegram
    handoffs = HandoffStore(engine)
    opened = handoffs.open(amina.id, "whatsapp", "request", 3, "FR", "fr", "parent", topics=["enrolment"])
    admin = AccountStore(engine).get_by_username("admin1")
    handoffs.add_note(opened.handoff.id, admin.id, AMINA_NOTE)
    campaigns = CampaignStore(engine)
    run_id, _ = campaigns.get_or_create_run("rentree_privacy", "2026-09-01", None)
    now = dt.datetime.now(UTC)
    key = hashlib.sha256(f"rentree_privacy:{amina.id}".encode()).hexdigest()
    campaigns.insert_sends(
        [
            {
                "run_id": run_id, "contact_id": amina.id, "idempotency_key": key, "language": "fr", "channel": "whatsapp",
                "form": "text", "scheduled_at": now, "local_time": "now", "status": "queued", "reason": None,
                "created_at": now, "updated_at": now,
            }
        ]
    )
    send_id = next(s["id"] for s in campaigns.sends(run_id) if s["contact_id"] == amina.id)
    return {"amina": amina.id, "youssef": youssef.id, "handoff": opened.handoff.id, "run": run_id, "send_key": key, "send_id": send_id}


def test_export_holds_everything_seeded(gw):
    _wait_texts(gw, AMINA, 2)
    seeded = gw["seeded"] = _seed_the_rest(gw)
    with _api(gw, "admin") as api:
        response = api.get(f"/api/admin/contacts/{seeded['amina']}/export")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["contact"]["address"] == AMINA and data["contact"]["consent"] == "opted_in"
    assert [c["address"] for c in data["linked_addresses"]] == [YOUSSEF]
    inbound = [m for m in data["messages"] if m["direction"] == "in"]
    outbound = [m for m in data["messages"] if m["direction"] == "out"]
    assert AMINA_TEXT in [m["text"] for m in inbound] and len(inbound) == 2
    assert len(outbound) >= 2 and all(m["status"] in ("queued", "sent", "delivered", "read") for m in outbound)
    assert [(e["consent"], e["source"]) for e in data["consent_history"]] == [("opted_in", "conversation")]
    assert [(s["campaign_id"], s["status"]) for s in data["campaign_sends"]] == [("rentree_privacy", "queued")]
    assert [n["text"] for n in data["handoffs"][0]["notes"]] == [AMINA_NOTE]
    assert sorted(t["topic"] for t in data["contact_topics"]) == ["exams", "orientation"]  # any table that refers to a contact
    # Rasa's conversation state: the tracker (sender id = the address) with what Amina wrote.
    tracker = data["conversation_state"]
    assert tracker is not None and tracker["name"] == AMINA  # Rasa stores a Dialogue: {"name": sender id, "events": […]}
    assert AMINA_TEXT in [e.get("text") for e in tracker["events"] if e.get("event") == "user"]
    # Audit-logged, without the address.
    entries = AuditLog(gw["engine"]).list(action="contact.export", target_id=seeded["amina"])
    assert len(entries) == 1 and AMINA_PHONE not in json.dumps(entries[0].as_dict())


def test_export_and_forget_are_for_admins_only(gw):
    contact_id = _contact(gw, KARIM).id
    for role in ("operator", "mediator"):
        with _api(gw, role) as api:
            assert api.get(f"/api/admin/contacts/{contact_id}/export").status_code == 403
            assert api.delete(f"/api/admin/contacts/{contact_id}").status_code == 403
    assert httpx.get(f"{gw['gateway']}/api/admin/contacts/{contact_id}/export").status_code == 401
    with _api(gw, "admin") as api:
        assert api.get("/api/admin/contacts/999999/export").status_code == 404
        # An address in the path is refused: it would land in access logs.
        assert api.get(f"/api/admin/contacts/{KARIM}/export").status_code == 422
    assert _contact(gw, KARIM) is not None, "nothing erased by the refused calls"


def test_after_a_long_silence_the_bot_discloses_again(gw):
    karim = _contact(gw, KARIM)
    before = len(_sent_texts(gw, KARIM))
    with gw["engine"].begin() as conn:
        conn.execute(
            schema.contacts.update().where(schema.contacts.c.id == karim.id).values(last_inbound_at=dt.datetime.now(UTC) - dt.timedelta(days=31))
        )
    # The 10-minute guard against two simultaneous first messages would have expired long ago.
    services = gw["services"]
    asyncio.run(_delete(services.redis, f"jisr:disclosed:{pseudonym.address_hash(KARIM)}"))
    _say(gw, KARIM, "Und wann beginnen die Sommerferien in Nordrhein-Westfalen?")
    texts = _wait_texts(gw, KARIM, before + 1)
    assert texts[before].startswith(BOOK.text("bot_disclosure", "de")), texts[before]


async def _delete(handle: Any, key: str) -> None:
    client = handle.client()
    try:
        assert await client.delete(key) == 1, "the disclosure guard was set for the first reply"
    finally:
        await client.close()


# -- forget --------------------------------------------------------------------------------------


def _redis_traces(handle: Any, needles: list[bytes]) -> list[str]:
    """Every key, in every database, whose name or value holds one of ``needles``."""
    found = []
    for db in range(16):
        client = redis_sync.Redis(host=handle.host, port=handle.port, db=db)
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"hash":
                values = [k + b"=" + v for k, v in client.hgetall(key).items()]
            elif kind == b"zset":
                values = client.zrange(key, 0, -1)
            elif kind == b"set":
                values = list(client.smembers(key))
            else:
                values = []
            for blob in [key, *values]:
                for needle in needles:
                    if needle in blob:
                        found.append(f"db{db} {key!r} holds {needle!r}")
        client.close()
    return found


def _sql_traces(engine: Any, needles: list[str]) -> list[str]:
    """Every row, in every table of the database, that holds one of ``needles``."""
    found = []
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                blob = json.dumps([str(v) for v in row], ensure_ascii=False)
                found += [f"{table}: {needle}" for needle in needles if needle in blob]
    return found


def _rows_referring_to(engine: Any, contact_ids: list[int]) -> list[str]:
    """Rows of any table with a foreign key to contacts that point at ``contact_ids``."""
    found = []
    with engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            for fk in table.foreign_keys:
                if fk.column.table is schema.contacts:
                    count = conn.execute(sa.select(sa.func.count()).select_from(table).where(fk.parent.in_(contact_ids))).scalar()
                    found += [f"{table.name}: {count}"] if count else []
        count = conn.execute(sa.select(sa.func.count()).select_from(schema.contacts).where(schema.contacts.c.id.in_(contact_ids))).scalar()
    return found + ([f"contacts: {count}"] if count else [])


def test_forget_leaves_no_trace_and_the_queued_campaign_send_never_goes_out(gw):
    seeded, services = gw["seeded"], gw["services"]
    handle = services.redis
    amina = _contact(gw, AMINA)
    # A campaign send to Amina waits on the bulk queue in a batch with another family's, as
    # `jisr campaigns schedule` leaves it.
    job = SendJob(
        idempotency_key=seeded["send_key"], channel="whatsapp", address=AMINA, parts=(("Rappel de rentrée pour Loubna", ()),),
        contact_id=amina.id, lane="bulk", run_id=seeded["run"], send_id=seeded["send_id"],
    )
    other = SendJob(
        idempotency_key="privacy-other-family-send", channel="whatsapp", address=KARIM, parts=(("Rappel de rentrée", ()),),
        lane="bulk", run_id=seeded["run"], send_id=10_000_000,
    )
    batch = CampaignBatch.of(seeded["run"], [job, other], None)

    # And a reply still waiting (deferred, as after a provider outage), with no log row to find it by.
    reply = SendJob(
        idempotency_key="reply:privacy-deferred", channel="whatsapp", address=AMINA, parts=(("Loubna peut venir jeudi", ()),),
        contact_id=amina.id, lane="replies",
    )

    async def enqueue() -> bool:
        outbox = await Outbox.connect(handle.host, handle.port, handle.db)
        try:
            return (await outbox.enqueue_batches([batch]))[0] and await outbox.enqueue(reply, defer_seconds=300)
        finally:
            await outbox.close()

    assert asyncio.run(enqueue())
    needles = [AMINA_PHONE, AMINA_TEXT, AMINA_NOTE, "Loubna", YOUSSEF_CHAT, YOUSSEF_TEXT]
    assert _redis_traces(handle, [n.encode() for n in needles]), "the test sees the traces before erasure"

    with _api(gw, "admin") as api:
        response = api.delete(f"/api/admin/contacts/{seeded['amina']}", params={"profile": "true"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["contacts"] == 2 and report["jobs_removed"] >= 2 and report["redis_erased"] and report["suppressed"] == 2

    assert _sql_traces(gw["engine"], needles) == []
    assert _rows_referring_to(gw["engine"], [seeded["amina"], seeded["youssef"]]) == []
    assert _redis_traces(handle, [n.encode() for n in needles]) == []
    # Not only unreachable by SQL: the database file itself (free pages, WAL) holds none of it.
    database = Path(gw["settings"].database_url[len("sqlite:///") :])
    raw = b"".join(p.read_bytes() for p in (database, Path(f"{database}-wal")) if p.exists())
    assert [n for n in needles if n.encode() in raw] == []
    assert _contact(gw, KARIM) is not None, "other families are untouched"
    import redis as redis_sync

    body = redis_sync.Redis(host=handle.host, port=handle.port, db=handle.db).get("arq:job:" + batch.id)
    assert body is not None and b"privacy-other-family-send" in body, "the other family's send stays queued in the batch"

    # The bulk worker finds nothing to send to her.
    async def burst() -> None:
        context = SendContext(services.connectors, services.store)
        worker = build_worker(context, handle.host, handle.port, handle.db, queue=BULK_QUEUE, burst=True)
        try:
            await worker.async_run()
        finally:
            await worker.close()

    before = len(_sent_texts(gw, AMINA))
    asyncio.run(burst())
    assert len(_sent_texts(gw, AMINA)) == before

    # Audit row, counts only.
    entries = AuditLog(gw["engine"]).list(action="contact.forget", target_id=seeded["amina"])
    assert len(entries) == 1 and entries[0].detail["contacts"] == 2
    assert not any(n in json.dumps(entries[0].as_dict(), ensure_ascii=False) for n in needles)


def test_an_old_list_cannot_bring_a_forgotten_family_back(gw, tmp_path):
    csv_file = tmp_path / "old-list.csv"
    csv_file.write_text(f"channel,address,consent\nwhatsapp,{AMINA_PHONE},yes\nwhatsapp,+33745190999,yes\n", encoding="utf-8")
    report = import_csv(ContactStore(gw["engine"]), csv_file, "paper form, consulate of Lyon, 2026-10-12")
    assert (report.imported, report.rejected) == (1, 1)
    assert report.rejections[0].line == 2 and "forget" in report.rejections[0].problem
    assert _contact(gw, AMINA) is None
    # If she writes again herself, she is a new contact (and is told again that Jisr is a bot).
    before = len(_sent_texts(gw, AMINA))
    _say(gw, AMINA, "je voudrais des informations sur les bourses pour ma fille")
    texts = _wait_texts(gw, AMINA, before + 1)
    assert _contact(gw, AMINA) is not None
    assert texts[before].startswith(BOOK.text("bot_disclosure", "fr"))


def test_forgetting_a_web_chat_family_empties_its_inbox(gw):
    address = gw["sofia"]
    session_id = address.split(":", 1)[1]
    contact = _contact(gw, address)
    assert _redis_traces(gw["services"].redis, [session_id.encode()]), "the inbox and tracker exist before"
    with _api(gw, "admin") as api:
        response = api.delete(f"/api/admin/contacts/{contact.id}")
    assert response.status_code == 200 and response.json()["contacts"] == 1
    assert _redis_traces(gw["services"].redis, [session_id.encode(), SOFIA_TEXT.encode(), b"Samira"]) == []
    assert _sql_traces(gw["engine"], [session_id, SOFIA_TEXT, "Samira"]) == []


# -- the logs, after everything above ---------------------------------------------------------


def test_the_logs_hold_no_address_chat_id_text_or_token(gw, logs):
    Path(os.environ.get("PRIVACY_LOG_DUMP", "/dev/null")).write_text("\n".join(logs.lines))
    assert any("answered" in line for line in logs.lines), "the capture saw the gateway's own log lines"
    secrets = [
        AMINA_PHONE, YOUSSEF_CHAT, KARIM_PSID, gw.get("sofia", "webchat:none").split(":", 1)[1],
        AMINA_TEXT, YOUSSEF_TEXT, KARIM_TEXT, SOFIA_TEXT, AMINA_NOTE, "Loubna", "Idriss", "Samira",
        STACK_SECRETS["telegram_token"], STACK_SECRETS["telegram_token"].split(":")[1],
        "page-token", STACK_SECRETS["twilio_auth_token"],
    ]
    leaks = [(secret, line) for line in logs.lines for secret in secrets if secret in line]
    assert leaks == []
    # Not only cut short: send jobs' arguments (address, text) never reach the log at all.
    assert any("send_message(" in line for line in logs.lines), "arq's job lines were captured"
    assert not any("'channel'" in line or "idempotency_key" in line for line in logs.lines)
    # The pseudonym is keyed: a plain sha256 of the address (enumerable) is not what the logs say.
    assert not any(hashlib.sha256(YOUSSEF.encode()).hexdigest()[:12] in line for line in logs.lines)


# -- pseudonyms, settings ------------------------------------------------------------------------


def test_the_log_pseudonym_is_keyed():
    pseudonym.configure("one key of enough length")
    first = pseudonym.address_hash(AMINA)
    pseudonym.configure("another key of enough length")
    assert pseudonym.address_hash(AMINA) != first
    assert first != hashlib.sha256(AMINA.encode()).hexdigest()[: len(first)]
    pseudonym.configure(PSEUDONYM_KEY)


def test_production_refuses_a_placeholder_pseudonym_key():
    strong = {name: "x" * 32 for name in ("twilio_auth_token", "telegram_secret_token", "messenger_app_secret", "messenger_verify_token", "messenger_page_token", "webchat_secret", "operator_api_token")}
    for weak in ("dev", "changeme", "short"):
        with pytest.raises(ValueError, match="JISR_LOG_PSEUDONYM_KEY"):
            Settings(env="production", log_pseudonym_key=weak, **strong).check_secrets()
    Settings(env="production", log_pseudonym_key="k" * 32, **strong).check_secrets()
    with pytest.raises(ValueError):
        Settings(retention_days=0)


# -- retention -----------------------------------------------------------------------------------


def test_retention_purge_empties_old_content_and_keeps_the_counts(tmp_path):
    from jisr.mediation.store import HandoffStore

    engine = create_db_engine(f"sqlite:///{tmp_path / 'jisr.db'}")
    store = ContactStore(engine)
    handle = connect_redis(None, name="retention", directory=tmp_path)
    old = dt.datetime.now(UTC) - dt.timedelta(days=200)
    try:
        contact = store.get_or_create("telegram:5550001", "telegram")
        kept = store.log_inbound(contact.id, "telegram", "u-new", "une question d'hier", [])
        gone = store.log_inbound(contact.id, "telegram", "u-old", "une vieille question sur Nadia", [{"kind": "image", "url": "https://x/1"}], intent="ask_enrolment", language="fr")
        reply = store.log_outbound(contact.id, "telegram", "une vieille réponse", "reply:old:0")
        handoff = HandoffStore(engine).open(contact.id, "telegram", "request", 3, "FR", "fr", "parent").handoff
        note = HandoffStore(engine).add_note(handoff.id, None, "appeler la maman de Nadia", now=old)  # type: ignore[arg-type]
        with engine.begin() as conn:
            conn.execute(schema.messages.update().where(schema.messages.c.id.in_([gone, reply])).values(created_at=old))
        redis = ConversationRedis.from_handle(handle)

        async def run() -> Any:
            await redis.trackers.set("jisr:tracker:telegram:5550001", json.dumps({"events": [{"event": "user", "text": "Nadia", "timestamp": old.timestamp()}]}))
            await redis.trackers.set("jisr:tracker:telegram:5550002", json.dumps({"events": [{"event": "user", "text": "hier", "timestamp": time.time()}]}))
            dry = await purge(engine, redis, 180, dry_run=True)
            real = await purge(engine, redis, 180)
            again = await purge(engine, redis, 180)
            left = sorted(k.decode() for k in await redis.trackers.keys("jisr:tracker:*"))
            await redis.close()
            return dry, real, again, left

        dry, real, again, left = asyncio.run(run())
        assert (dry.messages, dry.notes, dry.trackers) == (2, 1, 1)
        assert (real.messages, real.notes, real.trackers) == (2, 1, 1)
        assert (again.messages, again.notes, again.trackers) == (0, 0, 0), "a second run (another gateway) finds nothing"
        assert left == ["jisr:tracker:telegram:5550002"]
        rows = {m["id"]: m for m in store.transcript(contact.id)}
        assert len(rows) == 3, "the rows stay: the indicators count them"
        assert rows[gone]["text"] is None and rows[gone]["media"] is None
        assert (rows[gone]["intent"], rows[gone]["language"], rows[gone]["status"]) == ("ask_enrolment", "fr", "received")
        assert rows[reply]["text"] is None and rows[kept]["text"] == "une question d'hier"
        assert [n.text for n in HandoffStore(engine).notes(handoff.id)] == [""] and note
    finally:
        handle.close()
        engine.dispose()


# -- the CLI ------------------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str, stdin: Optional[str] = None, redis_url: Optional[str] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JISR_REDIS_URL")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}", JISR_LOG_PSEUDONYM_KEY=PSEUDONYM_KEY)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return subprocess.run([sys.executable, "-m", "jisr.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, input=stdin, timeout=120)


def test_cli_exports_one_contact_and_forgets_it(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    store = ContactStore(engine)
    contact = store.get_or_create("whatsapp:+34611223344", "whatsapp")
    store.log_inbound(contact.id, "whatsapp", "SM1", "hola, mi hijo Nabil empieza la ESO", [])
    store.record_consent(contact.id, "opted_in", "conversation")
    engine.dispose()

    # Without an id: the CSV of every contact, as before.
    listing = _cli(tmp_path, "contacts", "export")
    assert listing.returncode == 0 and listing.stdout.splitlines()[0].startswith("channel,address")
    for reference in (str(contact.id), "whatsapp:+34611223344"):
        one = _cli(tmp_path, "contacts", "export", reference)
        assert one.returncode == 0, one.stderr
        data = json.loads(one.stdout)
        assert data["contact"]["id"] == contact.id and data["messages"][0]["text"] == "hola, mi hijo Nabil empieza la ESO"
        assert data["conversation_state"] is None and "REDIS_URL" in data["conversation_state_note"]
    assert json.loads(_cli(tmp_path, "contacts", "export", "--id", str(contact.id)).stdout)["contact"]["id"] == contact.id
    unknown = _cli(tmp_path, "contacts", "export", "whatsapp:+34600000000")
    assert unknown.returncode == 2 and "+34600000000" not in unknown.stderr

    # Forget: Redis is where the conversation lives, so without REDIS_URL it needs --sql-only,
    # and it asks before erasing (no terminal, no --yes: refused).
    assert _cli(tmp_path, "contacts", "forget", str(contact.id)).returncode == 2
    refused = _cli(tmp_path, "contacts", "forget", str(contact.id), "--sql-only", stdin="yes\n")
    assert refused.returncode == 1 and "nothing erased" in refused.stderr
    done = _cli(tmp_path, "contacts", "forget", "whatsapp:+34611223344", "--sql-only", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"]["messages"] == 1
    engine = create_db_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    assert _sql_traces(engine, ["+34611223344", "Nabil"]) == []
    engine.dispose()

    purged = _cli(tmp_path, "privacy", "purge", "--dry-run")
    assert purged.returncode == 0 and "would empty 0 messages" in purged.stdout


def test_cli_with_a_shared_redis_exports_and_forgets_the_conversation_state_and_queued_replies(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    store = ContactStore(engine)
    contact = store.get_or_create("telegram:6029384756", "telegram")
    store.log_inbound(contact.id, "telegram", "900001", "salam, wldi Hamza f 3eme", [])
    store.log_outbound(contact.id, "telegram", "Hamza: voici les étapes", "reply:cli-test:0")
    engine.dispose()
    handle = connect_redis(None, name="cli-redis", directory=tmp_path)
    try:
        tracker = {"name": "telegram:6029384756", "events": [{"event": "user", "text": "salam, wldi Hamza f 3eme", "timestamp": time.time()}]}
        redis_sync.Redis(host=handle.host, port=handle.port, db=1).set("jisr:tracker:telegram:6029384756", json.dumps(tracker))
        job = SendJob(idempotency_key="reply:cli-test", channel="telegram", address="telegram:6029384756", parts=(("Hamza: voici les étapes", ()),), contact_id=contact.id)

        async def enqueue() -> bool:
            outbox = await Outbox.connect(handle.host, handle.port)
            try:
                return await outbox.enqueue(job, defer_seconds=600)
            finally:
                await outbox.close()

        assert asyncio.run(enqueue())
        exported = _cli(tmp_path, "contacts", "export", "telegram:6029384756", redis_url=handle.url)
        assert exported.returncode == 0, exported.stderr
        assert json.loads(exported.stdout)["conversation_state"]["events"][0]["text"] == "salam, wldi Hamza f 3eme"

        done = _cli(tmp_path, "contacts", "forget", str(contact.id), "--yes", "--json", redis_url=handle.url)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["redis_erased"] and report["jobs_removed"] == 1
        assert _redis_traces(handle, [b"6029384756", b"Hamza"]) == []
        engine = create_db_engine(f"sqlite:///{tmp_path / 'cli.db'}")
        assert _sql_traces(engine, ["6029384756", "Hamza"]) == []
        assert len(AuditLog(engine).list(action="contact.forget", target_id=contact.id)) == 1
        engine.dispose()
    finally:
        handle.close()


# -- PostgreSQL: the same erasure and purge statements -------------------------------------------


def test_forget_and_purge_on_postgresql():
    from jisr.mediation.store import HandoffStore
    from jisr.privacy.erasure import forget
    from jisr.privacy.export import export_contact
    from pg_server import new_database, postgres_server

    with postgres_server(timezone="America/St_Johns") as server_url:
        engine = create_db_engine(new_database(server_url, "privacy"))
        try:
            store = ContactStore(engine)
            old = dt.datetime.now(UTC) - dt.timedelta(days=200)
            leaving = store.get_or_create("messenger:4455667788", "messenger")
            staying = store.get_or_create("messenger:9988776655", "messenger")
            for contact, text in ((leaving, "Mein Sohn Malik braucht Nachhilfe"), (staying, "Meine Tochter Rania auch")):
                store.log_inbound(contact.id, "messenger", f"m-{contact.id}", text, [])
                store.log_outbound(contact.id, "messenger", "Antwort", f"reply:{contact.id}:0")
                store.record_consent(contact.id, "opted_in", "conversation")
                store.subscribe_topics(contact.id, ["tutoring"], "conversation")
                handoff = HandoffStore(engine).open(contact.id, "messenger", "request", 3, "DE", "de", "parent").handoff
                HandoffStore(engine).add_note(handoff.id, None, f"Notiz {text}", now=old)  # type: ignore[arg-type]
            with engine.begin() as conn:
                conn.execute(schema.messages.update().where(schema.messages.c.contact_id == staying.id).values(created_at=old))

            document = asyncio.run(export_contact(engine, None, leaving.id))
            assert document is not None and [m["text"] for m in document["messages"]] == ["Mein Sohn Malik braucht Nachhilfe", "Antwort"]
            report = asyncio.run(forget(engine, None, leaving.id))
            assert report is not None and not report.redis_erased and report.suppressed == 1
            assert report.rows["handoff_notes"] == 1 and report.rows["contact_topics"] == 1
            assert _rows_referring_to(engine, [leaving.id]) == [] and _sql_traces(engine, ["4455667788", "Malik"]) == []

            purged = asyncio.run(purge(engine, None, 180))
            assert (purged.messages, purged.notes, purged.trackers) == (2, 1, None)
            assert [m["text"] for m in store.transcript(staying.id)] == [None, None]
            assert _sql_traces(engine, ["Rania"]) == []
        finally:
            engine.dispose()


def test_access_log_lines_lose_their_query_strings():
    from jisr.privacy.logs import keep_personal_data_out_of_logs

    keep_personal_data_out_of_logs()
    access, keep = logging.getLogger("uvicorn.access"), _Keep()
    access.addHandler(keep)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        # As uvicorn writes it (protocols/http/h11_impl.py): the Messenger handshake, a console search.
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/webhooks/messenger?hub.mode=subscribe&hub.verify_token=s3cr3t-verify&hub.challenge=1", "1.1", 200)
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/api/operators/contacts?q=%2B33745190263", "1.1", 200)
    finally:
        access.removeHandler(keep)
        access.setLevel(level)
    assert keep.lines == [
        'INFO uvicorn.access: 127.0.0.1:5000 - "GET /webhooks/messenger?… HTTP/1.1" 200',
        'INFO uvicorn.access: 127.0.0.1:5000 - "GET /api/operators/contacts?… HTTP/1.1" 200',
    ]


def test_two_gateways_purge_once_a_day(tmp_path, caplog):
    """Each gateway process runs purge_daily; the day-long Redis lock lets one of them purge."""
    from jisr.privacy import retention

    engine = create_db_engine(f"sqlite:///{tmp_path / 'jisr.db'}")
    store = ContactStore(engine)
    handle = connect_redis(None, name="purge-lock", directory=tmp_path)
    contact = store.get_or_create("webchat:purge-test", "webchat")
    message = store.log_inbound(contact.id, "webchat", "p-1", "un vieux message sur Yanis", [])
    with engine.begin() as conn:
        conn.execute(schema.messages.update().where(schema.messages.c.id == message).values(created_at=dt.datetime.now(UTC) - dt.timedelta(days=400)))

    async def run() -> None:
        gateways = [ConversationRedis.from_handle(handle) for _ in range(2)]
        tasks = [asyncio.create_task(retention.purge_daily(engine, redis, 180, first_delay=0)) for redis in gateways]
        deadline = time.monotonic() + 20
        while store.transcript(contact.id)[0]["text"] is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the other process's try, had it not been refused by the lock
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert await gateways[0].jisr.ttl("jisr:privacy:purge-lock") > 23 * 3600
        for redis in gateways:
            await redis.close()

    try:
        with caplog.at_level(logging.INFO, logger="jisr.privacy.retention"):
            asyncio.run(run())
        assert store.transcript(contact.id)[0]["text"] is None
        assert len([r for r in caplog.records if r.getMessage().startswith("retention purge: ")]) == 1
    finally:
        handle.close()
        engine.dispose()
