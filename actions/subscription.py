"""Subscribing to and stopping reminders, confirmed in the family's language."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Text

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.base import JisrAction
from actions.profile import _metadata
from jisr.topics import SUBSCRIPTION_TOPICS, stop_topics, subscribed_topics, unsubscribed_topics


def _topic_list(action: JisrAction, tracker: Tracker, topics: Iterable[str]) -> str:
    """Topics as a bulleted list in the conversation's language: the one way both the stop and
    the subscription confirmations name them (topic_names in content/replies/<lang>.yml)."""
    names = action.replies.raw("topic_names", action.language(tracker))
    return "\n".join(f"• {names.get(t, t)}" for t in topics)


class ActionOptOut(JisrAction):
    """A STOP stops every reminder; a STOP naming topics only those, and says which continue.

    The gateway records it (jisr/consent.py) and passes what the family receives now in the
    message's hints (``topics``, ``consent``); without them (`jisr ask`) a subscribed family
    that never chose topics is assumed, which receives them all."""

    def name(self) -> Text:
        return "action_opt_out"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        named = unsubscribed_topics(tracker.latest_message.get("text") or "")
        hints = _metadata(tracker)
        if not named or hints.get("consent", "opted_in") != "opted_in":
            # Global, or nothing reaches the family anyway: no reminders at all is the truth.
            self.say(dispatcher, tracker, "opt_out_confirm")
            return [SlotSet("subscribed", False)] + self.turn_done()
        held = hints.get("topics") if isinstance(hints.get("topics"), list) else SUBSCRIPTION_TOPICS
        change = stop_topics(held, named)
        listed = {"stopped": _topic_list(self, tracker, change.stopped), "kept": _topic_list(self, tracker, change.kept)}
        self.say(dispatcher, tracker, "opt_out_topics_confirm" if change.kept else "opt_out_topics_confirm_none_left", **listed)
        return self.turn_done()


class ActionOptIn(JisrAction):
    """A subscription names the reminders the family asked for ("the exam reminders"), or says
    "all our reminders" when the message named none (or every topic).

    The topics are read from the message by the same rule the gateway records them with
    (jisr.topics.subscribed_topics via jisr/consent.py), so what the family is told is what is
    recorded for this message."""

    def name(self) -> Text:
        return "action_opt_in"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        topics = subscribed_topics(tracker.latest_message.get("text") or "")
        if set(topics) == set(SUBSCRIPTION_TOPICS):
            self.say(dispatcher, tracker, "opt_in_confirm")
        else:
            self.say(dispatcher, tracker, "opt_in_topics_confirm", topics=_topic_list(self, tracker, topics))
        return [SlotSet("subscribed", True)] + self.offer_french_once(dispatcher, tracker) + self.turn_done()
