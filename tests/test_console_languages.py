"""The consoles in six languages (fr, en, es, it, de, ar) over HTTP, without a browser.

- Every catalogue in content/console/ has exactly fr.yml's keys, no empty text, and the same
  {placeholders} as fr.yml (a missing placeholder would drop a count or a name from a message).
- The sign-in page, the mediators' console and the operators' console render in each language
  with the right <html lang> and dir (Arabic: rtl), their title and labels from that language,
  and the texts the page scripts show (the JSON data block) from the same catalogue.
- Which language: ?lang=, then the nav bar's cookie, then the browser's Accept-Language when it
  names one of the six, else French.

A real app (auth routes and the consoles' pages) on a SQLite file and an embedded Redis, with
real accounts signed in through /api/auth/login. The browser run in Arabic (mirrored layout at
360 px) is in tests/test_console_languages_browser.py.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jisr.auth.store import AccountStore
from jisr.console import catalog
from jisr.console import operators as operators_console
from jisr.console.routes import install as install_consoles
from jisr.gateway import auth_routes
from jisr.redisconn import connect_redis
from jisr.settings import Settings
from jisr.store.contacts import ContactStore, create_db_engine

LANGUAGES = ("fr", "en", "es", "it", "de", "ar")
PASSWORD = "six languages one console 2026"
PLACEHOLDER = re.compile(r"\{(\w+)\}")


# --- The catalogues -------------------------------------------------------------------------


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """The file's leaves as written (not through the loader, which turns every value into a
    string: a number or a null in a file must fail here, not show as "None")."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    found: dict[str, Any] = {}
    for key, value in tree.items():
        found.update(_leaves(value, f"{prefix}{key}."))
    return found


def _file(language: str) -> dict[str, Any]:
    return _leaves(yaml.safe_load((catalog.CATALOG_DIR / f"{language}.yml").read_text(encoding="utf-8")))


def test_the_six_languages_have_a_catalogue_and_no_other_file_is_there():
    assert set(catalog.languages()) == set(LANGUAGES)
    assert catalog.languages()[0] == "fr" and catalog.DEFAULT_LANGUAGE == "fr"
    assert catalog.RIGHT_TO_LEFT == {"ar"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_catalogue_has_exactly_the_keys_of_french_non_empty_with_the_same_placeholders(language):
    reference = _file("fr")
    texts = _file(language)
    missing, extra = sorted(set(reference) - set(texts)), sorted(set(texts) - set(reference))
    assert not missing and not extra, f"{language}.yml: missing {missing}, extra {extra}"
    for key, text in texts.items():
        assert isinstance(text, str) and text.strip(), f"{language}.yml: {key} is empty or not a text ({text!r})"
        # Same names, as many times (a text may name one twice; none does yet).
        assert sorted(PLACEHOLDER.findall(text)) == sorted(PLACEHOLDER.findall(reference[key])), f"{language}.yml: {key} placeholders"
        # A brace that is not a placeholder would show as-is to the mediator.
        assert PLACEHOLDER.sub("", text).count("{") == PLACEHOLDER.sub("", text).count("}") == 0, f"{language}.yml: {key} has a stray brace"


def test_each_language_names_itself_and_the_translations_are_not_french_copies():
    names = {code: catalog.texts(code)["shell.language_name"] for code in LANGUAGES}
    assert names == {"fr": "Français", "en": "English", "es": "Español", "it": "Italiano", "de": "Deutsch", "ar": "العربية"}
    french = catalog.texts("fr")
    for code in ("es", "it", "de", "ar"):
        texts = catalog.texts(code)
        # "Jisr — console" is Italian as well; any other long text equal to French was not translated.
        same = [key for key, text in texts.items() if text == french[key] and len(text) > 12 and key != "shell.brand"]
        assert not same, f"{code}.yml copies French: {same}"
    # The Arabic texts are in Arabic script (bar the technical names kept in Latin letters).
    arabic = re.compile("[\u0600-\u06ff]")
    for key in ("mediation.list_title", "mediation.action.claim", "mediation.reply.send", "operators.nav.campaigns", "login.submit"):
        assert arabic.search(catalog.texts("ar")[key]), key


# --- Which language --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        ("es-ES,es;q=0.9,en;q=0.8", "es"),
        ("de-CH, fr;q=0.8, *;q=0.1", "de"),
        ("nl-BE,nl;q=0.9,ar;q=0.7,fr;q=0.6", "ar"),  # Dutch is not one of ours: the next wanted one
        ("fr;q=0.5, it;q=0.9", "it"),  # by weight, not by position
        ("ary-MA", "ar"),  # Darija: the Arabic console
        ("AR-dz", "ar"),
        ("en;q=0, it;q=0.1", "it"),  # q=0: "not English"
        ("nl-NL", None),
        ("*", None),
        ("", None),
        (None, None),
        ("es;q=banana, ,;;, it-IT;q=0.4", "it"),  # a broken part is skipped, never an error
        ("x" * 5000, None),
    ],
)
def test_accept_language_picks_the_browsers_most_wanted_language_we_have(header, expected):
    assert catalog.from_accept_language(header) == expected


