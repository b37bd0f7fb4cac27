"""Asking for a person. The conversation is flagged for the mediators' inbox (handoff_requested)."""

from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.base import JisrAction


def request_mediator(action: JisrAction, dispatcher: CollectingDispatcher, tracker: Tracker, reason: str) -> List[Dict[Text, Any]]:
    """Tell the family a person will answer, and flag the conversation with why."""
    action.say(dispatcher, tracker, "mediator_requested")
    return [
        SlotSet("handoff_requested", True),
        SlotSet("handoff_reason", reason),
        SlotSet("mediator_offered", False),
        SlotSet("pending_topic", None),
    ]


class ActionRequestMediator(JisrAction):
    def name(self) -> Text:
        return "action_request_mediator"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        return request_mediator(self, dispatcher, tracker, reason="requested") + self.turn_done()
