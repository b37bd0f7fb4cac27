"""Operators see which reminder topics a family receives: the `topics` section of
GET /api/operators/contacts/{id} and its texts in the operators' console.

The families are made the way they are in production: imported lists (consent, no topics
column: "every topic") and the conversation's own opt-in and opt-out (jisr.consent, the
functions the assistant's actions call), in several languages. What the API says a family
receives is checked against what the campaign planner actually plans: one campaign per topic,
each planned for real, must reach exactly the families the API lists for that topic.

On SQLite and PostgreSQL, with real accounts (API tokens, a console session) and an embedded
Redis. The contact detail drawn in a browser is in tests/test_operators_console_browser.py.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from campaigns.definitions import load_campaign_text
from campaigns.planner import plan
from jisr.auth.store import AccountStore
from jisr.console import catalog
from jisr.console import operators as operators_console
from jisr.console.routes import install as install_consoles
from jisr.consent import record_opt_in, record_opt_out
from jisr.gateway import auth_routes, operators_api
from jisr.redisconn import connect_redis
from jisr.settings import Settings
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import ContactStore, ImportedContact, create_db_engine
from jisr.store.schema import audit_log, campaign_runs, campaign_sends
from jisr.topics import SUBSCRIPTION_TOPICS
from pg_server import new_database, postgres_server

PASSWORD = "reminder topics for operators 2026"
UTC = dt.timezone.utc
NOW = dt.datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
ISO_SECOND = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ALL_BUT_EXAMS = [t for t in SUBSCRIPTION_TOPICS if t != "exams"]


@pytest.fixture(scope="module")
def pg_server_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def _families(store: ContactStore) -> dict[str, int]:
    """One family per case, in France, placed in time (a zone) so the planner can plan them."""
    cases = {
        "never_chose": "opted_in",      # an imported list with consent and no topics column
        "chose_two": None,              # asked in a conversation for two topics (Arabic)
        "stopped_one": "opted_in",      # every topic, then "no more exam reminders" (German)
        "opted_out": None,              # chose exams (French), then STOP
        "unknown": None,                # on a list without consent: nobody asked
        "stopped_all": "opted_in",      # named every topic in a stop (Spanish)
    }
    rows = [
        ImportedContact(line=n, address=f"telegram:77000{n}", channel="telegram", consent=consent, language="fr",
                        country="FR", role="parent", timezone="Europe/Paris")
        for n, consent in enumerate(cases.values(), start=2)
    ]
    store.import_contacts(rows, "paper forms at the consulate, 2026-06")
    ids = {case: store.by_address(row.address).id for case, row in zip(cases, rows)}
    assert record_opt_in(store, ids["chose_two"], "أريد تذكيرات الامتحانات والتوجيه", "telegram") == ["exams", "orientation"]
    assert record_opt_out(store, ids["stopped_one"], "bitte keine Prüfungserinnerungen mehr", "telegram").stopped == ("exams",)
    assert record_opt_in(store, ids["opted_out"], "je veux les rappels des examens", "telegram") == ["exams"]
    assert record_opt_out(store, ids["opted_out"], "stop", "telegram") is None
    everything = "ya no quiero los recordatorios de la vuelta al cole, exámenes, plazos, orientación, programas ni refuerzo escolar"
    assert record_opt_out(store, ids["stopped_all"], everything, "telegram").stopped == SUBSCRIPTION_TOPICS
    return ids


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    tmp: Path = tmp_path_factory.mktemp("operators-topics")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'jisr.db'}"
    else:
        server = request.getfixturevalue("pg_server_url")
        url = new_database(server, "operators_topics")
    redis = connect_redis(None, directory=tmp)
    engine = create_db_engine(url)
    store = ContactStore(engine)
    app = FastAPI()
    app.include_router(auth_routes.router)
    app.include_router(operators_api.router)
    install_consoles(app)
    app.include_router(operators_console.router)
    app.state.services = SimpleNamespace(settings=Settings(database_url=url, var_dir=tmp, operator_api_token=None), redis=redis, store=store, gateway=None)
    accounts = AccountStore(engine)
    operator = accounts.create("fr_operator", "Opératrice France", "operator", PASSWORD, countries="FR")
    token = accounts.create_token(operator.id, "tests").token
    ids = _families(store)
    try:
        with TestClient(app) as client:

            def signed_in() -> TestClient:
                browser = TestClient(app)
                browser.portal = client.portal  # one event loop for the app's Redis client
                assert browser.post("/api/auth/login", json={"username": "fr_operator", "password": PASSWORD}).status_code == 200
                return browser

            yield SimpleNamespace(client=client, token=token, ids=ids, engine=engine, store=store, operator=operator, signed_in=signed_in)
    finally:
        engine.dispose()
        redis.close()


def topics_of(env: SimpleNamespace, case: str) -> dict[str, Any]:
    response = env.client.get(f"/api/operators/contacts/{env.ids[case]}", headers={"Authorization": f"Bearer {env.token}"})
    assert response.status_code == 200, response.text
    return response.json()["topics"]


# --- The API ----------------------------------------------------------------------------------


def test_a_family_that_never_chose_receives_every_topic(env: SimpleNamespace) -> None:
    assert topics_of(env, "never_chose") == {
        "receives": list(SUBSCRIPTION_TOPICS), "mode": "all_by_default", "none_because": None, "chosen": [], "stopped": [],
    }


def test_a_family_that_chose_two_topics_receives_those_with_when_and_how(env: SimpleNamespace) -> None:
    topics = topics_of(env, "chose_two")
    assert topics["receives"] == ["exams", "orientation"]        # SUBSCRIPTION_TOPICS order
    assert topics["mode"] == "chosen" and topics["none_because"] is None and topics["stopped"] == []
    assert [(c["topic"], c["source"]) for c in topics["chosen"]] == [("exams", "conversation"), ("orientation", "conversation")]
    for chosen in topics["chosen"]:
        assert ISO_SECOND.match(chosen["at"]), chosen
        assert abs(dt.datetime.fromisoformat(chosen["at"][:-1]).replace(tzinfo=UTC) - dt.datetime.now(UTC)) < dt.timedelta(hours=1)


def test_a_family_that_stopped_exams_receives_the_others_and_the_stop_is_shown(env: SimpleNamespace) -> None:
    topics = topics_of(env, "stopped_one")
    assert topics["receives"] == ALL_BUT_EXAMS
    [stop] = topics["stopped"]
    assert (stop["topic"], stop["source"], stop["channel"]) == ("exams", "conversation", "telegram")
    assert ISO_SECOND.match(stop["at"])
    # Stopping one topic of "every topic" records the others as held (ContactStore.stop_topics),
    # at the time of the stop: from then on the family holds them.
    assert topics["mode"] == "chosen"
    assert [c["topic"] for c in topics["chosen"]] == ALL_BUT_EXAMS and {c["at"] for c in topics["chosen"]} == {stop["at"]}


def test_an_opted_out_family_receives_nothing_and_its_choice_stays_visible(env: SimpleNamespace) -> None:
    topics = topics_of(env, "opted_out")
    assert topics["receives"] == [] and topics["none_because"] == "opted_out"
    assert [(c["topic"], c["source"]) for c in topics["chosen"]] == [("exams", "conversation")]


def test_a_family_that_never_consented_receives_nothing(env: SimpleNamespace) -> None:
    topics = topics_of(env, "unknown")
    assert topics == {"receives": [], "mode": "all_by_default", "none_because": "consent_unknown", "chosen": [], "stopped": []}


def test_a_family_that_stopped_every_topic_receives_nothing_and_stays_subscribed(env: SimpleNamespace) -> None:
    topics = topics_of(env, "stopped_all")
    assert topics["receives"] == [] and topics["none_because"] == "all_stopped" and topics["chosen"] == []
    assert [(s["topic"], s["channel"]) for s in topics["stopped"]] == [(t, "telegram") for t in SUBSCRIPTION_TOPICS]
    assert env.store.get(env.ids["stopped_all"]).consent == "opted_in"


def test_reading_the_topics_is_the_audit_logged_contact_read(env: SimpleNamespace) -> None:
    contact_id = env.ids["chose_two"]
    with env.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(audit_log.c.action == "contact.read", audit_log.c.target_id == str(contact_id))).scalar()
    topics_of(env, "chose_two")
    with env.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log).where(audit_log.c.action == "contact.read", audit_log.c.target_id == str(contact_id))).all()
    assert len(rows) == before + 1 and rows[-1].account_id == env.operator.id


CAMPAIGN = """id: {topic}-reminders
name: {topic} reminders
audience:
  countries: [FR]
  channels: [telegram]
  topics: [{topic}]
