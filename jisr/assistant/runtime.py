"""The assistant in one object: the Rasa agent, Jisr's actions in-process, and safe input handling.

Everything that talks to a family (`jisr ask`, the gateway, the tests) goes
through `Assistant.handle`, so bad input is handled in one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jisr.assistant import rasa_speedups
from jisr.assistant.model import ensure_model, quiet_rasa
from jisr.assistant.tracker_store import saved_trackers
from jisr.content import ReplyBook, default_reply_book
from jisr.text import sanitize_input

logger = logging.getLogger(__name__)

FALLBACK_INTENT = "nlu_fallback"


@dataclass(frozen=True)
class Reply:
    text: str
    buttons: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"text": self.text}
        if self.buttons:
            data["buttons"] = self.buttons
        return data


@dataclass(frozen=True)
class Turn:
    """One message in, the assistant's understanding of it, and the replies out."""

    text: str
    language: Optional[str]
    language_form: Optional[str]
    dialect: Optional[str]
    intent: Optional[str]
    confidence: float
    fell_back: bool
    entities: list[dict[str, Any]]
    slots: dict[str, Any]
    replies: list[Reply]

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "dialect": self.dialect,
            "intent": self.intent,
            "confidence": round(self.confidence, 4),
            "replies": [r.text for r in self.replies],
        }


class Assistant:
    """A loaded model ready to hold conversations."""

    def __init__(self, agent: Any, replies: ReplyBook | None = None) -> None:
        self.agent = agent
        self.replies = replies or default_reply_book()

    @classmethod
    def load(
        cls,
        model_path: Path | None = None,
        *,
        tracker_store: Any = None,
        lock_store: Any = None,
    ) -> "Assistant":
        """Load the model (training it first if it is missing or stale)."""
        quiet_rasa()
        from rasa.core.agent import Agent

        from jisr.assistant.action_endpoint import InProcessActionEndpoint

        path = model_path or ensure_model().path
        agent = Agent.load(
            str(path),
            tracker_store=tracker_store,
            lock_store=lock_store,
            action_endpoint=InProcessActionEndpoint(),
        )
        rasa_speedups.apply(agent)
        return cls(agent)

    async def parse(self, text: str) -> dict[str, Any]:
        """NLU only: intent ranking and entities, no conversation state touched."""
        return await self.agent.parse_message(sanitize_input(text).text)

    async def handle(self, sender: str, raw_text: str | bytes | None, hints: dict[str, Any] | None = None) -> Turn:
        """Process one message from ``sender`` and return the replies. Never raises on bad input."""
        from rasa.core.channels.channel import CollectingOutputChannel, UserMessage

        clean = sanitize_input(raw_text)
        if clean.is_empty:
            tracker = await self.agent.tracker_store.get_or_create_tracker(sender)
            language = tracker.get_slot("language")
            return self._turn(clean.text, tracker, None, 0.0, [Reply(self.replies.text("empty_input", language))])

        output = CollectingOutputChannel()
        message = UserMessage(clean.text, output, sender, metadata={"jisr": dict(hints or {})})
        with saved_trackers() as saved:
            try:
                await self.agent.handle_message(message)
            except Exception:  # a bug must cost one reply, not the conversation
                logger.exception("assistant failed on a message")
                tracker = await self.agent.tracker_store.get_or_create_tracker(sender)
                language = tracker.get_slot("language")
                return self._turn(clean.text, tracker, None, 0.0, [Reply(self.replies.text("rephrase", language))])

        # The conversation as Rasa saved it at the end of this message (read back from Redis only
        # with a tracker store that does not hand it over).
        tracker = saved.get(sender) or await self.agent.tracker_store.retrieve(sender)
        parse = tracker.latest_message.parse_data if tracker else {}
        intent, confidence = top_intent(parse)
        replies = [
            Reply(m.get("text") or "", [{"title": b.get("title", ""), "payload": b.get("payload", "")} for b in m.get("buttons") or []])
            for m in output.messages
            if m.get("text")
        ]
        if not replies:
            # Every message gets an answer, even when an action failed (it is logged).
            logger.error("no reply produced for intent %s", intent)
            replies.append(Reply(self.replies.text("rephrase", tracker.get_slot("language"))))
        if clean.truncated:
            replies.insert(0, Reply(self.replies.text("too_long", tracker.get_slot("language"))))
        return self._turn(clean.text, tracker, intent, confidence, replies, fell_back=_fell_back(parse))

    @staticmethod
    def _turn(text: str, tracker: Any, intent: Optional[str], confidence: float, replies: list[Reply], fell_back: bool = False) -> Turn:
        slots = tracker.current_slot_values() if tracker else {}
        entities = list((tracker.latest_message.parse_data or {}).get("entities", [])) if tracker and intent else []
        return Turn(
            text=text,
            language=slots.get("detected_language") or slots.get("language"),
            language_form=slots.get("language_form"),
            dialect=slots.get("dialect"),
            intent=intent,
            confidence=confidence,
            fell_back=fell_back,
            entities=entities,
            slots=slots,
            replies=replies,
        )


def top_intent(parse: dict[str, Any]) -> tuple[Optional[str], float]:
    """The classifier's best real intent (the fallback marker is a decision, not an intent)."""
    for candidate in parse.get("intent_ranking") or []:
        if candidate.get("name") != FALLBACK_INTENT:
            return candidate.get("name"), float(candidate.get("confidence") or 0.0)
    intent = parse.get("intent") or {}
    return intent.get("name"), float(intent.get("confidence") or 0.0)


def _fell_back(parse: dict[str, Any]) -> bool:
    return (parse.get("intent") or {}).get("name") == FALLBACK_INTENT
