"""Accept-Language is read one way (jisr.http_language) by the consoles and the public
subscription form, each with the languages it has: weights first, then the header's order."""

from __future__ import annotations

import pytest

from jisr.console import catalog
from jisr.gateway.subscribe import page_code
from jisr.http_language import preferred_language


@pytest.mark.parametrize(
    "header, expected",
    [
        ("de;q=0.2, es;q=0.9", "es"),             # by weight, not by position
        ("es-ES,es;q=0.9,en;q=0.8", "es"),
        ("en-GB,en;q=0.9,it;q=0.5", "it"),        # the form has no English: the next wanted one
        ("ary-MA,fr;q=0.8", "ar"),                # Darija readers get the Arabic page
        ("nl-BE,nl;q=0.9", None),
        ("fr;q=0, de;q=0.1", "de"),               # q=0: "not French"
        ("fr;q=2, de;q=0.5", "de"),               # a weight above 1 is not one: the part is skipped
        ("fr;q=nan, it;q=inf, es;q=0.3", "es"),
        ("fr;q=banana, ,;;, it-IT;q=0.4", "it"),
        ("*;q=1", None),
        ("x" * 5000, None),
        ("", None),
        (None, None),
    ],
)
def test_the_subscription_form_reads_the_weights(header, expected):
    assert preferred_language(header, page_code) == expected


@pytest.mark.parametrize("header", ["de;q=0.2, es;q=0.9", "it;q=0.3, ar;q=0.6, fr;q=0.6", "ary, fr;q=0.9", "es-MX;q=0.5, de-AT;q=0.7"])
def test_the_consoles_and_the_form_agree_on_languages_both_have(header):
    assert catalog.from_accept_language(header) == preferred_language(header, page_code)


def test_each_reader_keeps_its_own_languages():
    # English is a console language, not one of the form's.
    assert catalog.from_accept_language("en, de;q=0.5") == "en"
    assert preferred_language("en, de;q=0.5", page_code) == "de"
