"""Who the family is and which language they write in: slots updated on every message.

``action_update_profile`` is the custom slot mapping of the profile slots
(see bot/domain/slots.yml), so Rasa runs it after every user message, before
any answer is chosen.
"""

from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.base import JisrAction, latest_entities
from jisr.language.detector import default_detector
from jisr.paths import REPLY_LANGUAGES

ROLES = ("parent", "student")


def _metadata(tracker: Tracker) -> Dict[str, Any]:
    """Hints the gateway or `jisr ask` passes with a message (country, role, language)."""
    metadata = tracker.latest_message.get("metadata") or {}
    hints = metadata.get("jisr") if isinstance(metadata, dict) else None
    return hints if isinstance(hints, dict) else {}


class ActionUpdateProfile(JisrAction):
    """Detects the message's language and picks up country, role and school level."""

    def name(self) -> Text:
        return "action_update_profile"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        events: List[Dict[Text, Any]] = []
        hints = _metadata(tracker)
        text = tracker.latest_message.get("text") or ""

        events += self._language_events(tracker, text, hints)

        region = _last(latest_entities(tracker, "region")) or hints.get("region")
        if region and region != tracker.get_slot("region"):
            events.append(SlotSet("region", region))
        # A region names its country ("Badalona" is in Spain).
        region_country = region.split("-", 1)[0] if region else None
        country = _last(latest_entities(tracker, "country")) or region_country or hints.get("country")
        if country and country != tracker.get_slot("country"):
            events.append(SlotSet("country", str(country).upper()))
            if not region and tracker.get_slot("region") and not str(tracker.get_slot("region")).startswith(str(country).upper()):
                events.append(SlotSet("region", None))  # moved to another country
        role = _last(latest_entities(tracker, "role")) or hints.get("role")
        if role in ROLES and role != tracker.get_slot("role"):
            events.append(SlotSet("role", role))
        level = _last(latest_entities(tracker, "school_level")) or hints.get("school_level")
        if level and level != tracker.get_slot("school_level"):
            events.append(SlotSet("school_level", level))
        return events

    def _language_events(self, tracker: Tracker, text: str, hints: Dict[str, Any]) -> List[Dict[Text, Any]]:
        previous = tracker.get_slot("detected_language") or hints.get("language")
        if text.startswith("/"):
            # A button payload ("/inform{...}") carries no language of its own.
            guess_language, form, dialect, confident = previous, tracker.get_slot("language_form"), tracker.get_slot("dialect"), False
        else:
            guess = default_detector().detect(text, previous=previous)
            guess_language, form, dialect, confident = guess.language, guess.form, guess.dialect, guess.confident
            if not confident:
                # A message like "ok" keeps the dialect noted so far, too.
                dialect = tracker.get_slot("dialect") if previous else dialect
                form = tracker.get_slot("language_form") or form if previous else form

        if previous and (tracker.latest_message.get("intent") or {}).get("name") == "nlu_fallback":
            # A message Jisr did not understand (gibberish, a typo storm) is no
            # reason to change the conversation's language.
            guess_language, confident = previous, False
            form, dialect = tracker.get_slot("language_form") or form, tracker.get_slot("dialect")

        preferred = tracker.get_slot("preferred_language")
        pinned_from = tracker.get_slot("language_pin_from")
        events: List[Dict[Text, Any]] = []
        # An explicit choice ("answer me in French") holds while they keep writing
        # as before; writing confidently in a third language is a new choice.
        if preferred and confident and guess_language not in (preferred, pinned_from):
            events += [SlotSet("preferred_language", None), SlotSet("language_pin_from", None)]
            preferred = None
        reply_language = preferred or guess_language
        if reply_language not in REPLY_LANGUAGES:
            reply_language = tracker.get_slot("language")
        for slot, value in (
            ("detected_language", guess_language),
            ("language_form", form),
            ("dialect", dialect),
            ("language", reply_language),
        ):
            if value != tracker.get_slot(slot):
                events.append(SlotSet(slot, value))
        return events


def _last(values: List[Any]) -> Any:
    return values[-1] if values else None


class ActionChangeLanguage(JisrAction):
    """'Parle-moi en arabe', 'auf Deutsch bitte': switch and remember."""

    def name(self) -> Text:
        return "action_change_language"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        targets = [t for t in latest_entities(tracker, "language_name") if t in REPLY_LANGUAGES]
        if not targets:
            buttons = [
                {"title": self.replies.language_name(code), "payload": "/change_language{\"language_name\": \"%s\"}" % code}
                for code in REPLY_LANGUAGES
            ]
            self.say(dispatcher, tracker, "language_unknown", buttons=buttons)
            return self.turn_done()
        target = targets[-1]
        dispatcher.utter_message(text=self.replies.text("language_changed", target, language=self.replies.language_name(target)))
        return [
            SlotSet("preferred_language", target),
            SlotSet("language_pin_from", tracker.get_slot("detected_language")),
            SlotSet("language", target),
            SlotSet("offered_french", True),
        ] + self.turn_done()
