"""The operators' console over HTTP: /api/operators (indicators, contacts, imports, content,
campaign examples and runs) and the pages, with real accounts (jisr.auth: API tokens and a
console session with its CSRF token), a real SQLite database and an embedded Redis.

Security: a mediator is refused; an operator who covers France sees no Algerian contact,
indicator or import; search and filter parameters carrying SQL, LIKE wildcards, very long or
unusual text return only what matches (or a 422 saying why), and reach SQL as bound values.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jisr.auth.sessions import COOKIE
from jisr.auth.store import AccountStore
from jisr.console import operators as operators_console
from jisr.console.routes import install as install_consoles
from jisr.gateway import auth_routes, operators_api
from jisr.redisconn import connect_redis
from jisr.settings import Settings
from jisr.store.contacts import ContactStore, create_db_engine
from jisr.store.schema import audit_log, contacts
from pg_server import new_database, postgres_server

PASSWORD = "correct horse battery staple 42"


@pytest.fixture(scope="module")
def pg_server_url() -> Iterator[str]:
    with postgres_server(timezone="America/St_Johns") as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The API on SQLite and on PostgreSQL (LIKE escaping, case folding and binds differ)."""
    tmp: Path = tmp_path_factory.mktemp("operators")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'jisr.db'}"
    else:
        server = request.getfixturevalue("pg_server_url")
        url = new_database(server, "operators_api")
    settings = Settings(database_url=url, var_dir=tmp, operator_api_token=None)
    redis = connect_redis(None, directory=tmp)
    engine = create_db_engine(url)
    store = ContactStore(engine)
    app = FastAPI()
    app.include_router(auth_routes.router)
    app.include_router(operators_api.router)
    install_consoles(app)
    app.include_router(operators_console.router)
    app.state.services = SimpleNamespace(settings=settings, redis=redis, store=store, gateway=None)

    accounts = AccountStore(engine)
    made = {
        "admin": accounts.create("admin", "Admin", "admin", PASSWORD),
        "fr_operator": accounts.create("fr_operator", "Opératrice France", "operator", PASSWORD, countries="FR"),
        "dz_operator": accounts.create("dz_operator", "Opérateur Algérie", "operator", PASSWORD, countries="DZ"),
        "mediator": accounts.create("mediator", "Médiatrice", "mediator", PASSWORD, countries="FR", languages="fr,ar"),
    }
    tokens = {name: accounts.create_token(account.id, "tests").token for name, account in made.items()}

    ids = {}
    for key, address, profile in [
        ("fr_parent", "whatsapp:+33612345678", dict(country="FR", role="parent", language="fr", region="FR-IDF")),
        ("fr_student", "telegram:100_200", dict(country="FR", role="student", language="ary")),
        ("fr_percent", "webchat:50%off", dict(country="FR", language="fr")),
        ("fr_arabic", "messenger:7000001", dict(country="FR", role="parent", language="ar")),
        ("dz_parent", "whatsapp:+213550001234", dict(country="DZ", role="parent", language="ar")),
        ("dz_student", "telegram:300400", dict(country="DZ", role="student", language="ar")),
        ("nowhere", "webchat:session-xyz", {}),
    ]:
        contact = store.get_or_create(address, address.split(":", 1)[0])
        store.update_profile(contact.id, **profile)
        ids[key] = contact.id
    store.record_consent(ids["fr_parent"], "opted_in", "conversation", channel="whatsapp")
    store.record_consent(ids["fr_parent"], "opted_out", "conversation", channel="whatsapp")
    store.record_consent(ids["dz_parent"], "opted_out", "platform", "blocked the bot")
    # Unanswered questions from two families in each country, one with a formula in it.
    for key in ("fr_parent", "fr_student", "dz_parent", "dz_student"):
        country = "DZ" if key.startswith("dz") else "FR"
        store.log_inbound(ids[key], "whatsapp", f"q-{key}", f"=cmd|' /C calc'!A0 aide {country} 0612345678", [], intent="nlu_fallback", language="fr")

    with TestClient(app) as client:
        yield SimpleNamespace(client=client, ids=ids, tokens=tokens, accounts=made, engine=engine, store=store)
    engine.dispose()
    redis.close()


def as_(env: SimpleNamespace, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.tokens[who]}"}


def get(env: SimpleNamespace, who: str, path: str, **params: Any) -> Any:
    return env.client.get(path, params=params or None, headers=as_(env, who))


