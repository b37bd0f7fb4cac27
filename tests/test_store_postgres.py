"""The contacts/message-log store on PostgreSQL (DATABASE_URL="postgresql://…"), beside SQLite.

Every test runs twice: on a fresh database of a throwaway PostgreSQL server (tests/pg_server.py,
one server for the module, one database per test) and on a fresh SQLite file, so the store is
shown to behave the same on both. The server's TimeZone is deliberately not UTC (Newfoundland,
UTC-03:30): a naive datetime would be read in it, and a timestamp shown in it, so a store that
mixed naive and aware datetimes would be caught. If the PostgreSQL binaries are missing the
tests fail (with the command that installs them); they are not skipped.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr.store import migrations, schema
from jisr.store.contacts import ContactStore, create_db_engine
from jisr.store.csv_io import export_csv, import_csv
from pg_server import new_database, postgres_server

PG_TIMEZONE = "America/St_Johns"
UTC = dt.timezone.utc
HEADER = "channel,address,language,country,region,role,child_level,timezone,consent"
BASIS = "paper form signed at the consulate of Oran, 2026-10-12"
GOOD = f"""{HEADER}
whatsapp,+33 6 12 34 56 78,fr,FR,,parent,primary,Europe/Paris,yes
telegram,123456789,ary,,ES-CT,student,lower_secondary,europe/madrid,non
messenger,2345678901234567,de,DE,DE-BY,parent,,,opted_in
whatsapp,whatsapp:+4915112345678,,,,,,,no
"""
TABLES = {"schema_version", "contacts", "messages", "consent_events", "campaign_runs", "campaign_sends", "accounts", "api_tokens", "audit_log", "handoffs", "handoff_notes", "suppressed_addresses", "contact_topics", "contact_topic_stops"}
INDEXES = {
    "contacts": {"ix_contacts_profile_id"},
    "messages": {"ix_messages_contact_id", "ix_messages_provider_message_id", "ix_messages_contact_created"},
    "consent_events": {"ix_consent_events_contact_at"},
    "campaign_sends": {"ix_campaign_sends_run_status", "ix_campaign_sends_contact_scheduled"},
    "handoffs": {"uq_handoffs_one_open_per_contact"},
}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server_url() -> Iterator[str]:
    with postgres_server(timezone=PG_TIMEZONE) as url:
        yield url


_database_numbers = itertools.count()


def new_pg_database(server_url: str) -> str:
    """A new empty database on the module's server; returns its URL."""
    return new_database(server_url, f"test_{next(_database_numbers)}")


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines made by a test, disposed after it (the server allows 50 connections)."""
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jisr.db'}"
    return new_pg_database(request.getfixturevalue("pg_server_url"))


@pytest.fixture
def other_url(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on the other backend (for round trips between them)."""
    if db_url.startswith("sqlite"):
        return new_pg_database(request.getfixturevalue("pg_server_url"))
    return f"sqlite:///{tmp_path / 'other.db'}"


@pytest.fixture
def store(db_url: str, engines: list[Engine]) -> ContactStore:
    engine = create_db_engine(db_url)
    engines.append(engine)
    return ContactStore(engine)


def write(tmp_path: Path, text: str, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rows(engine: Engine, table: sa.Table) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c[list(table.primary_key.columns.keys())[0]]))]


def assert_utc(value: dt.datetime) -> None:
    """Both backends give back aware datetimes in UTC (SQLite stores them naive, PostgreSQL in its zone)."""
    assert value.tzinfo is not None and value.utcoffset() == dt.timedelta(0), value


# -- migrations ------------------------------------------------------------------------------


def test_migrate_from_empty_then_again_is_a_no_op(db_url, engines):
    engine = sa.create_engine(db_url, future=True)
    engines.append(engine)
    assert migrations.current_version(engine) == 0
    last = len(migrations.MIGRATIONS)
    assert migrations.migrate(engine) == last
    assert migrations.migrate(engine) == last
    engines.append(create_db_engine(db_url))  # what every process does at start: a no-op too
    assert migrations.current_version(engine) == last

    assert [r["version"] for r in rows(engine, schema.schema_version)] == list(range(1, last + 1))
    for r in rows(engine, schema.schema_version):
        assert_utc(r["applied_at"])
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert set(inspector.get_table_names()) == TABLES
        for table, names in INDEXES.items():
            assert {i["name"] for i in inspector.get_indexes(table)} >= names
        for table in TABLES - {"schema_version"}:
            assert {c["name"] for c in inspector.get_columns(table)} == set(schema.metadata.tables[table].c.keys())
        created_at = {c["name"]: c["type"] for c in inspector.get_columns("contacts")}["created_at"]
        if engine.dialect.name == "postgresql":
            assert created_at.timezone  # TIMESTAMP WITH TIME ZONE


