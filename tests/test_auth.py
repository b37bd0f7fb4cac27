"""Accounts and authentication (jisr.auth, jisr.gateway.auth_routes) with real Redis and SQLite.

Most tests run the accounts and campaign routers in a FastAPI app of their own (a fresh
embedded Redis and SQLite file each), so rate limits, sessions and settings do not leak from
one test into another; one test goes through the full gateway of the `stack` fixture to show
the routes are wired into create_app. The CLI is run as a real process.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jisr.auth import passwords
from jisr.auth.audit import AuditLog
from jisr.auth.sessions import COOKIE, SessionStore
from jisr.auth.store import AccountError, AccountStore
from jisr.gateway import auth_routes, campaigns_api
from jisr.redisconn import connect_redis
from jisr.settings import Settings
from jisr.store import schema
from jisr.store.contacts import ContactStore, create_db_engine

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple"
LEGACY_TOKEN = "operator-test-token-0123456789"
CAMPAIGN = """id: auth_check
name: Auth check
audience:
  countries: [IS]
  languages: [fr]
  channels: [telegram]
trigger:
  at: "2030-01-10T12:00"
send_window: {start: "09:00", end: "20:00"}
fallback_language: fr
messages:
  fr: "Bonjour."
"""


# --- The app under test -----------------------------------------------------------------------


class AuthApp(SimpleNamespace):
    client: TestClient
    store: AccountStore
    audit: AuditLog
    engine: Any
    db_path: Path

    def new_client(self) -> TestClient:
        """A second browser (its own cookie jar) on the same app, and on the same event loop as
        the first (the app's Redis client belongs to one loop, as in a running gateway)."""
        browser = TestClient(self.client.app)
        browser.portal = self.client.portal
        return browser

    def login(self, username: str, password: str = PASSWORD, client: TestClient | None = None) -> dict[str, Any]:
        response = (client or self.client).post("/api/auth/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return response.json()


def build_app(tmp_path: Path, **overrides: Any) -> Iterator[AuthApp]:
    url = f"sqlite:///{tmp_path / 'jisr.db'}"
    settings = Settings(database_url=url, var_dir=tmp_path, operator_api_token=LEGACY_TOKEN, **overrides)
    engine = create_db_engine(url)
    redis = connect_redis(None, directory=tmp_path)
    app = FastAPI()
    app.include_router(auth_routes.router)
    app.include_router(campaigns_api.router)
    app.state.services = SimpleNamespace(settings=settings, store=ContactStore(engine), redis=redis)
    store = AccountStore(engine)
    try:
        with TestClient(app) as client:
            yield AuthApp(client=client, store=store, audit=AuditLog(engine), engine=engine, db_path=tmp_path / "jisr.db")
    finally:
        redis.close()
        engine.dispose()


@pytest.fixture()
def web(tmp_path: Path) -> Iterator[AuthApp]:
    yield from build_app(tmp_path)


@pytest.fixture()
def people(web: AuthApp) -> dict[str, Any]:
    """An admin, an operator for France and Belgium, and a mediator for Spain."""
    return {
        "admin": web.store.create("root", "Root Admin", "admin", PASSWORD),
        "operator": web.store.create("olivia", "Olivia O", "operator", PASSWORD, "FR,BE", "fr"),
        "mediator": web.store.create("samir", "Samir S", "mediator", PASSWORD, "ES", "es,ar,ary"),
    }


def csrf_headers(me: dict[str, Any]) -> dict[str, str]:
    return {"X-CSRF-Token": me["csrf_token"]}


# --- Passwords --------------------------------------------------------------------------------


def test_password_hash_is_self_describing_salted_scrypt():
    first, second = passwords.hash_password(PASSWORD), passwords.hash_password(PASSWORD)
    assert first != second  # a random salt each time
    algorithm, n, r, p, salt, digest = first.split("$")
    assert (algorithm, int(n), int(r), int(p)) == ("scrypt", passwords.N, passwords.R, passwords.P)
    assert salt and digest and PASSWORD not in first
    assert passwords.verify_password(PASSWORD, first) and passwords.verify_password(PASSWORD, second)
    assert not passwords.verify_password(PASSWORD + "!", first)
    assert not passwords.verify_password(PASSWORD, "scrypt$oops") and not passwords.verify_password(PASSWORD, "")
    # Normalised (NFKC): the same word composed or decomposed is the same password.
    composed = passwords.hash_password("\u00e9cole du quartier")
    assert passwords.verify_password("e\u0301cole du quartier", composed)


def test_a_short_password_is_refused_with_the_reason(web):
    for short in ("", "123456789", "         a"[:9]):
        with pytest.raises(passwords.PasswordError, match="at least 10 characters"):
            web.store.create("shorty", "Shorty", "mediator", short, "FR")
    with pytest.raises(passwords.PasswordError, match="only spaces"):
        passwords.hash_password(" " * 12)
    assert web.store.get_by_username("shorty") is None


def test_old_parameters_are_rehashed_at_the_next_login(web):
    account = web.store.create("legacy", "Legacy", "mediator", PASSWORD, "FR")
    weak = "scrypt$1024$8$1$" + passwords._b64(b"0123456789abcdef") + "$" + passwords._b64(passwords._scrypt(PASSWORD, b"0123456789abcdef", 1024, 8, 1, 32))
    with web.engine.begin() as conn:
        conn.execute(schema.accounts.update().where(schema.accounts.c.id == account.id).values(password_hash=weak))
    assert web.store.verify_login("legacy", PASSWORD) is not None
    with web.engine.connect() as conn:
        stored = conn.execute(sa.select(schema.accounts.c.password_hash).where(schema.accounts.c.id == account.id)).scalar_one()
    assert stored != weak and not passwords.needs_rehash(stored) and passwords.verify_password(PASSWORD, stored)


def test_the_database_holds_no_plain_password_nor_token(web, people):
    token = web.store.create_token(people["operator"].id, "nightly").token
    web.engine.dispose()  # checkpoint the WAL so the file holds everything written
    raw = b"".join(p.read_bytes() for p in web.db_path.parent.glob("jisr.db*"))
    assert PASSWORD.encode() not in raw
    assert token.encode() not in raw
    with web.engine.connect() as conn:
        hashes = conn.execute(sa.select(schema.accounts.c.password_hash)).scalars().all()
    assert len(hashes) == 3 and all(h.startswith("scrypt$") for h in hashes)


# --- Accounts: input checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(role="boss"), "role is one of admin, operator, mediator"),
        (dict(countries="FR,XX"), "unknown ISO 3166 code(s) XX"),
        (dict(countries="*,FR"), '"*" already means every country'),
        (dict(languages="fr,en"), "unknown language form(s) en"),
        (dict(username="Bad Name!"), "a username has 2 to 64 characters"),
        (dict(display_name="  "), "a display name is needed"),
    ],
)
def test_bad_account_input_is_refused_with_the_reason(web, fields, message):
    values = dict(username="newbie", display_name="New", role="mediator", password=PASSWORD, countries="FR", languages="fr")
    values.update(fields)
    with pytest.raises(AccountError) as error:
        web.store.create(**values)
    assert message in str(error.value)


