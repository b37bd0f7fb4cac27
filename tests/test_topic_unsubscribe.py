"""Stopping one kind of reminder: "no more exam reminders" in any of the six language forms stops
the exam topic only, keeps the consent and the other topics, says so in the family's language,
and a campaign for exams then leaves the family out while one for orientation still reaches it;
a STOP naming no topic is still the global opt-out.

The conversation tests go through the real gateway code (jisr.gateway.service.Gateway) with the
real model, an embedded Redis and a SQLite file; the audience is read by the planner's preview.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from campaigns.definitions import load_campaign_text
from campaigns.planner import preview
from connectors.types import Channel, InboundMessage
from jisr.content import default_reply_book
from jisr.privacy.export import sql_export
from jisr.store import schema
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import ContactStore, create_db_engine
from jisr.store.csv_io import export_csv, import_csv
from jisr.store.migrations import MIGRATIONS, migrate
from jisr.topics import SUBSCRIPTION_TOPICS, stop_topics, topics_in, unsubscribed_topics

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
REPLIES = default_reply_book()
ALL_BUT_EXAMS = [t for t in sorted(SUBSCRIPTION_TOPICS) if t != "exams"]
_chat_ids = itertools.count(610_000_001)


# --- Reading a stop -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("je ne veux plus les rappels des examens", ("exams",)),                                       # fr
        ("arrêtez les rappels d'orientation et du soutien scolaire", ("orientation", "tutoring")),     # fr
        ("ya no quiero los recordatorios de los exámenes", ("exams",)),                                # es
        ("no más avisos de plazos ni de la selectividad", ("exams", "deadlines")),                     # es
        ("non voglio più i promemoria degli esami", ("exams",)),                                       # it
        ("basta promemoria sulle scadenze e sull'orientamento", ("deadlines", "orientation")),         # it
        ("bitte keine Prüfungserinnerungen mehr", ("exams",)),                                         # de
        ("keine Erinnerungen mehr zum Schulanfang und zur Nachhilfe", ("school_start", "tutoring")),   # de
        ("أوقفوا تذكيرات الامتحانات والتوجيه", ("exams", "orientation")),                              # ar (MSA)
        ("بغيت نوقف التذكير ديال الامتحانات", ("exams",)),                                             # ar (Darija)
        ("bghit nwa9ef tfakir dyal l'imtihanat", ("exams",)),                                          # ary
        ("7bes tfakir dyal dkhla o tawjih", ("school_start", "orientation")),                          # ary
    ],
)
def test_a_stop_names_its_topics_in_six_language_forms(text, expected):
    assert unsubscribed_topics(text) == expected


@pytest.mark.parametrize("text", ["stop", "STOP svp", "توقف", "صافي باركا", "safi baraka", "basta", "keine Nachrichten mehr", "ya no quiero mensajes"])
def test_a_stop_naming_no_topic_is_the_global_opt_out(text):
    assert unsubscribed_topics(text) == ()


@pytest.mark.parametrize(
    "text",
    ["annuler mon inscription", "cancelar mi inscripción", "annullate la mia iscrizione", "Anmeldung löschen", "إلغاء التسجيل", "lghi tasjil dyali"],
)
def test_cancelling_the_registration_stops_everything_not_only_deadline_reminders(text):
    # In a request for reminders these words name the deadlines topic; in a stop, the subscription.
    assert topics_in(text) == ("deadlines",)
    assert unsubscribed_topics(text) == ()


@pytest.mark.parametrize(
    "text",
    [
        "arrêtez tout, même les rappels des examens",                 # fr
        "no quiero nada más, quitad todos los avisos de exámenes",     # es
        "basta con tutto, anche gli esami",                            # it
        "keine Erinnerungen mehr, alles stoppen, auch Prüfungen",      # de
        "أوقفوا كل التذكيرات، الامتحانات والتوجيه",                     # ar
        "7bes kolchi, 7tta tfakir dyal l'imtihanat",                    # ary
    ],
)
def test_a_stop_of_everything_that_names_a_topic_is_still_the_global_opt_out(text):
    assert topics_in(text) and unsubscribed_topics(text) == ()


def test_what_a_stop_keeps():
    change = stop_topics(["orientation", "exams", "tutoring"], ["exams", "deadlines"])
    assert change.stopped == ("exams", "deadlines") and change.kept == ("orientation", "tutoring")
    assert stop_topics(SUBSCRIPTION_TOPICS, ["exams"]).kept == ("school_start", "deadlines", "orientation", "programmes", "tutoring")


# --- The store ------------------------------------------------------------------------------------


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Any]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'jisr.db'}")
    yield engine
    engine.dispose()


def _contact(engine: Any, address: str, consent: str, language: str = "fr") -> int:
    with engine.begin() as conn:
        return int(conn.execute(schema.contacts.insert().values(
            address=address, channel="telegram", language=language, country="FR", role="parent",
            consent=consent, created_at=NOW, timezone="Europe/Paris")).inserted_primary_key[0])


def test_the_migration_adds_the_stops_table_at_the_end(engine):
    assert MIGRATIONS[-1][2].__name__ == "_v11_contact_topic_stops_table" or any(s.__name__ == "_v11_contact_topic_stops_table" for _, _, s in MIGRATIONS)
    assert migrate(engine) == MIGRATIONS[-1][0]
    columns = {c["name"] for c in sa.inspect(engine).get_columns("contact_topic_stops")}
    assert columns == {"contact_id", "topic", "source", "channel", "at"}


def test_stopping_one_topic_keeps_the_others_and_the_consent(engine):
    contacts = ContactStore(engine)
    held = _contact(engine, "telegram:1", "opted_in")
    contacts.subscribe_topics(held, ("exams", "orientation", "tutoring"), "conversation")
    history = contacts.consent_history(held)
    change = contacts.stop_topics(held, ("exams",), "conversation", "telegram")
    assert (change.stopped, change.kept) == (("exams",), ("orientation", "tutoring"))
    assert contacts.topics_of(held) == ["orientation", "tutoring"]
    assert contacts.stopped_topics_of(held) == ["exams"]
    assert contacts.get(held).consent == "opted_in" and contacts.consent_history(held) == history


def test_a_subscribed_contact_that_never_chose_keeps_every_other_topic(engine):
    # No topic rows: it asked for "the reminders" (or subscribed before topics existed).
    contacts = ContactStore(engine)
    everything = _contact(engine, "telegram:2", "opted_in")
    assert contacts.reminder_topics(everything) == SUBSCRIPTION_TOPICS
    change = contacts.stop_topics(everything, ("exams",), "conversation", "whatsapp")
    assert contacts.topics_of(everything) == ALL_BUT_EXAMS == sorted(change.kept)
    # Stopping the last topics leaves none, and a later stop does not bring any back.
    contacts.stop_topics(everything, ALL_BUT_EXAMS, "conversation", "whatsapp")
    assert contacts.topics_of(everything) == [] and contacts.reminder_topics(everything) == ()
    again = contacts.stop_topics(everything, ("orientation",), "conversation", "whatsapp")
    assert again.kept == () and contacts.topics_of(everything) == []


def test_a_contact_that_is_not_subscribed_gets_no_topics_from_a_stop(engine):
    contacts = ContactStore(engine)
    unknown = _contact(engine, "telegram:3", "unknown")
    change = contacts.stop_topics(unknown, ("exams",), "conversation", "telegram")
    assert change.kept == () and contacts.topics_of(unknown) == [] and contacts.stopped_topics_of(unknown) == ["exams"]


def test_only_the_family_can_take_a_stopped_topic_back(engine, tmp_path):
    contacts = ContactStore(engine)
    family = _contact(engine, "telegram:4", "opted_in")
    contacts.subscribe_topics(family, ("exams", "orientation"), "conversation")
    contacts.stop_topics(family, ("exams",), "conversation", "telegram")
    path = tmp_path / "list.csv"
    path.write_text("channel,address,consent,topics\ntelegram,4,opted_in,exams;tutoring\n", encoding="utf-8")
    report = import_csv(contacts, path, "school newsletter form, 2026-09")
    assert report.rejected == 0
    assert contacts.topics_of(family) == ["orientation", "tutoring"]          # the list does not undo the family's stop
    assert contacts.subscribe_topics(family, ("exams",), "operator") == []
    assert contacts.subscribe_topics(family, ("exams",), "conversation") == ["exams"]  # the family asks again
    assert contacts.stopped_topics_of(family) == []


def test_exports_show_topics_and_stops(engine):
    contacts = ContactStore(engine)
    family = _contact(engine, "telegram:5", "opted_in", language="ar")
    contacts.stop_topics(family, ("exams",), "conversation", "telegram")
    out = io.StringIO()
    export_csv(contacts, out)
    header, row = out.getvalue().splitlines()
    assert header.endswith(",consent_changed_at,topics")
    assert row.endswith(",school_start;deadlines;orientation;programmes;tutoring")
    data = sql_export(engine, family)
    assert sorted(r["topic"] for r in data["contact_topics"]) == ALL_BUT_EXAMS
    assert [(r["topic"], r["source"], r["channel"]) for r in data["contact_topic_stops"]] == [("exams", "conversation", "telegram")]


# --- In a conversation, through the gateway and the real assistant --------------------------------

CAMPAIGN = """id: {id}
name: {id}
audience:
  channels: [telegram]
  topics: [{topic}]