def test_a_link_then_the_cookie_then_the_browser_then_french():
    assert catalog.choose_language("it", "de", "es") == "it"
    assert catalog.choose_language(None, "de", "es") == "de"
    assert catalog.choose_language(None, None, "es-MX") == "es"
    assert catalog.choose_language(None, None, "nl") == "fr"
    assert catalog.choose_language(None, None, None) == "fr"
    # Something we do not have is passed over, not taken as French.
    assert catalog.choose_language("xx", "ar", "es") == "ar"
    assert catalog.choose_language("", "klingon", "de-AT") == "de"


# --- The pages over HTTP ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    tmp: Path = tmp_path_factory.mktemp("console-languages")
    url = f"sqlite:///{tmp / 'jisr.db'}"
    engine = create_db_engine(url)
    redis = connect_redis(None, directory=tmp)
    app = FastAPI()
    app.include_router(auth_routes.router)
    install_consoles(app)
    app.include_router(operators_console.router)
    app.state.services = SimpleNamespace(settings=Settings(database_url=url, var_dir=tmp), redis=redis, store=ContactStore(engine), gateway=None)
    accounts = AccountStore(engine)
    accounts.create("nadia", "نادية", "mediator", PASSWORD, countries="DZ,ES", languages="ar,es")
    accounts.create("otto", "Otto", "operator", PASSWORD, countries="DE,NL", languages="de")
    try:
        with TestClient(app) as client:

            def signed_in(username: str) -> TestClient:
                browser = TestClient(app)
                browser.portal = client.portal  # one event loop for the app's Redis client
                assert browser.post("/api/auth/login", json={"username": username, "password": PASSWORD}).status_code == 200
                return browser

            yield SimpleNamespace(client=client, mediator=signed_in("nadia"), operator=signed_in("otto"))
    finally:
        redis.close()
        engine.dispose()


def _html_tag(page: str) -> tuple[str, str]:
    match = re.search(r'<html lang="([^"]+)" dir="([^"]+)">', page)
    assert match, page[:200]
    return match.group(1), match.group(2)


def _data_block(page: str) -> dict[str, str]:
    block = re.search(r'<script type="application/json" id="jisr-texts">(.*?)</script>', page, flags=re.S)
    assert block
    return json.loads(block.group(1))