def test_account_lifecycle_in_the_store(web):
    created = web.store.create("Nadia", "Nadia  B", "mediator", PASSWORD, "be, fr", "FR,ar")
    assert (created.username, created.display_name, created.countries, created.languages) == ("nadia", "Nadia B", ("BE", "FR"), ("ar", "fr"))
    assert web.store.get(created.id) == created
    assert web.store.verify_login("NADIA", PASSWORD) == created
    assert web.store.verify_login("nadia", "wrong password!") is None
    updated = web.store.update(created.id, role="operator", countries="*", languages="ary")
    assert (updated.role, updated.countries, updated.languages, updated.covers_country("DZ")) == ("operator", ("*",), ("ary",), True)
    assert web.store.deactivate(created.id).active is False
    assert web.store.verify_login("nadia", PASSWORD) is None  # the right password, but deactivated
    assert [a.username for a in web.store.list()] == ["nadia"]
    with pytest.raises(AccountError, match="exists already"):
        web.store.create("nadia", "Other", "mediator", PASSWORD, "FR")


def test_the_last_admin_cannot_be_removed(web, people):
    with pytest.raises(AccountError, match="last active admin"):
        web.store.deactivate(people["admin"].id)
    with pytest.raises(AccountError, match="last active admin"):
        web.store.update(people["admin"].id, role="operator")
    second = web.store.create("root2", "Second Admin", "admin", PASSWORD)
    assert web.store.deactivate(people["admin"].id).active is False
    assert web.store.get(second.id).active


# --- Signing in and out -----------------------------------------------------------------------


def test_login_sets_a_strict_httponly_cookie_and_me_gives_the_csrf_token(web, people):
    response = web.client.post("/api/auth/login", json={"username": "samir", "password": PASSWORD})
    assert response.status_code == 200, response.text
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # public_url is http:// here
    body = response.json()
    assert body["account"] == {
        "id": people["mediator"].id,
        "username": "samir",
        "display_name": "Samir S",
        "role": "mediator",
        "countries": ["ES"],
        "languages": ["ar", "ary", "es"],
        "active": True,
    }
    me = web.client.get("/api/auth/me").json()
    assert me["account"]["username"] == "samir" and me["csrf_token"] == body["csrf_token"] and len(me["csrf_token"]) >= 32


