"""Operating Jisr as deployed (docs/deployment.md): /metrics after real traffic, /ready when Redis
goes away and comes back, SIGTERM on a gateway and on a worker (in-flight work finishes or stays
queued, exit 0). Real processes: `jisr serve` and `jisr worker` as deployed, a redis-server of
their own (appendonly), the provider simulators."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import STACK_SECRETS, provider_simulators
from jisr.bench.gateway import LOOPBACK, ManagedProcess, _base_env, free_port
from jisr.bench.soak import RedisProcess
from jisr.outbox import BULK_QUEUE, Outbox, SendJob

SAMPLE = re.compile(r'^([a-z_]+)(\{[^}]*\})? (\S+)$')


def _env(redis: RedisProcess, database: Path, sims: dict[str, str], public_url: str) -> dict[str, str]:
    s = STACK_SECRETS
    return dict(
        _base_env(),
        REDIS_URL=redis.url,
        DATABASE_URL=f"sqlite:///{database}",
        JISR_VAR_DIR=str(database.parent),
        JISR_PUBLIC_URL=public_url,
        JISR_TWILIO_API_BASE=sims["twilio"],
        JISR_TWILIO_ACCOUNT_SID=s["twilio_account_sid"],
        JISR_TWILIO_AUTH_TOKEN=s["twilio_auth_token"],
        JISR_TELEGRAM_API_BASE=sims["telegram"],
        JISR_TELEGRAM_BOT_TOKEN=s["telegram_token"],
        JISR_TELEGRAM_SECRET_TOKEN=s["telegram_secret"],
        JISR_GRAPH_API_BASE=sims["graph"],
        JISR_MESSENGER_PAGE_TOKEN="page-token",
        JISR_MESSENGER_APP_SECRET=s["messenger_app_secret"],
        JISR_WEBCHAT_SECRET=s["webchat_secret"],
    )


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A redis-server, the simulators and one `jisr serve` (with its reply worker), as in production."""
    tmp = tmp_path_factory.mktemp("operations")
    redis = RedisProcess(tmp / "redis", tmp / "redis.log")
    redis.start()
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    with provider_simulators() as sims:
        env = _env(redis, tmp / "jisr.db", sims, url)
        gateway = ManagedProcess("jisr serve", [sys.executable, "-m", "jisr.cli", "serve", "--host", LOOPBACK, "--port", str(port), "--grace", "10"],
                                 env, tmp / "gateway.log")
        gateway.start()
        try:
            _wait(lambda: _status(f"{url}/ready") == 200 or not gateway.alive(), 300, "the gateway to be ready")
            assert gateway.alive(), gateway.log_tail()
            yield {"url": url, "gateway": gateway, "redis": redis, "sims": sims, "env": env, "tmp": tmp}
        finally:
            gateway.stop()
            if redis.process is not None:
                redis.process.stop()


def _metrics(url: str) -> dict[tuple[str, str], float]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[tuple[str, str], float] = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            assert line == "" or line.startswith(("# HELP ", "# TYPE ")), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not in the exposition format: {line!r}"
        samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics_count_real_traffic(deployment: dict[str, Any]) -> None:
    url, sims = deployment["url"], deployment["sims"]
    before = _metrics(url)
    sender = "whatsapp:+212661234567"
    for text in ("salam, wldi f 3eme", "Bonjour, comment inscrire mon fils au lycée ?"):
        answer = httpx.post(f"{sims['twilio']}/_sim/inbound", json={"webhook_url": f"{url}/webhooks/whatsapp", "from": sender, "body": text}, timeout=60).json()
        assert answer["statuses"] == [200]
    sent_to = lambda: [r for r in httpx.get(f"{sims['twilio']}/_sim/requests").json()["requests"] if r.get("to") == sender and r.get("http_status") == 201]  # noqa: E731
    _wait(lambda: len(sent_to()) >= 2, 60, "both replies")
    after = _wait(lambda: (m := _metrics(url)).get(("jisr_sends_total", '{channel="whatsapp",lane="replies",outcome="sent"}'), 0)
                  - before.get(("jisr_sends_total", '{channel="whatsapp",lane="replies",outcome="sent"}'), 0) >= 2 and m, 30, "the send counters")

    def grew(name: str, labels: str) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert grew("jisr_inbound_messages_total", '{channel="whatsapp",outcome="processed"}') == 2
    assert grew("jisr_webhook_responses_total", '{channel="whatsapp",status="200"}') == 2
    assert grew("jisr_reply_seconds_count", '{channel="whatsapp"}') >= 2
    assert after[("jisr_reply_seconds_bucket", '{channel="whatsapp",le="+Inf"}')] == after[("jisr_reply_seconds_count", '{channel="whatsapp"}')]
    assert grew("jisr_webhook_seconds_count", '{channel="whatsapp"}') == 2
    assert after[("jisr_processes_alive", '{kind="gateway"}')] == 1
    assert after[("jisr_processes_alive", '{kind="worker-replies"}')] == 1   # the gateway's in-process reply worker
    assert ("jisr_queue_jobs", '{lane="bulk",state="due"}') in after
    assert ("jisr_inbound_pending", "") in after
    # Nothing personal in the metrics: no number, no text.
    text = httpx.get(f"{url}/metrics").text
    assert "212661234567" not in text and "wldi" not in text


