"""What every Jisr action shares: the reply language, the reply book, and turn bookkeeping."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, Dict, List, Optional, Text

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from jisr.content import DEFAULT_LANGUAGE, ReplyBook, default_reply_book

# Topics whose answer depends on the host country's school system: Jisr asks
# for the country before answering them.
COUNTRY_DEPENDENT_TOPICS = frozenset(
    {"school_tracks", "enrollment", "parent_rights", "exam_calendar", "language_courses", "arabic_classes"}
)
TOPIC_OF_INTENT = {
    "ask_school_tracks": "school_tracks",
    "ask_enrollment": "enrollment",
    "ask_parent_rights": "parent_rights",
    "ask_exam_calendar": "exam_calendar",
    "ask_language_courses": "language_courses",
    "ask_arabic_classes": "arabic_classes",
    "ask_tutoring": "tutoring",
    "ask_scholarships": "scholarships",
    "ask_mentoring": "mentoring",
    "ask_dropout_help": "dropout_help",
    "report_harassment": "harassment",
    "ask_internship": "internship",
}
# Countries whose school systems Jisr's content covers.
COVERED_COUNTRIES = ("FR", "ES", "IT", "DE", "BE", "NL", "DZ", "CI")


class JisrAction(Action, metaclass=ABCMeta):
    """Base class: renders replies from content/replies in the conversation's language.

    Abstract (rasa_sdk registers every concrete Action subclass it finds).
    """

    replies: ReplyBook

    def __init__(self) -> None:
        self.replies = default_reply_book()

    @abstractmethod
    def name(self) -> Text:
        """The action's name in the domain."""

    @staticmethod
    def language(tracker: Tracker) -> str:
        return tracker.get_slot("language") or DEFAULT_LANGUAGE

    def say(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        key: str,
        buttons: Optional[List[Dict[str, str]]] = None,
        **values: Any,
    ) -> None:
        language = self.language(tracker)
        dispatcher.utter_message(
            text=self.replies.text(key, language, **values),
            buttons=buttons or [],
        )

    def yes_no_buttons(self, tracker: Tracker) -> List[Dict[str, str]]:
        language = self.language(tracker)
        return [
            {"title": self.replies.button("yes", language), "payload": "/affirm"},
            {"title": self.replies.button("no", language), "payload": "/deny"},
        ]

    def country_buttons(self, tracker: Tracker) -> List[Dict[str, str]]:
        language = self.language(tracker)
        return [
            {
                "title": self.replies.country_name(code, language),
                "payload": '/inform{"country": "%s"}' % code,
            }
            for code in COVERED_COUNTRIES
        ]

    def offer_french_once(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> List[Dict[Text, Any]]:
        """Darija speakers get Arabic answers, and once an offer to continue in French."""
        if tracker.get_slot("offered_french") or tracker.get_slot("dialect") != "darija":
            return []
        if tracker.get_slot("preferred_language") or self.language(tracker) != "ar":
            return []
        if not self.replies.has("offer_french", "ar"):
            return []
        self.say(dispatcher, tracker, "offer_french")
        return [SlotSet("offered_french", True)]

    def turn_done(self, understood: bool = True) -> List[Dict[Text, Any]]:
        """Events every understood turn ends with: the fallback counter starts again."""
        return [SlotSet("fallback_count", 0.0)] if understood else []


def latest_intent(tracker: Tracker) -> str:
    return (tracker.latest_message.get("intent") or {}).get("name") or ""


def latest_entities(tracker: Tracker, entity: str) -> List[str]:
    return [e.get("value") for e in tracker.latest_message.get("entities") or [] if e.get("entity") == entity]