trigger:
  at: "{day}T12:00"
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


def test_what_the_api_says_a_family_receives_is_what_campaigns_plan(env: SimpleNamespace) -> None:
    """One campaign per topic, planned for real (a week apart: the weekly cap is not what is tested)."""
    said = {case: topics_of(env, case)["receives"] for case in env.ids}
    campaigns = CampaignStore(env.engine)
    for week, topic in enumerate(SUBSCRIPTION_TOPICS):
        day = (NOW + dt.timedelta(days=9 + 7 * week)).date().isoformat()
        plan(load_campaign_text(CAMPAIGN.format(topic=topic, day=day), f"{topic}.yml"), campaigns, NOW)
        with env.engine.connect() as conn:
            planned = set(
                conn.execute(
                    sa.select(campaign_sends.c.contact_id)
                    .select_from(campaign_sends.join(campaign_runs, campaign_runs.c.id == campaign_sends.c.run_id))
                    .where(campaign_runs.c.campaign_id == f"{topic}-reminders", campaign_sends.c.status == "planned")
                ).scalars()
            )
        assert planned == {env.ids[case] for case, receives in said.items() if topic in receives}, topic


# --- The console's texts ------------------------------------------------------------------------


def test_every_topic_and_every_reason_has_a_name_in_every_console_language(env: SimpleNamespace) -> None:
    reasons = {topics_of(env, case)["none_because"] for case in env.ids} - {None}
    assert reasons == {"opted_out", "consent_unknown", "all_stopped"}
    arabic = re.compile("[\u0600-\u06ff]")
    for language in catalog.languages():
        texts = catalog.texts(language)
        names = [texts[f"operators.topics.{topic}"] for topic in SUBSCRIPTION_TOPICS]
        assert len(set(names)) == len(names), f"{language}: two topics share a name"
        for reason in reasons:
            assert texts[f"operators.contacts.none_{reason}"].strip(), (language, reason)
        if language == "ar":
            assert all(arabic.search(name) for name in names + [texts["operators.contacts.receives"], texts["operators.contacts.all_by_default"]])