def test_ready_is_false_while_redis_is_down(deployment: dict[str, Any]) -> None:
    url, redis = deployment["url"], deployment["redis"]
    assert _status(f"{url}/health") == 200
    redis.kill()
    try:
        response = httpx.get(f"{url}/ready", timeout=15)
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert _status(f"{url}/health") == 200   # alive, not ready: no restart, no traffic
    finally:
        redis.start()
    _wait(lambda: _status(f"{url}/ready") == 200, 30, "ready again once Redis is back")


def test_worker_sigterm_leaves_an_unfinished_send_queued_and_exits_0(deployment: dict[str, Any]) -> None:
    """A send hanging at the provider when SIGTERM comes: the worker waits (--grace), the send
    fails over to a retry that stays queued, the worker exits 0; the next worker sends it once."""
    sims, env, tmp, redis = deployment["sims"], deployment["env"], deployment["tmp"], deployment["redis"]
    address = "telegram:4242424242"
    httpx.post(f"{sims['telegram']}/_sim/fail", json={"queue": [{"timeout": 3.0}]}).raise_for_status()
    key = f"operations-sigterm-{time.time_ns()}"

    async def enqueue() -> None:
        outbox = await Outbox.connect(LOOPBACK, redis.port)
        try:
            # The bulk lane: the gateway's own reply worker must not take it.
            assert await outbox.enqueue(SendJob(key, "telegram", address, parts=(("Bonjour, votre rendez-vous est confirmé.", ()),), lane="bulk"))
        finally:
            await outbox.close()

    asyncio.run(enqueue())
    worker = ManagedProcess("worker", [sys.executable, "-m", "jisr.cli", "worker", "--queue", "bulk", "--grace", "10"], env, tmp / "worker.log")
    worker.start()
    try:
        calls = lambda: [r for r in httpx.get(f"{sims['telegram']}/_sim/requests").json()["requests"]  # noqa: E731
                         if r.get("method") == "sendMessage" and str(r["params"].get("chat_id")) == "4242424242"]
        _wait(lambda: calls() or not worker.alive(), 120, "the worker's provider call")
        # The call is hanging at the provider (3 s, then 504): SIGTERM now.
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGTERM)
        assert worker.proc.wait(30) == 0, worker.log_tail()
    finally:
        worker.stop()
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis.url)
    assert client.zscore(BULK_QUEUE, key) is not None, "the unfinished send must stay queued"
    assert [r for r in calls() if r.get("http_status") == 200] == []
    again = subprocess.run([sys.executable, "-m", "jisr.cli", "worker", "--queue", "bulk", "--burst"], env=env, timeout=120, capture_output=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len([r for r in calls() if r.get("http_status") == 200]) == 1


def test_gateway_sigterm_finishes_the_request_in_flight_and_exits_0(deployment: dict[str, Any]) -> None:
    url, gateway = deployment["url"], deployment["gateway"]
    session = httpx.post(f"{url}/api/webchat/session", timeout=10).json()["session"]
    result: dict[str, Any] = {}

    def long_poll() -> None:
        result["response"] = httpx.get(f"{url}/api/webchat/messages", params={"after": "0", "wait": "3"},
                                       headers={"X-Jisr-Session": session}, timeout=30)

    thread = threading.Thread(target=long_poll)
    thread.start()
    time.sleep(0.8)  # the long poll is waiting in the gateway
    assert gateway.proc is not None
    os.kill(gateway.proc.pid, signal.SIGTERM)
    thread.join(30)
    assert result["response"].status_code == 200 and result["response"].json()["messages"] == []
    assert gateway.proc.wait(30) == 0, gateway.log_tail()
    assert _status(f"{url}/health") == 0  # it no longer accepts


def test_json_log_lines_name_the_exception_not_its_message() -> None:
    """JISR_LOG_FORMAT=json: one JSON object per line; an exception's type and frames, never its
    message (a library's message can quote a phone number or a text)."""
    import json
    import logging

    from jisr.logging_setup import JsonLineFormatter

    logger = logging.getLogger("jisr.test")
    try:
        raise ValueError("duplicate key: whatsapp:+212661234567 'wldi f 3eme'")
    except ValueError:
        record = logger.makeRecord("jisr.test", logging.ERROR, __file__, 1, "sending to %s failed", ("a1b2c3d4e5f6",), sys.exc_info())
    line = JsonLineFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "error" and entry["logger"] == "jisr.test" and entry["message"] == "sending to a1b2c3d4e5f6 failed"
    assert entry["exception"] == "ValueError" and entry["frames"] and entry["time"].endswith("+00:00")
    assert "212661234567" not in line and "wldi" not in line


def test_the_cli_logs_json_lines_when_asked(tmp_path: Path) -> None:
    """`jisr --log-json …` configures every later log record as a JSON line."""
    campaign = tmp_path / "empty.yml"
    campaign.write_text("id: x\n", encoding="utf-8")
    script = ("import logging, sys; from jisr.cli import main; "
              f"main(['--log-json', 'campaigns', 'validate', {str(campaign)!r}]); "
              "logging.getLogger('jisr.x').warning('hello %s', 'there')")
    run = subprocess.run([sys.executable, "-c", script], env=_base_env(), capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stderr.splitlines() if line.startswith("{")]
    assert any('"message": "hello there"' in line and '"level": "warning"' in line for line in lines), run.stderr[-2000:]
