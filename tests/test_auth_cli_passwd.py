"""`jisr accounts passwd USERNAME`, run as a real command on the database a running console
uses: the old password stops working, the new one works, and the account's open sessions
end at their next request (other accounts' sessions go on). A refused password changes
nothing. The password comes from standard input (--password-stdin) or, without it, from
the prompt asked twice; it never appears in the output or the audit log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jisr.auth.audit import AuditLog
from jisr.auth.store import AccountStore
from jisr.gateway import auth_routes
from jisr.redisconn import connect_redis
from jisr.settings import Settings
from jisr.store.contacts import ContactStore, create_db_engine

ROOT = Path(__file__).resolve().parents[1]
OLD = "correct horse battery staple"
NEW = "a new long passphrase, 2026"


@pytest.fixture()
def web(tmp_path: Path) -> Iterator[SimpleNamespace]:
    url = f"sqlite:///{tmp_path / 'jisr.db'}"
    engine = create_db_engine(url)
    redis = connect_redis(None, directory=tmp_path)
    app = FastAPI()
    app.include_router(auth_routes.router)
    app.state.services = SimpleNamespace(settings=Settings(database_url=url, var_dir=tmp_path, operator_api_token=None), store=ContactStore(engine), redis=redis)
    accounts = AccountStore(engine)
    people = {
        "fatima": accounts.create("fatima", "Fatima Z", "mediator", OLD, "FR,BE", "fr,ar"),
        "omar": accounts.create("omar", "Omar B", "operator", OLD, "DZ"),
    }
    env = {**os.environ, "JISR_DATABASE_URL": url}
    env.pop("DATABASE_URL", None)
    try:
        with TestClient(app) as client:
            yield SimpleNamespace(client=client, app=app, env=env, people=people, audit=AuditLog(engine), accounts=accounts)
    finally:
        redis.close()
        engine.dispose()


def browser(web: SimpleNamespace) -> TestClient:
    """Another browser (its own cookies) on the app's event loop, where its Redis client lives."""
    other = TestClient(web.app)
    other.portal = web.client.portal
    return other


def sign_in(client: TestClient, username: str, password: str) -> Any:
    return client.post("/api/auth/login", json={"username": username, "password": password})


def passwd(web: SimpleNamespace, username: str, stdin: str, *, prompt: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "jisr.cli", "accounts", "passwd", username, *([] if prompt else ["--password-stdin"])]
    # A new session has no terminal: the prompt (getpass) falls back to standard input.
    return subprocess.run(args, input=stdin, capture_output=True, text=True, cwd=ROOT, env=web.env, timeout=120, start_new_session=True)


def test_passwd_replaces_the_password_and_ends_the_accounts_sessions(web: SimpleNamespace) -> None:
    laptop, phone, colleague = browser(web), browser(web), browser(web)
    for client, username in ((laptop, "fatima"), (phone, "fatima"), (colleague, "omar")):
        assert sign_in(client, username, OLD).status_code == 200
        assert client.get("/api/auth/me").json()["account"]["username"] == username

    done = passwd(web, "fatima", NEW + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fatima: password changed; the account's open sessions have ended"
    assert NEW not in done.stdout + done.stderr

    for client in (laptop, phone):
        ended = client.get("/api/auth/me")
        assert ended.status_code == 401 and ended.json()["detail"] == "the password changed: sign in again"
    assert colleague.get("/api/auth/me").json()["account"]["username"] == "omar", "another account's session goes on"

    refused = sign_in(browser(web), "fatima", OLD)
    assert refused.status_code == 401
    again = browser(web)
    assert sign_in(again, "fatima", NEW).status_code == 200
    assert again.get("/api/auth/me").json()["account"]["username"] == "fatima"

    (entry,) = web.audit.list(action="account.password")
    assert (entry.account_id, entry.target_kind, entry.target_id) == (None, "account", str(web.people["fatima"].id))
    assert entry.detail == {"via": "cli"}
    assert NEW not in json.dumps(entry.as_dict()) and OLD not in json.dumps(entry.as_dict())


def test_a_refused_password_changes_nothing(web: SimpleNamespace) -> None:
    session = browser(web)
    assert sign_in(session, "fatima", OLD).status_code == 200
    for username, stdin, reason in (
        ("fatima", "short\n", "at least 10 characters"),
        ("fatima", "\n", "at least 10 characters"),
        ("fatima", " " * 12 + "\n", "cannot be only spaces"),
        ("nobody", NEW + "\n", "no account 'nobody'"),
    ):
        refused = passwd(web, username, stdin)
        assert refused.returncode == 2, refused.stdout
        assert reason in refused.stderr, refused.stderr
    # The prompt asks twice; two different answers change nothing.
    differ = passwd(web, "fatima", NEW + "\n" + NEW + "!\n", prompt=True)
    assert differ.returncode == 2 and "the two passwords differ; nothing changed" in differ.stderr, differ.stderr

    assert session.get("/api/auth/me").status_code == 200, "the session is still open"
    assert web.accounts.verify_login("fatima", OLD) is not None
    assert web.audit.list(action="account.password") == []


def test_the_prompt_asked_twice_sets_the_password(web: SimpleNamespace) -> None:
    session = browser(web)
    assert sign_in(session, "omar", OLD).status_code == 200
    done = passwd(web, "omar", NEW + "\n" + NEW + "\n", prompt=True)
    assert done.returncode == 0, done.stderr
    assert NEW not in done.stdout + done.stderr
    assert session.get("/api/auth/me").status_code == 401
    assert web.accounts.verify_login("omar", NEW) is not None and web.accounts.verify_login("omar", OLD) is None
