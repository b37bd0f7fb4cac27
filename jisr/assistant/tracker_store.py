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

A session is also capped: a family (or a script) writing all day long, within the flood limit
of 20 messages a minute, would grow one session by thousands of events, each message costing
more than the one before. Past ``MAX_SESSION_EVENTS`` the session is saved as it would have
started just before a recent message: the slots as they stood then, then the last
``KEEP_EVENTS`` events or so, from a message on. Jisr's dialogue has no forms and its rules
look at the last few turns only (RulePolicy), so nothing the assistant uses is lost.

It also hands the saved tracker to the turn that saved it (``saved_trackers``), so
``Assistant.handle`` reads the outcome of a message without deserialising the conversation a
second time.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Optional

from rasa.core.tracker_store import RedisTrackerStore
from rasa.shared.core.constants import ACTION_LISTEN_NAME, ACTION_SESSION_START_NAME
from rasa.shared.core.events import ActionExecuted, SessionStarted, SlotSet, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

MAX_SESSION_EVENTS = 600   # about 60 messages with their replies and slot changes
KEEP_EVENTS = 300

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
        stored = compacted(tracker, self.domain.slots if self.domain is not None else [])
        self.red.set(self.key_prefix + tracker.sender_id, self.serialise_tracker(stored), ex=timeout)
        saved = _SAVED.get()
        if saved is not None:
            saved[tracker.sender_id] = tracker


def compacted(tracker: Any, slots: list[Any]) -> Any:
    """``tracker`` itself, or, past MAX_SESSION_EVENTS, a session that starts before a recent
    message with the slots as they stood then (see the module's docstring)."""
    events = list(tracker.events)
    if len(events) <= MAX_SESSION_EVENTS:
        return tracker
    cut = len(events) - KEEP_EVENTS
    while cut < len(events) and not isinstance(events[cut], UserUttered):
        cut += 1  # the kept part starts with a message, as a turn does
    if cut >= len(events):
        return tracker
    before = DialogueStateTracker.from_events(tracker.sender_id, events[:cut], slots)
    at = events[cut].timestamp
    head = [ActionExecuted(ACTION_SESSION_START_NAME, timestamp=at), SessionStarted(timestamp=at)]
    head += [SlotSet(name, slot.value, timestamp=at) for name, slot in before.slots.items() if slot.value != slot.initial_value]
    head.append(ActionExecuted(ACTION_LISTEN_NAME, timestamp=at))
    return DialogueStateTracker.from_events(tracker.sender_id, head + events[cut:], slots)
