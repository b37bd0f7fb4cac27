"""`jisr contacts import` / `export`: validation with exact "file:line: column: problem" reports,
upserts, the consent history, round trips, migrations, and the command's exit codes."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from jisr.store import migrations, schema
from jisr.store.contacts import ContactStore, create_db_engine
from jisr.store.csv_io import CsvFileError, export_csv, import_csv

ROOT = Path(__file__).resolve().parents[1]
JISR = [sys.executable, "-m", "jisr.cli"]
HEADER = "channel,address,language,country,region,role,child_level,timezone,consent"
BASIS = "paper form signed at the consulate of Oran, 2026-10-12"

GOOD = f"""{HEADER}
whatsapp,+33 6 12 34 56 78,fr,FR,,parent,primary,Europe/Paris,yes
telegram,123456789,ary,,ES-CT,student,lower_secondary,europe/madrid,non
messenger,2345678901234567,de,DE,DE-BY,parent,,,opted_in
whatsapp,whatsapp:+4915112345678,,,,,,,no
"""


@pytest.fixture
def store(tmp_path: Path) -> ContactStore:
    return ContactStore(create_db_engine(f"sqlite:///{tmp_path / 'jisr.db'}"))


def write(tmp_path: Path, text: str, name: str = "list.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def all_contacts(store: ContactStore) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(schema.contacts).order_by(schema.contacts.c.id))]


def event_count(store: ContactStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.consent_events)).scalar())


# -- import --------------------------------------------------------------------------------


def test_a_good_file_imports(store, tmp_path):
    report = import_csv(store, write(tmp_path, GOOD), BASIS)
    assert (report.imported, report.updated, report.rejected, report.rejections) == (4, 0, 0, [])
    assert report.exit_code == 0
    wa, tg, fb, de = (store.by_address(a) for a in ("whatsapp:+33612345678", "telegram:123456789", "messenger:2345678901234567", "whatsapp:+4915112345678"))
    assert (wa.channel, wa.language, wa.country, wa.region, wa.role, wa.school_level, wa.timezone, wa.consent) == (
        "whatsapp", "fr", "FR", None, "parent", "primary", "Europe/Paris", "opted_in",
    )
    # ary is answered in Arabic; a region names its country; time zones are given their IANA spelling.
    assert (tg.language, tg.country, tg.region, tg.timezone, tg.consent) == ("ar", "ES", "ES-CT", "Europe/Madrid", "opted_out")
    assert (fb.channel, fb.region, fb.consent) == ("messenger", "DE-BY", "opted_in")
    assert (de.language, de.consent) == (None, "opted_out")


BAD = f"""{HEADER}
whatsapp,+212600000001,fr,FR,,parent,primary,Europe/Paris,yes
sms,123,fr,FR,,,,,yes
whatsapp,0612345678,,,,,,,yes
telegram,@famille,,,,,,,yes
messenger,abc,,,,,,,yes
messenger,telegram:42,,,,,,,yes
whatsapp,+33611111111,en,FR,,,,,yes
whatsapp,+33622222222,fr,XX,,,,,yes
whatsapp,+33633333333,fr,MA,,,,,yes
whatsapp,+33644444444,fr,FR,DE-ZZ,,,,yes
whatsapp,+33655555555,fr,FR,ES-CT,,,,yes
whatsapp,+33666666666,fr,FR,,teacher,,,yes
whatsapp,+33677777777,fr,FR,,,college,,yes
whatsapp,+33688888888,fr,FR,,,,Mars/Olympus,yes
whatsapp,+33699999999,fr,FR,,,,,maybe
whatsapp,+33610101010,fr,FR,,,,,
,,fr,FR,,,,,yes
whatsapp,+33620202020,fr,FR,,,,,yes,extra
whatsapp,+33630303030,fr,06 12 34 56 78,,,,,yes