def test_wrong_password_or_unknown_user_is_401_and_no_cookie(web, people):
    for username, password in (("samir", "not the password"), ("nobody", PASSWORD), ("samir", "")):
        response = web.client.post("/api/auth/login", json={"username": username, "password": password})
        assert response.status_code == 401
        assert response.json() == {"detail": "wrong username or password"}
        assert COOKIE not in response.headers.get("set-cookie", "")
    assert web.client.get("/api/auth/me").status_code == 401


def test_the_cookie_is_secure_behind_https(tmp_path):
    for app in build_app(tmp_path, public_url="https://jisr.example.org"):
        app.store.create("secure", "Secure", "mediator", PASSWORD, "FR")
        response = app.client.post("/api/auth/login", json={"username": "secure", "password": PASSWORD})
        assert response.status_code == 200
        assert "Secure" in response.headers["set-cookie"]
        assert "Secure" in app.client.get("/console/login").headers["set-cookie"]  # the login form's own cookie too


def test_the_html_login_form_signs_in_and_redirects(web, people):
    assert "Password" in web.client.get("/console/login", headers={"Accept-Language": "en"}).text
    page = web.client.get("/console/login", params={"next": "/console/mediation"})
    assert page.status_code == 200 and "Mot de passe" in page.text and '<html lang="fr" dir="ltr">' in page.text
    assert "<script" not in page.text and "http" not in page.text.split("<body>")[1]  # no external asset
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = web.client.post(
        "/console/login",
        data={"username": "olivia", "password": PASSWORD, "csrf_token": form_token, "next": "/console/mediation"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/console/mediation"
    assert web.client.get("/api/auth/me").json()["account"]["username"] == "olivia"


def test_the_login_form_refuses_a_post_from_another_site_and_open_redirects(web, people):
    # No login cookie from our own form (another site posting): refused, nobody signed in.
    stranger = web.new_client()
    response = stranger.post("/console/login", data={"username": "olivia", "password": PASSWORD, "csrf_token": "forged"})
    assert response.status_code == 403 and "expiré" in response.text
    assert stranger.get("/api/auth/me").status_code == 401
    # A wrong password re-shows the form with the error, in the console's language (French by
    # default; the other five: tests/test_console_languages.py).
    page = web.client.get("/console/login")
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    wrong = web.client.post("/console/login", data={"username": "olivia", "password": "nope nope nope", "csrf_token": form_token})
    assert wrong.status_code == 401 and "Identifiant ou mot de passe incorrect" in wrong.text
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', wrong.text).group(1)
    english = web.client.post(
        "/console/login", data={"username": "olivia", "password": "nope nope nope", "csrf_token": form_token}, headers={"Accept-Language": "en-GB"}
    )
    assert english.status_code == 401 and "Wrong username or password" in english.text
    # next= never leads off the site.
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        page = web.client.get("/console/login", params={"next": target})
        form_token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        response = web.client.post(
            "/console/login", data={"username": "olivia", "password": PASSWORD, "csrf_token": form_token, "next": target}, follow_redirects=False
        )
        assert response.status_code == 303 and response.headers["location"] == "/console", target


def test_logout_ends_the_session_for_good(web, people):
    me = web.login("samir")
    cookie = web.client.cookies.get(COOKIE)
    assert web.client.post("/api/auth/logout", headers=csrf_headers(me)).status_code == 204
    assert web.client.get("/api/auth/me").status_code == 401
    # Replaying the old cookie (copied before logout) does not bring the session back.
    replay = web.new_client()
    replay.cookies.set(COOKIE, cookie)
    response = replay.get("/api/auth/me")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_html_logout_wants_the_form_csrf_field(web, people):
    me = web.login("samir")
    refused = web.client.post("/console/logout", data={}, follow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert web.client.get("/api/auth/me").status_code == 200
    done = web.client.post("/console/logout", data={"csrf_token": me["csrf_token"]}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/console/login"
    assert web.client.get("/api/auth/me").status_code == 401


def test_a_deactivated_accounts_session_and_tokens_stop_at_once(web, people):
    mediator = web.new_client()
    web.login("samir", client=mediator)
    token = web.store.create_token(people["mediator"].id, "phone").token
    assert mediator.get("/api/auth/me").status_code == 200
    admin_me = web.login("root")
    response = web.client.delete(f"/api/accounts/{people['mediator'].id}", headers=csrf_headers(admin_me))
    assert response.status_code == 200 and response.json()["active"] is False
    refused = mediator.get("/api/auth/me")
    assert refused.status_code == 401 and "deactivated" in refused.json()["detail"] or refused.json()["detail"].startswith("your session")
    assert web.new_client().get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # And from the CLI side (SQL only, no Redis): an operator's session stops at the next request.
    operator = web.new_client()
    web.login("olivia", client=operator)
    web.store.deactivate(people["operator"].id)
    response = operator.get("/api/auth/me")
    assert response.status_code == 401 and response.json()["detail"] == "this account is deactivated"
    assert web.new_client().post("/api/auth/login", json={"username": "olivia", "password": PASSWORD}).status_code == 401


def test_a_new_password_ends_older_sessions(web, people):
    browser = web.new_client()
    web.login("samir", client=browser)
    web.store.set_password(people["mediator"].id, "a brand new passphrase")  # as `jisr accounts passwd` does
    response = browser.get("/api/auth/me")
    assert response.status_code == 401 and "password changed" in response.json()["detail"]
    web.login("samir", "a brand new passphrase", client=browser)
    assert browser.get("/api/auth/me").status_code == 200


def test_changing_ones_own_password_keeps_this_browser_signed_in(web, people):
    other = web.new_client()
    web.login("samir", client=other)
    me = web.login("samir")
    wrong = web.client.post("/api/auth/password", json={"current_password": "not it at all", "new_password": "another good passphrase"}, headers=csrf_headers(me))
    assert wrong.status_code == 403
    short = web.client.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "short"}, headers=csrf_headers(me))
    assert short.status_code == 422 and "at least 10 characters" in short.json()["detail"]
    done = web.client.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "another good passphrase"}, headers=csrf_headers(me))
    assert done.status_code == 204
    assert web.client.get("/api/auth/me").status_code == 200
    assert other.get("/api/auth/me").status_code == 401