trigger:
  at: "2026-08-10T12:00"
send_window: {{start: "09:00", end: "20:00"}}
weekly_cap: 2
fallback_language: fr
messages:
  fr: "Rappel."
  ar: "تذكير."
  es: "Recordatorio."
  it: "Promemoria."
  de: "Erinnerung."
"""


def _reached(engine: Any, topic: str) -> int:
    campaign = load_campaign_text(CAMPAIGN.format(id=f"{topic}-reminders", topic=topic), f"{topic}.yml")
    return preview(campaign, CampaignStore(engine), NOW).planned


def _say(gateway: Any, chat_id: int, text: str) -> list[str]:
    message = InboundMessage(Channel.TELEGRAM, f"telegram:{chat_id}", f"{chat_id}-{next(_chat_ids)}", text)
    outcome = gateway.loop.run_until_complete(gateway.handle_message(message))
    return [reply.text for reply in outcome.replies]


def _family(gateway: Any, consent: str) -> tuple[int, int]:
    """A family the planner can place in time (its zone): (chat id, contact id)."""
    chat_id = next(_chat_ids)
    with gateway.engine.begin() as conn:
        conn.execute(schema.contacts.insert().values(address=f"telegram:{chat_id}", channel="telegram", created_at=NOW, timezone="Europe/Paris", consent=consent))
    return chat_id, gateway.store.by_address(f"telegram:{chat_id}").id


# form, reply language, an opt-in naming no topic, a stop naming exams, a stop naming nothing
FORMS = [
    ("fr", "fr", "abonnez-moi aux rappels", "je ne veux plus les rappels des examens", "stop"),
    ("es", "es", "quiero suscribirme a los recordatorios", "ya no quiero los recordatorios de los exámenes", "stop"),
    ("it", "it", "voglio iscrivermi ai promemoria", "non voglio più i promemoria degli esami", "basta, disiscrivetemi"),
    ("de", "de", "ich möchte die Erinnerungen abonnieren", "bitte keine Prüfungserinnerungen mehr", "stop"),
    ("ar", "ar", "أريد الاشتراك في التذكيرات", "أوقفوا تذكيرات الامتحانات", "توقف"),
    ("ary", "ar", "bghit nwsl les rappels", "bghit nwa9ef tfakir dyal l'imtihanat", "safi baraka"),
]


@pytest.mark.parametrize("form, language, opt_in, stop_exams, stop_all", FORMS, ids=[f[0] for f in FORMS])
def test_stop_exam_reminders_in_a_conversation(gateway, form, language, opt_in, stop_exams, stop_all):
    chat_id, contact_id = _family(gateway, "unknown")
    contacts = gateway.store

    _say(gateway, chat_id, opt_in)
    assert contacts.get(contact_id).consent == "opted_in", form
    assert contacts.topics_of(contact_id) == sorted(SUBSCRIPTION_TOPICS)
    assert (_reached(gateway.engine, "exams"), _reached(gateway.engine, "orientation")) == (1, 1)

    replies = "\n".join(_say(gateway, chat_id, stop_exams))
    names = REPLIES.raw("topic_names", language)
    told = REPLIES.text(
        "opt_out_topics_confirm", language,
        stopped=f"• {names['exams']}", kept="\n".join(f"• {names[t]}" for t in SUBSCRIPTION_TOPICS if t != "exams"),
    )
    assert told in replies and "STOP" in told, replies
    assert REPLIES.text("opt_out_confirm", language).splitlines()[0] not in replies  # not the global confirmation
    assert contacts.get(contact_id).consent == "opted_in"
    assert contacts.topics_of(contact_id) == ALL_BUT_EXAMS
    assert (_reached(gateway.engine, "exams"), _reached(gateway.engine, "orientation")) == (0, 1)

    replies = "\n".join(_say(gateway, chat_id, stop_all))
    assert REPLIES.text("opt_out_confirm", language).splitlines()[0] in replies, replies
    assert contacts.get(contact_id).consent == "opted_out"
    assert (_reached(gateway.engine, "exams"), _reached(gateway.engine, "orientation")) == (0, 0)


def test_a_stop_of_topics_held_by_a_family_that_chose_them(gateway):
    """A family that asked for exams and orientation only and stops exams keeps orientation, and is told just that."""
    chat_id, contact_id = _family(gateway, "unknown")
    _say(gateway, chat_id, "Je veux les rappels des examens et de l'orientation")
    assert gateway.store.topics_of(contact_id) == ["exams", "orientation"]
    replies = "\n".join(_say(gateway, chat_id, "plus de rappels d'examens svp"))
    names = REPLIES.raw("topic_names", "fr")
    assert names["orientation"] in replies and names["tutoring"] not in replies, replies
    assert gateway.store.topics_of(contact_id) == ["orientation"]
    replies = "\n".join(_say(gateway, chat_id, "arrêtez aussi les rappels d'orientation"))
    assert REPLIES.text("opt_out_topics_confirm_none_left", "fr", stopped=f"• {names['orientation']}").splitlines()[2] in replies, replies
    assert gateway.store.topics_of(contact_id) == [] and gateway.store.get(contact_id).consent == "opted_in"


@pytest.mark.parametrize("language, text", [("es", "cancelar mi inscripción"), ("it", "annullate la mia iscrizione")])
def test_cancelling_the_registration_in_a_conversation_is_the_global_opt_out(gateway, language, text):
    chat_id, contact_id = _family(gateway, "opted_in")
    replies = "\n".join(_say(gateway, chat_id, text))
    assert REPLIES.text("opt_out_confirm", language).splitlines()[0] in replies, replies
    assert gateway.store.get(contact_id).consent == "opted_out" and gateway.store.stopped_topics_of(contact_id) == []


def test_a_family_that_opted_out_is_not_told_that_reminders_continue(gateway):
    chat_id, contact_id = _family(gateway, "opted_out")
    replies = "\n".join(_say(gateway, chat_id, "je ne veux plus les rappels des examens"))
    assert REPLIES.text("opt_out_confirm", "fr").splitlines()[0] in replies, replies
    assert gateway.store.get(contact_id).consent == "opted_out"
    assert gateway.store.stopped_topics_of(contact_id) == ["exams"] and gateway.store.topics_of(contact_id) == []
    # Asking for the reminders again brings them all back, exams included: the family said so.
    _say(gateway, chat_id, "abonnez-moi aux rappels")
    assert gateway.store.get(contact_id).consent == "opted_in" and gateway.store.topics_of(contact_id) == sorted(SUBSCRIPTION_TOPICS)
    assert gateway.store.stopped_topics_of(contact_id) == []


# --- While a mediator holds the conversation (the real gateway process: conftest `stack`) ----------


def _until(check: Any, timeout: float = 30.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


def test_a_held_conversation_stops_only_the_topic_named_and_a_stop_still_stops_all(stack):
    import httpx

    engine = create_db_engine(stack["database_url"])
    contacts = ContactStore(engine)
    chat_id = 630_000_000 + next(_chat_ids) % 1_000_000

    def telegram(text: str) -> None:
        spec = {"webhook_url": f"{stack['gateway']}/webhooks/telegram", "secret_token": stack["telegram_secret"], "chat_id": chat_id, "text": text}
        assert httpx.post(f"{stack['telegram']}/_sim/inbound", json=spec, timeout=60).status_code == 200

    try:
        with engine.begin() as conn:
            conn.execute(schema.contacts.insert().values(
                address=f"telegram:{chat_id}", channel="telegram", language="ar", country="FR", consent="opted_in",
                created_at=dt.datetime.now(UTC) - dt.timedelta(days=10)))
        contact_id = contacts.by_address(f"telegram:{chat_id}").id
        telegram("bghit nhder m3a chi wa7ed 3afak")  # a person, please: the conversation is handed over
        _until(lambda: _open_handoff(engine, contact_id))
        telegram("bghit nwa9ef tfakir dyal l'imtihanat")
        _until(lambda: contacts.stopped_topics_of(contact_id) == ["exams"])
        assert contacts.topics_of(contact_id) == ALL_BUT_EXAMS and contacts.get(contact_id).consent == "opted_in"
        telegram("stop")
        _until(lambda: contacts.get(contact_id).consent == "opted_out")
        assert _open_handoff(engine, contact_id), "the conversation stays with the mediator"
    finally:
        engine.dispose()


def _open_handoff(engine: Any, contact_id: int) -> bool:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(schema.handoffs).where(
                schema.handoffs.c.contact_id == contact_id, schema.handoffs.c.status.in_(("waiting", "assigned"))
            )
        ).scalar() > 0