telegram,987654321,ar,BE,be-FWB,parent,higher,Europe/Brussels,oui
"""


def test_bad_rows_are_reported_exactly_and_the_good_ones_imported(store, tmp_path):
    path = write(tmp_path, BAD)
    report = import_csv(store, path, BASIS, name="list.csv")
    assert report.messages() == [
        "list.csv:3: channel: 'sms' is not one of whatsapp, telegram, messenger",
        "list.csv:4: address: not a phone number in E.164 form (+, country code, 8 to 15 digits in all)",
        "list.csv:5: address: not a Telegram chat id (a number)",
        "list.csv:6: address: not a Messenger page-scoped id (a number)",
        "list.csv:7: address: starts with another channel's prefix (the row's channel is messenger)",
        "list.csv:8: language: 'en' is not one of ar, fr, es, it, de (or ary, read as ar)",
        "list.csv:9: country: 'XX' is not an ISO 3166 alpha-2 country code",
        "list.csv:10: country: MA is the families' country of origin; give the country they live in",
        "list.csv:11: region: 'DE-ZZ' is not a region Jisr knows (see regions in content/gazetteer.yml)",
        "list.csv:12: region: ES-CT is not in FR",
        "list.csv:13: role: 'teacher' is not one of parent, student",
        "list.csv:14: child_level: 'college' is not one of preschool, primary, lower_secondary, upper_secondary, higher",
        "list.csv:15: timezone: 'Mars/Olympus' is not an IANA time zone such as Europe/Paris",
        "list.csv:16: consent: 'maybe' is not one of yes, oui, opted_in, no, non, opted_out, unknown",
        "list.csv:17: consent: missing",
        "list.csv:18: channel: missing",
        "list.csv:18: address: missing",
        "list.csv:19: row: 10 fields, but the header has 9",
        # A phone number in the wrong column is not echoed back.
        "list.csv:20: country: the value (not shown) is not an ISO 3166 alpha-2 country code",
    ]
    assert (report.imported, report.updated, report.rejected, report.exit_code) == (2, 0, 18, 1)
    assert [c["address"] for c in all_contacts(store)] == ["whatsapp:+212600000001", "telegram:987654321"]
    assert store.by_address("telegram:987654321").region == "BE-fwb"


def test_a_row_that_is_not_utf8_is_rejected_alone(store, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        (HEADER + "\n").encode() + "whatsapp,+33612345678,fr,FR,,,,,oui\n".encode() + "whatsapp,+33687654321,fr,FR,,,,,oui # Hélène\n".encode("latin-1")
    )
    report = import_csv(store, path, BASIS, name="latin1.csv")
    assert report.messages() == ["latin1.csv:3: row: not UTF-8 text (save the file as CSV UTF-8)"]
    assert report.imported == 1


def test_a_byte_order_mark_and_semicolons_are_understood(store, tmp_path):
    text = "\ufeff" + HEADER.replace(",", ";") + "\r\nwhatsapp;+33612345678;fr;FR;;parent;;;oui\r\n"
    report = import_csv(store, write(tmp_path, text), BASIS)
    assert (report.imported, report.rejected) == (1, 0)
    assert store.by_address("whatsapp:+33612345678").role == "parent"


def test_header_columns_may_come_in_any_order_and_case(store, tmp_path):
    report = import_csv(store, write(tmp_path, "Consent, Address ,CHANNEL\nno,+33612345678,whatsapp\n"), None)
    assert (report.imported, report.rejected) == (1, 0)


@pytest.mark.parametrize(
    "text, error",
    [
        (HEADER + ",phone,email\nwhatsapp,+33612345678,,,,,,,no,x,y\n", "list.csv:1: unknown column(s): email, phone"),
        ("channel,language\nwhatsapp,fr\n", "list.csv:1: missing column(s): address, consent"),
        ("channel,address,consent,consent\n", "list.csv:1: column(s) given twice: consent"),
        ("", "list.csv: empty file"),
    ],
)
def test_a_bad_header_imports_nothing(store, tmp_path, text, error):
    with pytest.raises(CsvFileError) as raised:
        import_csv(store, write(tmp_path, text), BASIS, name="list.csv")
    assert str(raised.value).startswith(error)
    assert all_contacts(store) == []


def test_an_opt_in_without_a_basis_imports_nothing(store, tmp_path):
    text = f"{HEADER}\nwhatsapp,+33612345678,,,,,,,no\nwhatsapp,+33687654321,,,,,,,yes\n"
    with pytest.raises(CsvFileError, match=r"^list.csv:3: consent: an opt-in needs --source-basis"):
        import_csv(store, write(tmp_path, text), "  ", name="list.csv")
    assert all_contacts(store) == []
    # Opt-outs alone need no basis.
    assert import_csv(store, write(tmp_path, f"{HEADER}\nwhatsapp,+33612345678,,,,,,,no\n"), None).imported == 1


def test_the_consent_history_records_source_basis_and_channel(store, tmp_path):
    import_csv(store, write(tmp_path, GOOD), BASIS)
    wa = store.by_address("whatsapp:+33612345678")
    [event] = store.consent_history(wa.id)
    assert (event.consent, event.source, event.basis, event.channel) == ("opted_in", "import", BASIS, "whatsapp")
    assert dt.datetime.now(dt.timezone.utc) - event.at < dt.timedelta(minutes=1)

    # The person then stops in a conversation: the change joins the history and sets the consent.
    store.record_consent(wa.id, "opted_out", "conversation")
    assert [(e.consent, e.source) for e in store.consent_history(wa.id)] == [("opted_in", "import"), ("opted_out", "conversation")]
    assert store.get(wa.id).consent == "opted_out"


def test_record_consent_refuses_what_it_cannot_trace(store):
    contact = store.get_or_create("telegram:42", "telegram")
    with pytest.raises(ValueError):
        store.record_consent(contact.id, "maybe", "conversation")
    with pytest.raises(ValueError):
        store.record_consent(contact.id, "opted_in", "rumour")
    with pytest.raises(ValueError):
        store.record_consent(contact.id, "opted_in", "import", basis=" ")
    with pytest.raises(LookupError):
        store.record_consent(contact.id + 1, "opted_out", "operator")
    assert store.consent_history(contact.id) == [] and store.get(contact.id).consent == "unknown"


def test_a_list_cannot_opt_back_in_someone_who_opted_out(store, tmp_path):
    contact = store.get_or_create("whatsapp:+33612345678", "whatsapp")
    store.record_consent(contact.id, "opted_out", "conversation")
    report = import_csv(store, write(tmp_path, f"{HEADER}\nwhatsapp,+33612345678,fr,FR,,,,,yes\n"), BASIS, name="list.csv")
    assert report.messages() == [
        "list.csv:2: consent: this contact opted out; a list cannot opt them back in (only they can, by subscribing again)"
    ]
    assert (report.updated, report.rejected) == (0, 1)
    after = store.get(contact.id)
    assert (after.consent, after.language) == ("opted_out", None)
    # The person can: in a conversation.
    store.record_consent(contact.id, "opted_in", "conversation")
    assert store.get(contact.id).consent == "opted_in"

    # An opt-out recorded before there was a history (no trace of where it came from) stands too.
    legacy = store.get_or_create("telegram:777", "telegram")
    store.set_consent(legacy.id, "opted_out")
    report = import_csv(store, write(tmp_path, f"{HEADER}\ntelegram,777,,,,,,,yes\n"), BASIS)
    assert report.rejected == 1 and store.get(legacy.id).consent == "opted_out"


def test_reimport_updates_instead_of_duplicating(store, tmp_path):
    import_csv(store, write(tmp_path, GOOD), BASIS)
    assert event_count(store) == 4
    changed = f"""{HEADER}
