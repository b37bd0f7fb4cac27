"""The campaign planner (campaigns/planner.py) and `jisr campaigns …` on a real SQLite file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from campaigns.definitions import Trigger, load_campaign
from campaigns.planner import plan, preview
from jisr.store import schema
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import create_db_engine

ROOT = Path(__file__).resolve().parents[1]
JISR = [sys.executable, "-m", "jisr.cli"]
UTC = dt.timezone.utc
NOW = dt.datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
SID = "HX" + "1" * 32

MESSAGES = """
fallback_language: fr
messages:
  fr: "Bonjour : {event_name}, {dates} ({country})."
  ar: "مرحباً: {event_name}، {dates} ({country})."
"""


def campaign_file(tmp_path: Path, name: str, trigger: str, extra: str = "", countries: str = "[FR, CI]") -> Path:
    path = tmp_path / f"{name}.yml"
    messages = MESSAGES if "event:" in trigger else MESSAGES.replace("{event_name}, {dates} ", "").replace("{event_name}، {dates} ", "")
    path.write_text(
        f"""id: {name}
name: Test {name}
audience:
  countries: {countries}
  languages: [fr, ar]
  channels: [whatsapp, telegram, messenger]
trigger:
{trigger}
send_window: {{start: "09:00", end: "20:00"}}
weekly_cap: 2
{messages}
whatsapp_template:
  content_sid: {SID}
  variables: {{1: country}}
