"""`jisr campaigns schedule | status | pause | resume | cancel | report` as an operator runs them:
subprocesses on a temporary SQLite file and an embedded Redis, with a `jisr worker` subprocess
sending to the provider simulators."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import httpx
import pytest

from jisr.redisconn import connect_redis
from jisr.store import schema
from jisr.store.contacts import create_db_engine
from tests.conftest import STACK_SECRETS, provider_simulators

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
PARIS = ZoneInfo("Europe/Paris")
# As in test_campaign_sending: planned "as of" four days back for an occurrence two days back,
# so every send was in the future when planned and is due now.
REAL_NOW = dt.datetime.now(UTC)
DAY = (REAL_NOW - dt.timedelta(days=2)).astimezone(PARIS).date()
PLAN_NOW = (REAL_NOW - dt.timedelta(days=4)).isoformat()


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    handle = connect_redis(None, name="campaign-cli-redis", directory=tmp_path / "redis")
    with provider_simulators() as urls:
        s = STACK_SECRETS
        environment = {k: v for k, v in os.environ.items() if not k.startswith("JISR_") and k not in ("DATABASE_URL", "REDIS_URL")}
        environment.update(
            DATABASE_URL=f"sqlite:///{tmp_path / 'jisr.db'}",
            REDIS_URL=handle.url,
            JISR_VAR_DIR=str(tmp_path),
            JISR_TWILIO_API_BASE=urls["twilio"],
            JISR_TWILIO_ACCOUNT_SID=s["twilio_account_sid"],
            JISR_TWILIO_AUTH_TOKEN=s["twilio_auth_token"],
            JISR_TELEGRAM_API_BASE=urls["telegram"],
            JISR_TELEGRAM_BOT_TOKEN=s["telegram_token"],
            JISR_GRAPH_API_BASE=urls["graph"],
        )
        yield {"env": environment, "urls": urls, "dir": tmp_path, "engine": create_db_engine(environment["DATABASE_URL"])}
    handle.close()


def jisr(env: dict[str, Any], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jisr.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env["env"], timeout=timeout)


def worker(env: dict[str, Any]) -> subprocess.Popen:
    command = [sys.executable, "-m", "jisr.cli", "worker", "--queue", "bulk", "--burst", "--max-jobs", "4", "--rate", "telegram=50"]
    return subprocess.Popen(command, cwd=ROOT, env=env["env"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def add_contacts(env: dict[str, Any], specs: list[tuple[str, str, str]]) -> None:
    """(address, language, consent) telegram contacts in France."""
    with env["engine"].begin() as conn:
        for address, language, consent in specs:
            conn.execute(schema.contacts.insert().values(
                address=address, channel="telegram", language=language, country="FR", role="parent", consent=consent,
                created_at=REAL_NOW - dt.timedelta(days=30), timezone="Europe/Paris"))


def campaign(env: dict[str, Any], name: str) -> Path:
    path = env["dir"] / f"{name}.yml"
    path.write_text(
        f"""id: {name}
name: CLI {name}
audience:
  countries: [FR]
  channels: [telegram]
trigger:
  at: "{DAY.isoformat()}T12:00"
send_window: {{start: "09:00", end: "20:00"}}
weekly_cap: 5
fallback_language: fr
messages:
  fr: "Bonjour, la rentrée approche en {{country}}."
  ar: "مرحبا، الدخول المدرسي يقترب في {{country}}."
  es: "Hola, se acerca la vuelta al cole en {{country}}."
  it: "Ciao, si avvicina l'inizio della scuola in {{country}}."
  de: "Hallo, der Schulanfang in {{country}} naht."