whatsapp,+33612345678,ar,,,,upper_secondary,,yes
telegram,123456789,,,,,,,oui
whatsapp,+4915112345678,,,,,,,unknown
"""
    report = import_csv(store, write(tmp_path, changed, "again.csv"), "second list")
    assert (report.imported, report.updated, report.rejected) == (0, 3, 0)
    assert len(all_contacts(store)) == 4
    wa = store.by_address("whatsapp:+33612345678")
    # Non-empty cells replace, empty ones keep what was known.
    assert (wa.language, wa.country, wa.role, wa.school_level, wa.timezone) == ("ar", "FR", "parent", "upper_secondary", "Europe/Paris")
    # Only real changes enter the history. The telegram contact's opt-out came from the first
    # list, so the newer list may opt it in (an opt-out the person made would stand).
    assert event_count(store) == 5
    tg = store.by_address("telegram:123456789")
    assert [(e.consent, e.basis) for e in store.consent_history(tg.id)] == [("opted_out", BASIS), ("opted_in", "second list")]
    assert store.by_address("whatsapp:+4915112345678").consent == "opted_out"  # "unknown" says nothing


def test_an_address_repeated_in_a_file_and_across_batches_is_one_contact(store, tmp_path):
    rows = [f"whatsapp,+3361234{i:04d},,,,,,,yes" for i in range(25)]
    text = "\n".join([HEADER, *rows, rows[0].replace(",,,,,,,", ",de,,,,,,"), rows[3], rows[24]]) + "\n"
    report = import_csv(store, write(tmp_path, text), BASIS, batch_size=10)
    assert (report.imported, report.updated, report.rejected) == (25, 3, 0)
    assert len(all_contacts(store)) == 25 and event_count(store) == 25
    assert store.by_address("whatsapp:+33612340000").language == "de"


def test_a_dry_run_writes_nothing_but_counts_as_the_import_would(store, tmp_path):
    path = write(tmp_path, GOOD + "whatsapp,+33612345678,,,,,,,yes\nsms,1,,,,,,,yes\n")
    dry = import_csv(store, path, BASIS, dry_run=True, batch_size=2)
    assert all_contacts(store) == [] and event_count(store) == 0
    real = import_csv(store, path, BASIS, batch_size=2)
    assert (dry.imported, dry.updated, dry.rejected) == (real.imported, real.updated, real.rejected) == (4, 1, 1)


def test_erasing_a_contact_erases_its_consent_history(store, tmp_path):
    import_csv(store, write(tmp_path, GOOD), BASIS)
    with store.engine.begin() as conn:
        conn.execute(schema.contacts.delete())
    assert event_count(store) == 0


# -- export --------------------------------------------------------------------------------


def test_export_then_import_round_trips(store, tmp_path):
    import_csv(store, write(tmp_path, GOOD), BASIS)
    store.get_or_create("webchat:session-1", "webchat")  # not reachable by a campaign: not exported
    never_answered = store.get_or_create("telegram:555", "telegram")
    out = io.StringIO()
    assert export_csv(store, out) == 5
    lines = out.getvalue().splitlines()
    assert lines[0] == HEADER + ",consent_changed_at,topics"
    assert lines[1].startswith("whatsapp,+33612345678,fr,FR,,parent,primary,Europe/Paris,opted_in,20")
    assert lines[5] == "telegram,555,,,,,,,unknown,,"

    other = ContactStore(create_db_engine(f"sqlite:///{tmp_path / 'other.db'}"))
    report = import_csv(other, write(tmp_path, out.getvalue(), "export.csv"), "restored from the export of the first server")
    assert (report.imported, report.rejected) == (5, 0)
    columns = ("address", "channel", "language", "country", "region", "role", "school_level", "timezone", "consent")
    assert [[c[k] for k in columns] for c in all_contacts(other)] == [
        [c[k] for k in columns] for c in all_contacts(store) if c["channel"] != "webchat"
    ]
    assert other.by_address(never_answered.address).consent == "unknown"


# -- migrations ----------------------------------------------------------------------------


def test_a_version_1_database_is_migrated_without_losing_contacts(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url, future=True)
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        assert migrations.migrate(engine) == 1
    with engine.begin() as conn:
        # Step 1 builds from today's schema module; a real version-1 database had no timezone column.
        conn.execute(sa.text("ALTER TABLE contacts DROP COLUMN timezone"))
        conn.execute(sa.text("INSERT INTO contacts (address, channel, consent, created_at) VALUES ('telegram:7', 'telegram', 'opted_out', '2026-01-01 00:00:00')"))
    engine.dispose()

    store = ContactStore(create_db_engine(url))
    assert migrations.current_version(store.engine) == len(migrations.MIGRATIONS)
    old = store.by_address("telegram:7")
    assert (old.consent, old.timezone) == ("opted_out", None)
    with store.engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert {c["name"] for c in inspector.get_columns("consent_events")} == set(schema.consent_events.c.keys())
        assert {c["name"] for c in inspector.get_columns("contacts")} == set(schema.contacts.c.keys())
        assert {i["name"] for i in inspector.get_indexes("consent_events")} == {"ix_consent_events_contact_at", "ix_consent_events_consent_at"}  # step 8: opt-outs by time


def test_several_databases_in_one_process(tmp_path):
    # Step 1 used to leave its index attached to the shared messages table (see migrations._run_step).
    for name in ("one.db", "two.db", "three.db"):
        engine = create_db_engine(f"sqlite:///{tmp_path / name}")
        with engine.connect() as conn:
            assert {i["name"] for i in sa.inspect(conn).get_indexes("messages")} >= {"ix_messages_contact_created"}


# -- the command ---------------------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JISR_DATABASE_URL"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    return subprocess.run(JISR + list(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_cli_exit_codes_and_reports(tmp_path):
    good = write(tmp_path, GOOD, "good.csv")
    bad = write(tmp_path, BAD, "bad.csv")

    dry = run_cli(tmp_path, "contacts", "import", str(good), "--source-basis", BASIS, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would import 4" in dry.stdout and "dry run" in dry.stdout

    done = run_cli(tmp_path, "contacts", "import", str(good), "--source-basis", BASIS)
    assert done.returncode == 0, done.stderr
    assert f"{good}: imported 4, updated 0, rejected 0" in done.stdout

    partly = run_cli(tmp_path, "contacts", "import", str(bad), "--source-basis", BASIS)
    assert partly.returncode == 1
    assert f"{bad}:3: channel: 'sms' is not one of whatsapp, telegram, messenger" in partly.stderr.splitlines()
    assert "imported 2, updated 0, rejected 18" in partly.stdout
    # The operator's terminal gets line numbers and columns, never the numbers themselves.
    for secret in ("612345678", "0612345678", "06 12 34 56 78", "33630303030", "123456789"):
        assert secret not in partly.stdout + partly.stderr

    as_json = run_cli(tmp_path, "contacts", "import", str(bad), "--source-basis", BASIS, "--json", "--dry-run")
    assert as_json.returncode == 1
    parsed = json.loads(as_json.stdout)
    assert (parsed["imported"], parsed["updated"], parsed["rejected"]) == (0, 2, 18)
    assert parsed["rejections"][0] == {
        "line": 3, "column": "channel", "problem": "'sms' is not one of whatsapp, telegram, messenger",
        "message": f"{bad}:3: channel: 'sms' is not one of whatsapp, telegram, messenger",
    }

    unknown = run_cli(tmp_path, "contacts", "import", str(write(tmp_path, HEADER + ",phone\n", "unknown.csv")))
    assert unknown.returncode == 2 and "unknown column(s): phone" in unknown.stderr and "nothing imported" in unknown.stderr
    no_basis = run_cli(tmp_path, "contacts", "import", str(good))
    assert no_basis.returncode == 2 and "--source-basis" in no_basis.stderr
    missing = run_cli(tmp_path, "contacts", "import", str(tmp_path / "nowhere.csv"))
    assert missing.returncode == 2 and "cannot be read" in missing.stderr

    exported = run_cli(tmp_path, "contacts", "export")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.splitlines()[0] == HEADER + ",consent_changed_at,topics" and len(exported.stdout.splitlines()) == 7
    target = tmp_path / "out.csv"
    to_file = run_cli(tmp_path, "contacts", "export", "--output", str(target))
    assert to_file.returncode == 0 and "6 contacts exported" in to_file.stderr
    assert target.read_text(encoding="utf-8").splitlines() == exported.stdout.splitlines()
    assert target.stat().st_mode & 0o077 == 0
