"""The consoles' shared shell without a browser: the text catalog is complete in every
language, and the page skeleton escapes whatever it is given (the browser tests in
tests/test_mediation_console_browser.py check the live pages, headers and redirects)."""

from __future__ import annotations

import json
import re

import pytest

from jisr.console import catalog
from jisr.console.shell import CONTENT_SECURITY_POLICY, render_page, static_url


def test_every_console_text_exists_in_every_language_and_french_is_the_default():
    books = catalog.catalogs()
    assert {"fr", "en"} <= set(books)
    reference = set(books["fr"])
    for language, texts in books.items():
        assert set(texts) == reference, f"{language}.yml differs from fr.yml: missing {sorted(reference - set(texts))}, extra {sorted(set(texts) - reference)}"
        assert all(value.strip() for value in texts.values()), f"{language}.yml has an empty text"
    assert catalog.pick_language(None) == "fr"
    assert catalog.pick_language("EN") == "en"
    assert catalog.pick_language("xx") == "fr"


def test_placeholders_are_the_same_in_every_language():
    books = catalog.catalogs()
    for key, text in books["fr"].items():
        expected = set(re.findall(r"\{(\w+)\}", text))
        for language, texts in books.items():
            assert set(re.findall(r"\{(\w+)\}", texts[key])) == expected, (language, key)


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_page_skeleton_carries_the_texts_as_data_and_no_inline_script(language):
    page = render_page(language=language, title_key="mediation.title", page="mediation", scripts=["mediation.js"])
    assert page.startswith("<!doctype html>")
    assert f'<html lang="{language}" dir="ltr">' in page
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.S)
    # One data block (not executed, so the CSP allows it) and external files only.
    inline = [(attrs, body) for attrs, body in scripts if body.strip()]
    assert [attrs for attrs, _ in inline] == [' type="application/json" id="jisr-texts"']
    assert json.loads(inline[0][1]) == catalog.texts(language)
    assert static_url("shell.js") in page and static_url("mediation.js") in page
    assert 'id="nav-account"' in page and 'id="logout"' in page and 'id="flash"' in page


def test_a_text_cannot_close_the_data_block_or_add_markup(monkeypatch):
    hostile = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    texts = dict(catalog.texts("fr"))
    texts["mediation.title"] = hostile
    monkeypatch.setitem(catalog.catalogs(), "fr", texts)
    page = render_page(language="fr", title_key="mediation.title", page="mediation", scripts=[], notice=hostile)
    assert "<script>alert" not in page and "<img" not in page
    assert page.count("</script>") == 2  # the data block and shell.js
    block = re.search(r'<script type="application/json" id="jisr-texts">(.*?)</script>', page, flags=re.S)
    assert block and json.loads(block.group(1))["mediation.title"] == hostile


def test_the_content_security_policy_allows_scripts_from_the_site_only():
    directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
