"""Answers about school topics: the family's country's sourced answer, asking first for what it needs.

The answer comes from content/knowledge/<country>.yml when the country is
covered; dates come from content/calendars/ (the files campaigns read);
programmes from content/programmes.yml. Without a country, topics that do not
depend on it get the general answer from content/replies.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict, List, Optional, Text

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.base import COUNTRY_DEPENDENT_TOPICS, TOPIC_OF_INTENT, JisrAction, latest_intent
from jisr.calendars import default_calendars
from jisr.nlu.entities import opens_as_follow_up
from jisr.knowledge import DATES_PLACEHOLDER, LEVELS, Entry, default_knowledge, format_dates, format_day, select_events
from jisr.programmes import default_programmes

# A child's safety: the conversation goes to a mediator at once (the answer says so).
HANDOFF_TOPICS = frozenset({"harassment"})
# A child leaving school: a mediator is offered with the answer.
OFFER_MEDIATOR_TOPICS = frozenset({"dropout_help"})
# The track answer depends on the child's stage: ask it when unknown.
LEVEL_DEPENDENT_TOPICS = frozenset({"school_tracks"})


class TopicAnswerer(JisrAction):
    """Shared by every action that may have to answer a topic (now, or once the country is known)."""

    def answer(self, dispatcher: CollectingDispatcher, tracker: Tracker, topic: str) -> List[Dict[Text, Any]]:
        country = tracker.get_slot("country")
        language = self.language(tracker)
        if topic in COUNTRY_DEPENDENT_TOPICS and not country:
            self.say(dispatcher, tracker, "ask_country", buttons=self.country_buttons(tracker))
            return [SlotSet("pending_topic", topic)] + self.offer_french_once(dispatcher, tracker) + self.turn_done()

        entry = default_knowledge().entry(country, topic)
        level = tracker.get_slot("school_level")
        if entry and topic in LEVEL_DEPENDENT_TOPICS and entry.by_level and not level:
            self.say(dispatcher, tracker, "ask_level", buttons=self.level_buttons(tracker))
            return [SlotSet("pending_topic", topic)] + self.offer_french_once(dispatcher, tracker) + self.turn_done()

        events: List[Dict[Text, Any]] = [SlotSet("pending_topic", None), SlotSet("last_topic", topic)]
        if entry:
            dispatcher.utter_message(text=self.render_entry(entry, language, level, tracker))
        else:
            if topic in COUNTRY_DEPENDENT_TOPICS:
                self.say(dispatcher, tracker, "country_not_covered", country=self.replies.country_name(country, language))
            self.say(dispatcher, tracker, f"topic_{topic}")
        self.list_programmes(dispatcher, tracker, topic, country)

        if topic in HANDOFF_TOPICS:
            events += [SlotSet("handoff_requested", True), SlotSet("handoff_reason", topic)]
        elif topic in OFFER_MEDIATOR_TOPICS or (entry and entry.offer_mediator):
            self.say(dispatcher, tracker, "mediator_offer", buttons=self.yes_no_buttons(tracker))
            events.append(SlotSet("mediator_offered", True))
        return events + self.offer_french_once(dispatcher, tracker) + self.turn_done()

    def render_entry(self, entry: Entry, language: str, level: Optional[str], tracker: Tracker) -> str:
        text = entry.text(language, level) or entry.text("fr", level) or ""
        if DATES_PLACEHOLDER in text:
            text = text.replace(DATES_PLACEHOLDER, self.dates_text(entry.country, language, tracker))
        source = self.replies.text("source_line", language, source=entry.source, reviewed=format_day(entry.reviewed, language))
        return f"{text}\n\n{source}"

    def dates_text(self, country: str, language: str, tracker: Tracker) -> str:
        calendar = default_calendars().current(country, today=_today(tracker))
        if calendar is None:
            return ""
        # The region slot is "<country>-<key>" (ES-CT); calendars key regions by the part after the dash.
        prefix, _, region = (tracker.get_slot("region") or "").partition("-")
        region = region if prefix == country else ""
        events = select_events(calendar, region=region or None, today=_today(tracker))
        lines = format_dates(events, language, self.replies.text("date_unconfirmed", language), region=region or None)
        if not region and any(e.regions for e in events):
            lines += "\n" + self.replies.text("dates_regional_note", language)
        return lines

    def list_programmes(self, dispatcher: CollectingDispatcher, tracker: Tracker, topic: str, country: Optional[str]) -> None:
        language = self.language(tracker)
        found = default_programmes().for_topic(topic, country, tracker.get_slot("role"))
        if not found:
            return
        lines = [self.replies.text("programmes_intro", language)]
        lines += [p.summary(language) for p in found]
        dispatcher.utter_message(text="\n".join(lines))

    def level_buttons(self, tracker: Tracker) -> List[Dict[str, str]]:
        labels = self.replies.raw("levels", self.language(tracker))
        return [{"title": str(labels.get(level, level)), "payload": '/inform{"school_level": "%s"}' % level} for level in LEVELS]

    def answer_pending(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> Optional[List[Dict[Text, Any]]]:
        """If a question was waiting for the country or the level and it is now known, answer it."""
        pending = tracker.get_slot("pending_topic")
        if not pending:
            return None
        waiting_for_level = pending in LEVEL_DEPENDENT_TOPICS and tracker.get_slot("country")
        if waiting_for_level and not tracker.get_slot("school_level"):
            return None
        if tracker.get_slot("country") or pending not in COUNTRY_DEPENDENT_TOPICS:
            return self.answer(dispatcher, tracker, pending)
        return None

    def answer_follow_up(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, *, only_if_opener: bool = False
    ) -> Optional[List[Dict[Text, Any]]]:
        """'And in Belgium?', 'and for high school?': the last topic again, for what just changed.

        With ``only_if_opener`` (the message was classified as another topic),
        it must also read as a follow-up ("et …", "and …", "w …") to count.
        """
        last = tracker.get_slot("last_topic")
        mentioned = {e.get("entity") for e in tracker.latest_message.get("entities") or []}
        if not last or not mentioned & {"country", "school_level"}:
            return None
        if only_if_opener and not opens_as_follow_up(tracker.latest_message.get("text") or ""):
            return None
        return self.answer(dispatcher, tracker, last)


def _today(tracker: Tracker) -> dt.date:
    """The family's date: the channel may pass it (time zones), else the server's."""
    hints = (tracker.latest_message.get("metadata") or {}).get("jisr") or {}
    try:
        return dt.date.fromisoformat(str(hints["today"]))
    except (KeyError, ValueError):
        return dt.date.today()


class ActionAnswerTopic(TopicAnswerer):
    def name(self) -> Text:
        return "action_answer_topic"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        topic = TOPIC_OF_INTENT[latest_intent(tracker)]
        if topic not in HANDOFF_TOPICS:
            follow_up = self.answer_follow_up(dispatcher, tracker, only_if_opener=True)
            if follow_up is not None:
                return follow_up
        return self.answer(dispatcher, tracker, topic)


class ActionHandleInform(TopicAnswerer):
    """The family told us something about themselves: note it, and answer what was waiting."""

    def name(self) -> Text:
        return "action_handle_inform"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        language = self.language(tracker)
        country = tracker.get_slot("country")
        mentioned = {e.get("entity") for e in tracker.latest_message.get("entities") or []}
        if "country" in mentioned and country:
            self.say(dispatcher, tracker, "country_noted", country=self.replies.country_name(country, language))
        handled = self.answer_pending(dispatcher, tracker) or self.answer_follow_up(dispatcher, tracker)
        if handled is not None:
            return handled
        if "country" not in mentioned:
            if not country:
                self.say(dispatcher, tracker, "ask_country", buttons=self.country_buttons(tracker))
            else:
                self.say(dispatcher, tracker, "affirm")
        elif tracker.get_slot("last_topic") is None:
            self.say(dispatcher, tracker, "help")
        return self.offer_french_once(dispatcher, tracker) + self.turn_done()
