"""`jisr bench gateway`: Jisr's gateway beside Rasa's own `rasa run`, same model, same actions, one run.

Both systems are started here, on free loopback ports, as separate processes
(so the load generator does not share their event loop), and stopped when the
run ends, fails or is interrupted:

- **Jisr**: `python -m jisr.cli serve` with its embedded Redis and a SQLite
  file in a temporary directory. A message goes in through the web chat API
  (``POST /api/webchat/messages``) and counts as answered when the reply is
  available to the sender (``GET /api/webchat/messages`` long polling returns
  the first reply part of that very message): the whole path — webhook,
  de-duplication, contact and message log, the assistant, the send queue, the
  reply worker, the inbox.
- **Rasa**: `rasa run --enable-api` with the same model file and its REST
  channel (``POST /webhooks/rest/webhook``), Jisr's actions served by
  ``python -m rasa_sdk --actions actions`` (Rasa's own set-up: in-memory
  tracker and lock stores). The reply is in the HTTP response.

The same messages (the held-out set, the six language forms interleaved) and
the same sender plan go to both, phase by phase, alternating which system goes
first:

1. sequential: one message at a time (p50/p95 latency, throughput);
2. open loop: a fixed offered rate for a fixed time, latency counted from the
   moment each message was due (a backlog counts: no coordinated omission);
3. closed loop: N concurrent senders as fast as replies come (max throughput).

A sender never has two messages in flight (a person waits for the answer);
each sender sends a few messages, so conversations have some history, and no
sender comes near Jisr's flood limit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from jisr.bench import run_bounded
from jisr.paths import HELDOUT_DIR, LANGUAGE_FORMS, PROJECT_ROOT

P95_TARGET_MS = 150.0
LOOPBACK = "127.0.0.1"
REQUEST_TIMEOUT = 15.0          # one message, in the open and closed loops
STARTUP_TIMEOUT = 300.0         # model loading on a loaded 2-core machine
MAX_MESSAGES_PER_PHASE = 20_000
HELD = "held"                   # the outcome of a message kept for a mediator (HeldForMediator)


# Every server started by this process: stopped on the way out, whatever the way out.
_STARTED: list["ManagedProcess"] = []


class BenchError(Exception):
    """A message that did not get its reply (the kind goes into the report)."""


class HeldForMediator(Exception):
    """Jisr processed the message and kept it for a mediator: no reply is due (not an error).

    Some held-out messages open a mediator's case (a dropout, a discrimination cue, two
    messages in a row not understood), after which the bot stays silent in that conversation
    until a mediator hands it back. The sender then carries on as a new family (a new web chat
    session), so the rest of its messages are answered as in Rasa's run.
    """


# -- messages ---------------------------------------------------------------------------------------


def load_messages() -> list[tuple[str, str]]:
    """The held-out messages, the six language forms interleaved: (form, text)."""
    by_form: dict[str, list[str]] = {}
    for form in LANGUAGE_FORMS:
        data = yaml.safe_load((HELDOUT_DIR / f"{form}.yml").read_text(encoding="utf-8")) or {}
        by_form[form] = [str(m["text"]) for m in data.get("messages") or [] if str(m.get("text") or "").strip()]
    mixed: list[tuple[str, str]] = []
    for index in range(max((len(v) for v in by_form.values()), default=0)):
        mixed.extend((form, by_form[form][index]) for form in LANGUAGE_FORMS if index < len(by_form[form]))
    if not mixed:
        raise RuntimeError(f"no messages found in {HELDOUT_DIR}")
    return mixed


# -- processes --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ManagedProcess:
    """A server this benchmark started: its process group, its descendants, and any extra process it owns."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = PROJECT_ROOT) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: Optional[subprocess.Popen] = None
        self.known: dict[int, Any] = {}      # pid -> psutil.Process seen in this server's tree
        self.extra_cwd: Optional[Path] = None  # a daemonised helper (embedded redis-server) runs in this directory
        self.peak_rss = 0
        self.started_at = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        _STARTED.append(self)
        self.started_at = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=str(self.cwd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a group, untouched by the terminal's Ctrl-C
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tree(self) -> list[Any]:
        """The live processes of this server (root, descendants, the daemonised helper), remembered for the stop."""
        import psutil

        if not self.alive():
            return []
        found: list[Any] = []
        try:
            root = psutil.Process(self.proc.pid)  # type: ignore[union-attr]
            found = [root, *root.children(recursive=True)]
        except psutil.Error:
            pass
        if self.extra_cwd is not None:
            for proc in psutil.process_iter(["name"]):
                try:
                    if proc.info["name"] == "redis-server" and Path(proc.cwd()) == self.extra_cwd:
                        found.append(proc)
                except psutil.Error:
                    continue
        with self._lock:
            for proc in found:
                self.known.setdefault(proc.pid, proc)
        return found

    def rss(self) -> tuple[int, dict[str, int]]:
        """Resident memory of the whole tree, in bytes, and per process name."""
        import psutil

        total, parts = 0, {}
        for proc in self.tree():
            try:
                rss = proc.memory_info().rss
                name = proc.name()
            except psutil.Error:
                continue
            total += rss
            parts[name] = parts.get(name, 0) + rss
        self.peak_rss = max(self.peak_rss, total)
        return total, parts

    def cpu_seconds(self) -> float:
        import psutil

        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group (a graceful shutdown), SIGKILL after ``grace``, then any remembered straggler."""
        import psutil

        if self.proc is None:
            return
        self.tree()  # remember the latest descendants and helper before signalling
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        with self._lock:
            stragglers = list(self.known.values())
        for proc in stragglers:
            with contextlib.suppress(psutil.Error):
                if proc.is_running():  # psutil checks the pid was not reused by another process
                    proc.terminate()
        gone, alive = psutil.wait_procs([p for p in stragglers if _running(p)], timeout=3)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _running(proc: Any) -> bool:
    try:
        return bool(proc.is_running())
    except Exception:
        return False


class Sampler(threading.Thread):
    """Samples the servers' resident memory twice a second (the peak goes into the report)."""

    def __init__(self, processes: Sequence[ManagedProcess], interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="jisr-bench-sampler")
        self.processes = processes
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            for process in self.processes:
                with contextlib.suppress(Exception):
                    process.rss()

    def stop(self) -> None:
        self.stopped.set()


# -- clients ----------------------------------------------------------------------------------------


class JisrWebChat:
    """A family on Jisr's web chat: POST the message, then long-poll until this message's reply is there."""

    name = "Jisr"

    def __init__(self, base_url: str, http: Any) -> None:
        from jisr.outbox import reply_key

        self.base_url = base_url
        self.http = http
        self.reply_key = reply_key
        self.sessions: dict[str, list[Any]] = {}  # sender -> [session, next index]
        self.ids = itertools.count(1)

    async def prepare(self, senders: Sequence[str]) -> None:
        """One web chat session per sender, opened before the clock starts."""
        gate = asyncio.Semaphore(16)

        async def open_session(sender: str) -> None:
            async with gate:
                await self._new_session(sender)

        await asyncio.gather(*(open_session(s) for s in senders if s not in self.sessions))

    async def _new_session(self, sender: str) -> None:
        async with self.http.post(f"{self.base_url}/api/webchat/session") as response:
            response.raise_for_status()
            self.sessions[sender] = [(await response.json())["session"], 0]

    async def send(self, sender: str, text: str) -> None:
        state = self.sessions[sender]
        session = state[0]
        client_id = f"m{next(self.ids)}"
        headers = {"X-Jisr-Session": session}
        async with self.http.post(
            f"{self.base_url}/api/webchat/messages", json={"text": text, "client_message_id": client_id}, headers=headers
        ) as response:
            if response.status != 200:
                raise BenchError(f"http {response.status}")
            processed = (await response.json()).get("processed")
        if processed == ["held"]:
            await self._new_session(sender)
            raise HeldForMediator()
        if processed != ["processed"]:
            raise BenchError(f"status {processed}")
        expected = self.reply_key(f"{session.split('.')[0]}:{client_id}", "webchat") + ":"
        while True:
            async with self.http.get(
                f"{self.base_url}/api/webchat/messages", params={"after": str(state[1]), "wait": "10"}, headers=headers
            ) as response:
                if response.status != 200:
                    raise BenchError(f"http {response.status} (poll)")
                body = await response.json()
            state[1] = body["next"]
            if any(str(m.get("id", "")).startswith(expected) for m in body["messages"]):
                return


class RasaRest:
    """A user of Rasa's REST channel: the replies are in the HTTP response."""

    name = "Rasa"

    def __init__(self, base_url: str, http: Any) -> None:
        self.base_url = base_url
        self.http = http

    async def prepare(self, senders: Sequence[str]) -> None:
        return None

    async def send(self, sender: str, text: str) -> None:
        async with self.http.post(f"{self.base_url}/webhooks/rest/webhook", json={"sender": sender, "message": text}) as response:
            if response.status != 200:
                raise BenchError(f"http {response.status}")
            replies = await response.json()
        if not replies:
            raise BenchError("no reply")


# -- measurements -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class PhaseResult:
    system: str
    phase: str                      # sequential | open | closed
    sent: int
    answered: int
    errors: dict[str, int]
    seconds: float
    held: int                       # processed and kept for a mediator: no reply due, not in the latencies
    throughput: float               # answered messages per second
    p50_ms: Optional[float]
    p95_ms: Optional[float]
    p99_ms: Optional[float]
    max_ms: Optional[float]
    offered_rate: Optional[float] = None
    concurrency: Optional[int] = None
    server_cpu_ms_per_message: Optional[float] = None
    other_cpu_cores: Optional[float] = None   # what the rest of the machine used meanwhile (background jobs)


@dataclass
class SystemInfo:
    name: str
    how: str
    startup_seconds: float
    rss_idle_mb: float
    rss_peak_mb: float
    rss_parts_mb: dict[str, float]


@dataclass
class BenchReport:
    model: str
    cores: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    busy_elsewhere: list[str]
    settings: dict[str, Any]
    systems: list[SystemInfo] = field(default_factory=list)
    phases: list[PhaseResult] = field(default_factory=list)

    def phase(self, system: str, phase: str) -> Optional[PhaseResult]:
        return next((p for p in self.phases if p.system == system and p.phase == phase), None)

    def targets(self) -> dict[str, Any]:
        jisr_closed, rasa_closed = self.phase("Jisr", "closed"), self.phase("Rasa", "closed")
        jisr_open = self.phase("Jisr", "open")
        verdict: dict[str, Any] = {}
        if jisr_closed and rasa_closed:
            verdict["throughput_at_least_rasa"] = {
                "jisr": round(jisr_closed.throughput, 1),
                "rasa": round(rasa_closed.throughput, 1),
                "met": jisr_closed.throughput >= rasa_closed.throughput,
            }
        if jisr_open:
            met = (
                jisr_open.p95_ms is not None
                and jisr_open.p95_ms < P95_TARGET_MS
                and not jisr_open.errors
                and jisr_open.answered + jisr_open.held == jisr_open.sent
            )
            verdict["p95_under_150ms_at_rate"] = {
                "rate": jisr_open.offered_rate,
                "p95_ms": None if jisr_open.p95_ms is None else round(jisr_open.p95_ms, 1),
                "errors": sum(jisr_open.errors.values()),
                "held": jisr_open.held,
                "met": met,
            }
        return verdict

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = self.targets()
        return data

    def as_table(self) -> str:
        systems = [s.name for s in self.systems]
        width = 26
        out: list[str] = []
        out.append(f"jisr bench gateway — model {self.model}, {self.cores} cores")
        out.append(
            f"load average before {self.load_before[0]:.2f}, after {self.load_after[0]:.2f}"
            + (f"; busy elsewhere at start: {', '.join(self.busy_elsewhere)}" if self.busy_elsewhere else "")
        )
        for s in self.systems:
            out.append(f"  {s.name}: {s.how}")
        out.append("")
        header = f"{'':34}" + "".join(f"{name:>{width}}" for name in systems)
        out.append(header)
        out.append("-" * len(header))

        def row(label: str, cells: list[str]) -> None:
            out.append(f"{label:34}" + "".join(f"{c:>{width}}" for c in cells))

        def ms(value: Optional[float]) -> str:
            return "—" if value is None else f"{value:.0f}"

        def cells(phase: str, render: Any) -> list[str]:
            return [render(self.phase(name, phase)) if self.phase(name, phase) else "—" for name in systems]

        def errors(p: PhaseResult) -> str:
            if not p.errors:
                return "0"
            return ", ".join(f"{k} ×{v}" for k, v in sorted(p.errors.items()))[:width - 1]

        for phase, title in (("sequential", "sequential"), ("open", "open loop"), ("closed", "closed loop")):
            sample = next((p for p in self.phases if p.phase == phase), None)
            if sample is None:
                continue
            if phase == "sequential":
                row(f"{title}, {sample.sent} messages", [""] * len(systems))
            elif phase == "open":
                row(f"{title}, {sample.offered_rate:g} msg/s × {self.settings['duration']:g} s", [""] * len(systems))
            else:
                row(f"{title}, {sample.concurrency} concurrent senders", [""] * len(systems))
            row("  latency p50 / p95 / p99 (ms)", cells(phase, lambda p: f"{ms(p.p50_ms)} / {ms(p.p95_ms)} / {ms(p.p99_ms)}"))
            row("  latency max (ms)", cells(phase, lambda p: ms(p.max_ms)))
            row("  throughput (answered msg/s)", cells(phase, lambda p: f"{p.throughput:.1f}"))
            row("  answered / sent", cells(phase, lambda p: f"{p.answered} / {p.sent}"))
            row("  held for a mediator (no reply due)", cells(phase, lambda p: str(p.held)))
            row("  errors", cells(phase, errors))
            row("  server CPU per message (ms)", cells(phase, lambda p: ms(p.server_cpu_ms_per_message)))
            row("  other processes' CPU (cores)", cells(phase, lambda p: "—" if p.other_cpu_cores is None else f"{p.other_cpu_cores:.2f}"))
        row("startup until ready (s)", [f"{s.startup_seconds:.0f}" for s in self.systems])
        row("resident memory idle (MB)", [f"{s.rss_idle_mb:.0f}" for s in self.systems])
        row("resident memory peak (MB)", [f"{s.rss_peak_mb:.0f}" for s in self.systems])
        for s in self.systems:
            parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(s.rss_parts_mb.items(), key=lambda kv: -kv[1]))
            out.append(f"  {s.name} idle by process (MB): {parts}")
        out.append("")
        targets = self.targets()
        if "throughput_at_least_rasa" in targets:
            t = targets["throughput_at_least_rasa"]
            out.append(f"target: throughput ≥ Rasa's (closed loop): Jisr {t['jisr']} vs Rasa {t['rasa']} msg/s — {'met' if t['met'] else 'MISSED'}")
        if "p95_under_150ms_at_rate" in targets:
            t = targets["p95_under_150ms_at_rate"]
            out.append(
                f"target: p95 < {P95_TARGET_MS:.0f} ms at {t['rate']:g} msg/s: Jisr {t['p95_ms']} ms, {t['errors']} errors,"
                f" {t['held']} held for a mediator — {'met' if t['met'] else 'MISSED'}"
            )
        return "\n".join(out)


