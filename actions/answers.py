"""Answers about school topics, asking for the country first when the answer depends on it."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Text

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.base import (
    COUNTRY_DEPENDENT_TOPICS,
    COVERED_COUNTRIES,
    TOPIC_OF_INTENT,
    JisrAction,
    latest_intent,
)

# A child's safety: the conversation goes to a mediator at once (the answer says so).
HANDOFF_TOPICS = frozenset({"harassment"})
# A child leaving school: a mediator is offered with the answer.
OFFER_MEDIATOR_TOPICS = frozenset({"dropout_help"})


class TopicAnswerer(JisrAction):
    """Shared by every action that may have to answer a topic (now, or once the country is known)."""

    def answer(self, dispatcher: CollectingDispatcher, tracker: Tracker, topic: str) -> List[Dict[Text, Any]]:
        country = tracker.get_slot("country")
        if topic in COUNTRY_DEPENDENT_TOPICS and not country:
            self.say(dispatcher, tracker, "ask_country", buttons=self.country_buttons(tracker))
            return [SlotSet("pending_topic", topic)] + self.offer_french_once(dispatcher, tracker) + self.turn_done()

        events: List[Dict[Text, Any]] = []
        if topic in COUNTRY_DEPENDENT_TOPICS and country not in COVERED_COUNTRIES:
            self.say(dispatcher, tracker, "country_not_covered", country=self.replies.country_name(country, self.language(tracker)))
        self.say(dispatcher, tracker, f"topic_{topic}")
        if topic in HANDOFF_TOPICS:
            events += [SlotSet("handoff_requested", True), SlotSet("handoff_reason", topic)]
        elif topic in OFFER_MEDIATOR_TOPICS:
            self.say(dispatcher, tracker, "mediator_offer", buttons=self.yes_no_buttons(tracker))
            events.append(SlotSet("mediator_offered", True))
        events += [SlotSet("pending_topic", None), SlotSet("last_topic", topic)]
        return events + self.offer_french_once(dispatcher, tracker) + self.turn_done()

    def answer_pending(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> Optional[List[Dict[Text, Any]]]:
        """If a question was waiting for the country and the country is now known, answer it."""
        pending = tracker.get_slot("pending_topic")
        if pending and tracker.get_slot("country"):
            return self.answer(dispatcher, tracker, pending)
        return None


class ActionAnswerTopic(TopicAnswerer):
    def name(self) -> Text:
        return "action_answer_topic"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        topic = TOPIC_OF_INTENT[latest_intent(tracker)]
        return self.answer(dispatcher, tracker, topic)


class ActionHandleInform(TopicAnswerer):
    """The family told us something about themselves: note it, and answer what was waiting."""

    def name(self) -> Text:
        return "action_handle_inform"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        language = self.language(tracker)
        country = tracker.get_slot("country")
        mentioned_country = any(e.get("entity") == "country" for e in tracker.latest_message.get("entities") or [])
        if mentioned_country and country:
            self.say(dispatcher, tracker, "country_noted", country=self.replies.country_name(country, language))
        pending = self.answer_pending(dispatcher, tracker)
        if pending is not None:
            return pending
        if not mentioned_country:
            if not country:
                self.say(dispatcher, tracker, "ask_country", buttons=self.country_buttons(tracker))
            else:
                self.say(dispatcher, tracker, "affirm")
        elif tracker.get_slot("last_topic") is None:
            self.say(dispatcher, tracker, "help")
        return self.offer_french_once(dispatcher, tracker) + self.turn_done()