# -- who may use the API ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/operators/indicators", "/api/operators/contacts", "/api/operators/content", "/api/operators/campaigns/examples", "/api/operators/indicators/reached.csv"])
def test_a_mediator_is_refused_and_a_stranger_must_sign_in(env: SimpleNamespace, path: str) -> None:
    response = get(env, "mediator", path)
    assert response.status_code == 403, response.text
    assert "operator" in response.json()["detail"]
    assert env.client.get(path).status_code == 401


def test_a_mediator_cannot_read_a_contact_or_import(env: SimpleNamespace) -> None:
    assert get(env, "mediator", f"/api/operators/contacts/{env.ids['fr_parent']}").status_code == 403
    response = env.client.post("/api/operators/contacts/import", content=b"channel,address,consent\n", headers=as_(env, "mediator"))
    assert response.status_code == 403


# -- indicators ---------------------------------------------------------------------------------------


def test_indicators_are_narrowed_to_the_operators_countries(env: SimpleNamespace) -> None:
    data = get(env, "fr_operator", "/api/operators/indicators").json()
    assert data["scope"]["countries"] == ["FR"]
    names = [indicator["name"] for indicator in data["indicators"]]
    assert names == ["reached", "campaigns", "delivery", "questions", "unanswered", "handoffs", "response_times", "opt_outs"]
    questions = next(i for i in data["indicators"] if i["name"] == "questions")
    assert {row[1] for row in questions["rows"]} == {"FR"}
    assert sum(row[3] for row in questions["rows"]) == 2
    everything = get(env, "admin", "/api/operators/indicators").json()
    assert everything["scope"]["countries"] == ["*"]
    assert sum(row[3] for row in next(i for i in everything["indicators"] if i["name"] == "questions")["rows"]) == 4


