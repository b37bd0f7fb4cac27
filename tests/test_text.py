import pytest

from jisr.text import MAX_MESSAGE_CHARS, has_letters, normalize_for_matching, sanitize_input


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, ""),
        ("", ""),
        ("   \n\t  ", ""),
        ("bonjour\x00\x07 madame", "bonjour madame"),
        ("salam\u202ewldi", "salam wldi"),
        ("  two   spaces\r\nand lines ", "two spaces and lines"),
    ],
)
def test_sanitize_cleans_control_characters_and_space(raw, expected):
    assert sanitize_input(raw).text == expected


def test_invalid_utf8_keeps_the_readable_part():
    clean = sanitize_input(b"bonjour \xff\xfe mon fils")
    assert clean.was_invalid_utf8
    assert clean.text.startswith("bonjour") and clean.text.endswith("mon fils")


def test_lone_surrogates_are_replaced_not_crashing():
    clean = sanitize_input("salam \udc80 wldi")
    assert clean.was_invalid_utf8
    clean.text.encode("utf-8")  # must be encodable now


def test_very_long_messages_are_cut_and_flagged():
    clean = sanitize_input("a" * 10_000)
    assert clean.truncated and len(clean.text) == MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    "raw, folded",
    [
        ("École", "ecole"),
        ("MERCIIIII", "mercii"),
        ("أريد إسجل ابنتي في المدرسة", "اريد اسجل ابنتي في المدرسه"),
        ("مَدْرَسَة", "مدرسه"),
        ("Straße", "strasse"),
    ],
)
def test_normalize_folds_spelling_variants(raw, folded):
    assert normalize_for_matching(raw) == folded


@pytest.mark.parametrize("text, expected", [("👍👍", False), ("123 !!", False), ("ok", True), ("سلام", True)])
def test_has_letters(text, expected):
    assert has_letters(text) is expected