""",
        encoding="utf-8",
    )
    return path


def telegram_sends(env: dict[str, Any]) -> list[str]:
    requests = httpx.get(f"{env['urls']['telegram']}/_sim/requests").json()["requests"]
    return sorted(str(r["params"]["chat_id"]) for r in requests if r["method"] == "sendMessage")


def test_schedule_pause_status_resume_report_through_the_cli(env):
    add_contacts(env, [("telegram:7001", "fr", "opted_in"), ("telegram:7002", "ar", "opted_in"), ("telegram:7003", "ary", "opted_in"),
                       ("telegram:7004", "de", "opted_in"), ("telegram:7005", "es", "opted_out")])
    scheduled = jisr(env, "campaigns", "schedule", str(campaign(env, "rentree")), "--now", PLAN_NOW, "--json")
    assert scheduled.returncode == 0, scheduled.stderr
    data = json.loads(scheduled.stdout)  # stdout stays JSON: progress goes to stderr
    assert (data["planned"], data["enqueued"], data["excluded"]) == (4, 4, {"opted_out": 1})
    run = int(next(iter(data["runs"].values())))
    # Not a terminal here: plain progress lines, the planning then the queueing.
    assert "contacts: 5/5 (100 %)" in scheduled.stderr and "jobs queued: 4/4 (100 %)" in scheduled.stderr

    paused = jisr(env, "campaigns", "pause", str(run))
    assert paused.returncode == 0 and f"run {run}: paused" in paused.stdout
    assert jisr(env, "campaigns", "pause", str(run)).returncode == 1, "pausing twice changes nothing and says so"

    sender = worker(env)
    try:
        time.sleep(3)
        assert telegram_sends(env) == [], "a paused run sends nothing"
        status = json.loads(jisr(env, "campaigns", "status", str(run), "--json").stdout)
        assert (status["state"], status["by_status"], status["progress"]) == ("paused", {"queued": 4, "skipped": 1}, 0.2)
        resumed = jisr(env, "campaigns", "resume", str(run))
        assert resumed.returncode == 0 and f"run {run}: running" in resumed.stdout
        _, stderr = sender.communicate(timeout=90)
    finally:
        if sender.poll() is None:
            sender.kill()
    assert sender.returncode == 0, stderr[-2000:]
    assert telegram_sends(env) == ["7001", "7002", "7003", "7004"]

    status = jisr(env, "campaigns", "status", str(run))
    assert status.returncode == 0 and f"run {run} (rentree " in status.stdout and "done, 100% settled of 5" in status.stdout
    report = json.loads(jisr(env, "campaigns", "report", str(run), "--json").stdout)
    assert (report["total"], report["sent"], report["failed"], report["skipped_by_reason"]) == (5, 4, 0, {"opted_out": 1})
    assert report["by_language"] == {"ar": {"sent": 2}, "de": {"sent": 1}, "es": {"skipped": 1}, "fr": {"sent": 1}}
    out = env["dir"] / "report.csv"
    assert jisr(env, "campaigns", "report", str(run), "--csv", str(out)).returncode == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"sent", "skipped"}
    assert not any("7001" in value for row in rows for value in row.values()), "reports carry no addresses"
    assert jisr(env, "campaigns", "resume", str(run)).returncode == 1, "a finished run cannot be resumed"


def test_cancel_through_the_cli_and_unknown_runs(env):
    add_contacts(env, [("telegram:7101", "it", "opted_in"), ("telegram:7102", "fr", "opted_in")])
    scheduled = jisr(env, "campaigns", "schedule", str(campaign(env, "annulee")), "--now", PLAN_NOW, "--json")
    assert scheduled.returncode == 0, scheduled.stderr
    run = int(next(iter(json.loads(scheduled.stdout)["runs"].values())))
    cancelled = jisr(env, "campaigns", "cancel", str(run))
    assert cancelled.returncode == 0 and f"run {run}: cancelled" in cancelled.stdout
    sender = worker(env)
    _, stderr = sender.communicate(timeout=90)
    assert sender.returncode == 0, stderr[-2000:]
    assert telegram_sends(env) == [], "a cancelled run sends nothing"
    report = json.loads(jisr(env, "campaigns", "report", str(run), "--json").stdout)
    assert (report["sent"], report["skipped_by_reason"]) == (0, {"cancelled": 2})
    for command in ("status", "report", "pause", "resume", "cancel"):
        missing = jisr(env, "campaigns", command, "999")
        assert missing.returncode == 2 and "no run 999" in missing.stderr, command