def test_an_operator_cannot_ask_for_another_countrys_indicators(env: SimpleNamespace) -> None:
    for path in ("/api/operators/indicators", "/api/operators/indicators/opt_outs.csv", "/api/operators/campaigns/runs"):
        response = get(env, "fr_operator", path, country="DZ")
        assert response.status_code == 403, (path, response.text)
        assert "DZ" in response.json()["detail"]
    assert get(env, "fr_operator", "/api/operators/indicators", country="fr").status_code == 200
    assert get(env, "admin", "/api/operators/indicators", country="DZ").status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"until": "2026-02-30"},
        {"since": "2026-10-05", "until": "2026-10-01"},
        {"country": "FRA"},
        {"country": "F1"},
        {"country": "' OR 1=1 --"},
        {"since": "1' OR '1'='1"},
        {"since": "x" * 41},
    ],
)
def test_bad_filters_are_refused_with_a_reason(env: SimpleNamespace, params: dict[str, str]) -> None:
    response = get(env, "admin", "/api/operators/indicators", **params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_indicator_csv_export_with_formula_guard(env: SimpleNamespace) -> None:
    response = get(env, "fr_operator", "/api/operators/indicators/unanswered.csv", since="2000-01-01", until="2099-12-31")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="jisr-unanswered-2000-01-01-2099-12-31.csv"' in response.headers["content-disposition"]
    text = response.content.decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[0] == ["question", "messages", "families", "languages"]
    # Two French families asked the same thing: shown once, redacted, quoted against formulas.
    assert rows[1:] == [["'=cmd|' /c calc'!a0 aide fr [number]", "2", "2", "fr"]]
    assert get(env, "admin", "/api/operators/indicators/nope.csv").status_code == 404


# -- contacts: search ----------------------------------------------------------------------------------


def found(env: SimpleNamespace, who: str, **params: Any) -> list[int]:
    response = get(env, who, "/api/operators/contacts", **params)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["total"] == len(data["contacts"]) or data["total"] > data["page_size"]
    return sorted(c["id"] for c in data["contacts"])


def test_an_operator_lists_only_contacts_of_their_countries(env: SimpleNamespace) -> None:
    ids = env.ids
    fr = sorted([ids["fr_parent"], ids["fr_student"], ids["fr_percent"], ids["fr_arabic"]])
    assert found(env, "fr_operator") == fr
    assert found(env, "dz_operator") == sorted([ids["dz_parent"], ids["dz_student"]])
    assert found(env, "admin") == sorted(ids.values())      # admins also see contacts of no known country
    assert found(env, "fr_operator", q="213") == []           # the Algerian number, searched from France
    assert get(env, "fr_operator", "/api/operators/contacts", country="DZ").status_code == 403


def test_addresses_are_masked(env: SimpleNamespace) -> None:
    response = get(env, "admin", "/api/operators/contacts", q="612345678")
    [contact] = response.json()["contacts"]
    assert contact["address"] == "whatsapp:…678"
    assert "612345678" not in response.text


@pytest.mark.parametrize(
    "q, expected",
    [
        ("' OR 1=1 --", []),
        ("' OR '1'='1", []),
        ("1; DROP TABLE contacts; --", []),
        ("%", ["fr_percent"]),          # a literal percent sign, not "anything"
        ("_", ["fr_student"]),          # a literal underscore, not "any one character"
        ("50%", ["fr_percent"]),
        ("100_2", ["fr_student"]),
        ("\\", []),
        ("fr-idf", ["fr_parent"]),      # the region, case-insensitive
        ("+336", ["fr_parent"]),
        ("مرحبا", []),
        ("é" * 100, []),
        ("²", []),                      # a digit for str.isdigit, not for int()
        ("٣", []),
    ],
)
def test_search_with_hostile_or_odd_text_returns_only_what_matches(env: SimpleNamespace, q: str, expected: list[str]) -> None:
    assert found(env, "admin", q=q) == sorted(env.ids[key] for key in expected)


def test_search_by_contact_id_stays_within_the_countries(env: SimpleNamespace) -> None:
    # A number matches an id and the addresses holding those digits; never another country's.
    assert env.ids["fr_arabic"] in found(env, "fr_operator", q=str(env.ids["fr_arabic"]))
    assert env.ids["dz_student"] in found(env, "admin", q=str(env.ids["dz_student"]))
    assert not {env.ids["dz_student"], env.ids["dz_parent"]} & set(found(env, "fr_operator", q=str(env.ids["dz_student"])))


@pytest.mark.parametrize(
    "params",
    [
        {"q": "x" * 101},
        {"q": "a\x00b"},
        {"q": "a\nb"},
        {"language": "fr' OR 1=1"},
        {"language": "FRENCH"},
        {"consent": "yes"},
        {"channel": "sms"},
        {"page": "0"},
        {"page": "-1"},
        {"page": "99999999999999999999"},
        {"page": "1e3"},
    ],
)
def test_bad_search_parameters_are_refused_with_a_reason(env: SimpleNamespace, params: dict[str, str]) -> None:
    response = get(env, "admin", "/api/operators/contacts", **params)
    assert response.status_code == 422, response.text


def test_filters_combine(env: SimpleNamespace) -> None:
    ids = env.ids
    assert found(env, "admin", language="ar") == sorted([ids["fr_arabic"], ids["dz_parent"], ids["dz_student"]])
    assert found(env, "fr_operator", language="ar") == [ids["fr_arabic"]]
    assert found(env, "admin", consent="opted_out") == sorted([ids["fr_parent"], ids["dz_parent"]])
    assert found(env, "admin", consent="opted_out", country="FR") == [ids["fr_parent"]]
    assert found(env, "admin", channel="telegram", country="dz") == [ids["dz_student"]]
    assert get(env, "admin", "/api/operators/contacts", page="2").json()["contacts"] == []
    # The table is intact after every attempt above.
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar() == len(ids)


# -- contacts: one profile ------------------------------------------------------------------------------


def audit_rows(env: SimpleNamespace, action: str) -> list[dict[str, Any]]:
    with env.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(audit_log).where(audit_log.c.action == action))]


def test_a_contact_profile_with_consent_history_is_audit_logged(env: SimpleNamespace) -> None:
    response = get(env, "fr_operator", f"/api/operators/contacts/{env.ids['fr_parent']}")
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["contact"]["address"] == "whatsapp:…678" and data["contact"]["country"] == "FR"
    assert [(e["consent"], e["source"], e["channel"]) for e in data["consent_history"]] == [
        ("opted_in", "conversation", "whatsapp"), ("opted_out", "conversation", "whatsapp")
    ]
    assert "+33612345678" not in response.text
    rows = [r for r in audit_rows(env, "contact.read") if r["target_id"] == str(env.ids["fr_parent"])]
    assert rows and rows[-1]["account_id"] == env.accounts["fr_operator"].id and rows[-1]["country"] == "FR"


def test_an_operator_for_france_cannot_open_an_algerian_contact(env: SimpleNamespace) -> None:
    for key in ("dz_parent", "nowhere"):
        response = get(env, "fr_operator", f"/api/operators/contacts/{env.ids[key]}")
        assert response.status_code == 403, response.text
        assert "+213" not in response.text
    denied = [r for r in audit_rows(env, "contact.read_denied") if r["target_id"] == str(env.ids["dz_parent"])]
    assert denied and denied[-1]["account_id"] == env.accounts["fr_operator"].id
    assert get(env, "dz_operator", f"/api/operators/contacts/{env.ids['dz_parent']}").status_code == 200