class Meter:
    """Server CPU and the rest of the machine's CPU over one phase."""

    def __init__(self, servers: Sequence[ManagedProcess], all_servers: Sequence[ManagedProcess]) -> None:
        self.servers = servers
        self.all_servers = all_servers

    def __enter__(self) -> "Meter":
        import psutil

        self.me = psutil.Process()
        self.t0 = time.perf_counter()
        self.server0 = sum(s.cpu_seconds() for s in self.servers)
        self.all0 = sum(s.cpu_seconds() for s in self.all_servers)
        self.me0 = sum(self.me.cpu_times()[:2])
        self.busy0 = _busy_seconds()
        return self

    def __exit__(self, *exc: Any) -> None:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.server_cpu = sum(s.cpu_seconds() for s in self.servers) - self.server0
        all_servers = sum(s.cpu_seconds() for s in self.all_servers) - self.all0
        me = sum(self.me.cpu_times()[:2]) - self.me0
        self.other_cores = max(0.0, (_busy_seconds() - self.busy0 - all_servers - me) / elapsed)


def _busy_seconds() -> float:
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class Runner:
    """Runs the three phases against one client and records the results."""

    def __init__(self, messages: list[tuple[str, str]]) -> None:
        self.messages = messages
        self.cursor = itertools.count()
        self.locks: dict[str, asyncio.Lock] = {}

    def next_text(self) -> str:
        return self.messages[next(self.cursor) % len(self.messages)][1]

    async def one(self, client: Any, sender: str, text: str, due: float, timeout: float) -> tuple[Optional[float], Optional[str]]:
        """Latency in seconds from ``due`` (perf_counter) to the reply, or the kind of failure."""
        lock = self.locks.setdefault(f"{client.name}:{sender}", asyncio.Lock())
        try:
            async with lock:  # a sender waits for the answer before writing again
                await asyncio.wait_for(client.send(sender, text), timeout)
            return time.perf_counter() - due, None
        except asyncio.TimeoutError:
            return None, "timeout"
        except HeldForMediator:
            return None, HELD
        except BenchError as error:
            return None, str(error)
        except Exception as error:  # connection refused or reset: the server fell over
            return None, type(error).__name__

    def result(self, client: Any, phase: str, outcomes: list[tuple[Optional[float], Optional[str]]], seconds: float, meter: Meter, **extra: Any) -> PhaseResult:
        latencies = [l * 1000 for l, _ in outcomes if l is not None]
        held = sum(1 for _, kind in outcomes if kind == HELD)
        errors: dict[str, int] = {}
        for _, kind in outcomes:
            if kind and kind != HELD:
                errors[kind] = errors.get(kind, 0) + 1
        processed = len(latencies) + held  # a held message costs the server its CPU too
        return PhaseResult(
            system=client.name,
            phase=phase,
            sent=len(outcomes),
            answered=len(latencies),
            errors=errors,
            seconds=round(seconds, 2),
            held=held,
            throughput=len(latencies) / seconds if seconds > 0 else 0.0,
            p50_ms=percentile(latencies, 0.50),
            p95_ms=percentile(latencies, 0.95),
            p99_ms=percentile(latencies, 0.99),
            max_ms=max(latencies) if latencies else None,
            server_cpu_ms_per_message=(meter.server_cpu * 1000 / processed) if processed else None,
            other_cpu_cores=round(meter.other_cores, 2),
            **extra,
        )

    async def sequential(self, client: Any, count: int, tag: str, meter: Meter) -> PhaseResult:
        senders = [f"bench-{tag}-seq-{i}" for i in range(max(1, count // 4))]
        await client.prepare(senders)
        outcomes = []
        with meter:
            started = time.perf_counter()
            for i in range(count):
                now = time.perf_counter()
                outcomes.append(await self.one(client, senders[i % len(senders)], self.next_text(), now, REQUEST_TIMEOUT))
            seconds = time.perf_counter() - started
        return self.result(client, "sequential", outcomes, seconds, meter)

    async def open_loop(self, client: Any, rate: float, duration: float, tag: str, meter: Meter) -> PhaseResult:
        count = min(MAX_MESSAGES_PER_PHASE, max(1, int(round(rate * duration))))
        # Each sender writes at most every 5 s: conversations, never a flood.
        senders = [f"bench-{tag}-open-{i}" for i in range(max(8, math.ceil(rate * 5)))]
        await client.prepare(senders)
        texts = [self.next_text() for _ in range(count)]
        finished: list[float] = []

        async def at(i: int, start: float) -> tuple[Optional[float], Optional[str]]:
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            outcome = await self.one(client, senders[i % len(senders)], texts[i], due, REQUEST_TIMEOUT)
            finished.append(time.perf_counter())
            return outcome

        with meter:
            start = time.perf_counter() + 0.05
            outcomes = await asyncio.gather(*(at(i, start) for i in range(count)))
            # Achieved throughput: answered messages over the time from the first due send to the last answer.
            seconds = max(max(finished, default=start) - start, count / rate)
        return self.result(client, "open", list(outcomes), seconds, meter, offered_rate=rate)

    async def closed_loop(self, client: Any, concurrency: int, duration: float, tag: str, meter: Meter) -> PhaseResult:
        per_worker = 64
        senders = [[f"bench-{tag}-closed-{w}-{i}" for i in range(per_worker)] for w in range(concurrency)]
        await client.prepare([s for group in senders for s in group])
        outcomes: list[tuple[Optional[float], Optional[str]]] = []

        async def worker(w: int, stop_at: float) -> None:
            for i in itertools.count():
                if time.perf_counter() >= stop_at or len(outcomes) >= MAX_MESSAGES_PER_PHASE:
                    return
                now = time.perf_counter()
                outcomes.append(await self.one(client, senders[w][i % per_worker], self.next_text(), now, REQUEST_TIMEOUT))

        with meter:
            started = time.perf_counter()
            await asyncio.gather(*(worker(w, started + duration) for w in range(concurrency)))
            seconds = time.perf_counter() - started
        return self.result(client, "closed", outcomes, seconds, meter, concurrency=concurrency)


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class BenchOptions:
    messages: int = 200          # sequential phase
    rate: float = 20.0           # open loop, messages per second
    duration: float = 20.0       # open and closed loops, seconds
    concurrency: int = 8         # closed loop
    max_seconds: float = 1200.0  # the whole run, start-up included
    systems: tuple[str, ...] = ("jisr", "rasa")
    model: Optional[Path] = None
    keep_logs: Optional[Path] = None  # copy the servers' logs here at the end


def _busy_elsewhere(exclude: set[int]) -> list[str]:
    """Processes using CPU right now that are not ours (the machine's background load)."""
    import psutil

    procs = [p for p in psutil.process_iter(["name", "pid"]) if p.pid not in exclude]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(1.0)
    busy = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            percent = p.cpu_percent(None)
            if percent >= 20:
                busy.append((percent, f"{_label(p)} (pid {p.pid}) {percent:.0f}%"))
    return [label for _, label in sorted(busy, reverse=True)[:4]]


def _label(proc: Any) -> str:
    """A process's name, and for an interpreter what it runs ("python pytest"): no arguments, no paths."""
    name = proc.info.get("name") or "?"
    with contextlib.suppress(Exception):
        argv = proc.cmdline()
        if name.startswith("python") and len(argv) > 1:
            rest = [a for a in argv[1:] if a != "-m" and not a.startswith("-")]
            if rest:
                return f"{name} {Path(rest[0]).name[:24]}"
    return name


async def _wait_ready(http: Any, url: str, process: ManagedProcess, timeout: float) -> float:
    """Seconds from the process's start until ``url`` answers 200."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited while starting:\n{process.log_tail()}")
        with contextlib.suppress(Exception):
            async with http.get(url, timeout=_timeout(5)) as response:
                if response.status == 200:
                    return time.perf_counter() - process.started_at
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{process.name} was not ready after {timeout:.0f} s:\n{process.log_tail()}")


def _timeout(seconds: float) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JISR_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        RASA_TELEMETRY_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        LOG_LEVEL_LIBRARIES="ERROR",
        PYTHONUNBUFFERED="1",
        NO_PROXY="*",
    )
    return env


def _rasa_executable() -> list[str]:
    beside = Path(sys.executable).with_name("rasa")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "rasa"]


async def run_bench(options: BenchOptions, progress: Any = None) -> BenchReport:
    import aiohttp

    from jisr.assistant.model import ensure_model

    say = progress or (lambda message: None)
    model = options.model or ensure_model().path
    messages = load_messages()
    tmp = Path(tempfile.mkdtemp(prefix="jisr-bench-"))
    processes: list[ManagedProcess] = []
    sampler: Optional[Sampler] = None
    try:
        import psutil

        busy = await asyncio.to_thread(_busy_elsewhere, {os.getpid()})
        report = BenchReport(
            model=model.name,
            cores=psutil.cpu_count() or 1,
            load_before=os.getloadavg(),
            load_after=(0.0, 0.0, 0.0),
            busy_elsewhere=busy,
            settings={
                "messages": options.messages, "rate": options.rate, "duration": options.duration,
                "concurrency": options.concurrency, "message_pool": len(messages),
            },
        )
        env = _base_env()
        servers: dict[str, tuple[ManagedProcess, ...]] = {}
        urls: dict[str, str] = {}
        ready_urls: dict[str, list[tuple[str, ManagedProcess]]] = {}
        if "jisr" in options.systems:
            port = free_port()
            var = tmp / "jisr"
            var.mkdir()
            dead = "http://127.0.0.1:9"  # no provider is called in this benchmark; if one were, it stays on loopback
            jisr_env = dict(
                env,
                JISR_VAR_DIR=str(var),
                JISR_DATABASE_URL=f"sqlite:///{var / 'jisr.db'}",
                JISR_PUBLIC_URL=f"http://{LOOPBACK}:{port}",
                JISR_TWILIO_API_BASE=dead,
                JISR_TELEGRAM_API_BASE=dead,
                JISR_GRAPH_API_BASE=dead + "/v19.0",
            )
            gateway = ManagedProcess("jisr serve", [sys.executable, "-m", "jisr.cli", "serve", "--host", LOOPBACK, "--port", str(port)], jisr_env, tmp / "jisr.log")
            gateway.extra_cwd = var  # the embedded redis-server daemonises into this directory
            servers["Jisr"] = (gateway,)
            urls["Jisr"] = f"http://{LOOPBACK}:{port}"
            ready_urls["Jisr"] = [(f"{urls['Jisr']}/ready", gateway)]
        if "rasa" in options.systems:
            port, actions_port = free_port(), free_port()
            rasa_dir = tmp / "rasa"
            rasa_dir.mkdir()
            (rasa_dir / "endpoints.yml").write_text(f'action_endpoint:\n  url: "http://{LOOPBACK}:{actions_port}/webhook"\n')
            (rasa_dir / "credentials.yml").write_text("rest:\n")
            actions = ManagedProcess(
                "rasa_sdk action server",
                [sys.executable, "-m", "rasa_sdk", "--actions", "actions", "--port", str(actions_port), "--quiet"],
                dict(env, SANIC_HOST=LOOPBACK),
                tmp / "actions.log",
            )
            rasa = ManagedProcess(
                "rasa run",
                [*_rasa_executable(), "run", "--model", str(model), "--port", str(port), "--interface", LOOPBACK, "--enable-api",
                 "--endpoints", str(rasa_dir / "endpoints.yml"), "--credentials", str(rasa_dir / "credentials.yml"), "--quiet"],
                env,
                tmp / "rasa.log",
            )
            servers["Rasa"] = (rasa, actions)
            urls["Rasa"] = f"http://{LOOPBACK}:{port}"
            ready_urls["Rasa"] = [(f"{urls['Rasa']}/status", rasa), (f"http://{LOOPBACK}:{actions_port}/health", actions)]

        for group in servers.values():
            for process in group:
                process.start()
                processes.append(process)
        say(f"started {', '.join(p.name for p in processes)}; loading the model {model.name}…")
        sampler = Sampler(processes)
        sampler.start()

        connector = lambda: aiohttp.TCPConnector(limit=0, force_close=False)  # noqa: E731
        sessions = {name: aiohttp.ClientSession(connector=connector(), timeout=_timeout(REQUEST_TIMEOUT + 15)) for name in servers}
        try:
            startup: dict[str, float] = {}
            for name, checks in ready_urls.items():
                startup[name] = max([await _wait_ready(sessions[name], url, proc, STARTUP_TIMEOUT) for url, proc in checks])
            clients: dict[str, Any] = {}
            for name in servers:
                clients[name] = (JisrWebChat if name == "Jisr" else RasaRest)(urls[name], sessions[name])

            # Warm up (not measured): messages spread over the whole set, so every kind of answer
            # (and the content it reads) has been through both systems once, then a concurrent burst.
            runner = Runner(messages)
            stride = max(1, len(messages) // 48)
            warm_texts = [text for _, text in messages[::stride]][:48]
            for name, client in clients.items():
                warm = [f"bench-warm-{i}" for i in range(16)]
                await client.prepare(warm)
                for i, text in enumerate(warm_texts):
                    _, failure = await runner.one(client, warm[i % 16], text, time.perf_counter(), 60)
                    if failure:
                        raise RuntimeError(f"{name} failed during warm-up ({failure}):\n" + "\n".join(p.log_tail() for p in servers[name]))
                await asyncio.gather(*(runner.one(client, warm[i], messages[i + 1][1], time.perf_counter(), 60) for i in range(16)))
            await asyncio.sleep(1.0)
            idle: dict[str, tuple[int, dict[str, int]]] = {}
            for name, group in servers.items():
                total, parts = 0, {}
                for process in group:
                    t, p = process.rss()
                    total += t
                    for k, v in p.items():
                        parts[k] = parts.get(k, 0) + v
                idle[name] = (total, parts)
                for process in group:
                    process.peak_rss = 0  # the peak is measured from here on

            all_servers = [p for group in servers.values() for p in group]
            names = list(clients)
            for index, phase in enumerate(("sequential", "open", "closed")):
                order = names if index % 2 == 0 else list(reversed(names))
                for name in order:
                    client = clients[name]
                    meter = Meter(servers[name], all_servers)
                    say(f"{name}: {phase}…")
                    if phase == "sequential":
                        result = await runner.sequential(client, options.messages, name.lower(), meter)
                    elif phase == "open":
                        result = await runner.open_loop(client, options.rate, options.duration, name.lower(), meter)
                    else:
                        result = await runner.closed_loop(client, options.concurrency, options.duration, name.lower(), meter)
                    report.phases.append(result)
                    say(f"{name}: {phase}: p50 {result.p50_ms or 0:.0f} ms, p95 {result.p95_ms or 0:.0f} ms, "
                        f"{result.throughput:.1f} msg/s, {result.answered}/{result.sent} answered")
                    await asyncio.sleep(1.5)  # let queues and the other system settle

            for name, group in servers.items():
                hows = {"Jisr": "jisr serve (web chat API: POST + long poll), embedded Redis, SQLite, actions in-process",
                        "Rasa": "rasa run --enable-api, REST channel, in-memory tracker, actions in rasa_sdk server"}
                report.systems.append(
                    SystemInfo(
                        name=name,
                        how=hows[name],
                        startup_seconds=round(startup[name], 1),
                        rss_idle_mb=round(idle[name][0] / 2**20, 1),
                        rss_peak_mb=round(sum(p.peak_rss for p in group) / 2**20, 1),
                        rss_parts_mb={k: round(v / 2**20, 1) for k, v in idle[name][1].items()},
                    )
                )
            report.load_after = os.getloadavg()
            return report
        finally:
            for session in sessions.values():
                with contextlib.suppress(Exception):
                    await session.close()
    finally:
        if sampler is not None:
            sampler.stop()
        await asyncio.to_thread(_stop_all, processes)
        if options.keep_logs is not None:
            options.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy(log, options.keep_logs / log.name)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop_all(processes: Sequence[ManagedProcess]) -> None:
    threads = [threading.Thread(target=p.stop) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


atexit.register(lambda: _stop_all([p for p in _STARTED if p.alive()]))


def main(options: BenchOptions, as_json: bool = False) -> int:
    """Run the benchmark within ``options.max_seconds``; every process started is stopped on any exit."""
    return run_bounded("jisr bench gateway", lambda progress: run_bench(options, progress), options.max_seconds, as_json, use_uvloop=True)
