"""Shared fixtures: the real trained model, loaded once per test session."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Iterator

import pytest

from jisr.content import ReplyBook, default_reply_book


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


@pytest.fixture(scope="session")
def replies() -> ReplyBook:
    return default_reply_book()
