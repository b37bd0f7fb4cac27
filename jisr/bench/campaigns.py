"""`jisr bench campaigns`: plan, send, rate-limit and crash-resume a campaign at scale, one run.

Everything runs on loopback and is stopped when the run ends, fails or is interrupted:

- the Twilio, Telegram and Graph simulators, each in its own process (``python -m
  jisr.bench.campaigns simulator KIND PORT``), so they do not share this process's loop;
- an embedded Redis (``jisr.redisconn.connect_redis(None, directory=tmp)``), passed to the
  workers as REDIS_URL;
- SQLite files in a temporary directory, one per phase (passed as DATABASE_URL);
- ``jisr worker --queue bulk --burst`` processes (real workers, as deployed).

Phases:

1. plan: N generated contacts (three channels, eight countries, ~3 % opted out); time to
   ``preview`` and to ``plan`` the campaign, then to queue its jobs (``schedule``);
2. throughput: the queued campaign drained by two workers with the rate limits lifted
   (first to last provider acceptance, and wall clock including worker start-up);
3. rate: a Telegram-only campaign (``--rate`` per second, ~``--rate-seconds`` worth of
   contacts) drained by two workers sharing the configured rate: achieved rate and deviation;
4. crash: a campaign drained by two workers, one killed with SIGKILL mid-run and restarted;
   then sends per address recorded by the simulators (duplicates) and sends to contacts who
   opted out (before planning, and after scheduling) — both must be zero.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional
from zoneinfo import ZoneInfo

from jisr.bench.gateway import LOOPBACK, ManagedProcess, _STARTED, _base_env, _stop_all, free_port
from jisr.bench import run_bounded
from jisr.outbox import BATCH_SIZE
from jisr.paths import PROJECT_ROOT

UTC = dt.timezone.utc
THROUGHPUT_TARGET = 1000.0   # messages per second, two workers, rate limits lifted
RATE_TOLERANCE = 0.05        # achieved rate within 5 % of the configured one
COUNTRIES = ("FR", "ES", "IT", "DE", "BE", "NL", "DZ", "CI")
CHANNELS = ("whatsapp", "telegram", "messenger")
OPTED_OUT_SHARE = 0.03
LATE_OPT_OUTS = 100          # contacts who opt out after scheduling: the worker must notice
MAX_CONTACTS = 1_000_000
SID = "HX" + "3" * 32
SECRETS = {
    "twilio_account_sid": "AC" + "7" * 32,
    "twilio_auth_token": "bench-twilio-token",
    "telegram_token": "654321:bench-token",
    "page_token": "bench-page-token",
    "app_secret": "bench-app-secret",
}
# As in tests/test_campaign_sending.py: the occurrence lies two days back, planned "as of" four
# days back, so every send was in the future when planned and is due now for the real clock.
REAL_NOW = dt.datetime.now(UTC)
DAY = (REAL_NOW - dt.timedelta(days=2)).astimezone(ZoneInfo("Europe/Paris")).date()
PLAN_NOW = REAL_NOW - dt.timedelta(days=4)


# -- simulators (each in its own process) -----------------------------------------------------------


def serve_simulator(kind: str, port: int) -> None:
    import uvicorn

    from jisr.simulators import graph, telegram, twilio

    if kind == "twilio":
        app = twilio.create_app(auth_token=SECRETS["twilio_auth_token"], account_sid=SECRETS["twilio_account_sid"])
    elif kind == "telegram":
        app = telegram.create_app(token=SECRETS["telegram_token"])
    else:
        app = graph.create_app(page_token=SECRETS["page_token"], app_secret=SECRETS["app_secret"], verify_token="bench-verify")
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", access_log=False, loop=loop)


def _recipient(kind: str, request: dict[str, Any]) -> Optional[str]:
    """The address of an accepted send as the simulator recorded it (None: not an accepted send)."""
    if kind == "twilio":
        return request.get("to") if request.get("http_status") in (200, 201) else None
    if kind == "telegram":
        if request.get("method") != "sendMessage" or request.get("authorized") is False:
            return None
        return f"telegram:{request['params'].get('chat_id')}"
    body = request.get("json") or {}
    if request.get("status") != 200 or not body.get("recipient"):
        return None
    return f"messenger:{body['recipient'].get('id')}"


# -- data -------------------------------------------------------------------------------------------


def campaign_file(directory: Path, name: str, channels: tuple[str, ...]) -> Path:
    path = directory / f"{name}.yml"
    path.write_text(
        f"""id: {name}