def test_sessions_expire_when_idle_and_in_any_case_after_the_absolute_limit(web):
    async def scenario() -> None:
        handle = web.client.app.state.services.redis
        client = handle.client()
        try:
            idle = SessionStore(client, idle_seconds=1, absolute_seconds=3600)
            session = await idle.create(1, "")
            assert (await idle.get(session.id)) is not None
            await _sleep(1.3)
            assert await idle.get(session.id) is None
            absolute = SessionStore(client, idle_seconds=3600, absolute_seconds=2)
            session = await absolute.create(1, "")
            for _ in range(3):  # used all the time, yet it ends
                await _sleep(0.5)
                assert (await absolute.get(session.id)) is not None
            await _sleep(0.8)
            assert await absolute.get(session.id) is None
        finally:
            await client.close()

    web.client.portal.call(scenario)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def test_session_and_limit_settings_must_be_positive():
    for name in ("session_idle_minutes", "session_absolute_hours", "login_failures_per_username", "login_failures_per_client", "login_failure_window_minutes"):
        with pytest.raises(ValueError, match="must be at least 1"):
            Settings(**{name: 0})


def test_signing_in_again_ends_the_browsers_previous_session(web, people):
    web.login("samir")
    first = web.client.cookies.get(COOKIE)
    web.login("samir")
    assert web.client.cookies.get(COOKIE) != first
    replay = web.new_client()
    replay.cookies.set(COOKIE, first)
    assert replay.get("/api/auth/me").status_code == 401


def test_the_idle_limit_comes_from_settings(tmp_path):
    for app in build_app(tmp_path, session_idle_minutes=30, session_absolute_hours=2):
        app.store.create("timed", "Timed", "mediator", PASSWORD, "FR")
        response = app.client.post("/api/auth/login", json={"username": "timed", "password": PASSWORD})
        assert "Max-Age=7200" in response.headers["set-cookie"]
        handle = app.client.app.state.services.redis
        sync = handle.sync_client()
        keys = [k for k in sync.keys("jisr:session:*")]
        assert len(keys) == 1 and 1700 < sync.ttl(keys[0]) <= 1800
        # Redis holds a digest of the id, never the cookie itself.
        assert app.client.cookies.get(COOKIE) not in keys[0].decode()


# --- Login rate limiting ----------------------------------------------------------------------


def test_too_many_failures_for_a_username_is_429_even_with_the_right_password(web, people):
    for _ in range(5):
        assert web.client.post("/api/auth/login", json={"username": "samir", "password": "guess guess guess"}).status_code == 401
    for password in ("guess guess guess", PASSWORD):
        response = web.client.post("/api/auth/login", json={"username": "samir", "password": password})
        assert response.status_code == 429
        assert 0 < int(response.headers["retry-after"]) <= 15 * 60
        assert "too many failed sign-ins" in response.json()["detail"]
    # Another person is not locked out by it.
    assert web.client.post("/api/auth/login", json={"username": "olivia", "password": PASSWORD}).status_code == 200
    # The HTML form says it too, with Retry-After.
    page = web.client.get("/console/login")
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = web.client.post("/console/login", data={"username": "samir", "password": PASSWORD, "csrf_token": form_token})
    assert form.status_code == 429 and "Trop de tentatives" in form.text and int(form.headers["retry-after"]) > 0