@pytest.mark.parametrize("contact_id", ["0", "-3", "abc", "1 OR 1=1", str(2**63)])
def test_bad_contact_ids(env: SimpleNamespace, contact_id: str) -> None:
    assert get(env, "admin", f"/api/operators/contacts/{contact_id}").status_code == 422


def test_an_unknown_contact_is_404(env: SimpleNamespace) -> None:
    assert get(env, "admin", "/api/operators/contacts/999999").status_code == 404


# -- contacts: import ----------------------------------------------------------------------------------

HEADER = "channel,address,language,country,region,role,child_level,timezone,consent\n"


def post_import(env: SimpleNamespace, who: str, body: str, **params: Any) -> Any:
    return env.client.post("/api/operators/contacts/import", params=params, content=body.encode("utf-8"), headers={**as_(env, who), "Content-Type": "text/csv"})


def test_import_reports_file_line_and_field_errors(env: SimpleNamespace) -> None:
    body = HEADER + "whatsapp,+33 6 00 00 00 01,fr,FR,,parent,primary,Europe/Paris,yes\nwhatsapp,0600,fr,FR,,parent,,,yes\ntelegram,5551212,xx,FR,,uncle,,,maybe\n"
    response = post_import(env, "fr_operator", body, name="rentree.csv", basis="paper form, école Jules Ferry, 2026-09-02")
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["rows"], report["imported"], report["rejected"]) == (3, 1, 2)
    assert report["errors"][0].startswith("rentree.csv:3: address: ")
    assert any(line.startswith("rentree.csv:4: role: ") for line in report["errors"])
    assert any(line.startswith("rentree.csv:4: consent: ") for line in report["errors"])
    assert env.store.by_address("whatsapp:+33600000001").country == "FR"
    imports = audit_rows(env, "contacts.import")
    assert json.loads(imports[-1]["detail"])["imported"] == 1


def test_a_dry_run_writes_nothing_and_an_opt_in_needs_its_basis(env: SimpleNamespace) -> None:
    body = HEADER + "whatsapp,+33600000002,fr,FR,,parent,,,yes\n"
    report = post_import(env, "admin", body, dry_run="true", basis="form").json()
    assert report["dry_run"] and report["imported"] == 1
    assert env.store.by_address("whatsapp:+33600000002") is None
    response = post_import(env, "admin", body)
    assert response.status_code == 422
    assert "source-basis" in json.dumps(response.json()["detail"]) or "basis" in json.dumps(response.json()["detail"])
    assert env.store.by_address("whatsapp:+33600000002") is None


def test_an_operator_for_france_cannot_import_algerian_contacts(env: SimpleNamespace) -> None:
    body = HEADER + "whatsapp,+33600000003,fr,FR,,parent,,,no\nwhatsapp,+213550009999,ar,DZ,,parent,,,no\nwhatsapp,+33600000004,fr,,,parent,,,no\n"
    response = post_import(env, "fr_operator", body, name="mixed.csv")
    assert response.status_code == 403, response.text
    errors = response.json()["detail"]["errors"]
    assert errors == [
        "mixed.csv:3: country: DZ is not one of your countries (FR)",
        "mixed.csv:4: country: none given is not one of your countries (FR)",
    ]
    for number in ("+33600000003", "+213550009999", "+33600000004"):
        assert env.store.by_address(f"whatsapp:{number}") is None


def test_an_operator_for_france_cannot_move_an_algerian_contact_into_france(env: SimpleNamespace) -> None:
    body = HEADER + "telegram,555000111,fr,FR,,parent,,,no\nwhatsapp,+213550001234,fr,FR,,parent,,,no\n"
    response = post_import(env, "fr_operator", body, name="move.csv")
    assert response.status_code == 403, response.text
    assert response.json()["detail"]["errors"] == ["move.csv:3: address: this contact is in DZ, not one of your countries (FR)"]
    assert env.store.get(env.ids["dz_parent"]).country == "DZ"
    assert env.store.by_address("telegram:555000111") is None


@pytest.mark.parametrize("body", ["", "not,a,contact,list\n1,2,3,4\n", "\xff\xfe garbage"])
def test_an_unusable_file_is_refused_with_a_reason(env: SimpleNamespace, body: str) -> None:
    response = env.client.post("/api/operators/contacts/import", content=body.encode("latin-1"), headers=as_(env, "admin"))
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b.csv", "x" * 121, "bad\nname.csv"])
def test_import_file_names_are_checked(env: SimpleNamespace, name: str) -> None:
    assert post_import(env, "admin", HEADER, name=name).status_code == 422