name: Bench {name}
audience:
  countries: [{", ".join(COUNTRIES)}]
  channels: [{", ".join(channels)}]
trigger:
  at: "{DAY.isoformat()}T12:00"
send_window: {{start: "09:00", end: "20:00"}}
weekly_cap: 5
fallback_language: fr
messages:
  fr: "Bonjour, rappel pour les familles en {{country}}."
  es: "Hola, un recordatorio para las familias en {{country}}."
  it: "Ciao, un promemoria per le famiglie in {{country}}."
  de: "Hallo, eine Erinnerung für Familien in {{country}}."
  ar: "مرحبا، تذكير للعائلات في {{country}}."
whatsapp_template:
  content_sid: {SID}
  variables: {{1: country}}
messenger_outside_window: CONFIRMED_EVENT_UPDATE
""",
        encoding="utf-8",
    )
    return path


def generate_contacts(engine: Any, count: int, channels: tuple[str, ...], seed: int, prefix: int) -> dict[str, int]:
    """``count`` contacts spread over ``channels`` and the eight countries; returns consent counts."""
    from campaigns.planner import COUNTRY_TIMEZONES
    from jisr.store import schema

    rng = random.Random(seed)
    created = PLAN_NOW - dt.timedelta(days=30)
    counts = {"opted_in": 0, "opted_out": 0}
    rows = []
    for i in range(count):
        channel = channels[i % len(channels)]
        country = COUNTRIES[(i // len(channels)) % len(COUNTRIES)]
        if channel == "whatsapp":
            address = f"whatsapp:+{prefix}{i:09d}"
        else:
            address = f"{channel}:{prefix}{i:09d}"
        consent = "opted_out" if rng.random() < OPTED_OUT_SHARE else "opted_in"
        counts[consent] += 1
        rows.append(
            dict(address=address, channel=channel, language=rng.choice(("fr", "fr", "ar", "es", "it", "de")), country=country, role="parent",
                 consent=consent, created_at=created, timezone=COUNTRY_TIMEZONES[country])
        )
        if len(rows) >= 10_000:
            with engine.begin() as conn:
                conn.execute(schema.contacts.insert(), rows)
            rows = []
    if rows:
        with engine.begin() as conn:
            conn.execute(schema.contacts.insert(), rows)
    return counts


# -- results ----------------------------------------------------------------------------------------


@dataclass
class CampaignBenchReport:
    cores: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    settings: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    rate: dict[str, Any] = field(default_factory=dict)
    crash: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)

    def targets(self) -> dict[str, Any]:
        verdict: dict[str, Any] = {}
        if self.throughput:
            verdict["throughput_at_least_1000_per_s"] = {"achieved": self.throughput["per_second"], "met": self.throughput["per_second"] >= THROUGHPUT_TARGET}
        if self.rate:
            verdict["rate_within_5_percent"] = {"configured": self.rate["configured"], "achieved": self.rate["achieved"],
                                                "deviation": self.rate["deviation"], "met": abs(self.rate["deviation"]) <= RATE_TOLERANCE}
        if self.crash:
            verdict["no_duplicates_after_kill"] = {"duplicates": self.crash["duplicates"], "met": self.crash["duplicates"] == 0}
            verdict["nothing_lost_after_kill"] = {"missing": self.crash["missing"], "sent_not_accepted": self.crash["sent_not_recorded"],
                                                  "in_doubt_recorded_with_reason": self.crash["in_doubt"],
                                                  "met": self.crash["missing"] == 0 and self.crash["sent_not_recorded"] == 0}
            verdict["nothing_to_opted_out"] = {"sent": self.crash["sent_to_opted_out"] + self.throughput.get("sent_to_opted_out", 0),
                                               "met": self.crash["sent_to_opted_out"] + self.throughput.get("sent_to_opted_out", 0) == 0}
        return verdict

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "targets": self.targets()}

    def as_table(self) -> str:
        p, t, r, c = self.plan, self.throughput, self.rate, self.crash
        rows: list[tuple[str, str, str]] = []
        if p:
            rows += [
                ("contacts", f"{p['contacts']:,} ({p['opted_out']:,} opted out)", ""),
                ("preview", f"{p['preview_seconds']:.2f} s", f"{p['preview_planned']:,} planned"),
                ("plan (write sends)", f"{p['plan_seconds']:.2f} s", f"{p['planned']:,} planned, {p['excluded']:,} excluded"),
                ("queue sends (Redis)", f"{p['enqueue_seconds']:.2f} s", f"{p['enqueued']:,} sends in batch jobs of up to {BATCH_SIZE}, {p['enqueued'] / max(p['enqueue_seconds'], 1e-9):,.0f}/s"),
            ]
        b = self.baseline
        if t:
            beside = f"; baseline: the simulators alone {b['per_second']:,.0f}/s" if b else ""
            rows += [
                ("send throughput", f"{t['per_second']:,.0f} msg/s", f"{t['sent']:,} sent by {t['workers']} workers, first→last acceptance {t['seconds']:.1f} s{beside}"),
                ("  wall clock", f"{t['wall_per_second']:,.0f} msg/s", f"{t['wall_seconds']:.1f} s incl. worker start-up; {t['skipped']:,} skipped at send time"),
                ("  duplicates / to opted out", f"{t['duplicates']} / {t['sent_to_opted_out']}", f"{t['recorded']:,} accepted by the simulators"),
            ]
        if b:
            rows += [("  baseline (simulators alone)", f"{b['per_second']:,.0f} req/s", f"{b['requests']:,} send requests, {b['concurrency']} in flight, one aiohttp client, no queue nor SQL")]
        if r:
            rows += [
                ("rate limit", f"{r['achieved']:.1f}/s vs {r['configured']:.0f}/s", f"deviation {r['deviation'] * 100:+.1f} % (steady state: second half of the run, after the {r['burst']:.0f}-token burst)"),
                ("  overall", f"{r['overall']:.1f}/s", f"{r['sent']:,} sends over {r['seconds']:.1f} s, burst included"),
            ]
        if c:
            rows += [
                ("kill -9 and resume", f"{c['sent']:,} sent", f"killed after {c['sent_before_kill']:,} acceptances; restarted; {c['seconds']:.1f} s"),
                ("  duplicates", str(c["duplicates"]), f"addresses with > 1 accepted send ({c['recorded']:,} recorded)"),
                ("  sent to opted out", str(c["sent_to_opted_out"]), f"{c['opted_out_before']:,} before planning, {c['opted_out_after']:,} after scheduling"),
                ("  in doubt", f"{c['in_doubt']} ({c['in_doubt_went_out']} had gone out)",
                 f"in flight in the killed worker on a channel that cannot be asked: recorded failed in_doubt, not resent (--max-jobs {c['max_jobs']})"),
                ("  missing", str(c["missing"]), "planned sends with no outcome (neither sent, failed nor skipped)"),
                ("  sent but not accepted", str(c["sent_not_recorded"]), "recorded sent, yet no simulator accepted it"),
            ]
        width = max(len(a) for a, _, _ in rows) if rows else 10
        value_width = max(len(b) for _, b, _ in rows) if rows else 10
        lines = [f"jisr bench campaigns — {self.cores} cores, load {self.load_before[0]:.1f} before / {self.load_after[0]:.1f} after", ""]
        lines += [f"{a:<{width}}  {b:<{value_width}}  {c_}" for a, b, c_ in rows]
        lines.append("")
        for name, v in self.targets().items():
            lines.append(f"target {name}: {'met' if v['met'] else 'MISSED'} " + json.dumps({k: v[k] for k in v if k != 'met'}))
        return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class CampaignBenchOptions:
    contacts: int = 100_000
    rate: float = 200.0             # configured per-second rate of the rate phase (telegram)
    rate_seconds: float = 20.0      # contacts of the rate phase: rate × this
    crash_contacts: int = 10_000    # contacts of the kill -9 phase (at most --contacts)
    max_jobs: int = 50              # sends in flight per worker (--max-jobs)
    max_seconds: float = 1800.0
    keep_logs: Optional[Path] = None


class Bench:
    def __init__(self, options: CampaignBenchOptions, tmp: Path, say: Any) -> None:
        self.options = options
        self.tmp = tmp
        self.say = say
        self.processes: list[ManagedProcess] = []
        self.sims: dict[str, str] = {}
        self.redis: Any = None
        self.worker_count = 0

    # processes

    def start_simulators(self) -> None:
        import httpx

        env = _base_env()
        for kind in ("twilio", "telegram", "graph"):
            port = free_port()
            proc = ManagedProcess(f"{kind} simulator", [sys.executable, "-m", "jisr.bench.campaigns", "simulator", kind, str(port)], env, self.tmp / f"{kind}.log")
            proc.start()
            self.processes.append(proc)
            self.sims[kind] = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + 60
        for kind, url in self.sims.items():
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/_sim/requests", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {kind} simulator did not start")
                time.sleep(0.2)

    def reset_simulators(self) -> None:
        import httpx

        for url in self.sims.values():
            httpx.post(f"{url}/_sim/reset", timeout=30)

    def recorded(self) -> dict[str, int]:
        """Accepted sends per address, as the simulators recorded them."""
        import httpx

        per_address: dict[str, int] = {}
        for kind, url in self.sims.items():
            for request in httpx.get(f"{url}/_sim/requests", timeout=120).json()["requests"]:
                address = _recipient(kind, request)
                if address:
                    per_address[address] = per_address.get(address, 0) + 1
        return per_address

    def worker(self, database_url: str, rates: dict[str, float], job_timeout: float = 60.0) -> ManagedProcess:
        self.worker_count += 1
        env = dict(
            _base_env(),
            REDIS_URL=self.redis.url,
            DATABASE_URL=database_url,
            JISR_VAR_DIR=str(self.tmp / "var"),
            JISR_TWILIO_API_BASE=self.sims["twilio"],
            JISR_TWILIO_ACCOUNT_SID=SECRETS["twilio_account_sid"],
            JISR_TWILIO_AUTH_TOKEN=SECRETS["twilio_auth_token"],
            JISR_TELEGRAM_API_BASE=self.sims["telegram"],
            JISR_TELEGRAM_BOT_TOKEN=SECRETS["telegram_token"],
            JISR_GRAPH_API_BASE=self.sims["graph"],
            JISR_MESSENGER_PAGE_TOKEN=SECRETS["page_token"],
            JISR_MESSENGER_APP_SECRET=SECRETS["app_secret"],
        )
        profile = os.environ.get("JISR_BENCH_PROFILE_DIR")  # a cProfile of each worker, for looking into the send path
        prefix = ["-m", "cProfile", "-o", str(Path(profile) / f"worker-{self.worker_count}.prof")] if profile else []
        argv = [sys.executable, *prefix, "-m", "jisr.cli", "worker", "--queue", "bulk", "--burst", "--max-jobs", str(self.options.max_jobs),
                "--job-timeout", str(job_timeout)]
        for channel, rate in rates.items():
            argv += ["--rate", f"{channel}={rate:g}"]
        proc = ManagedProcess(f"worker {self.worker_count}", argv, env, self.tmp / f"worker-{self.worker_count}.log")
        proc.start()
        self.processes.append(proc)
        return proc

    async def wait_workers(self, workers: list[ManagedProcess], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(w.alive() for w in workers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not drain the queue in {timeout:.0f} s:\n" + "\n".join(w.log_tail(10) for w in workers))
            await asyncio.sleep(0.2)
        for w in workers:
            if w.proc is not None and w.proc.returncode not in (0, -signal.SIGKILL):
                raise RuntimeError(f"{w.name} exited with {w.proc.returncode}:\n{w.log_tail()}")

    # phases

    def fresh(self, name: str) -> tuple[str, Any]:
        from jisr.store.contacts import create_db_engine

        self.redis.sync_client().flushdb()
        self.reset_simulators()
        url = f"sqlite:///{self.tmp / name}.db"
        return url, create_db_engine(url)

    async def schedule(self, path: Path, engine: Any) -> tuple[Any, float, float, float, Any]:
        """(preview, preview s, plan s, enqueue s, result) of the campaign at ``path``."""
        from campaigns import planner, sending
        from campaigns.definitions import load_campaign
        from jisr.calendars import default_calendars
        from jisr.outbox import Outbox
        from jisr.store.campaigns import CampaignStore

        campaign = load_campaign(path)
        store = CampaignStore(engine)
        calendars = default_calendars()
        started = time.perf_counter()
        preview = await asyncio.to_thread(planner.preview, campaign, store, PLAN_NOW, calendars)
        preview_seconds = time.perf_counter() - started
        outbox = await Outbox.connect(self.redis.host, self.redis.port)
        try:
            started = time.perf_counter()
            result = await sending.schedule(campaign, store, outbox, PLAN_NOW, calendars)
            total = time.perf_counter() - started
        finally:
            await outbox.close()
        return preview, preview_seconds, result.plan.seconds, total - result.plan.seconds, result

    @staticmethod
    def sent_times(engine: Any, channel: Optional[str] = None) -> list[float]:
        import sqlalchemy as sa

        from jisr.store import schema

        t = schema.campaign_sends
        query = sa.select(t.c.sent_at).where(t.c.sent_at.is_not(None))
        if channel:
            query = query.where(t.c.channel == channel)
        with engine.connect() as conn:
            return sorted(row[0].timestamp() for row in conn.execute(query))

    @staticmethod
    def statuses(engine: Any) -> dict[str, int]:
        import sqlalchemy as sa

        from jisr.store import schema

        t = schema.campaign_sends
        with engine.connect() as conn:
            return {f"{s}:{r or ''}": n for s, r, n in conn.execute(sa.select(t.c.status, t.c.reason, sa.func.count()).group_by(t.c.status, t.c.reason))}

    @staticmethod
    def in_doubt_addresses(engine: Any) -> list[str]:
        import sqlalchemy as sa

        from jisr.store import schema

        t, c = schema.campaign_sends, schema.contacts
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(
                sa.select(c.c.address).select_from(t.join(c, c.c.id == t.c.contact_id)).where(t.c.status == "failed", t.c.reason == "in_doubt"))]

    @staticmethod
    def sent_not_recorded(engine: Any, per_address: dict[str, int]) -> int:
        import sqlalchemy as sa

        from jisr.store import schema

        t, c = schema.campaign_sends, schema.contacts
        with engine.connect() as conn:
            sent = [row[0] for row in conn.execute(
                sa.select(c.c.address).select_from(t.join(c, c.c.id == t.c.contact_id)).where(t.c.status.in_(("sent", "delivered", "read"))))]
        return sum(1 for a in sent if not per_address.get(a))

    @staticmethod
    def opted_out_addresses(engine: Any) -> set[str]:
        import sqlalchemy as sa

        from jisr.store import schema

        with engine.connect() as conn:
            return {row[0] for row in conn.execute(sa.select(schema.contacts.c.address).where(schema.contacts.c.consent == "opted_out"))}

    def opt_out_after_scheduling(self, engine: Any, count: int, channels: tuple[str, ...]) -> int:
        """Some planned contacts opt out once their jobs are queued (the worker must re-check)."""
        import sqlalchemy as sa

        from jisr.store import schema
        from jisr.store.contacts import ContactStore

        contacts = ContactStore(engine)
        t = schema.contacts
        with engine.connect() as conn:
            ids = [row[0] for row in conn.execute(
                sa.select(t.c.id).where(t.c.consent == "opted_in", t.c.channel.in_(channels)).order_by(t.c.id.desc()).limit(count))]
        for contact_id in ids:
            contacts.record_consent(contact_id, "opted_out", "conversation", None, None)
        return len(ids)

    async def phase_baseline(self, report: CampaignBenchReport, requests: int = 6000, concurrency: int = 32) -> None:
        """The simulators alone: the three hammered at once with the providers' real send requests
        (one aiohttp client, ``concurrency`` in flight), no queue, no SQL. Throughput can be no
        better than this on the same machine, so it is printed beside it. (An httpx client here
        measured its own cost: ~860 requests/s, which earlier figures took for the simulators'.)"""
        import aiohttp

        sid = SECRETS["twilio_account_sid"]
        calls = {
            "twilio": lambda i: dict(url=f"{self.sims['twilio']}/2010-04-01/Accounts/{sid}/Messages.json", auth=aiohttp.BasicAuth(sid, SECRETS["twilio_auth_token"]),
                                     data={"To": f"whatsapp:+339{i:08d}", "From": "whatsapp:+14155238886", "Body": "Bonjour"}),
            "telegram": lambda i: dict(url=f"{self.sims['telegram']}/bot{SECRETS['telegram_token']}/sendMessage", json={"chat_id": 10_000 + i, "text": "Bonjour"}),
            "graph": lambda i: dict(url=f"{self.sims['graph']}/me/messages", params={"access_token": SECRETS["page_token"]},
                                    json={"recipient": {"id": str(10_000 + i)}, "messaging_type": "RESPONSE", "message": {"text": "Bonjour"}}),
        }
        self.reset_simulators()
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(kind: str, i: int) -> None:
                async with gate:
                    async with client.post(**calls[kind](i)) as response:
                        await response.read()
                        if response.status >= 300:
                            raise RuntimeError(f"the {kind} simulator refused the baseline request: {response.status}")

            started = time.perf_counter()
            await asyncio.gather(*(one(kind, i) for i in range(requests // 3) for kind in calls))
            seconds = time.perf_counter() - started
        self.reset_simulators()
        report.baseline = dict(requests=requests // 3 * 3, concurrency=concurrency, seconds=round(seconds, 2), per_second=round(requests // 3 * 3 / seconds, 1))
        self.say(f"baseline: the three simulators alone answer {report.baseline['per_second']:,.0f} sends/s")

    async def phase_plan_and_throughput(self, report: CampaignBenchReport) -> None:
        n = self.options.contacts
        url, engine = self.fresh("throughput")
        self.say(f"generating {n:,} contacts…")
        consent = await asyncio.to_thread(generate_contacts, engine, n, CHANNELS, 1, 33)
        self.say("preview, plan, queue…")
        preview, preview_s, plan_s, enqueue_s, result = await self.schedule(campaign_file(self.tmp, "bench-throughput", CHANNELS), engine)
        report.plan = dict(
            contacts=n, opted_out=consent["opted_out"], preview_seconds=round(preview_s, 3), preview_planned=preview.planned,
            plan_seconds=round(plan_s, 3), planned=result.plan.planned, excluded=sum(result.plan.excluded.values()),
            enqueued=result.enqueued, enqueue_seconds=round(enqueue_s, 3),
        )
        self.say(f"plan: preview {preview_s:.1f} s, plan {plan_s:.1f} s, queue {enqueue_s:.1f} s ({result.enqueued:,} sends)")
        lifted = {c: 100_000.0 for c in CHANNELS}
        started = time.perf_counter()
        workers = [self.worker(url, lifted) for _ in range(2)]
        self.say("2 workers sending, rate limits lifted…")
        await self.wait_workers(workers, timeout=max(300.0, n / 50))
        wall = time.perf_counter() - started
        times = self.sent_times(engine)
        seconds = (times[-1] - times[0]) if len(times) > 1 else 0.0
        per_address = await asyncio.to_thread(self.recorded)
        opted_out = self.opted_out_addresses(engine)
        statuses = self.statuses(engine)
        report.throughput = dict(
            workers=2, sent=len(times), seconds=round(seconds, 2), per_second=round(len(times) / seconds, 1) if seconds else 0.0,
            wall_seconds=round(wall, 2), wall_per_second=round(len(times) / wall, 1),
            skipped=sum(v for k, v in statuses.items() if k.startswith("skipped") and not k.endswith(("opted_out", "capped"))),
            statuses=statuses, recorded=sum(per_address.values()),
            duplicates=sum(1 for v in per_address.values() if v > 1), sent_to_opted_out=sum(1 for a in per_address if a in opted_out),
        )
        self.say(f"throughput: {report.throughput['per_second']:,.0f} msg/s ({len(times):,} in {seconds:.1f} s; wall {wall:.1f} s)")
        engine.dispose()

    async def phase_rate(self, report: CampaignBenchReport) -> None:
        rate = self.options.rate
        n = int(rate * self.options.rate_seconds)
        url, engine = self.fresh("rate")
        await asyncio.to_thread(generate_contacts, engine, n, ("telegram",), 2, 44)
        _, _, _, _, result = await self.schedule(campaign_file(self.tmp, "bench-rate", ("telegram",)), engine)
        self.say(f"rate: {result.enqueued:,} telegram sends at {rate:g}/s shared by 2 workers…")
        workers = [self.worker(url, {"telegram": rate}) for _ in range(2)]
        await self.wait_workers(workers, timeout=self.options.rate_seconds * 4 + 120)
        times = self.sent_times(engine, "telegram")
        burst = max(rate, 1.0)  # the token bucket starts full: its burst goes out at once
        overall_seconds = times[-1] - times[0] if len(times) > 1 else 0.0
        # Steady state: the second half of the run, when the bucket's initial burst is long spent
        # (a worker slower than the burst spends it over several seconds, not at once).
        after = [t for t in times if t >= times[0] + overall_seconds / 2] if times else []
        steady = (len(after) - 1) / (after[-1] - after[0]) if len(after) > 1 and after[-1] > after[0] else 0.0
        report.rate = dict(
            channel="telegram", configured=rate, sent=len(times), seconds=round(overall_seconds, 2), burst=burst,
            overall=round(len(times) / overall_seconds, 2) if overall_seconds else 0.0,
            achieved=round(steady, 2), deviation=round(steady / rate - 1, 4) if rate else 0.0,
        )
        self.say(f"rate: {steady:.1f}/s steady vs {rate:g}/s configured")
        engine.dispose()

    async def phase_crash(self, report: CampaignBenchReport) -> None:
        n = min(self.options.crash_contacts, self.options.contacts)
        url, engine = self.fresh("crash")
        consent = await asyncio.to_thread(generate_contacts, engine, n, CHANNELS, 3, 55)
        _, _, _, _, result = await self.schedule(campaign_file(self.tmp, "bench-crash", CHANNELS), engine)
        late = await asyncio.to_thread(self.opt_out_after_scheduling, engine, min(LATE_OPT_OUTS, max(1, n // 100)), CHANNELS)
        opted_out = self.opted_out_addresses(engine)
        planned = result.enqueued
        # A modest rate, so the kill lands mid-run whatever the machine's speed.
        rates = {c: max(50.0, planned / 3 / 15) for c in CHANNELS}
        job_timeout = 5.0  # a killed worker's in-flight jobs are taken up job_timeout + 10 s later
        started = time.perf_counter()
        victim, survivor = self.worker(url, rates, job_timeout), self.worker(url, rates, job_timeout)
        self.say(f"crash: {planned:,} sends, 2 workers; killing one with SIGKILL at ~30 %…")
        deadline = time.monotonic() + 300
        while True:
            done = len(self.sent_times(engine))
            if done >= planned * 0.3:
                break
            if time.monotonic() > deadline or not victim.alive():
                raise RuntimeError(f"the crash phase did not reach 30 % ({done}/{planned}):\n{victim.log_tail()}")
            await asyncio.sleep(0.2)
        assert victim.proc is not None
        os.killpg(victim.proc.pid, signal.SIGKILL)  # the worker and anything it started, at once
        victim.proc.wait(10)
        sent_before_kill = len(self.sent_times(engine))
        restarted = self.worker(url, rates, job_timeout)
        await self.wait_workers([survivor, restarted], timeout=600)
        seconds = time.perf_counter() - started
        per_address = await asyncio.to_thread(self.recorded)
        statuses = self.statuses(engine)
        sent = statuses.get("sent:", 0)
        expected_skips = statuses.get("skipped:opted_out", 0)
        in_doubt = self.in_doubt_addresses(engine)
        report.crash = dict(
            contacts=n, planned=planned, sent=sent, sent_before_kill=sent_before_kill, seconds=round(seconds, 1), max_jobs=self.options.max_jobs,
            recorded=sum(per_address.values()), duplicates=sum(1 for v in per_address.values() if v > 1),
            # Sends a worker was making when it was killed, on a channel that cannot be asked what it
            # accepted: recorded failed "in_doubt" (at most once); how many had in fact gone out.
            in_doubt=len(in_doubt), in_doubt_went_out=sum(1 for a in in_doubt if per_address.get(a)),
            # Recorded sent by us but never accepted by a simulator: a send lost while claimed sent.
            sent_not_recorded=self.sent_not_recorded(engine, per_address),
            sent_to_opted_out=sum(1 for a in per_address if a in opted_out),
            opted_out_before=consent["opted_out"], opted_out_after=late, skipped_opted_out=expected_skips,
            missing=sum(v for k, v in statuses.items() if k.split(":")[0] in ("planned", "queued")),
            statuses=statuses,
        )
        self.say(f"crash: duplicates {report.crash['duplicates']}, in doubt {report.crash['in_doubt']}, to opted out {report.crash['sent_to_opted_out']}, missing {report.crash['missing']}")
        engine.dispose()


async def run_bench(options: CampaignBenchOptions, progress: Any = None) -> CampaignBenchReport:
    import psutil

    from jisr.redisconn import connect_redis

    say = progress or (lambda message: None)
    tmp = Path(tempfile.mkdtemp(prefix="jisr-bench-campaigns-"))
    (tmp / "var").mkdir()
    bench = Bench(options, tmp, say)
    report = CampaignBenchReport(cores=psutil.cpu_count() or 1, load_before=os.getloadavg(),
                                 settings={"contacts": options.contacts, "rate": options.rate, "rate_seconds": options.rate_seconds,
                                           "crash_contacts": min(options.crash_contacts, options.contacts), "max_jobs_per_worker": options.max_jobs})
    try:
        bench.redis = connect_redis(None, name="bench-redis", directory=tmp / "redis")
        bench.start_simulators()
        say(f"simulators on {', '.join(bench.sims.values())}; redis {bench.redis.url}")
        await bench.phase_baseline(report)
        await bench.phase_plan_and_throughput(report)
        await bench.phase_rate(report)
        await bench.phase_crash(report)
        report.load_after = os.getloadavg()
        return report
    finally:
        await asyncio.to_thread(_stop_all, bench.processes)
        if bench.redis is not None:
            with contextlib.suppress(Exception):
                bench.redis.close()
        if options.keep_logs is not None:
            options.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy(log, options.keep_logs / log.name)
        shutil.rmtree(tmp, ignore_errors=True)


def main(options: CampaignBenchOptions, as_json: bool = False) -> int:
    """Run the benchmark within ``options.max_seconds``; every process started is stopped on any exit."""
    return run_bounded("jisr bench campaigns", lambda progress: run_bench(options, progress), options.max_seconds, as_json)


atexit.register(lambda: _stop_all([p for p in _STARTED if p.alive()]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jisr.bench.campaigns")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulator", help="serve one provider simulator on loopback (started by the benchmark)")
    sim.add_argument("kind", choices=["twilio", "telegram", "graph"])
    sim.add_argument("port", type=int)
    args = parser.parse_args()
    serve_simulator(args.kind, args.port)
