"""Greetings, thanks, help, yes/no, out-of-scope and not-understood messages."""

from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.answers import TopicAnswerer
from actions.base import JisrAction, latest_intent
from actions.mediator import request_mediator

# Intent → reply key for replies that need no decision.
SMALL_TALK = {
    "goodbye": "goodbye",
    "thank": "thank",
    "bot_challenge": "bot_challenge",
    "ask_help": "help",
}


class ActionGreet(JisrAction):
    """The first greeting says that Jisr is automated (required for bots in several countries)."""

    def name(self) -> Text:
        return "action_greet"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        key = "greet_again" if tracker.get_slot("greeted") else "greet"
        self.say(dispatcher, tracker, key)
        return [SlotSet("greeted", True)] + self.offer_french_once(dispatcher, tracker) + self.turn_done()


class ActionSmallTalk(JisrAction):
    def name(self) -> Text:
        return "action_small_talk"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        self.say(dispatcher, tracker, SMALL_TALK.get(latest_intent(tracker), "help"))
        return self.offer_french_once(dispatcher, tracker) + self.turn_done()


class ActionAffirm(TopicAnswerer):
    """A 'yes' means what the last question asked: a mediator, or the pending topic."""

    def name(self) -> Text:
        return "action_affirm"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        if tracker.get_slot("mediator_offered"):
            return request_mediator(self, dispatcher, tracker, reason="accepted_offer") + self.turn_done()
        pending = self.answer_pending(dispatcher, tracker)
        if pending is not None:
            return pending
        self.say(dispatcher, tracker, "affirm")
        return self.turn_done()


class ActionDeny(JisrAction):
    def name(self) -> Text:
        return "action_deny"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        self.say(dispatcher, tracker, "deny")
        return [SlotSet("mediator_offered", False)] + self.turn_done()


class ActionOutOfScope(TopicAnswerer):
    def name(self) -> Text:
        return "action_out_of_scope"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        pending = self.answer_pending(dispatcher, tracker) or self.answer_follow_up(dispatcher, tracker)
        if pending is not None:
            return pending
        self.say(dispatcher, tracker, "out_of_scope")
        return self.offer_french_once(dispatcher, tracker) + self.turn_done()


class ActionFallback(TopicAnswerer):
    """Not understood: ask to rephrase once; the second time in a row, offer a mediator."""

    def name(self) -> Text:
        return "action_fallback"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        # "France" alone, answering "which country?", may not classify well: the
        # country was still picked up, so answer what was waiting ("and in
        # Belgium?" after an answer likewise).
        pending = self.answer_pending(dispatcher, tracker) or self.answer_follow_up(dispatcher, tracker)
        if pending is not None:
            return pending
        count = int(tracker.get_slot("fallback_count") or 0) + 1
        if count >= 2:
            self.say(dispatcher, tracker, "fallback_mediator", buttons=self.yes_no_buttons(tracker))
            return [SlotSet("fallback_count", float(count)), SlotSet("mediator_offered", True)]
        self.say(dispatcher, tracker, "rephrase")
        return [SlotSet("fallback_count", float(count))] + self.offer_french_once(dispatcher, tracker)
