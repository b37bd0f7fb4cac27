"""Conversations with the real model, in every language form.

Replies are compared with the reply book's text for the expected key and
language, so a test fails if the assistant answers the wrong thing or in the
wrong language.
"""

import pytest

from jisr.knowledge import default_knowledge

# One realistic opening per language form: (form, reply language, greeting, a
# country-dependent question, a country answer, an opt-out, a mediator request)
FORMS = {
    "fr": ("fr", "bonjour", "quelle filiere apres la 3eme pour mon fils ?", "on habite en france", "stop, je veux plus de messages", "je veux parler a quelqu'un svp"),
    "es": ("es", "hola buenas", "como inscribo a mi hija en el instituto?", "vivimos en españa", "no quiero recibir mas mensajes", "quiero hablar con una persona"),
    "it": ("it", "buongiorno", "quando ci sono gli esami di terza media?", "siamo in italia", "non mandatemi più messaggi", "voglio parlare con un mediatore"),
    "de": ("de", "hallo", "welche schule nach der grundschule für meinen sohn?", "wir wohnen in deutschland", "bitte keine nachrichten mehr", "ich möchte mit einem menschen sprechen"),
    "ar": ("ar", "السلام عليكم", "ما هي الشعب المتاحة بعد الإعدادي لابني؟", "نحن في فرنسا", "توقفوا عن ارسال الرسائل", "بغيت نهضر مع شي واحد"),
    "ary": ("ar", "salam", "wldi f 3eme, chno ydir mn b3d? chi filiere mzyana", "hna f belgique", "safi baraka mn les messages", "bghit nhdar m3a chi wa7ed 3afak"),
}


@pytest.mark.parametrize("form", FORMS)
def test_greeting_discloses_the_bot_in_the_family_language(conversation, replies, form):
    language, greeting, *_ = FORMS[form]
    chat = conversation()
    turn = chat.say(greeting)
    assert turn.replies[0].text == replies.text("greet", language)
    assert turn.language == language


@pytest.mark.parametrize("form", FORMS)
def test_asks_the_country_then_answers_and_remembers_it(conversation, replies, form):
    language, greeting, question, country_answer, *_ = FORMS[form]
    chat = conversation()
    chat.say(greeting)
    asked = chat.say(question)
    assert asked.replies[0].text == replies.text("ask_country", language)
    assert asked.replies[0].buttons, "quick replies with the countries"
    topic = asked.slots["pending_topic"]
    answered = chat.say(country_answer)
    texts = [r.text for r in answered.replies]
    entry = default_knowledge().entry(answered.slots["country"], topic)
    expected = entry.text(language, answered.slots["school_level"]) if entry else replies.text("topic_" + topic, language)
    first_paragraph = expected.split("\n\n")[0].split("{dates}")[0].strip()
    assert any(t.startswith(first_paragraph) for t in texts), texts
    assert answered.slots["country"] and answered.slots["pending_topic"] is None
    # The country is remembered: the next country-dependent question is answered at once.
    again = chat.say(question)
    assert replies.text("ask_country", language) not in [r.text for r in again.replies]


@pytest.mark.parametrize("form", FORMS)
def test_opt_out_is_confirmed_in_the_family_language(conversation, replies, form):
    language, greeting, _q, _c, stop, _m = FORMS[form]
    chat = conversation()
    chat.say(greeting)
    turn = chat.say(stop)
    assert turn.intent == "opt_out"
    assert turn.replies[0].text == replies.text("opt_out_confirm", language)
    assert turn.slots["subscribed"] is False


@pytest.mark.parametrize("form", FORMS)
def test_mediator_request_is_flagged(conversation, replies, form):
    language, greeting, _q, _c, _s, mediator = FORMS[form]
    chat = conversation()
    chat.say(greeting)
    turn = chat.say(mediator)
    assert turn.intent == "request_mediator"
    assert turn.replies[0].text == replies.text("mediator_requested", language)
    assert turn.slots["handoff_requested"] is True


def test_country_hint_from_the_channel_answers_without_asking(conversation, replies):
    chat = conversation(country="ES")
    turn = chat.say("como inscribo a mi hija en el instituto?")
    assert turn.slots["country"] == "ES"
    assert replies.text("ask_country", "es") not in [r.text for r in turn.replies]