def test_a_version_1_database_is_migrated_without_losing_contacts(db_url, engines, monkeypatch):
    engine = sa.create_engine(db_url, future=True)
    engines.append(engine)
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        assert migrations.migrate(engine) == 1
    created = dt.datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    with engine.begin() as conn:
        # Step 1 builds from today's schema module; a real version-1 database had no timezone column.
        conn.execute(sa.text("ALTER TABLE contacts DROP COLUMN timezone"))
        conn.execute(schema.contacts.insert().values(address="telegram:7", channel="telegram", consent="opted_out", created_at=created))
    engine.dispose()

    store = ContactStore(create_db_engine(db_url))
    engines.append(store.engine)
    assert migrations.current_version(store.engine) == len(migrations.MIGRATIONS)
    old = store.by_address("telegram:7")
    assert (old.consent, old.timezone, old.created_at) == ("opted_out", None, created)
    with store.engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert {c["name"] for c in inspector.get_columns("contacts")} == set(schema.contacts.c.keys())
        assert {c["name"] for c in inspector.get_columns("consent_events")} == set(schema.consent_events.c.keys())
        assert {i["name"] for i in inspector.get_indexes("consent_events")} == {"ix_consent_events_contact_at", "ix_consent_events_consent_at"}  # step 8: opt-outs by time


# -- contacts ---------------------------------------------------------------------------------


def test_contacts_get_or_create_touch_profile_and_link(store):
    before = dt.datetime.now(UTC)
    first = store.get_or_create("whatsapp:+33612345678", "whatsapp")
    again = store.get_or_create("whatsapp:+33612345678", "whatsapp")
    assert first == again and first.id == store.by_address("whatsapp:+33612345678").id
    assert (first.consent, first.profile_id, first.last_inbound_at, first.timezone) == ("unknown", None, None, None)
    assert_utc(first.created_at)
    assert before - dt.timedelta(seconds=1) <= first.created_at <= dt.datetime.now(UTC)
    assert store.get(first.id) == first and store.get(first.id + 1000) is None and store.by_address("nobody") is None

    store.touch_inbound(first.id)
    assert before - dt.timedelta(seconds=1) <= store.get(first.id).last_inbound_at <= dt.datetime.now(UTC)

    store.update_profile(first.id, language="fr", country="FR", role="", unknown_field="x", school_level=None)
    contact = store.get(first.id)
    assert contact.profile() == {"language": "fr", "country": "FR"}
    store.update_profile(first.id, role="parent")
    assert store.get(first.id).profile() == {"language": "fr", "country": "FR", "role": "parent"}

    telegram = store.get_or_create("telegram:42", "telegram")
    messenger = store.get_or_create("messenger:77", "messenger")
    assert len({first.id, telegram.id, messenger.id}) == 3
    assert store.link([messenger.id, telegram.id]) == min(messenger.id, telegram.id)
    assert [store.get(i).profile_id for i in (first.id, telegram.id, messenger.id)] == [None, telegram.id, telegram.id]


def test_aware_datetimes_round_trip_as_the_same_instant_in_utc(store):
    contact = store.get_or_create("telegram:1", "telegram")
    paris = dt.timezone(dt.timedelta(hours=2))
    received = dt.datetime(2026, 6, 1, 9, 15, 30, 123456, tzinfo=paris)
    store.touch_inbound(contact.id, received)
    back = store.get(contact.id).last_inbound_at
    assert back == received and back.isoformat() == "2026-06-01T07:15:30.123456+00:00"

    # A naive datetime is UTC (as SQLite always stored it), whatever the server's time zone.
    store.touch_inbound(contact.id, dt.datetime(2026, 6, 1, 7, 0))
    assert store.get(contact.id).last_inbound_at.isoformat() == "2026-06-01T07:00:00+00:00"

    event_id = store.record_consent(contact.id, "opted_in", "conversation", at=received)
    (event,) = store.consent_history(contact.id)
    assert (event.id, event.at) == (event_id, received)
    assert_utc(event.at)