# -- campaign examples, runs and content ---------------------------------------------------------------


def test_campaign_examples_are_listed_with_their_text(env: SimpleNamespace) -> None:
    examples = get(env, "fr_operator", "/api/operators/campaigns/examples").json()["examples"]
    names = [e["name"] for e in examples]
    assert names == sorted(p.stem for p in operators_api.EXAMPLES_DIR.glob("*.yml")) and "exam_period_parents" in names
    first = examples[0]
    assert first["text"] == (operators_api.EXAMPLES_DIR / f"{first['name']}.yml").read_text(encoding="utf-8")


def test_programmes_and_calendars_are_shown_read_only(env: SimpleNamespace) -> None:
    data = get(env, "fr_operator", "/api/operators/content").json()
    assert data["edited_in"] == {"programmes": "content/programmes.yml", "calendars": "content/calendars/"}
    assert {c["country"] for c in data["calendars"]} == {"FR", "ES", "IT", "DE", "BE", "NL", "DZ", "CI"}
    fr = next(c for c in data["calendars"] if c["country"] == "FR")
    assert fr["file"] == "content/calendars/fr-2026-27.yml" and fr["events"][0]["first_day"] <= fr["events"][-1]["first_day"]
    assert any(p["id"] == "e-madrassa" for p in data["programmes"])
    assert env.client.post("/api/operators/content", headers=as_(env, "admin")).status_code == 405


# -- pages -----------------------------------------------------------------------------------------------


class Browser:
    """One console session through the module's client (its event loop holds the Redis
    connection): the session cookie is sent by hand, so sessions do not mix in one cookie jar."""

    def __init__(self, env: SimpleNamespace, username: str) -> None:
        self.client = env.client
        response = self.client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        self.csrf = response.json()["csrf_token"]
        self.cookie = f"{COOKIE}={response.cookies[COOKIE]}"
        self.client.cookies.clear()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers={"Cookie": self.cookie}, **kwargs)

    def post(self, path: str, headers: dict[str, str], **kwargs: Any) -> Any:
        return self.client.post(path, headers={"Cookie": self.cookie, **headers}, **kwargs)


def login(env: SimpleNamespace, username: str) -> tuple[Browser, str]:
    browser = Browser(env, username)
    return browser, browser.csrf


def test_a_session_import_needs_the_csrf_token(env: SimpleNamespace) -> None:
    client, csrf = login(env, "fr_operator")
    body = HEADER + "telegram,424242,fr,FR,,student,,,no\n"
    refused = client.post("/api/operators/contacts/import", content=body, headers={"Content-Type": "text/csv"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert env.store.by_address("telegram:424242") is None
    accepted = client.post("/api/operators/contacts/import", content=body, headers={"Content-Type": "text/csv", "X-CSRF-Token": csrf})
    assert accepted.status_code == 200, accepted.text
    assert env.store.by_address("telegram:424242") is not None


@pytest.mark.parametrize("section", ["", "/campaigns", "/contacts", "/content"])
def test_the_pages_are_served_to_operators_in_the_shell(env: SimpleNamespace, section: str) -> None:
    client, _ = login(env, "fr_operator")
    response = client.get("/console/operators" + section)
    assert response.status_code == 200
    assert "/console/static/operators.js?v=" in response.text and "/console/static/operators.css?v=" in response.text
    assert f'data-page="operators-{section.strip("/") or "dashboard"}"' in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_the_accounts_page_is_for_admins_and_mediators_get_a_403_page(env: SimpleNamespace) -> None:
    operator, _ = login(env, "fr_operator")
    assert operator.get("/console/operators/accounts").status_code == 403
    admin, _ = login(env, "admin")
    assert admin.get("/console/operators/accounts").status_code == 200
    mediator, _ = login(env, "mediator")
    page = mediator.get("/console/operators")
    assert page.status_code == 403 and "operators.js" not in page.text
    assert admin.get("/console/operators/nope").status_code == 404
    response = env.client.get("/console/operators/contacts", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/console/login?next=")


def test_the_script_and_styles_are_served(env: SimpleNamespace) -> None:
    script = env.client.get("/console/static/operators.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    # Data goes into the page as text: the script never writes markup.
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text and "eval(" not in script.text
    assert "http://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    styles = env.client.get("/console/static/operators.css")
    assert styles.status_code == 200 and "@import" not in styles.text and "url(" not in styles.text
