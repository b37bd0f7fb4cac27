"""Country-specific answers checked for their facts, through real conversations, in several languages."""

import pytest

from jisr.knowledge import default_knowledge


def _joined(turn):
    return "\n".join(r.text for r in turn.replies)


@pytest.mark.parametrize(
    "text, must_contain",
    [
        ("quelle orientation apres la 3eme pour mon fils ?", ["CAP", "seconde"]),
        ("salam, wldi f 3eme chno ydir mn b3d?", ["CAP"]),
        ("mi hijo está en 3e en Francia, qué puede estudiar después?", ["CAP"]),
    ],
)
def test_france_tracks_after_3e(conversation, text, must_contain):
    turn = conversation(country="FR").say(text)
    assert turn.intent == "ask_school_tracks" and turn.slots["school_level"] == "lower_secondary"
    for fact in must_contain:
        assert fact in _joined(turn)


@pytest.mark.parametrize(
    "text",
    [
        "welche schule nach der 4. klasse für meine tochter?",
        "mio figlio è in quarta elementare, quale scuola dopo in germania?",
        "ولدي فالابتدائي فألمانيا، شنو المدرسة اللي من بعد؟",
    ],
)
def test_germany_grundschulempfehlung(conversation, text):
    turn = conversation(country="DE").say(text)
    assert turn.slots["school_level"] == "primary"
    assert "Grundschulempfehlung" in _joined(turn) or "Empfehlung" in _joined(turn)


@pytest.mark.parametrize(
    "text",
    [
        "no tenemos papeles, puedo inscribir a mi hijo en el colegio?",
        "ما عنديش اوراق الاقامة، واش نقدر نسجل ولدي فالمدرسة؟",
        "on n'a pas de papiers en espagne, mon fils peut aller a l'ecole ?",
    ],
)
def test_spain_enrolment_without_papers(conversation, text):
    turn = conversation(country="ES").say(text)
    assert turn.intent == "ask_enrollment"
    assert "4/2000" in _joined(turn)


@pytest.mark.parametrize(
    "text",
    [
        "non abbiamo il permesso di soggiorno, posso iscrivere mia figlia a scuola?",
        "ma 3ndnach lwra9 f italia, wach n9der nsajel bnti f lmadrasa?",
    ],
)
def test_italy_enrolment_without_papers(conversation, text):
    turn = conversation(country="IT").say(text)
    assert turn.intent == "ask_enrollment"
    joined = _joined(turn)
    assert "286" in joined or "394" in joined


@pytest.mark.parametrize(
    "text, language, exams",
    [
        ("c'est quand le BEM et le bac cette annee ?", "fr", ["BEM", "2027"]),
        ("امتى الباك والبيام هاد العام؟", "ar", ["BEM", "2027"]),
    ],
)
def test_algeria_exam_dates_come_from_the_calendar(conversation, replies, text, language, exams):
    turn = conversation(country="DZ").say(text)
    assert turn.intent == "ask_exam_calendar"
    joined = _joined(turn)
    for fact in exams:
        assert fact in joined
    assert "{dates}" not in joined
    assert replies.text("date_unconfirmed", language) in joined  # none of the 2026-27 dates is published yet


@pytest.mark.parametrize("text", ["quand est le BEPC ?", "wann ist die BEPC prüfung in der elfenbeinküste?"])
def test_cote_divoire_bepc(conversation, text):
    turn = conversation(country="CI").say(text)
    assert turn.intent == "ask_exam_calendar"
    assert "BEPC" in _joined(turn) and "2027" in _joined(turn)


def test_every_answer_names_its_source(conversation, replies):
    turn = conversation(country="NL").say("hoe werkt het schooladvies? welke school na de basisschool?")
    entry = default_knowledge().entry("NL", "school_tracks")
    assert entry.source in _joined(turn)


def test_follow_up_in_another_country_stays_on_the_topic(conversation):
    chat = conversation(country="FR")
    chat.say("quelle orientation apres la 3eme pour mon fils ?")
    turn = chat.say("et en Belgique ?")
    assert turn.slots["country"] == "BE" and turn.slots["last_topic"] == "school_tracks"
    expected = default_knowledge().entry("BE", "school_tracks").text("fr", "lower_secondary").split("\n\n")[0]
    assert expected in [r.text for r in turn.replies]


def test_follow_up_for_another_stage(conversation):
    chat = conversation(country="FR")
    chat.say("quelle orientation apres la 3eme pour mon fils ?")
    turn = chat.say("et pour le lycée ?")
    assert turn.slots["school_level"] == "upper_secondary"
    expected = default_knowledge().entry("FR", "school_tracks").text("fr", "upper_secondary").split("\n\n")[0]
    assert expected in [r.text for r in turn.replies]


def test_tracks_without_a_level_ask_for_it_with_buttons(conversation, replies):
    chat = conversation(country="IT")
    asked = chat.say("quali scuole ci sono in italia? come funziona?")
    assert asked.replies[0].text == replies.text("ask_level", "it")
    payload = asked.replies[0].buttons[1]["payload"]
    turn = chat.say(payload)
    assert turn.slots["school_level"] == "lower_secondary"
    expected = default_knowledge().entry("IT", "school_tracks").text("it", "lower_secondary").split("\n\n")[0]
    assert expected in [r.text for r in turn.replies]


def test_moving_country_mid_conversation_in_german(conversation):
    chat = conversation(country="DE")
    chat.say("hallo")
    turn = chat.say("wir sind nach belgien umgezogen")
    assert turn.slots["country"] == "BE"


def test_programmes_of_the_country_are_listed(conversation, replies):
    turn = conversation(country="ES").say("hay clases de arabe para mis hijos?")
    joined = _joined(turn)
    assert replies.text("programmes_intro", "es") in joined
    assert "PLACM" in joined


def test_regional_calendar_dates_follow_the_city(conversation):
    from jisr.calendars import default_calendars
    from jisr.knowledge import format_day

    calendar = default_calendars().current("ES")
    start = calendar.event("school_start")
    assert "CT" in start.regions, "the Spanish calendar has Catalonia's own start date"
    turn = conversation(today="2026-08-20").say("vivimos en Badalona, cuando empieza el curso escolar?")
    assert turn.slots["region"] == "ES-CT" and turn.slots["country"] == "ES"
    assert format_day(start.regions["CT"].first_day, "es") in _joined(turn)