def test_a_success_clears_the_usernames_failures(web, people):
    for _ in range(4):
        assert web.client.post("/api/auth/login", json={"username": "samir", "password": "guess guess guess"}).status_code == 401
    web.login("samir")
    for _ in range(4):
        assert web.client.post("/api/auth/login", json={"username": "samir", "password": "guess guess guess"}).status_code == 401
    web.login("samir")


def test_one_client_trying_many_usernames_is_limited(tmp_path):
    for app in build_app(tmp_path, login_failures_per_client=6):
        app.store.create("victim", "Victim", "mediator", PASSWORD, "FR")
        for number in range(6):
            assert app.client.post("/api/auth/login", json={"username": f"user{number}", "password": "guess guess guess"}).status_code == 401
        response = app.client.post("/api/auth/login", json={"username": "victim", "password": PASSWORD})
        assert response.status_code == 429 and int(response.headers["retry-after"]) > 0


def test_a_burst_of_parallel_attempts_cannot_slip_under_the_limit(web):
    from jisr.auth.ratelimit import LoginLimiter

    async def burst() -> list:
        client = web.client.app.state.services.redis.client()
        try:
            limiter = LoginLimiter(client, per_username=5, per_client=100, window_seconds=900)
            import asyncio

            return await asyncio.gather(*(limiter.begin("samir", "10.0.0.9") for _ in range(40)))
        finally:
            await client.close()

    outcomes = web.client.portal.call(burst)
    assert sum(refusal is None for refusal, _attempt in outcomes) == 5


