"""The language detector's edge cases: short, ambiguous, mixed, Darija in both scripts."""

import pytest

from jisr.language.detector import default_detector


@pytest.fixture(scope="module")
def detector():
    return default_detector()


@pytest.mark.parametrize(
    "text, language",
    [
        ("bonjour je voudrais inscrire mon fils au college", "fr"),
        ("slt c koi le bac pro", "fr"),
        ("hola buenas mi hijo no quiere ir al instituto", "es"),
        ("gracias", "es"),
        ("buongiorno come iscrivo mia figlia al liceo", "it"),
        ("grazie mille", "it"),
        ("hallo wie melde ich meinen sohn an der grundschule an", "de"),
        ("danke", "de"),
        ("بغيت نسجل ولدي فالمدرسة", "ar"),
        ("أريد معرفة موعد امتحانات البكالوريا", "ar"),
        ("salam, bghit n3ref kifach nsajal wldi f lmadrasa", "ar"),
        ("wach kayn chi dorous dyal l3arbia", "ar"),
        ("bnti ma bghatch tmchi l9raya", "ar"),
        ("chokran bzaf khti", "ar"),
        ("wldi f 3eme w ma 3rftch chno ydir", "ar"),
    ],
)
def test_clear_messages(detector, text, language):
    guess = detector.detect(text)
    assert guess.language == language, guess


def test_latin_darija_is_arabic_with_the_dialect_noted(detector):
    guess = detector.detect("3afak bghit nhdar m3a chi wa7ed")
    assert (guess.language, guess.form, guess.dialect, guess.confident) == ("ar", "ary", "darija", True)


def test_arabic_script_darija_is_noted_and_msa_is_not(detector):
    assert detector.detect("واش كاين شي دروس ديال العربية").dialect == "darija"
    assert detector.detect("هل توجد دروس في اللغة العربية للأطفال").dialect is None


def test_grade_numbers_are_not_darija_digits(detector):
    guess = detector.detect("mon fils est en 3eme et ma fille en 1ere")
    assert guess.language == "fr"


@pytest.mark.parametrize("text", ["ok", "OK", "merci", "👍", "🙏🙏", "12", "...", "thx", "salam"])
def test_ambiguous_messages_keep_the_conversation_language(detector, text):
    for previous in ("fr", "es", "de", "ar", "it"):
        guess = detector.detect(text, previous=previous)
        assert guess.language == previous and not guess.confident


def test_no_letters_and_no_history_gives_no_language(detector):
    assert detector.detect("👍👍").language is None
    assert detector.detect("").language is None


def test_a_clear_message_switches_the_language(detector):
    assert detector.detect("ahora en español por favor, no entiendo", previous="fr").language == "es"


def test_mixed_scripts_follow_the_dominant_one(detector):
    assert detector.detect("ولدي ف 3eme ف la France").language == "ar"
    assert detector.detect("mon fils s'appelle محمد et il est en 4eme").language == "fr"


def test_detection_is_deterministic(detector):
    texts = ["ciao", "bghit stage", "hallo", "hola que tal", "wesh"]
    assert [detector.detect(t) for t in texts] == [detector.detect(t) for t in texts]
