"""Subscription topics: a family subscribes (in a conversation, in any language form, or by an
imported list), and a campaign's audience.topics reaches the contacts holding one, and those who
never chose unless they stopped it (jisr.topics.reaches)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from campaigns.definitions import load_campaign
from campaigns.planner import plan, preview
from jisr.store import schema
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import ContactStore, create_db_engine
from jisr.store.csv_io import import_csv
from jisr.store.migrations import MIGRATIONS, migrate
from jisr.topics import SUBSCRIPTION_TOPICS, parse_topics, subscribed_topics, topics_in

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 8, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Je veux les rappels des examens et de l'orientation", ("exams", "orientation")),            # fr
        ("Quiero recordatorios de los exámenes y del refuerzo escolar", ("exams", "tutoring")),       # es
        ("Voglio i promemoria degli esami e delle scadenze", ("exams", "deadlines")),                  # it
        ("Ich möchte Erinnerungen an die Prüfungen und die Nachhilfe", ("exams", "tutoring")),         # de
        ("أريد تذكيرات الامتحانات والتوجيه", ("exams", "orientation")),                               # ar
        ("salam, bghit tfakir dyal l'imtihanat o tawjih", ("exams", "orientation")),                   # ary (Latin letters)
        ("بغيت التذكير ديال الدخول المدرسي", ("school_start",)),                                       # ary (Arabic script)
    ],
)
def test_the_topics_named_in_six_language_forms(text, expected):
    assert topics_in(text) == expected


@pytest.mark.parametrize("text", ["abonnez-moi", "اشترك", "suscríbeme", "iscrivimi", "abonnieren", "bghit n9ayed"])
def test_an_opt_in_naming_no_topic_subscribes_to_all(text):
    assert topics_in(text) == ()
    assert subscribed_topics(text) == SUBSCRIPTION_TOPICS


def test_import_field_names_known_topics_and_refuses_others():
    assert parse_topics("exams; orientation,exams") == (("exams", "orientation"), [])
    assert parse_topics("exams;holidays") == (("exams",), ["holidays"])


@pytest.fixture()
def engine(tmp_path: Path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'jisr.db'}")
    yield engine
    engine.dispose()


def test_the_migration_adds_the_table_at_the_end(engine):
    assert MIGRATIONS[-1][2].__name__ == "_v9_contact_topics_table" or any(step.__name__ == "_v9_contact_topics_table" for _, _, step in MIGRATIONS)
    assert migrate(engine) == MIGRATIONS[-1][0]
    assert "contact_topics" in sa.inspect(engine).get_table_names()


def test_an_imported_list_carries_topics_and_bad_ones_name_line_and_column(engine, tmp_path):
    path = tmp_path / "families.csv"
    path.write_text(
        "channel,address,language,country,consent,topics\n"
        "telegram,1001,ar,FR,opted_in,exams;orientation\n"
        "telegram,1002,es,ES,opted_in,\n"
        "telegram,1003,de,DE,opted_in,exams;holidays\n",
        encoding="utf-8",
    )
    contacts = ContactStore(engine)
    report = import_csv(contacts, path, "school newsletter form, 2026-09")
    assert (report.imported, report.rejected) == (2, 1)
    assert [(r.line, r.column) for r in report.rejections] == [(4, "topics")]
    assert "holidays" in report.rejections[0].problem
    first, second = contacts.by_address("telegram:1001"), contacts.by_address("telegram:1002")
    assert first is not None and second is not None
    assert contacts.topics_of(first.id) == ["exams", "orientation"]
    assert contacts.topics_of(second.id) == []
    # Importing again adds, never duplicates nor removes.
    path.write_text("channel,address,consent,topics\ntelegram,1001,opted_in,tutoring;exams\n", encoding="utf-8")
    import_csv(contacts, path, "school newsletter form, 2026-09")
    assert contacts.topics_of(first.id) == ["exams", "orientation", "tutoring"]


def test_audience_topics_reach_the_chosen_topics_and_who_never_chose_unless_stopped(engine, tmp_path):
    """jisr.topics.reaches: a contact that chose topics gets those; one that never chose gets
    every topic's reminders (it asked for "the reminders", or came from a list without topics)
    except the ones it stopped."""
    contacts = ContactStore(engine)
    store = CampaignStore(engine)
    ids = {}
    people = (("exams-ar", "ar", ("exams",)), ("all-fr", "fr", SUBSCRIPTION_TOPICS), ("orientation-es", "es", ("orientation",)),
              ("none-it", "it", ()), ("stopped-exams-de", "de", ()))
    for name, language, topics in people:
        with engine.begin() as conn:
            ids[name] = int(conn.execute(schema.contacts.insert().values(
                address=f"telegram:{len(ids) + 1}", channel="telegram", language=language, country="FR", role="parent",
                consent="opted_in", created_at=NOW, timezone="Europe/Paris")).inserted_primary_key[0])
        contacts.subscribe_topics(ids[name], topics, "conversation")
    contacts.stop_topics(ids["stopped-exams-de"], ("exams",), "conversation", "telegram")
    path = tmp_path / "exam-reminders.yml"
    path.write_text(
        """id: exam-reminders
