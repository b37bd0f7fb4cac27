"""/api/campaigns over the running gateway of the `stack` fixture (conftest.py): the operator
token, validation errors that name file, line and field, and a run from preview to report.

The stack's database is shared with the other end-to-end tests, so the campaigns here reach
an audience of their own (Icelandic telegram contacts) and assertions are about those."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jisr.gateway import campaigns_api
from jisr.settings import Settings
from jisr.store import schema
from jisr.store.contacts import create_db_engine

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC).replace(microsecond=0)
DAY = (NOW + dt.timedelta(days=30)).date()  # in the future: the jobs wait, nothing is sent
_names = itertools.count()


def campaign_yaml(name: str, *, country: str = "IS", enabled: bool = True) -> str:
    return f"""id: {name}
name: Test {name}
enabled: {str(enabled).lower()}
audience:
  countries: [{country}]
  languages: [fr]
  channels: [telegram]
trigger:
  at: "{DAY.isoformat()}T12:00"
send_window: {{start: "09:00", end: "20:00"}}
fallback_language: fr
messages:
  fr: "Bonjour, rappel pour les familles en {{country}}."
"""


@pytest.fixture()
def api(stack: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{stack['gateway']}/api/campaigns", headers={"Authorization": f"Bearer {stack['operator_api_token']}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture()
def engine(stack: dict[str, Any]) -> Iterator[Any]:
    engine = create_db_engine(stack["database_url"])
    yield engine
    engine.dispose()


def add_contact(engine: Any, address: str, **fields: Any) -> int:
    values = dict(
        channel="telegram", language="fr", country="IS", role="parent", consent="opted_in", timezone="Atlantic/Reykjavik", created_at=NOW - dt.timedelta(days=2)
    )
    values.update(fields)
    with engine.begin() as conn:
        return int(conn.execute(schema.contacts.insert().values(address=address, **values)).inserted_primary_key[0])


# --- Access ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "operator-test-token"},
        {"Authorization": "Basic b3BlcmF0b3ItdGVzdC10b2tlbg=="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer op\u00e9rator-test-token".encode("utf-8")},  # not ASCII: still a 401, not a 500
    ],
)
def test_every_route_wants_the_operator_token(stack, headers):
    base = f"{stack['gateway']}/api/campaigns"
    for method, path in (("POST", "/validate"), ("POST", "/schedule"), ("GET", "/runs/1"), ("POST", "/runs/1/cancel"), ("GET", "/runs/1/report.csv")):
        response = httpx.request(method, base + path, headers=headers, content=campaign_yaml("x"), timeout=30)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        # jisr.auth's reasons: no credentials, a malformed header, or an unknown token.
        assert "API token" in response.json()["detail"], response.text


def test_without_a_legacy_token_configured_only_accounts_get_in(tmp_path):
    """Since accounts (jisr.auth), the shared token is optional: unset, the API is still closed
    to anyone without an operator's or admin's session or API token, never open."""
    from jisr.redisconn import connect_redis
    from jisr.store.contacts import ContactStore

    app = FastAPI()
    app.include_router(campaigns_api.router)
    url = f"sqlite:///{tmp_path / 'jisr.db'}"
    redis = connect_redis(None, directory=tmp_path)
    app.state.services = SimpleNamespace(
        settings=Settings(operator_api_token=None, database_url=url, var_dir=tmp_path), store=ContactStore(create_db_engine(url)), redis=redis
    )
    try:
        with TestClient(app) as client:
            for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer anything"}, {"Authorization": "Bearer operator-test-token"}):
                response = client.post("/api/campaigns/validate", content=campaign_yaml("x"), headers=headers)
                assert response.status_code == 401, (headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
    finally:
        redis.close()


def test_production_refuses_a_placeholder_token():
    strong = dict(
        env="production",
        twilio_auth_token="t" * 32,
        telegram_secret_token="s" * 32,
        messenger_app_secret="a" * 32,
        messenger_verify_token="v" * 32,
        messenger_page_token="p" * 32,
        webchat_secret="w" * 32,
        log_pseudonym_key="k" * 32,
    )
    for token in ("changeme", "short", "dev"):
        with pytest.raises(ValueError, match="JISR_OPERATOR_API_TOKEN"):
            Settings(**strong, operator_api_token=token).check_secrets()
    # Unset is fine (accounts have their own tokens); set, it must be a real secret.
    for token in (None, "", "o" * 32):
        Settings(**strong, operator_api_token=token).check_secrets()


# --- Validate -------------------------------------------------------------------------------


def test_a_valid_campaign(api):
    response = api.post("/validate", content=campaign_yaml("valid_one"), headers={"Content-Type": "application/yaml"})
    assert response.status_code == 200
    assert response.json() == {"valid": True, "campaign": "valid_one"}


@pytest.mark.parametrize(
    "body, expected",
    [
        (campaign_yaml("bad_country", country="XX"), "exam.yml:5: audience.countries[0]: 'XX' is not an ISO 3166 alpha-2"),
        ("id: broken\nname: [unclosed\n", "exam.yml:3: yaml: "),
        (campaign_yaml("Not An Id"), "exam.yml:1: id: 'Not An Id' must be lowercase"),
        ("", "exam.yml:1: campaign: the file is empty"),
        ("id: x\n".encode("utf-8") + b"\xff\xfe", "exam.yml:1: campaign: is not UTF-8 text"),
    ],
)
def test_refusals_name_the_file_line_and_field(api, body, expected):
    response = api.post("/validate", params={"name": "exam.yml"}, content=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(expected), response.json()


def test_without_a_name_the_file_is_campaign_yml(api):
    response = api.post("/validate", content=campaign_yaml("bad", country="XX"))
    assert response.status_code == 422
    assert response.json()["detail"].startswith("campaign.yml:5: audience.countries[0]: ")


def test_a_body_too_large_is_refused(api):
    response = api.post("/validate", content=b"#" * (campaign_yaml("x").__len__() + campaigns_api.MAX_CAMPAIGN_BYTES))
    assert response.status_code == 413


# --- A run from preview to report --------------------------------------------------------------


def test_preview_schedule_status_control_and_report(api, engine):
    name = f"api_round_trip_{next(_names)}"
    reached = [add_contact(engine, f"telegram:{9_100_000 + i}") for i in range(3)]
    opted_out = add_contact(engine, "telegram:9100099", consent="opted_out")
    body = campaign_yaml(name)
    now = NOW.isoformat()

    preview = api.post("/preview", params={"now": now}, content=body)
    assert preview.status_code == 200, preview.text
    data = preview.json()
    assert data["campaign"] == name
    assert data["planned"] == 3 and data["by_country"] == {"IS": 3} and data["by_channel"] == {"telegram": 3}
    assert sum(data["excluded"].values()) == 1
    assert list(data["messages"]) == ["fr"] and data["messages"]["fr"].startswith("Bonjour, rappel pour les familles en ")

    scheduled = api.post("/schedule", params={"now": now}, content=body)
    assert scheduled.status_code == 200, scheduled.text
    result = scheduled.json()
    (run_id,) = result["runs"].values()
    assert (result["planned"], result["enqueued"], result["already_queued"]) == (3, 3, 0)
    assert result["queued_by_run"] == {str(run_id): 3}

    again = api.post("/schedule", params={"now": now}, content=body).json()
    assert again["runs"] == result["runs"] and (again["enqueued"], again["inserted"], again["existing"]) == (0, 0, 4), "scheduling again sends nothing twice"

    status = api.get(f"/runs/{run_id}").json()
    assert (status["run"], status["campaign"], status["state"], status["total"]) == (run_id, name, "running", 4)
    assert status["by_status"] == {"queued": 3, "skipped": 1}
    assert status["progress"] == 0.25

    assert api.post(f"/runs/{run_id}/pause").json() == {"run": run_id, "state": "paused", "changed": True}
    twice = api.post(f"/runs/{run_id}/pause")
    assert twice.status_code == 409 and "pause does not apply to a paused run" in twice.json()["detail"]
    assert api.get(f"/runs/{run_id}").json()["state"] == "paused"
    assert api.post(f"/runs/{run_id}/resume").json() == {"run": run_id, "state": "running", "changed": True}
    assert api.post(f"/runs/{run_id}/resume").status_code == 409
    assert api.post(f"/runs/{run_id}/cancel").json() == {"run": run_id, "state": "cancelled", "changed": True}
    assert api.post(f"/runs/{run_id}/resume").status_code == 409

    report = api.get(f"/runs/{run_id}/report")
    assert report.status_code == 200
    data = report.json()
    assert (data["run"], data["campaign"], data["state"], data["total"], data["planned"], data["queued"]) == (run_id, name, "cancelled", 4, 3, 3)
    assert sum(data["skipped_by_reason"].values()) == 1 and data["by_country"] == {"IS": {"queued": 3, "skipped": 1}}

    exported = api.get(f"/runs/{run_id}/report.csv")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert f'filename="run-{run_id}.csv"' in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(int(r["contact_id"]) for r in rows) == sorted([*reached, opted_out])
    assert "9100" not in exported.text.replace(str(run_id), ""), "no addresses in the report"


def test_a_disabled_campaign_is_previewed_but_not_scheduled(api):
    body = campaign_yaml(f"api_disabled_{next(_names)}", enabled=False)
    assert api.post("/preview", content=body).status_code == 200
    response = api.post("/schedule", content=body)
    assert response.status_code == 409
    assert "is disabled (enabled: false); nothing scheduled" in response.json()["detail"]


@pytest.mark.parametrize("now", ["tomorrow", "2026-13-01T10:00", "9999-12-31T23:59-05:00", "1900-01-01"])
def test_a_bad_now_is_refused(api, now):
    response = api.post("/preview", params={"now": now}, content=campaign_yaml("bad_now"))
    assert response.status_code == 422
    assert "now takes an ISO date-time" in response.json()["detail"]


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/cancel"), ("GET", "/report"), ("GET", "/report.csv")])
def test_unknown_runs_are_404_and_impossible_ids_are_refused(api, method, suffix):
    response = api.request(method, f"/runs/987654321{suffix}")
    assert response.status_code == 404
    assert response.json() == {"detail": "no run 987654321"}
    for bad in ("0", "-1", str(2**63), "abc"):
        assert api.request(method, f"/runs/{bad}{suffix}").status_code == 422
