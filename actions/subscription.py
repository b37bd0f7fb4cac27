"""Subscribing to and stopping reminders, confirmed in the family's language."""

from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.base import JisrAction


class ActionOptOut(JisrAction):
    def name(self) -> Text:
        return "action_opt_out"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        self.say(dispatcher, tracker, "opt_out_confirm")
        return [SlotSet("subscribed", False)] + self.turn_done()


class ActionOptIn(JisrAction):
    def name(self) -> Text:
        return "action_opt_in"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        self.say(dispatcher, tracker, "opt_in_confirm")
        return [SlotSet("subscribed", True)] + self.offer_french_once(dispatcher, tracker) + self.turn_done()