name: Exam reminders
audience:
  countries: [FR]
  channels: [telegram]
  topics: [exams]
trigger:
  at: "2026-08-10T12:00"
send_window: {start: "09:00", end: "20:00"}
weekly_cap: 2
fallback_language: fr
messages:
  fr: "Rappel : les examens approchent."
  ar: "تذكير: الامتحانات تقترب."
  es: "Recordatorio: se acercan los exámenes."
  it: "Promemoria: gli esami si avvicinano."
  de: "Erinnerung: die Prüfungen nähern sich."
""",
        encoding="utf-8",
    )
    campaign = load_campaign(path)
    assert preview(campaign, store, NOW).planned == 3
    result = plan(campaign, store, NOW)
    assert result.planned == 3
    assert {row["contact_id"] for row in store.sends()} == {ids["exams-ar"], ids["all-fr"], ids["none-it"]}


@pytest.mark.parametrize("text", ["je veux les rappels des examens", "bghit tfakir dyal l'imtihanat", "quiero los recordatorios de los exámenes"])
def test_asking_for_one_topic_never_narrows_a_family_that_gets_every_reminder(engine, text):
    from jisr.consent import record_opt_in

    contacts = ContactStore(engine)
    ids = {}
    for name, consent in (("subscribed-without-topics", "opted_in"), ("new", "unknown")):
        with engine.begin() as conn:
            ids[name] = int(conn.execute(schema.contacts.insert().values(
                address=f"telegram:{len(ids) + 500}", channel="telegram", language="fr", country="FR", role="parent",
                consent=consent, created_at=NOW, timezone="Europe/Paris")).inserted_primary_key[0])
    assert record_opt_in(contacts, ids["subscribed-without-topics"], text, "telegram") == []
    assert contacts.reminder_topics(ids["subscribed-without-topics"]) == SUBSCRIPTION_TOPICS, "still every reminder"
    assert record_opt_in(contacts, ids["new"], text, "telegram") == ["exams"]
    assert contacts.reminder_topics(ids["new"]) == ("exams",), "a new subscriber gets what it asked for"


def test_a_family_that_stopped_the_only_topic_it_chose_gets_no_topic_campaign(engine):
    """Chose exam reminders only, then "no more exam reminders" (in Darija): no campaign about any
    topic reaches it, and the store's reminder_topics and the campaign rule say the same."""
    from jisr.topics import reaches

    contacts = ContactStore(engine)
    with engine.begin() as conn:
        contact_id = int(conn.execute(schema.contacts.insert().values(
            address="whatsapp:+212600000077", channel="whatsapp", language="ary", country="ES", consent="opted_in",
            created_at=NOW)).inserted_primary_key[0])
    contacts.subscribe_topics(contact_id, ("exams",), "conversation")
    contacts.stop_topics(contact_id, ("exams",), "conversation", "whatsapp")
    held, stopped = contacts.topics_of(contact_id), contacts.stopped_topics_of(contact_id)
    assert (held, stopped) == ([], ["exams"])
    assert contacts.reminder_topics(contact_id) == ()
    assert [t for t in SUBSCRIPTION_TOPICS if reaches((t,), held, stopped)] == []
    assert reaches((), held, stopped), "a general campaign (no topic) still reaches a consenting contact"

    # A family that never chose and stops one topic keeps every other one, by either rule.
    with engine.begin() as conn:
        other = int(conn.execute(schema.contacts.insert().values(
            address="telegram:7777", channel="telegram", language="it", country="IT", consent="opted_in",
            created_at=NOW)).inserted_primary_key[0])
    contacts.stop_topics(other, ("exams",), "conversation", "telegram")
    expected = tuple(t for t in SUBSCRIPTION_TOPICS if t != "exams")
    assert contacts.reminder_topics(other) == expected
    assert tuple(t for t in SUBSCRIPTION_TOPICS if reaches((t,), contacts.topics_of(other), contacts.stopped_topics_of(other))) == expected