def test_country_button_payload_answers_the_pending_question(conversation, replies):
    chat = conversation()
    asked = chat.say("c'est quand le bac ?")
    payload = asked.replies[0].buttons[0]["payload"]
    turn = chat.say(payload)
    assert turn.slots["country"] == "FR"
    first_paragraph = default_knowledge().entry("FR", "exam_calendar").text("fr").split("\n\n")[0].split("{dates}")[0]
    assert any(r.text.startswith(first_paragraph.strip()) for r in turn.replies), [r.text for r in turn.replies]


def test_moving_to_another_country_updates_it(conversation):
    chat = conversation(country="FR")
    chat.say("bonjour")
    turn = chat.say("on a déménagé en Belgique")
    assert turn.slots["country"] == "BE"


def test_darija_speakers_get_arabic_and_one_offer_of_french(conversation, replies):
    chat = conversation()
    first = chat.say("salam, bghit n3ref kifach nsajal bnti f lmadrasa")
    texts = [r.text for r in first.replies]
    assert first.language == "ar" and first.slots["dialect"] == "darija"
    assert replies.text("offer_french", "ar") in texts
    second = chat.say("wach kayn chi dorous dyal l3arbia l drari?")
    assert replies.text("offer_french", "ar") not in [r.text for r in second.replies]


def test_ambiguous_message_keeps_the_language(conversation, replies):
    chat = conversation()
    chat.say("hallo, wie melde ich meine tochter in der schule an?")
    turn = chat.say("ok")
    assert turn.language == "de"
    assert all(r.text for r in turn.replies)


def test_switching_language_mid_conversation(conversation, replies):
    chat = conversation()
    chat.say("bonjour")
    turn = chat.say("hola, prefiero hablar en español, como inscribo a mi hijo?")
    assert turn.slots["language"] == "es"


def test_explicit_language_choice_is_kept(conversation, replies):
    chat = conversation()
    chat.say("salam labas")
    turn = chat.say("jawbni b lfrancais 3afak")
    assert turn.intent == "change_language"
    assert turn.replies[0].text == replies.text("language_changed", "fr", language="Français")
    # They keep writing Darija, the answers stay in French as asked.
    later = chat.say("bghit n3ref imta lbac")
    assert later.slots["language"] == "fr"


def test_two_misunderstandings_offer_a_mediator_and_yes_hands_over(conversation, replies):
    chat = conversation()
    chat.say("bonjour")
    first = chat.say("zxqv plorb")
    assert first.replies[0].text == replies.text("rephrase", "fr")
    second = chat.say("qwfp brrrzt")
    assert second.replies[0].text == replies.text("fallback_mediator", "fr")
    third = chat.say("oui")
    assert third.replies[0].text == replies.text("mediator_requested", "fr")
    assert third.slots["handoff_requested"] is True


def test_harassment_goes_to_a_mediator_at_once(conversation, replies):
    chat = conversation(country="DE")
    turn = chat.say("mein sohn wird jeden tag in der schule geschlagen und hat angst")
    assert turn.intent == "report_harassment"
    assert turn.slots["handoff_requested"] is True and turn.slots["handoff_reason"] == "harassment"
    entry = default_knowledge().entry("DE", "harassment")
    expected = entry.text("de") if entry else replies.text("topic_harassment", "de")
    assert turn.replies[0].text == expected.split("\n\n")[0]


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "👍",
        "🙏🙏🙏",
        "?!?!",
        "x" * 10_000,
        "ولدي في 3eme au collège und er braucht Hilfe",
        "bonjour\x00\x1b[31m madame\x07",
        b"salam \xff\xfe wldi",
        "\udcff bonjour",
        "<script>alert(1)</script>",
        "/inform{\"country\": ",
        "/unknown_intent",
    ],
)
def test_bad_input_gets_a_reply_never_a_crash(conversation, raw):
    chat = conversation()
    turn = chat.say(raw)
    assert turn.replies and all(r.text.strip() for r in turn.replies)


def test_empty_message_says_so_in_the_conversation_language(conversation, replies):
    chat = conversation()
    chat.say("hola buenas tardes")
    turn = chat.say("   ")
    assert turn.replies[0].text == replies.text("empty_input", "es")


def test_very_long_message_is_answered_and_flagged(conversation, replies):
    chat = conversation()
    turn = chat.say("bonjour je voudrais inscrire mon fils au college " * 300)
    assert turn.replies[0].text == replies.text("too_long", "fr")
    assert len(turn.replies) >= 2
