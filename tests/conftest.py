"""Shared fixtures: the real trained model, loaded once per test session, and one running
gateway (with the provider simulators) shared by every end-to-end test file."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from jisr.content import ReplyBook, default_reply_book

# The secrets of the end-to-end stack (the gateway and its simulators share them).
STACK_SECRETS = {
    "telegram_token": "123456:test-token",
    "telegram_secret": "telegram-secret",
    "messenger_app_secret": "app-secret",
    "messenger_verify_token": "verify",
    "twilio_auth_token": "twilio-auth-token",
    "twilio_account_sid": "AC" + "1" * 32,
    "webchat_secret": "webchat-test-secret",
    "operator_api_token": "operator-test-token",
}
# The mediators' Telegram group of the stack (escalations go there).
MEDIATORS_GROUP = "-1009990001"


@pytest.fixture(scope="session")
def event_loop_for_session() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def assistant(event_loop_for_session: asyncio.AbstractEventLoop) -> Any:
    """The assistant with the project's real model (trained by `make test` before pytest runs)."""
    from jisr.assistant.model import ensure_model
    from jisr.assistant.runtime import Assistant

    return Assistant.load(ensure_model().path)


_senders = itertools.count()


class Conversation:
    """One family talking to the assistant; each instance is a fresh sender."""

    def __init__(self, assistant: Any, loop: asyncio.AbstractEventLoop, **hints: Any) -> None:
        self.assistant = assistant
        self.loop = loop
        self.sender = f"test-{next(_senders)}"
        self.hints = hints
        self.turns: list[Any] = []

    def say(self, text: Any) -> Any:
        turn = self.loop.run_until_complete(self.assistant.handle(self.sender, text, self.hints))
        self.turns.append(turn)
        return turn

    def texts(self, text: Any) -> list[str]:
        return [r.text for r in self.say(text).replies]


@pytest.fixture
def conversation(assistant: Any, event_loop_for_session: asyncio.AbstractEventLoop):
    def start(**hints: Any) -> Conversation:
        return Conversation(assistant, event_loop_for_session, **hints)

    return start


@pytest.fixture()
def gateway(assistant: Any, event_loop_for_session: asyncio.AbstractEventLoop, tmp_path: Path) -> Iterator[Any]:
    """The real Gateway in this process: the session's model, an embedded Redis, its own SQLite
    file (``gateway.engine``, ``gateway.loop`` to run its coroutines)."""
    from jisr.gateway.service import Gateway
    from jisr.outbox import Outbox
    from jisr.redisconn import connect_redis
    from jisr.store.contacts import ContactStore, create_db_engine

    handle = connect_redis(None, directory=tmp_path)
    engine = create_db_engine(f"sqlite:///{tmp_path / 'jisr.db'}")

    async def build() -> Any:
        return Gateway(assistant, ContactStore(engine), handle.client(), await Outbox.connect(handle.host, handle.port, handle.db))

    built = event_loop_for_session.run_until_complete(build())
    built.engine = engine
    built.loop = event_loop_for_session
    try:
        yield built
    finally:
        event_loop_for_session.run_until_complete(built.outbox.pool.close())
        event_loop_for_session.run_until_complete(built.redis.close())
        engine.dispose()
        handle.close()


@pytest.fixture(scope="session")
def replies() -> ReplyBook:
    return default_reply_book()


def _slow_start_server(app: Any, start_timeout: float = 180.0) -> Any:
    """BackgroundServer allows 20 s to start; the gateway loads the model while starting,
    which on a busy 2-core machine (CI) can take longer."""
    import time

    from jisr.simulators.server import BackgroundServer

    class SlowStartServer(BackgroundServer):
        def __enter__(self) -> str:
            self.thread.start()
            deadline = time.monotonic() + start_timeout
            while not self.server.started:
                if time.monotonic() > deadline or not self.thread.is_alive():
                    self.server.should_exit = True
                    raise RuntimeError("the gateway did not start")
                time.sleep(0.05)
            host, port = self.server.servers[0].sockets[0].getsockname()[:2]
            self.url = f"http://{host}:{port}"
            return self.url

    return SlowStartServer(app)


@contextlib.contextmanager
def provider_simulators() -> Iterator[dict[str, str]]:
    """The Twilio, Telegram and Graph simulators, each on its own localhost port, with the test secrets."""
    from jisr.simulators import graph, telegram, twilio
    from jisr.simulators.server import BackgroundServer

    s = STACK_SECRETS
    with BackgroundServer(twilio.create_app(auth_token=s["twilio_auth_token"], account_sid=s["twilio_account_sid"])) as twilio_url, BackgroundServer(
        telegram.create_app(token=s["telegram_token"])
    ) as telegram_url, BackgroundServer(
        graph.create_app(page_token="page-token", app_secret=s["messenger_app_secret"], verify_token=s["messenger_verify_token"])
    ) as graph_url:
        yield {"twilio": twilio_url, "telegram": telegram_url, "graph": graph_url}


def simulator_settings(urls: dict[str, str], **overrides: Any) -> Any:
    """Settings that point every channel at the simulators in ``urls``, with the test secrets."""
    from jisr.settings import Settings

    s = STACK_SECRETS
    return Settings(
        twilio_account_sid=s["twilio_account_sid"],
        twilio_auth_token=s["twilio_auth_token"],
        twilio_api_base=urls["twilio"],
        telegram_bot_token=s["telegram_token"],
        telegram_secret_token=s["telegram_secret"],
        telegram_api_base=urls["telegram"],
        messenger_app_secret=s["messenger_app_secret"],
        messenger_verify_token=s["messenger_verify_token"],
        messenger_page_token="page-token",
        graph_api_base=urls["graph"],
        webchat_secret=s["webchat_secret"],
        **overrides,
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real gateway server (model, embedded Redis, SQLite, reply worker) wired to the three
    provider simulators, each on its own localhost port; started once per test session.

    Yields the base URLs ("gateway", "twilio", "telegram", "graph") and the secrets (STACK_SECRETS).
    """
    from jisr.gateway.app import create_app

    s = STACK_SECRETS
    tmp: Path = tmp_path_factory.mktemp("gateway")
    with provider_simulators() as urls:
        settings = simulator_settings(
            urls,
            database_url=f"sqlite:///{tmp / 'jisr.db'}",
            redis_url=None,
            var_dir=tmp,
            operator_api_token=s["operator_api_token"],
            sender_messages_per_minute=5,
            # Escalated handoffs are told to this (simulated) Telegram group; checked often (test_mediation).
            mediators_telegram_chat_id=MEDIATORS_GROUP,
            mediation_check_seconds=0.5,
        )
        twilio_url, telegram_url, graph_url = urls["twilio"], urls["telegram"], urls["graph"]
        with _slow_start_server(create_app(settings)) as gateway_url:
            yield {"gateway": gateway_url, "twilio": twilio_url, "telegram": telegram_url, "graph": graph_url, "database_url": settings.database_url, **s}


# --- A real browser (Debian's chromium, driven by Playwright) ---------------------------------

CHROMIUM = os.environ.get("JISR_CHROMIUM", "/usr/bin/chromium")
# As root and on a closed network: no sandbox, and none of the background connections that
# this machine's network refuses many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per test module (each test opens its own context)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; .ci/run does it)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