messenger_outside_window: skip
{extra}""",
        encoding="utf-8",
    )
    return path


SCHOOL_START = '  event: school_start\n  offset_days: -3\n  time: "18:00"\n  yearly: true'


@pytest.fixture()
def store(tmp_path: Path) -> CampaignStore:
    return CampaignStore(create_db_engine(f"sqlite:///{tmp_path / 'jisr.db'}"))


def add_contact(store: CampaignStore, address: str, **fields: Any) -> int:
    values = dict(channel="telegram", language="fr", country="FR", role="parent", consent="opted_in", created_at=NOW)
    values.update(fields)
    with store.engine.begin() as conn:
        return int(conn.execute(schema.contacts.insert().values(address=address, **values)).inserted_primary_key[0])


def by_contact(store: CampaignStore) -> dict[int, dict[str, Any]]:
    return {row["contact_id"]: row for row in store.sends()}


def test_event_send_lands_at_local_time_in_each_time_zone(store, tmp_path):
    paris = add_contact(store, "telegram:1", timezone="Europe/Paris")
    abidjan = add_contact(store, "telegram:2", country="CI", language="ar")  # no zone: the country's
    result = plan(load_campaign(campaign_file(tmp_path, "start", SCHOOL_START)), store, NOW)
    assert set(result.runs) == {"school_start@FR@2026-27", "school_start@CI@2026-27"}
    sends = by_contact(store)
    # FR starts 1 Sept, CI 7 Sept: 3 days before at 18:00 local.
    assert sends[paris]["scheduled_at"] == dt.datetime(2026, 8, 29, 16, 0, tzinfo=UTC)  # CEST, UTC+2
    assert sends[paris]["local_time"] == "2026-08-29 18:00 Europe/Paris"
    assert sends[abidjan]["scheduled_at"] == dt.datetime(2026, 9, 4, 18, 0, tzinfo=UTC)  # UTC+0
    assert sends[abidjan]["local_time"] == "2026-09-04 18:00 Africa/Abidjan"
    assert sends[abidjan]["language"] == "ar" and sends[paris]["form"] == "text"
    assert all(s["status"] == "planned" and s["reason"] is None for s in sends.values())


def test_dst_change_day_and_regional_dates(store, tmp_path):
    paris = add_contact(store, "telegram:1", timezone="Europe/Paris")
    # holiday:autumn starts 17 Oct 2026; +8 days is Sunday 25 Oct, when Paris goes back to UTC+1.
    trigger = '  event: "holiday:autumn"\n  offset_days: 8\n  time: "18:00"\n  yearly: true'
    plan(load_campaign(campaign_file(tmp_path, "dst", trigger, countries="[FR]")), store, NOW)
    assert by_contact(store)[paris]["scheduled_at"] == dt.datetime(2026, 10, 25, 17, 0, tzinfo=UTC)

    # Winter holidays have regional dates: zone A starts 13 Feb 2027, the country default 6 Feb.
    zone_a = add_contact(store, "telegram:2", timezone="Europe/Paris", region="FR-A")
    trigger = '  event: "holiday:winter"\n  offset_days: 0\n  time: "10:00"\n  yearly: true'
    plan(load_campaign(campaign_file(tmp_path, "winter", trigger, countries="[FR]")), store, NOW)
    winter = {s["contact_id"]: s for s in store.sends() if s["local_time"].startswith("2027")}
    assert winter[zone_a]["scheduled_at"] == dt.datetime(2027, 2, 13, 9, 0, tzinfo=UTC)
    assert winter[paris]["scheduled_at"] == dt.datetime(2027, 2, 6, 9, 0, tzinfo=UTC)


def test_fixed_date_on_spring_dst_day_and_window_clamping(store, tmp_path):
    paris = add_contact(store, "telegram:1", timezone="Europe/Paris")
    algiers = add_contact(store, "telegram:2", country="DZ", timezone="Africa/Algiers")
    # Validation refuses a trigger time outside the window; the planner clamps anyway, as a
    # last defence against a campaign built in code: build one the loader would refuse.
    base = load_campaign(campaign_file(tmp_path, "base", '  at: "2027-03-28T10:00"', countries="[FR, DZ]"))
    early = dataclasses.replace(base, id="early", trigger=Trigger(at=dt.datetime(2027, 3, 28, 7, 0)))
    plan(early, store, NOW)
    sends = by_contact(store)
    # Before the window: moved to its start, 09:00, the same day; 28 March 2027 Paris is UTC+2 already.
    assert sends[paris]["scheduled_at"] == dt.datetime(2027, 3, 28, 7, 0, tzinfo=UTC)
    assert sends[algiers]["scheduled_at"] == dt.datetime(2027, 3, 28, 8, 0, tzinfo=UTC)  # no DST in Algeria
    late = dataclasses.replace(base, id="late", trigger=Trigger(at=dt.datetime(2027, 3, 27, 20, 30)))
    result = plan(late, store, NOW)
    run = result.runs["2027-03-27T20:30"]
    late_sends = {s["contact_id"]: s for s in store.sends(run)}
    # After the window: the next day's start, across the clock change.
    assert late_sends[paris]["local_time"] == "2027-03-28 09:00 Europe/Paris"
    assert late_sends[paris]["scheduled_at"] == dt.datetime(2027, 3, 28, 7, 0, tzinfo=UTC)


def test_exclusions_have_their_reasons(store, tmp_path):
    ok = add_contact(store, "telegram:1")
    opted_out = add_contact(store, "telegram:2", consent="opted_out")
    unknown = add_contact(store, "telegram:3", consent="unknown")
    messenger_out = add_contact(store, "messenger:4", channel="messenger", last_inbound_at=NOW)
    messenger_in = add_contact(store, "messenger:5", channel="messenger", last_inbound_at=dt.datetime(2026, 8, 29, 8, 0, tzinfo=UTC))
    whatsapp_out = add_contact(store, "whatsapp:6", channel="whatsapp", last_inbound_at=None)
    whatsapp_in = add_contact(store, "whatsapp:7", channel="whatsapp", last_inbound_at=dt.datetime(2026, 8, 29, 9, 0, tzinfo=UTC))
    add_contact(store, "telegram:8", role=None, language="de")  # not in the audience (German): no row at all
    capped = add_contact(store, "telegram:9")
    # Two campaign messages already planned for this contact in the same week.
    other = load_campaign(campaign_file(tmp_path, "other", '  at: "2026-08-27T10:00"', countries="[FR]"))
    other2 = load_campaign(campaign_file(tmp_path, "other2", '  at: "2026-08-31T10:00"', countries="[FR]"))
    plan(other, store, NOW)
    plan(other2, store, NOW)
    with store.engine.begin() as conn:  # only `capped` keeps them
        conn.execute(schema.campaign_sends.delete().where(schema.campaign_sends.c.contact_id != capped))

    campaign = load_campaign(campaign_file(tmp_path, "start", SCHOOL_START))
    shown = preview(campaign, store, NOW)
    result = plan(campaign, store, NOW)
    run = result.runs["school_start@FR@2026-27"]
    sends = {s["contact_id"]: s for s in store.sends(run)}
    assert {k: (v["status"], v["reason"], v["form"]) for k, v in sends.items()} == {
        ok: ("planned", None, "text"),
        opted_out: ("skipped", "opted_out", None),
        unknown: ("skipped", "no_consent", None),
        messenger_out: ("skipped", "outside_window", None),
        messenger_in: ("planned", None, "text"),
        whatsapp_out: ("planned", None, "template"),
        whatsapp_in: ("planned", None, "text"),
        capped: ("skipped", "capped", None),
    }
    assert dict(result.excluded) == {"opted_out": 1, "no_consent": 1, "outside_window": 1, "capped": 1}
    # The preview said the same, and wrote nothing.
    assert shown.planned == result.planned == 4
    assert shown.excluded == result.excluded and shown.by_channel == result.by_channel and shown.by_form == result.by_form
    assert shown.messages["fr"].startswith("Bonjour : ")
    assert shown.estimated_seconds == pytest.approx(max(2 / 10.0, 1 / 30.0, 1 / 40.0))


def test_planning_twice_creates_no_duplicates(store, tmp_path):
    for n in range(5):
        add_contact(store, f"telegram:{n}", country="FR" if n % 2 else "CI")
    campaign = load_campaign(campaign_file(tmp_path, "start", SCHOOL_START))
    first = plan(campaign, store, NOW)
    again = plan(campaign, store, NOW)
    assert first.inserted == 5 and again.inserted == 0 and again.existing == 5
    assert first.runs == again.runs
    assert len(store.sends()) == 5 and len(store.runs()) == 2
    keys = [s["idempotency_key"] for s in store.sends()]
    assert len(set(keys)) == 5
    # A new contact joins: only they are added.
    add_contact(store, "telegram:new")
    assert plan(campaign, store, NOW).inserted == 1


def test_only_future_sends_are_planned(store, tmp_path):
    add_contact(store, "telegram:1", timezone="Europe/Paris")
    campaign = load_campaign(campaign_file(tmp_path, "start", SCHOOL_START, countries="[FR]"))
    # 29 Aug 2026 18:00 Paris is 16:00 UTC: planned at 15:59, past at 16:01.
    assert preview(campaign, store, dt.datetime(2026, 8, 29, 15, 59, tzinfo=UTC)).planned == 1
    later = preview(campaign, store, dt.datetime(2026, 8, 29, 16, 1, tzinfo=UTC))
    assert later.planned == 0 and later.past == 1


def test_preview_of_100000_contacts_takes_seconds(store, tmp_path):
    countries = ["FR", "ES", "IT", "DE", "BE", "NL", "DZ", "CI"]
    rows = [
        dict(
            address=f"telegram:{n}",
            channel=("telegram", "whatsapp", "messenger")[n % 3],
            language=("fr", "ar", "ary", "es")[n % 4],
            country=countries[n % 8],
            role="parent",
            consent=("opted_in", "opted_in", "opted_out", "unknown")[n % 4],
            created_at=NOW,
        )
        for n in range(100_000)
    ]
    with store.engine.begin() as conn:
        conn.execute(schema.contacts.insert(), rows)
    path = campaign_file(tmp_path, "big", SCHOOL_START, countries="[FR, ES, IT, DE, BE, NL, DZ, CI]")
    campaign = load_campaign(path)
    started = time.perf_counter()
    shown = preview(campaign, store, NOW)
    seconds = time.perf_counter() - started
    print(f"\npreview of 100,000 contacts: {seconds:.2f} s")
    assert seconds < 20  # about 2 s on a laptop-class machine
    assert shown.planned + sum(shown.excluded.values()) == 75_000  # es speakers are not in the audience
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.campaign_sends)).scalar() == 0


# -- the command line ---------------------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JISR_DATABASE_URL"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    return subprocess.run(JISR + list(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_cli_validate_preview_plan(tmp_path):
    good = campaign_file(tmp_path, "start", SCHOOL_START)
    bad = tmp_path / "bad.yml"
    bad.write_text(good.read_text(encoding="utf-8").replace("countries: [FR, CI]", "countries: [FR, XX]"), encoding="utf-8")
    ok = run_cli(tmp_path, "campaigns", "validate", str(good), *sorted(map(str, (ROOT / "campaigns" / "examples").glob("*.yml"))))
    assert ok.returncode == 0, ok.stderr
    assert f"{good}: OK" in ok.stdout
    refused = run_cli(tmp_path, "campaigns", "validate", str(good), str(bad))
    assert refused.returncode == 1
    assert f"{bad}:4: audience.countries[1]: 'XX'" in refused.stdout

    engine = create_db_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    store = CampaignStore(engine)
    add_contact(store, "telegram:1", timezone="Europe/Paris")
    add_contact(store, "telegram:2", country="CI", consent="opted_out")
    engine.dispose()

    shown = run_cli(tmp_path, "campaigns", "preview", str(good), "--now", "2026-08-01T12:00:00+00:00", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["planned"] == 1 and data["excluded"] == {"opted_out": 1}
    assert data["first_send"] == "2026-08-29T16:00:00+00:00"

    text = run_cli(tmp_path, "campaigns", "preview", str(good), "--now", "2026-08-01T12:00")
    assert text.returncode == 0 and "1 sends planned" in text.stdout and "--- fr ---" in text.stdout

    planned = run_cli(tmp_path, "campaigns", "plan", str(good), "--now", "2026-08-01T12:00:00Z")
    assert planned.returncode == 0, planned.stderr
    assert "run 1: school_start@FR@2026-27" in planned.stdout and "rows written: 2" in planned.stdout
    again = run_cli(tmp_path, "campaigns", "plan", str(good), "--now", "2026-08-01T12:00:00Z", "--json")
    assert json.loads(again.stdout)["inserted"] == 0 and json.loads(again.stdout)["existing"] == 2

    assert run_cli(tmp_path, "campaigns", "plan", str(bad)).returncode == 1
    assert run_cli(tmp_path, "campaigns", "preview", str(good), "--now", "yesterday").returncode == 2


def test_a_message_naming_the_country_skips_families_whose_country_is_unknown(store, tmp_path):
    """{country} with no country in the audience: a family without one is skipped with a reason,
    the others are planned, and the preview shows the text with a real country name."""
    path = campaign_file(tmp_path, "anywhere", '  at: "2026-09-01T10:00"')
    path.write_text(path.read_text(encoding="utf-8").replace("  countries: [FR, CI]\n", ""), encoding="utf-8")
    campaign = load_campaign(path)
    assert not campaign.audience.countries
    known = add_contact(store, "telegram:1", language="ar", country="FR")
    unknown = add_contact(store, "telegram:2", language="fr", country=None, timezone="Europe/Madrid")

    shown = preview(campaign, store, NOW)
    assert shown.messages["fr"] == "Bonjour : (France)."
    assert "فرنسا" in shown.messages["ar"]

    plan(campaign, store, NOW)
    sends = by_contact(store)
    assert sends[known]["status"] == "planned"
    assert (sends[unknown]["status"], sends[unknown]["reason"]) == ("skipped", "no_country")
