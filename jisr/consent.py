"""What a family's "stop" or "start" in a conversation records: one place for the assistant's
turns (jisr/gateway/service.py) and the conversations a mediator holds (jisr/mediation).

An opt-out that names reminder topics ("je ne veux plus les rappels des examens", "bghit nwa9ef
tfakir dyal l'imtihanat") stops only those topics: the consent and the other topics stay. One
that names none ("STOP", "baraka") is the global opt-out: no campaign reaches the family any
more. An opt-in records the consent and the topics it names, or every topic (jisr/topics.py).
"""

from __future__ import annotations

from typing import Optional

from jisr.store.contacts import ContactStore
from jisr.topics import SUBSCRIPTION_TOPICS, TopicStop, subscribed_topics, unsubscribed_topics

SOURCE = "conversation"


def record_opt_out(store: ContactStore, contact_id: int, text: str, channel: str, basis: Optional[str] = None) -> Optional[TopicStop]:
    """Record an opt-out message: the topics it stopped, or None for the global opt-out."""
    named = unsubscribed_topics(text)
    if named:
        return store.stop_topics(contact_id, named, SOURCE, channel)
    store.record_consent(contact_id, "opted_out", SOURCE, basis, channel)
    return None


def record_opt_in(store: ContactStore, contact_id: int, text: str, channel: str) -> list[str]:
    """Record an opt-in message (consent, then the topics it names or all); the topics added.

    A family that already gets every reminder without having chosen topics (jisr.topics.reaches:
    subscribed, no topic held, none stopped) keeps getting them all: asking for exam reminders
    must not stop the others."""
    # (A family holding every topic outright gets nothing added either: no rows to tell apart.)
    gets_everything = set(store.reminder_topics(contact_id)) == set(SUBSCRIPTION_TOPICS)
    store.record_consent(contact_id, "opted_in", SOURCE, None, channel)
    if gets_everything:
        return []
    return store.subscribe_topics(contact_id, subscribed_topics(text), SOURCE)
