"""A subscription in a conversation is confirmed with the reminders actually subscribed: "the
exam reminders" is told exams only, a plain "abonnez-moi" is told "all our reminders", in the
family's language (six language forms; a Darija speaker reads the Arabic replies), with the
topic names the stop confirmation uses (topic_names), and the store holds what was told.

Through the real gateway code (jisr.gateway.service.Gateway) with the real model, an embedded
Redis and a SQLite file, as tests/test_topic_unsubscribe.py does.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from connectors.types import Channel, InboundMessage
from jisr.content import default_reply_book
from jisr.store import schema
from jisr.topics import SUBSCRIPTION_TOPICS

NOW = dt.datetime(2026, 8, 1, 12, 0, tzinfo=dt.timezone.utc)
REPLIES = default_reply_book()
_chat_ids = itertools.count(640_000_001)


def _new_family(gateway: Any, consent: str = "unknown") -> tuple[int, int]:
    """(chat id, contact id) of a family that has not subscribed yet."""
    chat_id = next(_chat_ids)
    with gateway.engine.begin() as conn:
        conn.execute(schema.contacts.insert().values(
            address=f"telegram:{chat_id}", channel="telegram", created_at=NOW, timezone="Europe/Paris", consent=consent))
    return chat_id, gateway.store.by_address(f"telegram:{chat_id}").id


def _say(gateway: Any, chat_id: int, text: str) -> tuple[str, str]:
    """The replies to one message, joined, and the intent the assistant read."""
    message = InboundMessage(Channel.TELEGRAM, f"telegram:{chat_id}", f"{chat_id}-{next(_chat_ids)}", text)
    outcome = gateway.loop.run_until_complete(gateway.handle_message(message))
    return "\n".join(reply.text for reply in outcome.replies), outcome.turn.intent if outcome.turn else ""


def _bullets(language: str, topics: tuple[str, ...]) -> str:
    names = REPLIES.raw("topic_names", language)
    return "\n".join(f"• {names[t]}" for t in topics)


def _names_told(language: str, replies: str) -> set[str]:
    names = REPLIES.raw("topic_names", language)
    return {t for t in SUBSCRIPTION_TOPICS if names[t] in replies}


# language form, reply language, a message naming topics, the topics it names
NAMING = [
    ("ary", "ar", "bghit tfakir dyal l'imtihanat", ("exams",)),
    ("ar", "ar", "أريد تذكيرات الامتحانات", ("exams",)),
    ("fr", "fr", "je veux les rappels des examens", ("exams",)),
    ("fr-two", "fr", "Je veux les rappels des examens et de l'orientation", ("exams", "orientation")),
    ("es", "es", "quiero recibir los recordatorios de los exámenes", ("exams",)),
    ("it", "it", "voglio i promemoria degli esami", ("exams",)),
    ("de", "de", "ich möchte Erinnerungen an die Prüfungen bekommen", ("exams",)),
]


@pytest.mark.parametrize("form, language, text, topics", NAMING, ids=[n[0] for n in NAMING])
def test_a_subscription_naming_topics_is_confirmed_with_those_only(gateway, form, language, text, topics):
    chat_id, contact_id = _new_family(gateway)
    replies, intent = _say(gateway, chat_id, text)
    assert intent == "opt_in", (form, intent, replies)
    assert REPLIES.text("opt_in_topics_confirm", language, topics=_bullets(language, topics)) in replies, replies
    assert _names_told(language, replies) == set(topics), replies
    assert REPLIES.text("opt_in_confirm", language) not in replies  # not "all our reminders"
    # What the family is told is what is recorded.
    assert gateway.store.get(contact_id).consent == "opted_in"
    assert gateway.store.topics_of(contact_id) == sorted(topics)


# language form, reply language, a subscription naming no topic
PLAIN = [
    ("fr", "fr", "abonnez-moi"),
    ("es", "es", "quiero suscribirme a los recordatorios"),
    ("it", "it", "voglio iscrivermi ai promemoria"),
    ("de", "de", "ich möchte die Erinnerungen abonnieren"),
    ("ar", "ar", "أريد الاشتراك في التذكيرات"),
    ("ary", "ar", "bghit nwsl les rappels"),
]


@pytest.mark.parametrize("form, language, text", PLAIN, ids=[p[0] for p in PLAIN])
def test_a_subscription_naming_no_topic_is_confirmed_as_all_reminders(gateway, form, language, text):
    chat_id, contact_id = _new_family(gateway)
    replies, intent = _say(gateway, chat_id, text)
    assert intent == "opt_in", (form, intent, replies)
    assert REPLIES.text("opt_in_confirm", language) in replies, replies
    assert _names_told(language, replies) == set(), replies
    assert gateway.store.topics_of(contact_id) == sorted(SUBSCRIPTION_TOPICS)


def test_the_two_confirmations_differ_in_every_language():
    """"All our reminders" must not read like a list that lost its topics, nor the other way round."""
    for language in ("ar", "fr", "es", "it", "de"):
        every = REPLIES.text("opt_in_confirm", language)
        some = REPLIES.text("opt_in_topics_confirm", language, topics=_bullets(language, ("exams",)))
        assert every != some and "STOP" in every and "STOP" in some
        assert REPLIES.raw("topic_names", language)["exams"] not in every