@pytest.mark.parametrize("creating", ["get_or_create", "receive_inbound"])
def test_a_contact_another_process_creates_first_is_used(store, db_url, engines, creating):
    # The other process inserts the address between our SELECT and our INSERT: our INSERT
    # fails, and PostgreSQL refuses every further statement of that transaction.
    other = sa.create_engine(db_url, future=True)
    engines.append(other)
    fired: list[int] = []

    def insert_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO CONTACTS") and not fired:
            fired.append(1)
            with other.begin() as other_conn:
                other_conn.execute(
                    schema.contacts.insert().values(address="telegram:race", channel="telegram", created_at=dt.datetime.now(UTC))
                )

    sa.event.listen(store.engine, "before_cursor_execute", insert_first)
    try:
        if creating == "get_or_create":
            contact = store.get_or_create("telegram:race", "telegram")
        else:
            contact, message_id = store.receive_inbound("telegram:race", "telegram", "7", "salam", [], dt.datetime.now(UTC))
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", insert_first)
    assert fired and contact.address == "telegram:race"
    assert [c["id"] for c in rows(store.engine, schema.contacts)] == [contact.id]
    if creating == "receive_inbound":
        assert [(m["id"], m["contact_id"], m["text"]) for m in rows(store.engine, schema.messages)] == [(message_id, contact.id, "salam")]


def test_receiving_a_message_creates_touches_and_logs_in_one_call(store):
    first_at = dt.datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
    contact, message_id = store.receive_inbound("whatsapp:+34600000001", "whatsapp", "SM1", "hola", [], first_at)
    assert contact.last_inbound_at is None  # the contact as it was before this message
    assert store.get(contact.id).last_inbound_at == first_at
    later = first_at + dt.timedelta(days=2)
    again, second_id = store.receive_inbound("whatsapp:+34600000001", "whatsapp", "SM2", "", [{"kind": "audio", "url": "u"}], later)
    assert again.id == contact.id and again.last_inbound_at == first_at and second_id > message_id
    logged = [(r["provider_message_id"], r["direction"], r["text"], r["status"], r["media"]) for r in rows(store.engine, schema.messages)]
    assert logged == [("SM1", "in", "hola", "received", None), ("SM2", "in", "", "received", '[{"kind": "audio", "url": "u"}]')]

    store.record_understanding(second_id, "ask_enrolment", "es", contact.id, {"language": "es", "country": "ES", "role": None})
    assert store.get(contact.id).profile() == {"language": "es", "country": "ES"}
    understood = {r["id"]: (r["intent"], r["language"]) for r in rows(store.engine, schema.messages)}
    assert understood[second_id] == ("ask_enrolment", "es") and understood[message_id] == (None, None)

    ids = store.log_outbound_many(contact.id, "whatsapp", [("uno", "r:SM2:0"), ("dos", "r:SM2:1")])
    assert ids == store.log_outbound_many(contact.id, "whatsapp", [("uno", "r:SM2:0"), ("dos", "r:SM2:1")])  # once per key
    out = [(r["text"], r["idempotency_key"], r["status"]) for r in rows(store.engine, schema.messages) if r["direction"] == "out"]
    assert out == [("uno", "r:SM2:0", "queued"), ("dos", "r:SM2:1", "queued")]


# -- the message log --------------------------------------------------------------------------


