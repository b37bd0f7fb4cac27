"""Asking for a person. The conversation is flagged for the mediators' inbox (handoff_requested)."""

from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.answers import TopicAnswerer
from actions.base import JisrAction
from jisr.knowledge import default_knowledge


def request_mediator(action: JisrAction, dispatcher: CollectingDispatcher, tracker: Tracker, reason: str) -> List[Dict[Text, Any]]:
    """Tell the family a person will answer, and flag the conversation with why."""
    action.say(dispatcher, tracker, "mediator_requested")
    return [
        SlotSet("handoff_requested", True),
        SlotSet("handoff_reason", reason),
        SlotSet("mediator_offered", False),
        SlotSet("pending_topic", None),
    ]


class ActionRequestMediator(TopicAnswerer):
    def name(self) -> Text:
        return "action_request_mediator"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        events = request_mediator(self, dispatcher, tracker, reason="requested")
        # While they wait: who else can help locally (school mediators, interpreters, the consulate).
        entry = default_knowledge().entry(tracker.get_slot("country"), "mediators")
        if entry:
            dispatcher.utter_message(text=self.render_entry(entry, self.language(tracker), None, tracker))
        return events + self.turn_done()