@pytest.mark.parametrize(
    "language, receives, by_default",
    [
        ("fr", "Reçoit : {topics}", "(tous les thèmes : n'a jamais choisi)"),
        ("de", "Erhält: {topics}", "(alle Themen: nie gewählt)"),
        ("ar", "يتلقى: {topics}", "(جميع المواضيع: لم يختر قط)"),
        ("es", "Recibe: {topics}", "(todos los temas: nunca eligió)"),
    ],
)
def test_the_contacts_page_carries_the_topic_texts_in_its_language(env: SimpleNamespace, language: str, receives: str, by_default: str) -> None:
    page = env.signed_in().get("/console/operators/contacts", params={"lang": language})
    assert page.status_code == 200, page.text
    assert re.search(r'<html lang="([^"]+)" dir="([^"]+)">', page.text).groups() == (language, "rtl" if language == "ar" else "ltr")
    block = re.search(r'<script type="application/json" id="jisr-texts">(.*?)</script>', page.text, flags=re.S)
    texts = json.loads(block.group(1))
    assert texts["operators.contacts.receives"] == receives and texts["operators.contacts.all_by_default"] == by_default
    assert [texts[f"operators.topics.{t}"] for t in SUBSCRIPTION_TOPICS] == [catalog.texts(language)[f"operators.topics.{t}"] for t in SUBSCRIPTION_TOPICS]
    assert html.escape(catalog.texts(language)["operators.nav.contacts"]) in page.text