def test_message_log_idempotency_and_forward_only_statuses(store):
    contact = store.get_or_create("whatsapp:+33612345678", "whatsapp")
    media = [{"kind": "image", "url": "https://example.org/a.jpg", "provider_id": "m1", "mime_type": "image/jpeg"}]
    inbound = store.log_inbound(contact.id, "whatsapp", "SM-in-1", "Bonjour", media)
    store.set_understanding(inbound, "greet", "fr")

    key = "reply:abc:0"
    outbound = store.log_outbound(contact.id, "whatsapp", "Bonjour !", key)
    assert store.log_outbound(contact.id, "whatsapp", "Bonjour !", key) == outbound  # recorded once
    assert outbound != inbound and store.outbound_status(key) == "queued" and store.outbound_status("nope") is None

    store.mark_sent(key, "SM-out-1", attempts=2)
    assert store.outbound_status(key) == "sent"
    assert_utc(store.get(contact.id).last_outbound_at)

    assert store.apply_status("SM-out-1", "delivered") is True
    assert store.apply_status("SM-out-1", "sent") is True and store.outbound_status(key) == "delivered"  # late: ignored
    assert store.apply_status("SM-out-1", "read") is True and store.outbound_status(key) == "read"
    assert store.apply_status("SM-out-1", "delivered") is True and store.outbound_status(key) == "read"
    assert store.apply_status("SM-in-1", "read") is False  # an inbound message has no receipts
    assert store.apply_status("unknown", "read") is False

    failing = store.log_outbound(contact.id, "whatsapp", "encore", "reply:abc:1")
    store.mark_failed("reply:abc:1", "63016", attempts=3)
    assert store.apply_status("SM-out-2", "failed") is False

    transcript = store.transcript(contact.id)
    assert [(m["id"], m["direction"], m["status"]) for m in transcript] == [
        (inbound, "in", "received"), (outbound, "out", "read"), (failing, "out", "failed"),
    ]
    first, second, third = transcript
    assert (first["text"], first["intent"], first["language"], first["provider_message_id"]) == ("Bonjour", "greet", "fr", "SM-in-1")
    assert first["media"] and "a.jpg" in first["media"]
    assert (second["provider_message_id"], second["attempts"], second["idempotency_key"]) == ("SM-out-1", 2, key)
    assert (third["error_code"], third["attempts"]) == ("63016", 3)
    for message in transcript:
        assert_utc(message["created_at"])
        assert_utc(message["updated_at"])
        assert message["updated_at"] >= message["created_at"]
    assert [m["id"] for m in store.transcript(contact.id, limit=2)] == [inbound, outbound]


def test_a_text_with_a_nul_character_is_logged(store):
    # PostgreSQL text cannot hold U+0000 (SQLite can): a user can send one.
    contact = store.get_or_create("telegram:9", "telegram")
    store.log_inbound(contact.id, "telegram", "9:1", "a\x00b", [{"kind": "file", "url": "x\x00y"}])
    store.log_outbound(contact.id, "telegram", "c\x00d", "reply:nul:0")
    texts = [m["text"] for m in store.transcript(contact.id)]
    assert texts == ["ab", "cd"]


# -- consent and erasure ----------------------------------------------------------------------


def test_record_consent_and_its_history(store):
    contact = store.get_or_create("telegram:5", "telegram")
    t0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    store.record_consent(contact.id, "opted_in", "conversation", at=t0)
    store.record_consent(contact.id, "opted_out", "platform", "blocked the bot", at=t0 + dt.timedelta(days=1))
    # Given in another offset, but earlier than both: it sorts first.
    earlier = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    store.record_consent(contact.id, "opted_in", "operator", "phoned the family", channel="whatsapp", at=earlier)
    history = store.consent_history(contact.id)
    assert [(e.consent, e.source, e.basis, e.channel, e.at) for e in history] == [
        ("opted_in", "operator", "phoned the family", "whatsapp", earlier),
        ("opted_in", "conversation", None, "telegram", t0),
        ("opted_out", "platform", "blocked the bot", "telegram", t0 + dt.timedelta(days=1)),
    ]
    assert store.get(contact.id).consent == "opted_in"  # the last one recorded is the current one

    with pytest.raises(ValueError, match="needs its basis"):
        store.record_consent(contact.id, "opted_in", "import", "  ")
    with pytest.raises(ValueError):
        store.record_consent(contact.id, "maybe", "conversation")
    with pytest.raises(LookupError):
        store.record_consent(contact.id + 1000, "opted_out", "conversation")
    assert len(store.consent_history(contact.id)) == 3


def test_erasing_a_contact_erases_its_messages_and_consent_events(store):
    gone = store.get_or_create("whatsapp:+33600000001", "whatsapp")
    kept = store.get_or_create("whatsapp:+33600000002", "whatsapp")
    for contact in (gone, kept):
        store.log_inbound(contact.id, "whatsapp", f"in-{contact.id}", "salut", [])
        store.log_outbound(contact.id, "whatsapp", "bonjour", f"reply:{contact.id}")
        store.record_consent(contact.id, "opted_in", "conversation")
    with store.engine.begin() as conn:
        conn.execute(schema.contacts.delete().where(schema.contacts.c.id == gone.id))
    assert store.get(gone.id) is None and store.transcript(gone.id) == [] and store.consent_history(gone.id) == []
    assert len(store.transcript(kept.id)) == 2 and len(store.consent_history(kept.id)) == 1
    assert {m["contact_id"] for m in rows(store.engine, schema.messages)} == {kept.id}
    assert {e["contact_id"] for e in rows(store.engine, schema.consent_events)} == {kept.id}


