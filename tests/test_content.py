"""Every reply exists in every language, fits a phone screen, and is in the language it claims."""

import re
import string

import pytest
import yaml

from jisr.content import OPTIONAL_KEYS
from jisr.language.detector import default_detector
from jisr.paths import CONTENT_DIR, REPLY_LANGUAGES

MAX_REPLY_CHARS = 700


def _load(language):
    return yaml.safe_load((CONTENT_DIR / "replies" / f"{language}.yml").read_text(encoding="utf-8"))


FRENCH = _load("fr")


@pytest.mark.parametrize("language", REPLY_LANGUAGES)
def test_every_language_has_every_reply(language):
    data = _load(language)
    assert data["language"] == language
    missing = set(FRENCH["replies"]) - set(data["replies"]) - OPTIONAL_KEYS
    extra = set(data["replies"]) - set(FRENCH["replies"]) - OPTIONAL_KEYS
    assert not missing and not extra, (missing, extra)
    assert set(data["countries"]) == set(FRENCH["countries"])
    assert data["replies"]["buttons"].keys() == FRENCH["replies"]["buttons"].keys()
    assert data["replies"]["media_kinds"].keys() == FRENCH["replies"]["media_kinds"].keys()


def test_arabic_readers_are_offered_french():
    assert _load("ar")["replies"]["offer_french"].strip()


def _texts(language):
    for key, value in _load(language)["replies"].items():
        if isinstance(value, str):
            yield key, value


@pytest.mark.parametrize("language", REPLY_LANGUAGES)
def test_replies_fit_a_phone_screen_and_are_not_empty(language):
    for key, text in _texts(language):
        assert text.strip(), key
        assert len(text) <= MAX_REPLY_CHARS, (key, len(text))


@pytest.mark.parametrize("language", REPLY_LANGUAGES)
def test_placeholders_match_the_french_reference(language):
    french = dict(_texts("fr"))
    for key, text in _texts(language):
        if key not in french:
            continue
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f}
        reference = {f for _, f, _, _ in string.Formatter().parse(french[key]) if f}
        assert names == reference, key


@pytest.mark.parametrize("language", REPLY_LANGUAGES)
def test_replies_are_in_the_language_they_claim(language):
    detector = default_detector()
    wrong = []
    for key, text in _texts(language):
        # Long enough to carry its language; short ones ("Rebonjour 👋") are checked by reading.
        if len(re.findall(r"\w+", text)) < 6:
            continue
        guess = detector.detect(text)
        if guess.language != language:
            wrong.append((key, guess.language))
    assert not wrong


@pytest.mark.parametrize("language", REPLY_LANGUAGES)
def test_buttons_are_short(language):
    for name, label in _load(language)["replies"]["buttons"].items():
        assert isinstance(label, str) and 0 < len(label) <= 20, name
