"""Conversation state in Redis: Rasa's RedisTrackerStore, keeping the current session only.

Rasa's store keeps every session of a conversation for as long as the key lives (the
retention period), and on each save reads the stored conversation back, deserialises it and
merges the earlier sessions in front of the current one. Each message therefore costs time in
proportion to everything the family ever wrote, and Redis holds months of a minor's
conversation state that nothing uses: Jisr's own message log (SQL) is the record, and the
assistant looks only at the current session (a day of silence starts a new one, carrying the
slots over: bot/domain/actions.yml).

This store saves the tracker it is given (the current session, as ``retrieve`` returned it,
plus any session Rasa just started) and drops the earlier ones. The lock store still makes
sure one process at a time handles a conversation, so nothing else changes.

It also hands the saved tracker to the turn that saved it (``saved_trackers``), so
``Assistant.handle`` reads the outcome of a message without deserialising the conversation a
second time.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Optional

from rasa.core.tracker_store import RedisTrackerStore

# sender id -> the tracker saved last in this context (set by Assistant.handle around one turn).
_SAVED: contextvars.ContextVar[Optional[dict[str, Any]]] = contextvars.ContextVar("jisr_saved_trackers", default=None)


@contextlib.contextmanager
def saved_trackers() -> Iterator[dict[str, Any]]:
    """Collect the trackers saved inside this block (by this task and the ones it awaits)."""
    saved: dict[str, Any] = {}
    token = _SAVED.set(saved)
    try:
        yield saved
    finally:
        _SAVED.reset(token)


class CurrentSessionTrackerStore(RedisTrackerStore):
    """A RedisTrackerStore whose saves keep the current conversation session only."""

    async def save(self, tracker: Any, timeout: Optional[float] = None) -> None:
        await self.stream_events(tracker)
        if not timeout and self.record_exp:
            timeout = self.record_exp
        self.red.set(self.key_prefix + tracker.sender_id, self.serialise_tracker(tracker), ex=timeout)
        saved = _SAVED.get()
        if saved is not None:
            saved[tracker.sender_id] = tracker