# -- CSV import and export ----------------------------------------------------------------------


def test_csv_import_reimport_refusal_and_dry_run(store, tmp_path):
    dry = import_csv(store, write(tmp_path, GOOD), BASIS, dry_run=True)
    assert (dry.imported, dry.updated, dry.rejected) == (4, 0, 0) and rows(store.engine, schema.contacts) == []

    report = import_csv(store, write(tmp_path, GOOD), BASIS)
    assert (report.imported, report.updated, report.rejected, report.rejections) == (4, 0, 0, [])
    wa = store.by_address("whatsapp:+33612345678")
    assert (wa.language, wa.country, wa.role, wa.school_level, wa.timezone, wa.consent) == ("fr", "FR", "parent", "primary", "Europe/Paris", "opted_in")
    tg = store.by_address("telegram:123456789")
    assert (tg.language, tg.country, tg.region, tg.timezone, tg.consent) == ("ar", "ES", "ES-CT", "Europe/Madrid", "opted_out")

    changed = f"""{HEADER}
whatsapp,+33612345678,ar,,,,upper_secondary,,yes
telegram,123456789,,,,,,,oui
whatsapp,+4915112345678,,,,,,,unknown
"""
    again = import_csv(store, write(tmp_path, changed, "again.csv"), "second list")
    assert (again.imported, again.updated, again.rejected) == (0, 3, 0)
    wa = store.by_address("whatsapp:+33612345678")
    assert (wa.language, wa.country, wa.role, wa.school_level, wa.timezone) == ("ar", "FR", "parent", "upper_secondary", "Europe/Paris")
    assert [(e.consent, e.basis) for e in store.consent_history(tg.id)] == [("opted_out", BASIS), ("opted_in", "second list")]
    assert len(rows(store.engine, schema.consent_events)) == 5

    # An opt-out the person made stands against any list.
    store.record_consent(wa.id, "opted_out", "conversation")
    refused = import_csv(store, write(tmp_path, f"{HEADER}\nwhatsapp,+33612345678,,,,,,,yes\n", "third.csv"), "third list")
    assert refused.rejected == 1 and store.get(wa.id).consent == "opted_out"


def test_csv_import_in_batches_of_many_rows(store, tmp_path):
    # More rows than a batch (2,000) and than a lookup chunk (900); a repeated address flushes the batch.
    lines = [f"telegram,{1000000 + i},fr,FR,,parent,,Europe/Paris,yes" for i in range(2500)]
    path = write(tmp_path, "\n".join([HEADER, *lines, lines[7].replace(",fr,", ",de,")]) + "\n")
    report = import_csv(store, path, BASIS)
    assert (report.imported, report.updated, report.rejected) == (2500, 1, 0)
    assert store.by_address("telegram:1000007").language == "de"
    assert len(rows(store.engine, schema.consent_events)) == 2500
    assert import_csv(store, path, BASIS).updated == 2501
    assert len(rows(store.engine, schema.contacts)) == 2500 and len(rows(store.engine, schema.consent_events)) == 2500


