"""/api/campaigns narrowed to the caller's countries, with real accounts (jisr.auth's
AccountStore and API tokens), a real SQLite database, an embedded Redis and the real send
queue (no worker runs: the sends wait in the queue, nothing reaches a family).

An operator who covers France cannot follow, download or steer a run that reached Algerian
families, cannot schedule a campaign that can reach Algeria (or every country), nor slip into
an Algerian run by reusing its campaign id; the preview shows them their countries only. An
operator covering every country, an admin and the legacy JISR_OPERATOR_API_TOKEN may do all.
Every refusal names the countries missing; scheduling, control actions and refusals are in
the audit log without personal data.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Iterator, Optional

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jisr.auth.audit import AuditLog
from jisr.auth.store import AccountStore
from jisr.gateway import auth_routes, campaigns_api, operators_api
from jisr.outbox import Outbox
from jisr.redisconn import connect_redis
from jisr.settings import Settings
from jisr.store import schema
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import ContactStore, create_db_engine

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC).replace(microsecond=0)
PASSWORD = "correct horse battery staple 42"
LEGACY_TOKEN = "operator-scope-test-token-0123456789"
_names = itertools.count()
# Telegram ids of the seeded families: they must never show up in the audit log.
ADDRESSES = {
    "fr_1": ("telegram:7100001", "FR", "Europe/Paris"),
    "fr_2": ("telegram:7100002", "FR", "Europe/Paris"),
    "dz_1": ("telegram:7200001", "DZ", "Africa/Algiers"),
    "dz_2": ("telegram:7200002", "DZ", "Africa/Algiers"),
    "nowhere": ("telegram:7300001", None, "Europe/Paris"),
}


def campaign_yaml(name: str, countries: Optional[list[str]], day: Optional[dt.date] = None) -> tuple[str, str]:
    """A campaign for French-reading telegram families; ``countries`` None: no country filter.
    Each campaign falls in a week of its own, so the weekly cap never skips a family. The text
    names no {country}: one family has no known country, and rendering it for them fails."""
    number = next(_names)
    campaign_id = name if day is not None else f"{name}_{number}"
    day = day or (NOW + dt.timedelta(days=30 + 8 * number)).date()
    audience = f"  countries: [{', '.join(countries)}]\n" if countries is not None else ""
    return campaign_id, f"""id: {campaign_id}
name: Scope test {campaign_id}
audience:
{audience}  languages: [fr]
  channels: [telegram]
trigger:
  at: "{day.isoformat()}T12:00"
send_window: {{start: "09:00", end: "20:00"}}
fallback_language: fr
messages:
  fr: "Bonjour, rappel pour les familles."
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    tmp: Path = tmp_path_factory.mktemp("campaigns-scope")
    url = f"sqlite:///{tmp / 'jisr.db'}"
    settings = Settings(database_url=url, var_dir=tmp, operator_api_token=LEGACY_TOKEN)
    redis = connect_redis(None, directory=tmp)
    engine = create_db_engine(url)
    store = ContactStore(engine)
    contact_ids = {}
    with engine.begin() as conn:
        for key, (address, country, zone) in ADDRESSES.items():
            values = dict(address=address, channel="telegram", language="fr", country=country, role="parent", consent="opted_in", timezone=zone)
            contact_ids[key] = int(conn.execute(schema.contacts.insert().values(**values, created_at=NOW - dt.timedelta(days=2))).inserted_primary_key[0])

    accounts = AccountStore(engine)
    made = {
        "admin": accounts.create("admin", "Admin", "admin", PASSWORD),
        "fr": accounts.create("fr_operator", "Opératrice France", "operator", PASSWORD, countries="FR"),
        "dz": accounts.create("dz_operator", "Opérateur Algérie", "operator", PASSWORD, countries="DZ"),
        "fr_dz": accounts.create("fr_dz_operator", "Opératrice France et Algérie", "operator", PASSWORD, countries="FR,DZ"),
        "world": accounts.create("world_operator", "Opérateur partout", "operator", PASSWORD, countries="*"),
        "mediator": accounts.create("mediator", "Médiatrice", "mediator", PASSWORD, countries="FR,DZ", languages="fr,ar"),
    }
    tokens = {name: accounts.create_token(account.id, "scope tests").token for name, account in made.items()}
    tokens["legacy"] = LEGACY_TOKEN

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        outbox = await Outbox.connect(redis.host, redis.port, redis.db, redis.password)
        app.state.services = SimpleNamespace(settings=settings, redis=redis, store=store, gateway=None, outbox=outbox)
        try:
            yield
        finally:
            await outbox.close()

    app = FastAPI(lifespan=lifespan)
    for router in (auth_routes.router, operators_api.router, campaigns_api.router):
        app.include_router(router)
    try:
        with TestClient(app) as client:
            yield SimpleNamespace(client=client, tokens=tokens, accounts=made, engine=engine, contacts=contact_ids, audit=AuditLog(engine))
    finally:
        engine.dispose()
        redis.close()


