"""The strategy's indicators (jisr/indicators.py) on a database seeded through the real stores,
on SQLite and on a throwaway PostgreSQL server (tests/pg_server.py), with exact counts.

The seed: families in FR, DZ, ES and DE writing in fr, ary/ar, es and de, replies and a
campaign with delivery receipts, unanswered questions (with phone numbers and an e-mail in
them), opt-outs on fixed days, and handoffs with known response times.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr import indicators
from jisr.indicators import Scope, csv_cell, parse_bound, redact
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import ContactStore, create_db_engine
from jisr.store.schema import contacts, handoffs, messages
from pg_server import new_database, postgres_server

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def pg_server_url() -> Iterator[str]:
    # Not UTC on purpose: the day buckets must be UTC days whatever the server's zone.
    with postgres_server(timezone="America/St_Johns") as url:
        yield url


_databases = itertools.count()


def _new_pg_database(server_url: str) -> str:
    return new_database(server_url, f"indicators_{next(_databases)}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, dict[str, int]]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('indicators') / 'jisr.db'}"
    else:
        url = _new_pg_database(request.getfixturevalue("pg_server_url"))
    engine = create_db_engine(url)
    try:
        yield engine, seed(engine)
    finally:
        engine.dispose()


def _contact(store: ContactStore, address: str, **profile: str) -> int:
    contact = store.get_or_create(address, address.split(":", 1)[0])
    store.update_profile(contact.id, **profile)
    return contact.id


def _reply(store: ContactStore, contact_id: int, channel: str, receipt: str | None, campaign_send_id: int | None = None) -> str:
    """An outbound message logged, accepted by the provider, then moved by a receipt."""
    n = next(_ids)
    key = f"reply-{n}"
    provider_id = f"prov-{n}"
    store.log_outbound(contact_id, channel, "Bonjour", key)
    store.mark_sent(key, provider_id, 1, campaign_send_id)
    if receipt:
        assert store.apply_status(provider_id, receipt)
    return provider_id


def _ask(store: ContactStore, contact_id: int, channel: str, text: str, intent: str | None, language: str | None) -> None:
    store.log_inbound(contact_id, channel, f"in-{next(_ids)}", text, [], intent=intent, language=language)


def seed(engine: Engine) -> dict[str, int]:
    store = ContactStore(engine)
    c: dict[str, int] = {}
    c["fr_parent"] = _contact(store, "whatsapp:+33600000001", country="FR", role="parent", language="fr")
    c["fr_parent_tg"] = _contact(store, "telegram:5000001", country="FR", role="parent", language="fr")  # same family
    store.link([c["fr_parent"], c["fr_parent_tg"]])
    c["fr_student"] = _contact(store, "telegram:5000002", country="FR", role="student", language="fr")
    c["dz_parent"] = _contact(store, "whatsapp:+213550000001", country="DZ", role="parent", language="ar")
    c["dz_student"] = _contact(store, "messenger:7000001", country="DZ", role="student", language="ar")
    c["es_parent"] = _contact(store, "messenger:7000002", country="ES", role="parent", language="es")
    c["de_unknown_role"] = _contact(store, "whatsapp:+4915100000001", country="DE", language="de")
    c["nowhere"] = _contact(store, "webchat:abc")

    # Replies: delivered or read reach; sent-only and failed do not.
    _reply(store, c["fr_parent"], "whatsapp", "read")
    _reply(store, c["fr_parent_tg"], "telegram", "delivered")           # same family: reached once
    _reply(store, c["fr_student"], "telegram", "delivered")
    _reply(store, c["dz_parent"], "whatsapp", "read")
    _reply(store, c["dz_student"], "messenger", None)                   # sent, no receipt
    _reply(store, c["es_parent"], "messenger", "failed")
    _reply(store, c["de_unknown_role"], "whatsapp", "delivered")

    # A campaign run: five sends, receipts applied to messages and sends alike.
    campaigns = CampaignStore(engine)
    run_id, _ = campaigns.get_or_create_run("exam_period_parents", "exam:bac@FR@2026-27", "hash")
    now = dt.datetime.now(UTC)
    audience = [c["fr_parent"], c["fr_student"], c["dz_parent"], c["es_parent"], c["de_unknown_role"]]
    campaigns.insert_sends(
        [
            {
                "run_id": run_id, "contact_id": cid, "idempotency_key": f"send-{run_id}-{cid}", "language": "fr",
                "channel": "whatsapp", "form": "text" if cid != c["de_unknown_role"] else None, "scheduled_at": now, "local_time": "",
                "status": "planned" if cid != c["de_unknown_role"] else "skipped", "reason": None if cid != c["de_unknown_role"] else "no_consent",
                "created_at": now, "updated_at": now,
            }
            for cid in audience
        ]
    )
    sends = {s["contact_id"]: s["id"] for s in campaigns.sends(run_id)}
    _reply(store, c["fr_parent"], "whatsapp", "read", sends[c["fr_parent"]])
    _reply(store, c["fr_student"], "whatsapp", "delivered", sends[c["fr_student"]])
    _reply(store, c["dz_parent"], "whatsapp", "delivered", sends[c["dz_parent"]])
    _reply(store, c["es_parent"], "whatsapp", "undelivered", sends[c["es_parent"]])
    c["run"] = run_id

    # Questions, in several language forms; fallbacks and out-of-scope are unanswered.
    _ask(store, c["fr_parent"], "whatsapp", "comment inscrire mon fils au collège ?", "ask_enrollment", "fr")
    _ask(store, c["fr_student"], "telegram", "inscription au lycée", "ask_enrollment", "fr")
    _ask(store, c["dz_parent"], "whatsapp", "kifach nsajel wldi f lycée", "ask_enrollment", "ary")
    _ask(store, c["dz_student"], "messenger", "متى امتحانات الباكالوريا؟", "ask_exam_calendar", "ar")
    _ask(store, c["es_parent"], "messenger", "¿cuándo son los exámenes?", "ask_exam_calendar", "es")
    _ask(store, c["de_unknown_role"], "whatsapp", "", None, None)  # a voice note: no text, no intent
    # Unanswered: the same question from two families, with different phone numbers in it…
    _ask(store, c["fr_parent"], "whatsapp", "Mon numéro 06 12 34 56 78, aide pour la cantine ?", "nlu_fallback", "fr")
    _ask(store, c["fr_student"], "telegram", "mon numéro +33 7 98 76 54 32, aide pour la cantine", "nlu_fallback", "fr")
    # …twice from one family on two linked channels: one family only, not shown…
    _ask(store, c["fr_parent"], "whatsapp", "Karim a un souci avec son prof", "nlu_fallback", "fr")
    _ask(store, c["fr_parent_tg"], "telegram", "karim a un souci avec son prof", "nlu_fallback", "fr")
    # …an Arabic one from two countries, and a formula an attacker typed from two accounts.
    _ask(store, c["dz_parent"], "whatsapp", "كيف أسجل في النقل المدرسي؟", "out_of_scope", "ar")
    _ask(store, c["es_parent"], "messenger", "كيف أسجل في النقل المدرسي", "out_of_scope", "ar")
    _ask(store, c["de_unknown_role"], "whatsapp", "=HYPERLINK(\"http://evil\") mail a@b.de", "nlu_fallback", "de")
    _ask(store, c["es_parent"], "messenger", "=hyperlink(\"http://evil\") mail x@y.es", "nlu_fallback", "de")

    # Opt-outs on fixed days (the history keeps them even after an opt-in again).
    store.record_consent(c["fr_student"], "opted_out", "conversation", channel="telegram", at=dt.datetime(2026, 10, 1, 23, 30, tzinfo=UTC))
    store.record_consent(c["fr_student"], "opted_in", "conversation", channel="telegram", at=dt.datetime(2026, 10, 2, 8, 0, tzinfo=UTC))
    store.record_consent(c["dz_parent"], "opted_out", "platform", "blocked", channel="whatsapp", at=dt.datetime(2026, 10, 2, 0, 30, tzinfo=UTC))
    store.record_consent(c["es_parent"], "opted_out", "conversation", channel="messenger", at=dt.datetime(2026, 10, 2, 12, 0, tzinfo=UTC))
    store.record_consent(c["fr_parent"], "opted_in", "conversation", at=dt.datetime(2026, 10, 3, 12, 0, tzinfo=UTC))

    # Handoffs (the mediation store writes these; the table is what the indicators read).
    def handoff(cid: int, country: str, reason: str, created: dt.datetime, answered_after: float | None) -> None:
        with engine.begin() as conn:
            conn.execute(
                handoffs.insert().values(
                    contact_id=cid, channel="whatsapp", status="resolved" if answered_after is not None else "waiting", reason=reason,
                    priority=1 if reason == "safety" else 3, country=country, language="fr", created_at=created,
                    first_response_at=created + dt.timedelta(minutes=answered_after) if answered_after is not None else None,
                )
            )

    handoff(c["fr_parent"], "FR", "request", T0, 10)
    handoff(c["fr_student"], "FR", "not_understood", T0, 30)
    handoff(c["fr_parent_tg"], "FR", "request", T0, 2)
    handoff(c["dz_parent"], "DZ", "safety", T0, 5)
    handoff(c["es_parent"], "ES", "request", T0, None)
    handoff(c["fr_parent"], "FR", "request", T0 + dt.timedelta(days=40), 1)   # outside October
    return c


def table(indicator: indicators.Indicator) -> list[dict[str, Any]]:
    return [dict(zip(indicator.columns, row)) for row in indicator.rows]


# -- each indicator -------------------------------------------------------------------------


def test_families_and_students_reached_per_country(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    result = table(indicators.reached(engine, Scope()))
    assert result == [
        # DE: delivered, role unknown. DZ: the parent (read); the student's message was only sent.
        {"country": "DE", "parents": 0, "students": 0, "role_unknown": 1, "total": 1},
        {"country": "DZ", "parents": 1, "students": 0, "role_unknown": 0, "total": 1},
        # FR: the parent's two linked channels are one family; ES: failed and undelivered only.
        {"country": "FR", "parents": 1, "students": 1, "role_unknown": 0, "total": 2},
    ]


def test_campaign_runs_with_sends_by_status(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, c = seeded
    [run] = table(indicators.campaigns(engine, Scope()))
    assert (run["run"], run["campaign"], run["state"], run["total"]) == (c["run"], "exam_period_parents", "planned", 5)
    assert {s: run[s] for s in indicators.SEND_STATUS_COLUMNS} == {
        "planned": 0, "queued": 0, "sent": 0, "delivered": 2, "read": 1, "failed": 1, "skipped": 1
    }
    [fr_only] = table(indicators.campaigns(engine, Scope(countries=("FR",))))
    assert (fr_only["total"], fr_only["delivered"], fr_only["read"], fr_only["failed"]) == (2, 1, 1, 0)
    assert table(indicators.campaigns(engine, Scope(countries=("IT",)))) == []


def test_messages_delivered_and_read(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    rows = {(r["country"], r["channel"]): r for r in table(indicators.delivery(engine, Scope()))}
    assert rows[("FR", "whatsapp")] == {"country": "FR", "channel": "whatsapp", "total": 3, "accepted": 3, "delivered": 3, "read": 2, "failed": 0}
    assert rows[("FR", "telegram")]["delivered"] == 2
    assert rows[("DZ", "messenger")] == {"country": "DZ", "channel": "messenger", "total": 1, "accepted": 1, "delivered": 0, "read": 0, "failed": 0}
    assert rows[("ES", "whatsapp")]["failed"] == 1 and rows[("ES", "messenger")]["failed"] == 1
    assert sum(r["total"] for r in rows.values()) == 11


def test_questions_by_topic_country_and_language(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    rows = {(r["topic"], r["country"], r["language"]): r["messages"] for r in table(indicators.questions(engine, Scope()))}
    assert rows[("ask_enrollment", "FR", "fr")] == 2
    assert rows[("ask_enrollment", "DZ", "ary")] == 1
    assert rows[("ask_exam_calendar", "DZ", "ar")] == 1
    assert rows[("ask_exam_calendar", "ES", "es")] == 1
    assert rows[("?", "DE", "?")] == 1
    assert rows[("nlu_fallback", "FR", "fr")] == 4
    assert rows[("out_of_scope", "DZ", "ar")] == 1 and rows[("out_of_scope", "ES", "ar")] == 1
    assert sum(rows.values()) == 14
    dz_only = table(indicators.questions(engine, Scope(countries=("DZ",))))
    assert {r["country"] for r in dz_only} == {"DZ"} and sum(r["messages"] for r in dz_only) == 3


def test_unanswered_questions_are_grouped_redacted_and_need_two_families(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    result = indicators.unanswered(engine, Scope())
    rows = table(result)
    assert [(r["question"], r["messages"], r["families"], r["languages"]) for r in rows] == [
        ("=hyperlink(\"[link] mail [email]", 2, 2, "de"),
        ("mon numéro [number], aide pour la cantine", 2, 2, "fr"),
        ("كيف أسجل في النقل المدرسي", 2, 2, "ar"),
    ]
    text = " ".join(r["question"] for r in rows)
    assert not any(ch.isdigit() for ch in text), text
    assert "@" not in text and "karim" not in text.lower()
    assert "2 other unanswered messages" in result.note   # Karim's, one family on two channels
    # Only FR: the cantine question (two FR families); the others involve one FR family at most.
    assert [r["question"] for r in table(indicators.unanswered(engine, Scope(countries=("FR",))))] == [
        "mon numéro [number], aide pour la cantine"
    ]


def test_handoffs_per_reason_and_response_times(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    october = Scope(since=dt.datetime(2026, 10, 1, tzinfo=UTC), until=dt.datetime(2026, 11, 1, tzinfo=UTC))
    assert indicators.handoffs_by_reason(engine, october).rows == [
        ["not_understood", "FR", 1], ["request", "ES", 1], ["request", "FR", 2], ["safety", "DZ", 1]
    ]
    times = {r["country"]: r for r in table(indicators.response_times(engine, october))}
    assert times["FR"] == {"country": "FR", "handoffs": 3, "answered": 3, "not_answered": 0, "median_minutes": 10.0, "p90_minutes": 30.0}
    assert times["DZ"]["median_minutes"] == 5.0
    assert times["ES"] == {"country": "ES", "handoffs": 1, "answered": 0, "not_answered": 1, "median_minutes": None, "p90_minutes": None}
    everything = {r["country"]: r for r in table(indicators.response_times(engine, Scope()))}
    assert everything["FR"]["handoffs"] == 4 and everything["FR"]["median_minutes"] == 6.0


def test_opt_outs_per_utc_day_channel_and_country(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    assert indicators.opt_outs(engine, Scope()).rows == [
        ["2026-10-01", "telegram", "FR", 1],
        ["2026-10-02", "messenger", "ES", 1],
        ["2026-10-02", "whatsapp", "DZ", 1],
    ]
    # The period: since inclusive, until exclusive; a date as `until` includes that day.
    scope = Scope(since=parse_bound("2026-10-02"), until=parse_bound("2026-10-02", end=True))
    assert [r[1] for r in indicators.opt_outs(engine, scope).rows] == ["messenger", "whatsapp"]
    assert indicators.opt_outs(engine, Scope(countries=("FR", "BE"))).rows == [["2026-10-01", "telegram", "FR", 1]]


def test_period_filter_on_messages(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    now = dt.datetime.now(UTC)
    future = Scope(since=now + dt.timedelta(hours=1))
    for name in ("reached", "delivery", "questions", "unanswered", "campaigns"):
        assert indicators.compute(engine, name, future).rows == [], name
    past = Scope(until=now - dt.timedelta(days=1))
    assert indicators.questions(engine, past).rows == []
    recent = Scope(since=now - dt.timedelta(days=1), until=now + dt.timedelta(days=1))
    assert sum(r[3] for r in indicators.questions(engine, recent).rows) == 14


def test_an_operator_scope_sees_only_its_countries(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    for indicator in indicators.compute_all(engine, Scope(countries=("fr",))):
        if "country" in indicator.columns:
            assert {r["country"] for r in table(indicator)} <= {"FR"}, indicator.name
    # A contact of no known country is seen only by those who see every country.
    assert ("?", "?") not in {(r["country"], r["language"]) for r in table(indicators.questions(engine, Scope(countries=("FR",))))}


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_export_escapes_and_guards_against_formulas(seeded: tuple[Engine, dict[str, int]]) -> None:
    engine, _ = seeded
    text = indicators.unanswered(engine, Scope()).to_csv()
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["question", "messages", "families", "languages"]
    questions = [row[0] for row in parsed[1:]]
    assert questions[0] == "'=hyperlink(\"[link] mail [email]"   # the quote and comma survive, the formula does not run
    assert all(not q.startswith(("=", "+", "-", "@")) for q in questions)
    assert "\r\n" in text
    for name in indicators.INDICATORS:
        rows = list(csv.reader(io.StringIO(indicators.compute(engine, name, Scope()).to_csv())))
        assert len({len(r) for r in rows}) == 1, name


@pytest.mark.parametrize(
    "value, cell",
    [
        ("=1+1", "'=1+1"),
        ("+33612345678", "'+33612345678"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=cmd", "'\t=cmd"),
        ("a=b", "a=b"),
        (-2, "-2"),
        (3.5, "3.5"),
        (None, ""),
        (dt.datetime(2026, 10, 1, 8, 0, tzinfo=UTC), "2026-10-01T08:00:00Z"),
    ],
)
def test_csv_cell(value: Any, cell: str) -> None:
    assert csv_cell(value) == cell


@pytest.mark.parametrize(
    "text, shown",
    [
        ("appelez le 06 12 34 56 78 svp", "appelez le [number] svp"),
        ("rqmi +212 6-61-23-45-67", "rqmi [number]"),
        ("écrivez à prenom.nom@exemple.fr", "écrivez à [email]"),
        ("voir https://exemple.org/x?y=1 ici", "voir [link] ici"),
        ("wldi f 3eme, 2 ans", "wldi f 3eme, 2 ans"),   # short numbers stay: they are school years, ages
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_parse_bound() -> None:
    assert parse_bound("2026-10-02") == dt.datetime(2026, 10, 2, tzinfo=UTC)
    assert parse_bound("2026-10-02", end=True) == dt.datetime(2026, 10, 3, tzinfo=UTC)
    assert parse_bound("2026-10-02T10:00+02:00") == dt.datetime(2026, 10, 2, 8, tzinfo=UTC)
    assert parse_bound("") is None
    for bad in ("yesterday", "2026-13-01", "1' OR 1=1 --", "9999-01-01", "x" * 100):
        with pytest.raises(ValueError):
            parse_bound(bad)


# -- end to end: the gateway logs what the indicators read ------------------------------------------


def test_a_question_the_assistant_did_not_understand_reaches_the_unanswered_indicator(stack: dict[str, Any]) -> None:
    """Two families write the same gibberish through the real gateway (Telegram simulator): the
    message log says nlu_fallback (not the classifier's guess), and the indicator shows it."""
    import json
    import time

    import httpx

    question = "zxqv plorb vrask ?"
    chats = (777101, 777102)
    for chat in chats:
        httpx.post(
            f"{stack['telegram']}/_sim/inbound",
            json={"webhook_url": f"{stack['gateway']}/webhooks/telegram", "secret_token": stack["telegram_secret"], "chat_id": chat, "text": question},
            timeout=30,
        )
    engine = create_db_engine(stack["database_url"])
    try:
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                logged = conn.execute(
                    sa.select(contacts.c.address, messages.c.intent)
                    .select_from(messages.join(contacts, contacts.c.id == messages.c.contact_id))
                    .where(contacts.c.address.in_([f"telegram:{chat}" for chat in chats]), messages.c.direction == "in")
                ).all()
            if len(logged) == 2 and all(row.intent for row in logged):
                break
            assert time.monotonic() < deadline, f"the gateway did not log both messages: {logged}"
            time.sleep(0.2)
        assert sorted(logged) == [(f"telegram:{chat}", "nlu_fallback") for chat in chats]
        rows = table(indicators.unanswered(engine, Scope()))
        [ours] = [r for r in rows if r["question"] == "zxqv plorb vrask"] or [json.dumps(rows, ensure_ascii=False)]
        assert (ours["messages"], ours["families"]) == (2, 2)
        # The running gateway serves the same figure to an operator, as CSV.
        from jisr.auth.store import AccountStore

        accounts = AccountStore(engine)
        operator = accounts.get_by_username("indicators_e2e") or accounts.create("indicators_e2e", "E2E", "operator", "correct horse battery staple", countries="*")
        token = accounts.create_token(operator.id, "e2e").token
        response = httpx.get(f"{stack['gateway']}/api/operators/indicators/unanswered.csv", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.status_code == 200, response.text
        assert "zxqv plorb vrask,2,2," in response.text
    finally:
        engine.dispose()


def test_the_period_filters_read_through_indexes(seeded: tuple[Engine, dict[str, int]]) -> None:
    """Migration step 8's indexes exist on both backends, and SQLite's plan for a week of
    questions uses the one on messages (no scan of the whole message log)."""
    engine, _ = seeded
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert "ix_messages_direction_created" in {i["name"] for i in inspector.get_indexes("messages")}
        assert "ix_consent_events_consent_at" in {i["name"] for i in inspector.get_indexes("consent_events")}
        assert "ix_handoffs_created" in {i["name"] for i in inspector.get_indexes("handoffs")}
        if engine.dialect.name == "sqlite":
            week = Scope(since=dt.datetime(2026, 10, 1, tzinfo=UTC), until=dt.datetime(2026, 10, 8, tzinfo=UTC))
            query = sa.select(messages.c.intent, sa.func.count()).where(messages.c.direction == "in", *week.period(messages.c.created_at)).group_by(messages.c.intent)
            compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
            assert "ix_messages_direction_created" in plan, plan