def test_csv_export_then_import_round_trips_between_backends(store, other_url, engines, tmp_path):
    import_csv(store, write(tmp_path, GOOD), BASIS)
    store.get_or_create("webchat:session-1", "webchat")  # not reachable by a campaign: not exported
    never_answered = store.get_or_create("telegram:555", "telegram")
    out = io.StringIO()
    assert export_csv(store, out) == 5
    lines = out.getvalue().splitlines()
    assert lines[0] == HEADER + ",consent_changed_at,topics"
    changed_at = max(e["at"] for e in rows(store.engine, schema.consent_events)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert lines[1] == f"whatsapp,+33612345678,fr,FR,,parent,primary,Europe/Paris,opted_in,{changed_at},"
    assert lines[5] == "telegram,555,,,,,,,unknown,,"
    for row in store.export_rows():
        if row["consent_changed_at"] is not None:
            assert_utc(row["consent_changed_at"])

    other = ContactStore(create_db_engine(other_url))
    engines.append(other.engine)
    report = import_csv(other, write(tmp_path, out.getvalue(), "export.csv"), "restored from the export of the first server")
    assert (report.imported, report.rejected) == (5, 0)
    columns = ("address", "channel", "language", "country", "region", "role", "school_level", "timezone", "consent")
    assert [[c[k] for k in columns] for c in rows(other.engine, schema.contacts)] == [
        [c[k] for k in columns] for c in rows(store.engine, schema.contacts) if c["channel"] != "webchat"
    ]
    assert other.by_address(never_answered.address).consent == "unknown"
    again = io.StringIO()
    assert export_csv(other, again) == 5
    strip_time = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731
    assert strip_time(again.getvalue()) == strip_time(out.getvalue())


def test_send_claims_one_at_a_time_and_in_batches(store):
    """The outbox's claims (jisr/outbox.py): one attempt holds a message; a batch claims what is
    free, reports what is held or settled, logs what was not logged, and records sends together."""
    contact = store.get_or_create("telegram:4242", "telegram")
    for key in ("c:1", "c:2", "c:3"):
        store.log_outbound(contact.id, "telegram", "مرحبا", key)
    assert store.claim_outbound("c:1", 7)[0] == "claimed"
    assert store.claim_outbound("c:1", 8)[0] == "sending", "held by attempt 7"
    assert store.claim_outbound("c:1", 8, stale_token=7)[0] == "claimed", "taken over once attempt 7 is known dead"
    assert store.release_claim("c:1", 8) and store.outbound_status("c:1") == "queued"
    store.mark_sent("c:3", "P3", 1)
    results = store.claim_outbound_many([("c:1", 9, None, None), ("c:2", 1, None, None), ("c:3", 2, None, None), ("c:new", 1, None, (contact.id, "telegram", "Hallo")), ("c:none", 1, None, None)])
    assert [r[0] for r in results] == ["claimed", "claimed", "sent", "claimed", "missing"]
    assert [r[2] for r in results[:2]] == [9, 1] and results[0][1] is not None and results[0][1].tzinfo is not None
    assert store.claim_outbound_many([("c:2", 1, None, None)])[0][0] == "sending", "same token, another claim: not ours"
    store.mark_sent_many([("c:1", "P1", 9, None), ("c:new", "PN", 1, None)])
    assert [store.outbound_status(k) for k in ("c:1", "c:2", "c:new")] == ["sent", "sending", "sent"]
    assert store.known_provider_ids(["P1", "PN", "P404"]) == {"P1", "PN"}


def test_the_database_refuses_a_second_open_handoff_for_a_contact(store):
    """Migration 10's partial unique index: one waiting/assigned handoff per contact, any number closed."""
    contact = store.get_or_create("whatsapp:+33600000010", "whatsapp")
    now = dt.datetime.now(dt.timezone.utc)
    row = dict(contact_id=contact.id, channel="whatsapp", reason="request", priority=5, created_at=now)
    with store.engine.begin() as conn:
        conn.execute(schema.handoffs.insert().values(status="resolved", **row))
        conn.execute(schema.handoffs.insert().values(status="handed_back", **row))
        conn.execute(schema.handoffs.insert().values(status="waiting", **row))
    with pytest.raises(sa.exc.IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(schema.handoffs.insert().values(status="assigned", **row))
    with store.engine.connect() as conn:
        statuses = sorted(conn.execute(sa.select(schema.handoffs.c.status).where(schema.handoffs.c.contact_id == contact.id)).scalars())
    assert statuses == ["handed_back", "resolved", "waiting"]


def test_stopping_one_topic_keeps_the_others_on_both_backends(store):
    """Migration 11 and ContactStore.stop_topics: a subscribed contact that never chose topics
    keeps every other one; the stop is kept with its channel; the CSV export lists the topics."""
    contact = store.get_or_create("telegram:4242", "telegram")
    store.record_consent(contact.id, "opted_in", "conversation", None, "telegram")
    change = store.stop_topics(contact.id, ("exams",), "conversation", "telegram")
    assert change.kept == ("school_start", "deadlines", "orientation", "programmes", "tutoring")
    assert store.topics_of(contact.id) == sorted(change.kept) and store.stopped_topics_of(contact.id) == ["exams"]
    assert store.get(contact.id).consent == "opted_in"
    [stop] = rows(store.engine, schema.contact_topic_stops)
    assert (stop["topic"], stop["source"], stop["channel"]) == ("exams", "conversation", "telegram")
    assert_utc(stop["at"])
    store.subscribe_topics(contact.id, ("exams",), "import")
    assert "exams" not in store.topics_of(contact.id), "a list does not undo the family's stop"
    out = io.StringIO()
    export_csv(store, out)
    assert out.getvalue().splitlines()[1].endswith(",school_start;deadlines;orientation;programmes;tutoring")