def call(env: SimpleNamespace, who: str, method: str, path: str, body: Optional[str] = None) -> Any:
    return env.client.request(
        method, f"/api/campaigns{path}", params={"now": NOW.isoformat()} if body is not None else None, content=body, headers={"Authorization": f"Bearer {env.tokens[who]}"}
    )


def schedule(env: SimpleNamespace, who: str, name: str, countries: Optional[list[str]]) -> tuple[str, int]:
    campaign_id, body = campaign_yaml(name, countries)
    response = call(env, who, "POST", "/schedule", body)
    assert response.status_code == 200, response.text
    (run_id,) = response.json()["runs"].values()
    return campaign_id, run_id


def run_state(env: SimpleNamespace, run_id: int) -> str:
    return CampaignStore(env.engine).run(run_id)["state"]


RUN_ROUTES = [("GET", ""), ("GET", "/report"), ("GET", "/report.csv"), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/cancel")]


def assert_no_personal_data(env: SimpleNamespace) -> None:
    text = json.dumps([entry.as_dict() for entry in env.audit.list(limit=1000)])
    for address, _country, _zone in ADDRESSES.values():
        assert address.split(":")[1] not in text
    assert "Bonjour" not in text


# --- runs: status, report, control ------------------------------------------------------------


def test_a_france_operator_cannot_follow_or_steer_an_algerian_run(env: SimpleNamespace) -> None:
    campaign_id, run_id = schedule(env, "admin", "algeria", ["DZ"])
    assert run_state(env, run_id) == "running"
    for method, suffix in RUN_ROUTES:
        response = call(env, "fr", method, f"/runs/{run_id}{suffix}")
        assert response.status_code == 403, (suffix, response.text)
        assert response.json()["detail"] == f"run {run_id} has sends to DZ, which you do not cover (your countries: FR)"
        assert "contact_id" not in response.text
    assert run_state(env, run_id) == "running", "a refused pause or cancel changed nothing"
    denied = env.audit.list(account_id=env.accounts["fr"].id, action="campaign_run.denied", target_id=run_id)
    assert sorted(e.detail["action"] for e in denied) == sorted(["status", "report", "report.csv", "pause", "resume", "cancel"])
    assert all(e.detail["uncovered"] == ["DZ"] and e.target_kind == "campaign_run" for e in denied)

    # Algeria's operator follows and steers it; each action is in the audit log, with the country.
    status = call(env, "dz", "GET", f"/runs/{run_id}")
    assert status.status_code == 200 and status.json()["total"] == 2
    rows = list(csv.DictReader(io.StringIO(call(env, "dz", "GET", f"/runs/{run_id}/report.csv").text)))
    assert {r["country"] for r in rows} == {"DZ"} and {int(r["contact_id"]) for r in rows} == {env.contacts["dz_1"], env.contacts["dz_2"]}
    for action, state in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        response = call(env, "dz", "POST", f"/runs/{run_id}/{action}")
        assert response.json() == {"run": run_id, "state": state, "changed": True}, response.text
    done = env.audit.list(account_id=env.accounts["dz"].id, action="campaign_run.", target_id=run_id)
    assert [(e.action, e.country, e.detail["state"]) for e in reversed(done) if e.action != "campaign_run.report"] == [
        ("campaign_run.pause", "DZ", "paused"),
        ("campaign_run.resume", "DZ", "running"),
        ("campaign_run.cancel", "DZ", "cancelled"),
    ]
    assert all(e.detail["campaign"] == campaign_id and e.detail["countries"] == ["DZ"] for e in done)
    assert [e.detail["rows"] for e in done if e.action == "campaign_run.report"] == [2]
    assert_no_personal_data(env)


def test_a_run_shared_by_two_countries_needs_both(env: SimpleNamespace) -> None:
    _, run_id = schedule(env, "admin", "france_algeria", ["FR", "DZ"])
    assert call(env, "fr", "GET", f"/runs/{run_id}").json()["detail"].startswith(f"run {run_id} has sends to DZ, which")
    assert call(env, "dz", "GET", f"/runs/{run_id}").json()["detail"].startswith(f"run {run_id} has sends to FR, which")
    both = call(env, "fr_dz", "GET", f"/runs/{run_id}/report")
    assert both.status_code == 200 and set(both.json()["by_country"]) == {"FR", "DZ"}
    assert call(env, "fr_dz", "POST", f"/runs/{run_id}/pause").json()["state"] == "paused"
    row = env.audit.list(action="campaign_run.pause", target_id=run_id)[0]
    assert row.country is None and row.detail["countries"] == ["DZ", "FR"]   # two countries: none in the column


def test_a_run_reaching_families_of_no_known_country_needs_every_country(env: SimpleNamespace) -> None:
    _, run_id = schedule(env, "world", "everyone", None)
    report = call(env, "world", "GET", f"/runs/{run_id}/report").json()
    assert report["total"] == 5 and set(report["by_country"]) == {"FR", "DZ", "?"}
    for who in ("fr", "fr_dz"):
        detail = call(env, who, "POST", f"/runs/{run_id}/cancel").json()["detail"]
        assert "contacts of no known country" in detail, detail
    assert call(env, "fr", "GET", f"/runs/{run_id}").json()["detail"].startswith(f"run {run_id} has sends to DZ, contacts of no known country, which")
    assert call(env, "admin", "GET", f"/runs/{run_id}").status_code == 200


def test_an_unknown_run_is_still_404_for_a_one_country_operator(env: SimpleNamespace) -> None:
    for method, suffix in RUN_ROUTES:
        response = call(env, "fr", method, f"/runs/987654321{suffix}")
        assert response.status_code == 404 and response.json() == {"detail": "no run 987654321"}


def test_a_mediator_is_refused_whatever_the_countries(env: SimpleNamespace) -> None:
    _, run_id = schedule(env, "admin", "for_the_mediator", ["FR"])
    assert call(env, "mediator", "GET", f"/runs/{run_id}").status_code == 403
    assert call(env, "mediator", "POST", "/schedule", campaign_yaml("by_mediator", ["FR"])[1]).status_code == 403


# --- scheduling --------------------------------------------------------------------------------


def test_a_france_operator_schedules_for_france_only(env: SimpleNamespace) -> None:
    campaign_id, run_id = schedule(env, "fr", "france", ["FR"])
    assert call(env, "fr", "GET", f"/runs/{run_id}").json()["total"] == 2
    rows = list(csv.DictReader(io.StringIO(call(env, "fr", "GET", f"/runs/{run_id}/report.csv").text)))
    assert {r["country"] for r in rows} == {"FR"}
    assert call(env, "fr", "POST", f"/runs/{run_id}/pause").json()["state"] == "paused"
    (entry,) = env.audit.list(account_id=env.accounts["fr"].id, action="campaign.schedule", target_id=campaign_id)
    assert (entry.target_kind, entry.country) == ("campaign", "FR")
    assert entry.detail == {"countries": ["FR"], "runs": [run_id], "planned": 2, "inserted": 2, "enqueued": 2}

    runs_before = len(CampaignStore(env.engine).runs())
    for countries, expected in (
        (["DZ"], "reaches DZ, which you do not cover (your countries: FR)"),
        (["FR", "DZ"], "reaches DZ, which you do not cover (your countries: FR)"),
        (None, "lists no audience.countries, so it reaches every country: only an admin or an operator covering every country may schedule it"),
    ):
        refused_id, body = campaign_yaml("not_for_france", countries)
        response = call(env, "fr", "POST", "/schedule", body)
        assert response.status_code == 403, response.text
        assert response.json()["detail"].startswith(f"campaign {refused_id} {expected}"), response.json()
        assert env.audit.list(action="campaign.schedule_denied", target_id=refused_id)[0].account_id == env.accounts["fr"].id
    assert len(CampaignStore(env.engine).runs()) == runs_before, "a refused schedule plans nothing"
    assert_no_personal_data(env)


@pytest.mark.parametrize("who", ["world", "admin", "legacy"])
def test_every_country_operators_admins_and_the_legacy_token_schedule_anything(env: SimpleNamespace, who: str) -> None:
    campaign_id, run_id = schedule(env, who, f"unrestricted_{who}", None)
    assert call(env, who, "GET", f"/runs/{run_id}").json()["total"] == 5
    _, dz_run = schedule(env, who, f"algeria_{who}", ["DZ"])
    assert call(env, who, "POST", f"/runs/{dz_run}/cancel").json()["state"] == "cancelled"
    (entry,) = env.audit.list(action="campaign.schedule", target_id=campaign_id)
    assert entry.detail["countries"] == ["*"] and entry.country is None
    if who == "legacy":
        assert entry.account_id is None and entry.detail["actor"] == "operator-api-token"
    else:
        assert entry.account_id == env.accounts[who].id


def test_another_countrys_campaign_id_cannot_be_reused_to_reach_its_families(env: SimpleNamespace) -> None:
    """Scheduling plans into the runs of the same id and queues their pending sends with the
    new file's messages: an FR-only file under an Algerian campaign's id is refused."""
    campaign_id, run_id = schedule(env, "dz", "shared_id", ["DZ"])
    (run,) = CampaignStore(env.engine).runs(campaign_id)
    # The same id and day as the Algerian campaign: the same occurrence, the same run.
    _, body = campaign_yaml(campaign_id, ["FR"], day=dt.date.fromisoformat(run["occurrence"][:10]))
    assert call(env, "fr", "POST", "/validate", body).status_code == 200, "a valid file: only its id is refused"
    response = call(env, "fr", "POST", "/schedule", body)
    assert response.status_code == 403, response.text
    assert response.json()["detail"] == (
        f"campaign {campaign_id} already has run {run_id}, whose sends reach DZ, which you do not cover (your countries: FR): "
        "scheduling it again would queue those sends; give your campaign another id"
    )
    assert call(env, "dz", "GET", f"/runs/{run_id}").json()["total"] == 2, "the Algerian run is as it was"
    # Under that id, the FR-and-DZ operator may plan France's families into the run.
    assert call(env, "fr_dz", "POST", "/schedule", body).status_code == 200
    assert call(env, "dz", "GET", f"/runs/{run_id}").status_code == 403, "now it reaches France too"


# --- preview, validate and the runs list ---------------------------------------------------------


def test_the_preview_shows_only_the_callers_countries(env: SimpleNamespace) -> None:
    _, unrestricted = campaign_yaml("preview_all", None)
    mine = call(env, "fr", "POST", "/preview", unrestricted).json()
    assert mine["narrowed_to"] == ["FR"] and mine["by_country"] == {"FR": 2} and mine["planned"] == 2
    everything = call(env, "admin", "POST", "/preview", unrestricted).json()
    assert everything["narrowed_to"] is None and everything["planned"] == 5 and set(everything["by_country"]) >= {"FR", "DZ"}

    _, mixed = campaign_yaml("preview_mixed", ["FR", "DZ"])
    part = call(env, "fr", "POST", "/preview", mixed).json()
    assert part["narrowed_to"] == ["FR"] and part["by_country"] == {"FR": 2}
    whole = call(env, "fr_dz", "POST", "/preview", mixed).json()
    assert whole["narrowed_to"] is None and whole["by_country"] == {"FR": 2, "DZ": 2}

    algeria_id, algeria = campaign_yaml("preview_dz", ["DZ"])
    refused = call(env, "fr", "POST", "/preview", algeria)
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"campaign {algeria_id} reaches only DZ, none of which you cover (your countries: FR)"
    # Validation reads no family's data: anyone with the role may check any file.
    assert call(env, "fr", "POST", "/validate", algeria).json() == {"valid": True, "campaign": algeria_id}


def test_the_runs_list_shows_only_runs_the_caller_may_follow(env: SimpleNamespace) -> None:
    _, fr_run = schedule(env, "admin", "list_fr", ["FR"])
    _, dz_run = schedule(env, "admin", "list_dz", ["DZ"])
    _, both_run = schedule(env, "admin", "list_both", ["FR", "DZ"])

    def listed(who: str) -> set[int]:
        response = env.client.get("/api/operators/campaigns/runs", headers={"Authorization": f"Bearer {env.tokens[who]}"})
        assert response.status_code == 200, response.text
        return {run["run"] for run in response.json()["runs"]}

    assert {fr_run, dz_run, both_run} & listed("fr") == {fr_run}
    assert {fr_run, dz_run, both_run} & listed("dz") == {dz_run}
    assert {fr_run, dz_run, both_run} <= listed("fr_dz")
    assert {fr_run, dz_run, both_run} <= listed("admin")
    # What the list offers, the API allows.
    for run_id in listed("fr"):
        assert call(env, "fr", "GET", f"/runs/{run_id}").status_code == 200