def test_clients_are_limited_by_ipv4_address_or_ipv6_slash_64():
    from jisr.auth.ratelimit import client_bucket

    assert client_bucket("2001:db8:1:2:aaaa::1") == client_bucket("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_bucket("2001:db8:1:3::1") != client_bucket("2001:db8:1:2::1")
    assert client_bucket("::ffff:192.0.2.7") == client_bucket("192.0.2.7") == "192.0.2.7"
    assert client_bucket("testclient") == "testclient" and client_bucket("") == "unknown"


def test_the_limiter_keys_hold_no_username_or_address(web, people):
    web.client.post("/api/auth/login", json={"username": "samir", "password": "guess guess guess"})
    keys = [k.decode() for k in web.client.app.state.services.redis.sync_client().keys("jisr:login-failures:*")]
    assert len(keys) == 2 and not any("samir" in k or "testclient" in k for k in keys)


# --- CSRF -------------------------------------------------------------------------------------


def test_a_cookie_authenticated_change_needs_the_csrf_token(web, people):
    me = web.login("root")
    target = f"/api/accounts/{people['mediator'].id}"
    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": me["csrf_token"] + "x"}):
        response = web.client.patch(target, json={"countries": "ES,IT"}, headers=headers)
        assert response.status_code == 403, headers
        assert "CSRF" in response.json()["detail"] and "X-CSRF-Token" in response.json()["detail"]
    assert web.store.get(people["mediator"].id).countries == ("ES",)  # nothing changed
    response = web.client.patch(target, json={"countries": "ES,IT"}, headers=csrf_headers(me))
    assert response.status_code == 200 and response.json()["countries"] == ["ES", "IT"]
    # Reads need no token.
    assert web.client.get("/api/accounts").status_code == 200


def test_another_sessions_csrf_token_does_not_count(web, people):
    other = web.login("olivia", client=web.new_client())
    me = web.login("root")
    response = web.client.delete(f"/api/accounts/{people['mediator'].id}", headers=csrf_headers(other))
    assert response.status_code == 403 and web.store.get(people["mediator"].id).active


def test_bearer_requests_need_no_csrf_token(web, people):
    token = web.store.create_token(people["admin"].id, "provisioning").token
    api = web.new_client()
    response = api.post(
        "/api/accounts",
        json={"username": "amina", "display_name": "Amina", "role": "mediator", "password": PASSWORD, "countries": "IT", "languages": "it,ar"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    assert api.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).json()["csrf_token"] is None


# --- API tokens -------------------------------------------------------------------------------


def test_api_tokens_are_created_shown_once_used_and_revoked(web, people):
    me = web.login("root")
    operator_id = people["operator"].id
    created = web.client.post(f"/api/accounts/{operator_id}/tokens", json={"name": "campaign cron"}, headers=csrf_headers(me))
    assert created.status_code == 201
    token, token_id = created.json()["token"], created.json()["id"]
    assert token.startswith("jisr_") and len(token) > 40
    listed = web.client.get(f"/api/accounts/{operator_id}/tokens").json()
    assert [t["name"] for t in listed] == ["campaign cron"] and "token" not in listed[0] and listed[0]["last_used_at"] is None

    script = web.new_client()
    bearer = {"Authorization": f"Bearer {token}"}
    assert script.get("/api/auth/me", headers=bearer).json()["account"]["username"] == "olivia"
    assert script.post("/api/campaigns/validate", content=CAMPAIGN, headers=bearer).json() == {"valid": True, "campaign": "auth_check"}
    assert web.client.get(f"/api/accounts/{operator_id}/tokens").json()[0]["last_used_at"] is not None

    revoked = web.client.delete(f"/api/accounts/{operator_id}/tokens/{token_id}", headers=csrf_headers(me))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    response = script.post("/api/campaigns/validate", content=CAMPAIGN, headers=bearer)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert web.client.delete(f"/api/accounts/{operator_id}/tokens/{token_id}", headers=csrf_headers(me)).status_code == 409
    assert web.client.delete(f"/api/accounts/{people['mediator'].id}/tokens/{token_id}", headers=csrf_headers(me)).status_code == 404


@pytest.mark.parametrize("header", ["Bearer", "Bearer nope", "Basic cm9vdDpwdw==", "jisr_abc", "Bearer op\u00e9rator".encode("utf-8")])
def test_a_bad_authorization_header_is_401_not_500(web, people, header):
    response = web.client.get("/api/auth/me", headers={"Authorization": header})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


# --- Roles ------------------------------------------------------------------------------------


def test_campaigns_are_for_operators_and_admins_not_mediators(web, people):
    for username, expected in (("olivia", 200), ("root", 200), ("samir", 403)):
        browser = web.new_client()
        me = web.login(username, client=browser)
        response = browser.post("/api/campaigns/validate", content=CAMPAIGN, headers=csrf_headers(me))
        assert response.status_code == expected, (username, response.text)
        if expected == 403:
            assert "operator" in response.json()["detail"]
        # Without the CSRF token even an operator's session is refused.
        assert browser.post("/api/campaigns/validate", content=CAMPAIGN).status_code == 403
    mediator_token = web.store.create_token(people["mediator"].id, "mediator script").token
    response = web.new_client().post("/api/campaigns/validate", content=CAMPAIGN, headers={"Authorization": f"Bearer {mediator_token}"})
    assert response.status_code == 403


def test_the_legacy_operator_token_still_opens_campaigns_and_nothing_else(web, people):
    legacy = {"Authorization": f"Bearer {LEGACY_TOKEN}"}
    client = web.new_client()
    assert client.post("/api/campaigns/validate", content=CAMPAIGN, headers=legacy).status_code == 200
    assert client.get("/api/accounts", headers=legacy).status_code == 401
    assert client.get("/api/auth/me", headers=legacy).status_code == 401


def test_accounts_api_is_for_admins(web, people):
    for username in ("olivia", "samir"):
        browser = web.new_client()
        me = web.login(username, client=browser)
        assert browser.get("/api/accounts").status_code == 403
        response = browser.post(
            "/api/accounts", json={"username": "x1", "display_name": "X", "role": "admin", "password": PASSWORD}, headers=csrf_headers(me)
        )
        assert response.status_code == 403 and "admin" in response.json()["detail"]
        assert browser.post(f"/api/accounts/{people['mediator'].id}/tokens", json={"name": "t"}, headers=csrf_headers(me)).status_code == 403
    assert web.store.get_by_username("x1") is None


def test_admins_create_update_and_deactivate_accounts_with_clear_errors(web, people):
    me = web.login("root")
    headers = csrf_headers(me)
    good = {"username": "karim", "display_name": "Karim K", "role": "mediator", "password": PASSWORD, "countries": "DZ", "languages": "ar,ary,fr"}
    created = web.client.post("/api/accounts", json=good, headers=headers)
    assert created.status_code == 201 and created.json()["countries"] == ["DZ"]
    assert web.client.post("/api/accounts", json=good, headers=headers).status_code == 409
    for change, message in ((dict(role="chief"), "role is one of"), (dict(countries="ZZ"), "unknown ISO 3166"), (dict(password="short"), "at least 10 characters")):
        response = web.client.post("/api/accounts", json={**good, "username": "karim2", **change}, headers=headers)
        assert response.status_code == 422 and message in response.json()["detail"], response.text
    karim_id = created.json()["id"]
    updated = web.client.patch(f"/api/accounts/{karim_id}", json={"role": "operator", "display_name": "Karim B"}, headers=headers)
    assert updated.json()["role"] == "operator" and updated.json()["display_name"] == "Karim B"
    assert web.client.patch("/api/accounts/999999", json={"role": "operator"}, headers=headers).status_code == 404
    assert web.client.delete(f"/api/accounts/{people['admin'].id}", headers=headers).status_code == 422  # the last admin
    assert [a["username"] for a in web.client.get("/api/accounts").json()] == ["karim", "olivia", "root", "samir"]


# --- Audit ------------------------------------------------------------------------------------


def test_audit_rows_for_logins_tokens_and_account_changes(web, people):
    web.client.post("/api/auth/login", json={"username": "samir", "password": "guess guess guess"})
    web.client.post("/api/auth/login", json={"username": "not-a-user", "password": "guess guess guess"})
    me = web.login("root")
    headers = csrf_headers(me)
    web.client.post("/api/accounts", json={"username": "lea", "display_name": "Léa", "role": "mediator", "password": PASSWORD, "countries": "FR"}, headers=headers)
    web.client.patch(f"/api/accounts/{people['mediator'].id}", json={"languages": "es"}, headers=headers)
    token_id = web.client.post(f"/api/accounts/{people['operator'].id}/tokens", json={"name": "cron"}, headers=headers).json()["id"]
    web.client.delete(f"/api/accounts/{people['operator'].id}/tokens/{token_id}", headers=headers)
    web.client.post("/api/auth/logout", headers=headers)

    entries = web.audit.list(limit=50)
    actions = [e.action for e in reversed(entries)]
    assert actions == ["login_failed", "login_failed", "login", "account.create", "account.update", "token.create", "token.revoke", "logout"]
    failed_known, failed_unknown = (e for e in reversed(entries) if e.action == "login_failed")
    assert failed_known.account_id == people["mediator"].id and failed_known.detail["reason"] == "wrong_password"
    assert failed_unknown.account_id is None and "not-a-user" not in str(failed_unknown.detail)
    assert all(e.account_id == people["admin"].id for e in entries if e.action not in ("login_failed",))
    assert PASSWORD not in str([e.as_dict() for e in entries]) and "guess" not in str([e.as_dict() for e in entries])
    # Filters: by action family, target and account; the admins' API gives the same rows.
    assert [e.action for e in web.audit.list(action="token.")] == ["token.revoke", "token.create"]
    assert len(web.audit.list(target_kind="api_token", target_id=token_id)) == 2
    me = web.login("root")
    listed = web.client.get("/api/audit", params={"action": "login_failed"}).json()
    assert [e["action"] for e in listed] == ["login_failed", "login_failed"]


def test_audit_refuses_message_text_and_addresses(web, people):
    with pytest.raises(ValueError, match="no message text, addresses"):
        web.audit.record(people["mediator"], "handoff.reply", "handoff", 12, "ES", detail={"text": "hola"})
    with pytest.raises(ValueError, match="no message text, addresses"):
        web.audit.record(people["mediator"], "handoff.read", "handoff", 12, "ES", detail={"phone": "+34600000000"})
    row = web.audit.record(people["mediator"], "handoff.read", "handoff", 12, "es", detail={"messages_shown": 7})
    (entry,) = web.audit.list(account_id=people["mediator"].id, country="ES")
    assert entry.id == row and entry.detail == {"messages_shown": 7} and entry.country == "ES" and entry.target_id == "12"
    assert entry.at <= dt.datetime.now(dt.timezone.utc)


# --- The real gateway -------------------------------------------------------------------------


def test_the_gateway_serves_login_me_and_campaigns_by_role(stack):
    engine = create_db_engine(stack["database_url"])
    try:
        store = AccountStore(engine)
        suffix = str(int(time.time() * 1000))[-8:]
        store.create(f"op{suffix}", "Gateway Operator", "operator", PASSWORD, "FR")
        store.create(f"med{suffix}", "Gateway Mediator", "mediator", PASSWORD, "FR")
    finally:
        engine.dispose()
    for username, expected in ((f"op{suffix}", 200), (f"med{suffix}", 403)):
        with httpx.Client(base_url=stack["gateway"], timeout=30) as client:
            assert client.get("/console/login").status_code == 200
            me = client.post("/api/auth/login", json={"username": username, "password": PASSWORD}).json()
            assert client.get("/api/auth/me").json()["account"]["username"] == username
            response = client.post("/api/campaigns/validate", content=CAMPAIGN, headers=csrf_headers(me))
            assert response.status_code == expected, response.text


# --- The command line -------------------------------------------------------------------------


def jisr(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jisr.cli", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_a_new_installation_is_told_how_to_make_the_first_admin(tmp_path, monkeypatch):
    from jisr.auth.cli import first_admin_hint

    url = f"sqlite:///{tmp_path / 'first.db'}"
    monkeypatch.setenv("JISR_DATABASE_URL", url)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert "jisr accounts add USERNAME --role admin" in first_admin_hint()
    engine = create_db_engine(url)
    try:
        AccountStore(engine).create("first", "First Admin", "admin", PASSWORD)
    finally:
        engine.dispose()
    assert first_admin_hint() is None


def test_cli_add_list_passwd_disable_and_tokens(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "JISR_DATABASE_URL": url}
    env.pop("DATABASE_URL", None)
    done = jisr("accounts", "add", "fatima", "--role", "mediator", "--countries", "FR,BE", "--languages", "fr,ar", "--name", "Fatima Z", "--password-stdin", env=env, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert "fatima: mediator, countries BE,FR, languages ar,fr" in done.stdout
    for args, message in (
        (("--role", "boss"), "role is one of admin, operator, mediator"),
        (("--role", "mediator", "--countries", "FR,XY"), "unknown ISO 3166 code(s) XY"),
        (("--role", "mediator", "--countries", "FR", "--languages", "en"), "unknown language form(s) en"),
    ):
        bad = jisr("accounts", "add", "other", *args, "--password-stdin", env=env, stdin=PASSWORD + "\n")
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    short = jisr("accounts", "add", "other", "--role", "mediator", "--countries", "FR", "--password-stdin", env=env, stdin="short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    again = jisr("accounts", "add", "fatima", "--role", "mediator", "--countries", "FR", "--password-stdin", env=env, stdin=PASSWORD + "\n")
    assert again.returncode == 2 and "exists already" in again.stderr

    listing = jisr("accounts", "list", env=env)
    assert listing.returncode == 0 and re.search(r"fatima\s+mediator\s+BE,FR\s+ar,fr\s+yes\s+Fatima Z", listing.stdout), listing.stdout

    engine = create_db_engine(url)
    try:
        store = AccountStore(engine)
        made = jisr("accounts", "token", "create", "fatima", "laptop sync", env=env)
        assert made.returncode == 0 and "shown once" in made.stderr
        token = made.stdout.strip()
        assert store.verify_token(token).username == "fatima"
        token_id = store.list_tokens()[0].id
        assert jisr("accounts", "token", "revoke", str(token_id), env=env).returncode == 0
        assert store.verify_token(token) is None
        assert jisr("accounts", "token", "revoke", str(token_id), env=env).returncode == 2

        assert jisr("accounts", "passwd", "fatima", "--password-stdin", env=env, stdin="a new long passphrase\n").returncode == 0
        assert store.verify_login("fatima", "a new long passphrase") is not None and store.verify_login("fatima", PASSWORD) is None
        assert jisr("accounts", "disable", "fatima", env=env).returncode == 0
        assert store.verify_login("fatima", "a new long passphrase") is None
        assert jisr("accounts", "disable", "nobody", env=env).returncode == 2
        actions = [e.action for e in AuditLog(engine).list()]
        assert actions == ["account.update", "account.password", "token.revoke", "token.create", "account.create"]
    finally:
        engine.dispose()


# --- PostgreSQL -------------------------------------------------------------------------------


def test_accounts_tokens_and_audit_on_postgresql():
    """The same store on a throwaway PostgreSQL server whose TimeZone is not UTC (a password
    stamp read back in another zone would end every session at once)."""
    from pg_server import postgres_server

    from jisr.auth.store import AccountExists

    with postgres_server(timezone="America/St_Johns") as url:
        engine = create_db_engine(url)
        try:
            store, audit = AccountStore(engine), AuditLog(engine)
            admin = store.create("root", "Root", "admin", PASSWORD)
            mediator = store.create("leila", "Leila", "mediator", PASSWORD, "DZ,FR", "ar,ary,fr")
            with pytest.raises(AccountExists):
                store.create("LEILA", "Other", "mediator", PASSWORD, "FR")
            assert store.verify_login("leila", PASSWORD) == mediator and store.verify_login("leila", "wrong wrong wrong") is None
            stamp = store.with_password_stamp(mediator.id)[1]
            assert stamp and stamp == store.with_password_stamp(mediator.id)[1]
            store.set_password(mediator.id, "another long passphrase")
            assert store.with_password_stamp(mediator.id)[1] != stamp
            new = store.create_token(mediator.id, "pg")
            assert store.verify_token(new.token) == mediator and store.token(new.record.id).last_used_at is not None
            assert store.revoke_token(new.record.id) and store.verify_token(new.token) is None
            with pytest.raises(AccountError, match="last active admin"):
                store.deactivate(admin.id)
            audit.record(admin, "account.update", "account", mediator.id, "dz", {"languages": "ar"})
            audit.record(None, "login_failed", detail={"reason": "unknown_username"})
            (entry,) = audit.list(target_kind="account", country="DZ", since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
            assert entry.account_id == admin.id and entry.at.tzinfo is not None and entry.detail == {"languages": "ar"}
            assert [e.action for e in audit.list(action="login_")] == []  # no prefix match without the final "."
        finally:
            engine.dispose()
