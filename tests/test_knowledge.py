"""Coverage check of the country knowledge, calendars and programmes.

Fails when any country × topic × language answer is missing, empty, too long,
without a source or review date, or not in the language it claims (by Jisr's
own detector).
"""

import datetime as dt
import re

import pytest

from jisr.calendars import default_calendars
from jisr.knowledge import DATES_PLACEHOLDER, LEVELS, MAX_ANSWER_CHARS, TOPICS, default_knowledge
from jisr.language.detector import default_detector
from jisr.paths import REPLY_LANGUAGES
from jisr.programmes import default_programmes

COUNTRIES = ("FR", "ES", "IT", "DE", "BE", "NL", "DZ", "CI")
CASES = [(c, t) for c in COUNTRIES for t in TOPICS]


def _texts(entry):
    for language, text in entry.answers.items():
        yield language, text, "answers"
    for level, texts in entry.by_level.items():
        for language, text in texts.items():
            yield language, text, f"by_level.{level}"


@pytest.mark.parametrize("country, topic", CASES)
def test_every_country_topic_has_a_sourced_answer_in_every_language(country, topic):
    entry = default_knowledge().entry(country, topic)
    assert entry is not None, f"{country} {topic} missing"
    assert re.match(r"https?://\S+\.\S+", entry.source), entry.source
    assert dt.date(2020, 1, 1) <= entry.reviewed <= dt.date.today()
    for language in REPLY_LANGUAGES:
        assert entry.answers.get(language, "").strip(), (country, topic, language)
    for language, text, where in _texts(entry):
        assert len(text) <= MAX_ANSWER_CHARS, (country, topic, where, language, len(text))
        placeholders = set(re.findall(r"\{(\w+)\}", text))
        assert placeholders <= ({"dates"} if topic == "exam_calendar" else set()), (country, topic, where, placeholders)


@pytest.mark.parametrize("country", COUNTRIES)
def test_track_answers_exist_for_every_stage(country):
    entry = default_knowledge().entry(country, "school_tracks")
    for level in LEVELS:
        for language in REPLY_LANGUAGES:
            assert entry.by_level.get(level, {}).get(language, "").strip(), (country, level, language)


@pytest.mark.parametrize("country", COUNTRIES)
def test_exam_calendar_answers_show_the_calendar_dates(country):
    entry = default_knowledge().entry(country, "exam_calendar")
    for language in REPLY_LANGUAGES:
        assert DATES_PLACEHOLDER in entry.answers[language], (country, language)


@pytest.mark.parametrize("country", COUNTRIES)
def test_answers_are_in_the_language_they_claim(country):
    detector = default_detector()
    wrong = []
    for topic in TOPICS:
        for language, text, where in _texts(default_knowledge().entry(country, topic)):
            guess = detector.detect(text.replace(DATES_PLACEHOLDER, ""))
            if guess.language != language:
                wrong.append((topic, where, language, guess.language))
    assert not wrong


@pytest.mark.parametrize("country", COUNTRIES)
def test_each_country_has_a_calendar_for_2026_27(country):
    calendar = default_calendars().current(country, today=dt.date(2026, 12, 4))
    assert calendar is not None and calendar.school_year == "2026-27"
    kinds = {e.kind for e in calendar.events}
    assert {"school_start", "school_end", "exam"} <= kinds
    for event in calendar.events:
        for language in REPLY_LANGUAGES:
            assert event.name(language).strip(), (event.id, language)
        assert calendar.starts <= event.first_day <= calendar.ends, event.id


def test_programmes_are_complete():
    catalogue = default_programmes()
    assert catalogue.programmes, "the catalogue is empty"
    for programme in catalogue.programmes:
        assert set(programme.topics) <= set(TOPICS), programme.id
        for language in REPLY_LANGUAGES:
            assert programme.how_to_join.get(language, "").strip(), (programme.id, language)


def test_arabic_dates_use_the_moroccan_month_names_of_the_reply_texts():
    """The reply texts write the months as Moroccans do (غشت, شتنبر, دجنبر): dates computed for a
    family in Arabic (exam dates, a mediator's return) say them the same way."""
    import datetime as dt

    from jisr.knowledge import format_day

    assert "غشت" in format_day(dt.date(2027, 8, 31), "ar")
    assert "شتنبر" in format_day(dt.date(2026, 9, 1), "ar")
    assert "دجنبر" in format_day(dt.date(2026, 12, 25), "ar") and "ديسمبر" not in format_day(dt.date(2026, 12, 25), "ar")
    assert format_day(dt.date(2026, 12, 25), "fr") == "25 décembre 2026"
    assert format_day(dt.date(2026, 12, 25), "de") == "25. Dezember 2026"
    assert format_day(dt.date(2026, 12, 25), "ary") == "25 décembre 2026"  # not a reply language: French, as before