PAGES = [
    ("mediator", "/console/mediation", "mediation.title"),
    ("mediator", "/console/mediation/12345", "mediation.title"),
    ("operator", "/console/operators", "operators.nav.dashboard"),
    ("operator", "/console/operators/campaigns", "operators.nav.campaigns"),
    ("operator", "/console/operators/contacts", "operators.nav.contacts"),
]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("who, path, title_key", PAGES)
def test_each_console_page_renders_in_each_language_with_its_direction(web, language, who, path, title_key):
    response = getattr(web, who).get(path, params={"lang": language})
    assert response.status_code == 200, response.text
    texts = catalog.texts(language)
    assert _html_tag(response.text) == (language, "rtl" if language == "ar" else "ltr")
    assert f"<title>{html.escape(texts[title_key])} — Jisr</title>" in response.text
    assert html.escape(texts["shell.logout"]) in response.text
    # What the page's scripts show (buttons, quick-reply heading, errors) comes from this block.
    assert _data_block(response.text) == texts
    # The nav bar offers the six, each by its own name, the current one selected.
    options = re.findall(r'<option value="(\w+)" lang="\w+"( selected)?>([^<]+)</option>', response.text)
    assert [code for code, _, _ in options] == list(LANGUAGES)
    assert [code for code, selected, _ in options if selected] == [language]
    assert {code: html.unescape(name) for code, _, name in options} == {code: catalog.texts(code)["shell.language_name"] for code in LANGUAGES}


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_forbidden_page_speaks_the_language_too(web, language):
    response = web.mediator.get("/console/operators", params={"lang": language})
    assert response.status_code == 403
    assert _html_tag(response.text)[0] == language
    assert html.escape(catalog.texts(language)["shell.forbidden_role"]) in response.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_sign_in_page_renders_in_each_language_and_keeps_the_choice(web, language):
    client = TestClient(web.client.app)
    client.portal = web.client.portal
    response = client.get("/console/login", params={"lang": language, "next": "/console/mediation"})
    assert response.status_code == 200
    texts = catalog.texts(language)
    assert _html_tag(response.text) == (language, "rtl" if language == "ar" else "ltr")
    for key in ("login.title", "login.username", "login.password", "login.submit"):
        assert html.escape(texts[key]) in response.text, key
    # Links to the other languages keep next=; the chosen one is marked.
    assert 'href="/console/login?lang=it&amp;next=%2Fconsole%2Fmediation"' in response.text
    assert re.search(rf'lang="{language}" hreflang="{language}" aria-current="page"', response.text)
    # The choice is kept for the console (the nav bar's cookie)...
    assert client.cookies.get(catalog.LANGUAGE_COOKIE) == language
    # ...so a refusal after posting the form is in that language too.
    token = re.search(r'name="csrf_token" value="([^"]+)"', response.text).group(1)
    # (A name nobody has: six wrong passwords for nadia would lock her out, 5 per 15 minutes.)
    wrong = client.post("/console/login", data={"username": f"nobody-{language}", "password": "not the password at all", "csrf_token": token})
    assert wrong.status_code == 401
    assert _html_tag(wrong.text)[0] == language
    assert html.escape(texts["login.error.wrong"]) in wrong.text
    # And signing in opens the console in it.
    token = re.search(r'name="csrf_token" value="([^"]+)"', wrong.text).group(1)
    signed = client.post("/console/login", data={"username": "nadia", "password": PASSWORD, "csrf_token": token, "next": "/console/mediation"})
    assert signed.status_code == 200 and _html_tag(signed.text)[0] == language


def test_the_browser_language_is_used_when_nothing_was_chosen(web):
    cases = [("es-ES,es;q=0.9", "es"), ("it-IT", "it"), ("de-DE,de;q=0.9,en;q=0.8", "de"), ("ar-MA,fr;q=0.8", "ar"), ("en-GB", "en"), ("nl-NL,nl;q=0.9", "fr"), (None, "fr")]
    for header, expected in cases:
        headers = {"Accept-Language": header} if header else {}
        for page in ("/console/login", "/console/mediation"):
            client = web.client if page == "/console/login" else web.mediator
            client.cookies.delete(catalog.LANGUAGE_COOKIE)
            response = client.get(page, headers=headers)
            assert response.status_code == 200 and _html_tag(response.text)[0] == expected, (header, page)
        login = web.client.get("/console/login", headers=headers)
        assert catalog.LANGUAGE_COOKIE not in login.cookies  # only an explicit ?lang= is kept


def test_the_cookie_beats_the_browser_and_a_link_beats_the_cookie(web):
    client = web.mediator
    client.cookies.set(catalog.LANGUAGE_COOKIE, "de", path="/console")
    try:
        assert _html_tag(client.get("/console/mediation", headers={"Accept-Language": "es"}).text)[0] == "de"
        assert _html_tag(client.get("/console/mediation?lang=ar", headers={"Accept-Language": "es"}).text) == ("ar", "rtl")
        # An unknown code in the link or the cookie is passed over.
        assert _html_tag(client.get("/console/mediation?lang=xx").text)[0] == "de"
        client.cookies.set(catalog.LANGUAGE_COOKIE, "tlh", path="/console")
        assert _html_tag(client.get("/console/mediation", headers={"Accept-Language": "it"}).text)[0] == "it"
    finally:
        client.cookies.delete(catalog.LANGUAGE_COOKIE, path="/console")


def test_a_hostile_lang_value_changes_nothing_on_the_page(web):
    for value in ('"><script>alert(1)</script>', "ar\r\nSet-Cookie: x=1", "a" * 400):
        response = web.client.get("/console/login", params={"lang": value})
        assert response.status_code == 200 and _html_tag(response.text)[0] == "fr"
        assert "<script>" not in response.text and "x=1" not in response.headers.get("set-cookie", "")
