"""The mediators' console in a real headless browser (Debian's chromium, driven by Playwright)
against the real gateway of the `stack` fixture (conftest.py): families write over the
simulated WhatsApp (signed Twilio webhooks) and Telegram (updates with the secret token), real
mediator accounts sign in through /console/login, and the console follows live (server-sent
events) without a reload.

(a) French over WhatsApp: the request reaches a French-speaking mediator covering France, who
    claims it and replies; the reply reaches the Twilio simulator; the family's next message
    reaches the console, not the bot; after the hand-back the bot answers again.
(b) The same in Arabic over Telegram with an Arabic-speaking mediator covering Algeria.
(c) A mediator covering Spain cannot open a conversation from Algeria: not listed, "access
    denied" at its URL, 403 from the API (session and API token alike).
(d) A family's message with <script> and <img onerror> shows as text; nothing runs (a voice
    note reaches the console too).
Then: two mediators on one case (a claim refused on a page whose live stream dropped, notes,
quick replies, transfer, the stream reconnecting); the reply window on Messenger (free-form,
HUMAN_AGENT tag, closed with the reason) and WhatsApp (template, the text waits); a child's
safety first in red, filters, drafts kept per case, auto-assign, escalation highlighted live,
resolve, English on request, an ended session sent to the login page; the shell: GET /console
sends each role to its console, the security headers, a phone's width, logout.

Time passing (a family's last message days ago, a case waiting 31 minutes) is written into the
database: the one thing these tests set by hand. Screenshots of the phone and wide layouts are
left in the tests' tmp_path.

Chromium is required, not optional (as in test_webchat_browser.py): a missing browser fails.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from jisr.auth.store import AccountStore
from jisr.console import catalog
from jisr.store.contacts import create_db_engine
from jisr.store.schema import contacts, handoffs, messages

WAIT_MS = 20_000
WAIT_S = WAIT_MS / 1000
PASSWORD = "long enough pass phrase 4 tests"
# The family's number and chat ids differ per test run: the stack (and its database) is shared
# by the whole test session.
RUN = secrets.randbelow(10**6)
_numbers = itertools.count(1)


def _phone() -> str:
    return f"whatsapp:+3360{RUN:06d}{next(_numbers):02d}"


def _chat_id() -> int:
    return 880_000_000 + RUN * 100 + next(_numbers)


# --- Accounts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    id: int
    username: str
    display_name: str


@pytest.fixture(scope="module")
def people(stack) -> dict[str, Person]:
    """Real accounts in the stack's database (AccountStore, as `jisr accounts add` does)."""
    store = AccountStore(create_db_engine(stack["database_url"]))
    suffix = f"{RUN:06d}"
    made = {}
    for key, display, role, countries, languages in (
        ("fr", "Amina Benali", "mediator", "FR", "fr"),
        ("fr2", "Karim Haddad", "mediator", "FR,BE", "fr,ar"),
        ("ar", "يوسف العلوي", "mediator", "DZ", "ar,ary"),
        ("es", "Lucía Martín", "mediator", "ES", "es"),
        ("operator", "Omar Operator", "operator", "FR", "fr"),
    ):
        account = store.create(f"{key}.{suffix}", display, role, PASSWORD, countries, languages)
        made[key] = Person(account.id, account.username, account.display_name)
    return made


# --- The browser -------------------------------------------------------------------------------



@pytest.fixture
def open_console(browser, stack) -> Iterator[Callable[..., Any]]:
    """Sign a person in through the login form, in a fresh browser profile of a phone's size;
    returns the page, on the mediators' console (or wherever ``next`` leads)."""
    contexts: list[Any] = []

    def sign_in(person: Person, next_path: str = "/console/mediation", width: int = 360, lands_on: str = "", locale: str = "fr-FR") -> Any:
        # The browser's locale is its Accept-Language: the console's language when none was chosen.
        context = browser.new_context(viewport={"width": width, "height": 780}, locale=locale)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.js_errors = []  # type: ignore[attr-defined]
        page.dialogs = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda error: page.js_errors.append(str(error)))
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        # Anything the page tried that the Content-Security-Policy refused (an inline style, a script).
        page.csp_refusals = []  # type: ignore[attr-defined]
        page.on("console", lambda message: page.csp_refusals.append(message.text) if "Content Security Policy" in message.text else None)
        page.goto(f"{stack['gateway']}/console/login?next={next_path}")
        page.login_language = page.evaluate("[document.documentElement.lang, document.documentElement.dir, document.querySelector('h1').textContent]")  # type: ignore[attr-defined]
        page.locator("#username").fill(person.username)
        page.locator("#password").fill(PASSWORD)
        page.locator("button[type=submit]").click()
        # By path: a page may write its state into the query (the operators' dashboard adds ?since=…).
        page.wait_for_url(lambda url: urlsplit(url).path == (lands_on or next_path))
        return page

    yield sign_in
    for context in contexts:
        context.close()


def _live(page: Any) -> None:
    """Wait for the console's event stream to be connected."""
    page.wait_for_selector("#live[data-live='1']")


# --- Families and the simulators -------------------------------------------------------------


def _whatsapp(stack, number: str, text: str) -> None:
    """A signed Twilio webhook, delivered by the Twilio simulator."""
    result = httpx.post(f"{stack['twilio']}/_sim/inbound", json={"webhook_url": f"{stack['gateway']}/webhooks/whatsapp", "from": number, "body": text}, timeout=60).json()
    assert result.get("statuses", [200])[-1] == 200, result


def _telegram(stack, chat_id: int, text: str) -> None:
    """A Telegram update with the webhook's secret token, delivered by the Telegram simulator."""
    result = httpx.post(
        f"{stack['telegram']}/_sim/inbound",
        json={"webhook_url": f"{stack['gateway']}/webhooks/telegram", "secret_token": stack["telegram_secret"], "chat_id": chat_id, "text": text, "language_code": "ar"},
        timeout=60,
    ).json()
    assert result["delivered"], result


def _whatsapp_sent(stack, number: str) -> list[str]:
    records = httpx.get(f"{stack['twilio']}/_sim/requests").json()["requests"]
    return [r.get("body") or "" for r in records if r.get("to") == number and r.get("sid")]


def _telegram_sent(stack, chat_id: int) -> list[str]:
    records = httpx.get(f"{stack['telegram']}/_sim/requests").json()["requests"]
    return [str(r["params"].get("text") or "") for r in records if r.get("method") == "sendMessage" and str(r.get("params", {}).get("chat_id")) == str(chat_id)]


def _wait_sent(read: Callable[[], list[str]], more_than: int, contains: str = "") -> list[str]:
    """Wait until more than ``more_than`` messages went to the family (one containing
    ``contains`` among the new ones, when given), then for the job's other parts to arrive."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        sent = read()
        if len(sent) > more_than and (not contains or any(contains in text for text in sent[more_than:])):
            time.sleep(0.5)
            return read()
        time.sleep(0.1)
    raise AssertionError(f"no new message{' with ' + repr(contains) if contains else ''} reached the family: {read()[more_than:]}")


def _handoff_of(stack, address: str) -> dict[str, Any]:
    """The family's latest handoff, read from the database (the test's way to know its id)."""
    engine = create_db_engine(stack["database_url"])
    query = (
        sa.select(handoffs.c.id, handoffs.c.status, handoffs.c.country, handoffs.c.language, handoffs.c.assigned_to)
        .select_from(handoffs.join(contacts, contacts.c.id == handoffs.c.contact_id))
        .where(contacts.c.address == address)
        .order_by(handoffs.c.id.desc())
    )
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            row = conn.execute(query).first()
        if row is not None:
            return dict(row._mapping)
        time.sleep(0.1)
    raise AssertionError(f"no handoff opened for the family ({address.split(':')[0]})")


# --- The console, as a mediator sees it ---------------------------------------------------------


def _french_family_asks_for_a_person(stack) -> tuple[str, Callable[[], list[str]], dict[str, Any]]:
    """A new family on WhatsApp says it lives in France, then asks for a person: (its number,
    what it was sent, the handoff opened)."""
    number = _phone()
    sent = lambda: _whatsapp_sent(stack, number)  # noqa: E731
    _whatsapp(stack, number, "bonjour, je suis en France")
    _wait_sent(sent, 0)
    before = len(sent())
    _whatsapp(stack, number, "je veux parler à quelqu'un")
    _wait_sent(sent, before)
    return number, sent, _handoff_of(stack, number)


def _item(page: Any, handoff_id: int) -> Any:
    return page.locator(f".handoff[data-id='{handoff_id}']")


def _open_conversation(page: Any, handoff_id: int) -> None:
    _item(page, handoff_id).click()
    page.wait_for_url(f"**/console/mediation/{handoff_id}")
    page.wait_for_selector("#transcript .msg")


def _family_texts(page: Any) -> list[str]:
    return page.locator("#transcript .msg-family .msg-text").all_inner_texts()


def _wait_family_text(page: Any, text: str) -> None:
    page.wait_for_function(
        "text => [...document.querySelectorAll('#transcript .msg-family .msg-text')].some(node => node.textContent === text)", arg=text, timeout=WAIT_MS
    )


def _claim_and_reply(page: Any, person: Person, reply: str) -> None:
    page.locator("#claim").click()
    page.wait_for_selector("#conv-status[data-status='assigned']")
    assert person.display_name in page.locator("#conv-assigned").inner_text()
    page.wait_for_selector("#reply:not([hidden])")
    page.locator("#reply-text").fill(reply)
    page.locator("#reply-send").click()
    page.wait_for_function(
        "text => [...document.querySelectorAll('#transcript .msg-mediator .msg-text')].some(node => node.textContent === text)", arg=reply, timeout=WAIT_MS
    )


def _hand_back(page: Any) -> None:
    page.locator("#hand-back").click()
    page.locator("#hand-back").click()  # the second tap confirms
    page.wait_for_url("**/console/mediation")


def _mark_page(page: Any) -> None:
    """A flag in the page's memory: still there later means the page was never reloaded."""
    page.evaluate("window.__jisrNotReloaded = true")


def _not_reloaded(page: Any) -> bool:
    return page.evaluate("window.__jisrNotReloaded === true")


# --- (a) French over WhatsApp ----------------------------------------------------------------------


def test_a_french_family_on_whatsapp_is_handed_to_a_french_mediator_and_back(stack, people, open_console, replies, tmp_path):
    mediator = people["fr"]
    page = open_console(mediator)
    _live(page)
    _mark_page(page)
    # The family says where they live (the country decides which mediators may see them), then asks for a person.
    number, sent, handoff = _french_family_asks_for_a_person(stack)
    assert (handoff["country"], handoff["language"], handoff["status"]) == ("FR", "fr", "waiting")

    # It appears in the console without a reload, with its country and language.
    item = _item(page, handoff["id"])
    item.wait_for()
    page.screenshot(path=str(tmp_path / "mediation-list-phone.png"), full_page=True)
    assert _not_reloaded(page)
    assert item.locator(".handoff-country").inner_text() == "FR"
    assert item.locator(".handoff-language").inner_text() == "fr"
    assert re.match(r"^\(\d+\) Médiation — Jisr$", page.title()), page.title()

    # The conversation: the family's words and the bot's part, told apart.
    _open_conversation(page, handoff["id"])
    assert "je veux parler à quelqu'un" in _family_texts(page)
    assert page.locator("#transcript .msg-bot").count() >= 1
    profile = page.locator("#profile").inner_text()
    assert "FR" in profile and "demande de médiateur" in profile and "inform" not in profile

    # Claim and reply: the reply reaches the family over WhatsApp.
    reply = "Bonjour, je suis Amina, médiatrice scolaire. Comment puis-je vous aider ?"
    before = len(sent())
    _claim_and_reply(page, mediator, reply)
    assert reply in _wait_sent(sent, before, contains=reply)[before:]
    page.screenshot(path=str(tmp_path / "mediation-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360, "the conversation is wider than the phone"

    # The family's next message reaches the console live, and the bot stays silent.
    before = len(sent())
    question = "Mon fils a des difficultés en maths, que faire ?"
    _whatsapp(stack, number, question)
    _wait_family_text(page, question)
    time.sleep(2.0)  # time enough for a bot reply to reach the simulator, were one queued
    assert sent()[before:] == [], "the bot answered a conversation a mediator holds"
    assert _not_reloaded(page)

    # Hand back: the family is told the bot is back, and the bot answers the next message.
    _hand_back(page)
    back = replies.text("handoff_back", "fr").splitlines()[0]
    _wait_sent(sent, before, contains=back)
    before = len(sent())
    _whatsapp(stack, number, "c'est quand le bac ?")
    answer = _wait_sent(sent, before)[before:]
    assert answer and not any(back in text for text in answer)
    assert _handoff_of(stack, number)["status"] == "handed_back"
    assert page.js_errors == [] and page.dialogs == [] and page.csp_refusals == []


# --- (b) Arabic over Telegram ------------------------------------------------------------------------


def test_an_arabic_family_on_telegram_is_handed_to_an_arabic_speaking_mediator_and_back(stack, people, open_console, replies, tmp_path):
    mediator = people["ar"]
    # A browser set to Moroccan Arabic: the sign-in page and the console are in Arabic, right to left.
    page = open_console(mediator, locale="ar-MA")
    assert page.login_language == ["ar", "rtl", "تسجيل الدخول"]
    assert page.evaluate("[document.documentElement.lang, document.documentElement.dir]") == ["ar", "rtl"]
    _live(page)
    assert page.locator(".list-head h2").inner_text() == "المحادثات المفتوحة"
    assert page.locator("#live").inner_text() == "مباشر"
    # Mirrored: the brand at the right edge, the account and logout towards the left; nothing wider than the phone.
    brand, logout = page.locator(".nav .brand").bounding_box(), page.locator("#logout").bounding_box()
    assert brand["x"] + brand["width"] > 300 and logout["x"] < brand["x"]
    assert page.locator("#logout").inner_text() == "تسجيل الخروج"
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    _mark_page(page)
    chat_id = _chat_id()
    address = f"telegram:{chat_id}"
    sent = lambda: _telegram_sent(stack, chat_id)  # noqa: E731

    _telegram(stack, chat_id, "السلام عليكم، أنا في الجزائر")
    _wait_sent(sent, 0)
    before = len(sent())
    _telegram(stack, chat_id, "أريد التحدث مع شخص")
    _wait_sent(sent, before)
    handoff = _handoff_of(stack, address)
    assert (handoff["country"], handoff["language"]) == ("DZ", "ar")

    _item(page, handoff["id"]).wait_for()
    assert "تطلب وسيطاً" in _item(page, handoff["id"]).inner_text()
    _open_conversation(page, handoff["id"])
    family = page.locator("#transcript .msg-family .msg-text").last
    assert family.inner_text() == "أريد التحدث مع شخص"
    assert family.evaluate("node => getComputedStyle(node).direction") == "rtl"
    # The family's bubbles on the right (where a right-to-left reader starts), the bot's on the left.
    transcript = page.locator("#transcript").bounding_box()
    bubble = page.locator("#transcript .msg-family").last.bounding_box()
    assert bubble["x"] + bubble["width"] > transcript["x"] + transcript["width"] - 20
    assert page.locator("#claim").inner_text() == "تولّي المحادثة"

    reply = "وعليكم السلام، أنا يوسف، وسيط مدرسي. كيف يمكنني مساعدتكم؟"
    before = len(sent())
    _claim_and_reply(page, mediator, reply)
    assert reply in _wait_sent(sent, before, contains=reply)[before:]
    mine = page.locator("#transcript .msg-mediator .msg-text").last
    assert mine.evaluate("node => getComputedStyle(node).direction") == "rtl"
    assert page.locator("#reply-send").inner_text() == "إرسال"
    # Quick replies in the family's language (Arabic here), under the console's Arabic heading.
    page.wait_for_selector("#quick-box:not([hidden])")
    assert page.locator("#quick-box summary").inner_text().startswith("ردود جاهزة (")
    page.locator("#quick-box summary").click()
    assert page.locator("#quick-replies button").first.inner_text().startswith("السلام عليكم")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.screenshot(path=str(tmp_path / "mediation-arabic-phone.png"), full_page=True)

    before = len(sent())
    question = "ابني لا يريد الذهاب إلى المدرسة منذ أسبوع"
    _telegram(stack, chat_id, question)
    _wait_family_text(page, question)
    time.sleep(2.0)
    assert sent()[before:] == [], "the bot answered a conversation a mediator holds"

    _hand_back(page)
    back = replies.text("handoff_back", "ar").splitlines()[0]
    _wait_sent(sent, before, contains=back)
    before = len(sent())
    _telegram(stack, chat_id, "متى امتحانات الباكالوريا؟")
    answer = _wait_sent(sent, before)[before:]
    assert answer and not any(back in text for text in answer)
    assert any("\u0600" <= ch <= "\u06ff" for ch in answer[0]), "the bot answers in Arabic again"
    assert _not_reloaded(page)
    assert page.js_errors == [] and page.dialogs == []


# --- (c) Countries a mediator does not cover ----------------------------------------------------------


def test_a_mediator_covering_spain_cannot_open_a_conversation_from_algeria(stack, people, open_console):
    chat_id = _chat_id()
    address = f"telegram:{chat_id}"
    _telegram(stack, chat_id, "السلام عليكم، أنا في الجزائر")
    _wait_sent(lambda: _telegram_sent(stack, chat_id), 0)
    before = len(_telegram_sent(stack, chat_id))
    _telegram(stack, chat_id, "بغيت نهضر مع شي واحد")
    _wait_sent(lambda: _telegram_sent(stack, chat_id), before)
    handoff = _handoff_of(stack, address)
    assert handoff["country"] == "DZ"

    # The mediator covering Algeria sees it: the list is live, not empty by accident.
    algeria = open_console(people["ar"])
    _item(algeria, handoff["id"]).wait_for()

    # Spain: not listed, with every filter.
    spain = open_console(people["es"])
    _live(spain)
    spain.wait_for_selector("#handoffs-empty:not([hidden]), #handoffs .handoff")
    for status in ("open", "waiting", "mine"):
        spain.locator("#filter-status").select_option(status)
        spain.wait_for_timeout(500)
        assert _item(spain, handoff["id"]).count() == 0, status
    assert "DZ" not in spain.locator("#handoffs").inner_text()

    # Its URL: an access-denied message, none of the family's words.
    spain.goto(f"{stack['gateway']}/console/mediation/{handoff['id']}")
    denied = spain.locator("#denied")
    denied.wait_for()
    assert "refusé" in denied.inner_text()
    assert spain.locator("#transcript").count() == 0
    assert "شي واحد" not in spain.content()

    # The API: 403 with the browser's session, and with an API token of the same account.
    response = spain.request.get(f"{stack['gateway']}/api/mediation/handoffs/{handoff['id']}")
    assert response.status == 403
    for action in ("claim", "hand-back", "resolve"):
        assert spain.request.post(f"{stack['gateway']}/api/mediation/handoffs/{handoff['id']}/{action}", headers={"X-CSRF-Token": _csrf(spain, stack)}).status == 403
    token = AccountStore(create_db_engine(stack["database_url"])).create_token(people["es"].id, "test").token
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{stack['gateway']}/api/mediation/handoffs/{handoff['id']}", headers=bearer).status_code == 403
    listed = httpx.get(f"{stack['gateway']}/api/mediation/handoffs?status=open", headers=bearer).json()["handoffs"]
    assert handoff["id"] not in [h["id"] for h in listed]
    assert httpx.get(f"{stack['gateway']}/api/mediation/handoffs?status=open&country=DZ", headers=bearer).status_code in (200, 403)
    assert _handoff_of(stack, address)["status"] == "waiting", "nothing the Spanish mediator tried changed it"


def _csrf(page: Any, stack) -> str:
    return page.request.get(f"{stack['gateway']}/api/auth/me").json()["csrf_token"]


# --- (d) A family's message is text, never markup -----------------------------------------------------


def test_markup_in_a_family_message_is_shown_as_text_and_never_runs(stack, people, open_console):
    mediator = people["fr2"]
    page = open_console(mediator, width=1200)
    _live(page)
    number = _phone()
    sent = lambda: _whatsapp_sent(stack, number)  # noqa: E731
    _whatsapp(stack, number, "bonjour, je suis en France")
    _wait_sent(sent, 0)
    before = len(sent())
    _whatsapp(stack, number, "je veux parler à un médiateur")
    _wait_sent(sent, before)
    handoff = _handoff_of(stack, number)
    _item(page, handoff["id"]).wait_for()
    _open_conversation(page, handoff["id"])

    hostile = "<script>alert(1)</script> <img src=x onerror=\"window.__jisrXss=1;alert(2)\"> <b>gras</b>"
    _whatsapp(stack, number, hostile)
    _wait_family_text(page, hostile)
    page.wait_for_timeout(500)
    shown = page.locator("#transcript .msg-family .msg-text").last
    assert shown.inner_text() == hostile
    assert shown.evaluate("node => node.children.length") == 0, "the message became elements"
    assert page.locator("#transcript img, #transcript script, #transcript b").count() == 0
    assert page.evaluate("window.__jisrXss") is None
    assert page.dialogs == [], page.dialogs
    assert page.js_errors == []
    assert page.csp_refusals == [], page.csp_refusals
    # In the list too (the handoff's reason and names are text), and the page is still the console.
    assert page.locator(".handoff img").count() == 0

    # A voice note while the mediator holds the case reaches the console too (as a link, not a player).
    result = httpx.post(
        f"{stack['twilio']}/_sim/inbound",
        json={"webhook_url": f"{stack['gateway']}/webhooks/whatsapp", "from": number, "body": "", "media": [{"content_type": "audio/ogg"}]},
        timeout=60,
    ).json()
    assert result["statuses"][-1] == 200, result
    voice = page.locator("#transcript .msg-family .msg-media").last
    voice.wait_for()
    assert voice.inner_text().startswith("Pièce jointe : message vocal") and "audio/ogg" in voice.inner_text()
    assert page.locator("#transcript audio, #transcript img").count() == 0


# --- Two mediators on one case: a refused claim, notes, quick replies, a transfer --------------------


def test_two_mediators_a_refused_claim_a_note_a_quick_reply_and_a_transfer(stack, people, open_console, tmp_path):
    first, second = people["fr"], people["fr2"]
    amina = open_console(first, width=1200)
    karim = open_console(second, width=1200)
    # Karim's page has lost its live stream (a train tunnel): it shows what it read last.
    karim.route("**/api/mediation/events", lambda route: route.abort())
    karim.reload()
    _live(amina)
    number, sent, handoff = _french_family_asks_for_a_person(stack)

    _item(amina, handoff["id"]).wait_for()
    karim.locator("#refresh").click()
    _open_conversation(karim, handoff["id"])
    assert karim.locator("#live").get_attribute("data-live") == "0"
    _open_conversation(amina, handoff["id"])
    amina.locator("#claim").click()
    amina.wait_for_selector("#conv-status[data-status='assigned']")
    assert amina.locator("#auto-assign").count() == 0 and amina.locator("#transfer").is_visible()

    # Karim, not knowing, claims too: refused, with the reason shown, and his page catches up.
    karim.locator("#claim").click()
    flash = karim.locator("#flash.flash-error")
    flash.wait_for()
    assert "Action impossible" in flash.inner_text() and "another mediator holds" in flash.inner_text()
    karim.wait_for_selector("#held-by-other:not([hidden])")
    assert first.display_name in karim.locator("#conv-assigned").inner_text()
    assert karim.locator("#reply").is_hidden() and karim.locator("#claim").count() == 0
    karim.screenshot(path=str(tmp_path / "mediation-wide.png"), full_page=True)

    # The stream comes back by itself.
    karim.unroute("**/api/mediation/events")
    _live(karim)

    # A note: kept on the case, shown as text, never sent to the family.
    note = "Appeler l'école lundi <b>matin</b>"
    before = len(sent())
    amina.locator("#note-text").fill(note)
    amina.locator("#note-add").click()
    amina.wait_for_function("text => [...document.querySelectorAll('#notes li')].some(li => li.textContent.includes(text))", arg=note, timeout=WAIT_MS)
    karim.wait_for_function("text => [...document.querySelectorAll('#notes li')].some(li => li.textContent.includes(text))", arg=note, timeout=WAIT_MS)

    # Quick replies are in the family's language; one fills the reply box, to edit or send.
    quick = amina.locator("#quick-replies button")
    quick.first.wait_for()
    assert "médiateur" in " ".join(quick.all_inner_texts())
    quick_text = quick.first.get_attribute("title")
    quick.first.click()
    assert amina.locator("#reply-text").input_value() == quick_text
    amina.locator("#reply-send").click()
    assert _wait_sent(sent, before)[before:] == [quick_text], "the note was not sent, the reply was"

    # Transfer to Karim: he is offered (he covers France), and then holds it.
    amina.locator("#transfer-to").select_option(str(second.id))
    amina.locator("#transfer").click()
    amina.wait_for_function("name => document.querySelector('#conv-assigned').textContent.includes(name)", arg=second.display_name, timeout=WAIT_MS)
    karim.wait_for_selector("#reply:not([hidden])")
    karim.locator("#filter-status").select_option("mine")
    _item(karim, handoff["id"]).wait_for()
    assert _handoff_of(stack, number)["assigned_to"] == second.id
    assert amina.js_errors == [] and karim.js_errors == []


# --- The reply window: free-form, HUMAN_AGENT tag, template, closed --------------------------------------


def _family_last_wrote(stack, address: str, days_ago: float) -> None:
    """Time passing: the family's last message is ``days_ago`` old (what decides the window)."""
    engine = create_db_engine(stack["database_url"])
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days_ago)
    with engine.begin() as conn:
        conn.execute(contacts.update().where(contacts.c.address == address).values(last_inbound_at=when))


def _messenger(stack, psid: str, text: str) -> None:
    result = httpx.post(f"{stack['graph']}/_sim/inbound", json={"webhook_url": f"{stack['gateway']}/webhooks/messenger", "psid": psid, "text": text}, timeout=60)
    assert result.status_code == 200, result.text


def _messenger_sent(stack, psid: str) -> list[dict[str, Any]]:
    records = httpx.get(f"{stack['graph']}/_sim/requests").json()["requests"]
    return [r["json"] for r in records if r.get("status") == 200 and str(((r.get("json") or {}).get("recipient") or {}).get("id")) == psid]


def _reopen(page: Any, handoff_id: int) -> None:
    """Open the conversation again (a fresh read of its window: the clock moved, no event did)."""
    page.goto(page.url.split("/console/")[0] + f"/console/mediation/{handoff_id}")
    page.wait_for_selector("#window[data-form]")


def test_the_reply_window_is_shown_and_followed_on_messenger_and_whatsapp(stack, people, open_console):
    mediator = people["fr"]
    page = open_console(mediator, width=1200)
    _live(page)

    # Messenger: free-form inside 24 hours, the HUMAN_AGENT tag up to 7 days, then closed with the reason.
    psid = f"77{RUN:06d}{next(_numbers):03d}"
    address = f"messenger:{psid}"
    _messenger(stack, psid, "bonjour, je suis en France")
    _wait_sent(lambda: [json_text(m) for m in _messenger_sent(stack, psid)], 0)
    before = len(_messenger_sent(stack, psid))
    _messenger(stack, psid, "je veux parler à quelqu'un")
    _wait_sent(lambda: [json_text(m) for m in _messenger_sent(stack, psid)], before)
    handoff = _handoff_of(stack, address)
    _item(page, handoff["id"]).wait_for()
    _open_conversation(page, handoff["id"])
    assert page.locator("#window").get_attribute("data-form") == "text"
    page.locator("#claim").click()
    page.wait_for_selector("#conv-status[data-status='assigned']")

    _family_last_wrote(stack, address, days_ago=3)
    _reopen(page, handoff["id"])
    assert page.locator("#window").get_attribute("data-form") == "tag:HUMAN_AGENT"
    assert "HUMAN_AGENT" in page.locator("#window").inner_text()
    before = len(_messenger_sent(stack, psid))
    text = "Bonjour, je reviens vers vous au sujet de l'école."
    page.locator("#reply-text").fill(text)
    page.locator("#reply-send").click()
    _wait_sent(lambda: [json_text(m) for m in _messenger_sent(stack, psid)], before, contains=text)
    tagged = [m for m in _messenger_sent(stack, psid) if json_text(m) == text]
    assert tagged and tagged[-1].get("messaging_type") == "MESSAGE_TAG" and tagged[-1].get("tag") == "HUMAN_AGENT"

    _family_last_wrote(stack, address, days_ago=8)
    _reopen(page, handoff["id"])
    assert page.locator("#window").get_attribute("data-form") == "closed"
    assert "7 days" in page.locator("#reply-refused").inner_text()
    assert page.locator("#reply-send").is_disabled()

    # WhatsApp after 24 hours: a template reopens the conversation; the text waits for the family.
    number, sent, handoff = _french_family_asks_for_a_person(stack)
    _family_last_wrote(stack, number, days_ago=1.5)
    _item(page, handoff["id"]).wait_for()
    _reopen(page, handoff["id"])
    assert page.locator("#window").get_attribute("data-form") == "template"
    records = lambda: [r for r in httpx.get(f"{stack['twilio']}/_sim/requests").json()["requests"] if r.get("to") == number]  # noqa: E731
    before = len(records())
    text = "Bonjour, je suis Amina, médiatrice : pouvez-vous me rappeler le nom de l'école ?"
    page.locator("#reply-text").fill(text)
    page.locator("#reply-send").click()
    page.wait_for_function("() => [...document.querySelectorAll('#transcript .msg-mediator .msg-meta')].some(n => n.textContent.includes('famille répondra'))", timeout=WAIT_MS)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not any(r.get("content_sid") for r in records()[before:]):
        time.sleep(0.1)
    new = records()[before:]
    assert any(r.get("content_sid") for r in new), new
    assert not any(r.get("body") == text for r in new), "the text went out before the family reopened the window"

    # Kept longer than held_messages_expire_after_days (content/mediation.yml, 14): it will never go
    # out, and the transcript says so instead of "goes out when the family answers".
    with create_db_engine(stack["database_url"]).begin() as conn:
        conn.execute(messages.update().where(messages.c.text == text).values(created_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=15)))
    _reopen(page, handoff["id"])
    page.wait_for_function("() => [...document.querySelectorAll('#transcript .msg-mediator .msg-meta')].some(n => n.textContent.includes('expiré, non envoyé'))", timeout=WAIT_MS)
    assert page.js_errors == []


def json_text(message: dict[str, Any]) -> str:
    return str(((message or {}).get("message") or {}).get("text") or "")


# --- Priorities, auto-assign, escalation, resolve, the language of the console ----------------------


def test_safety_first_in_red_auto_assign_escalation_resolve_and_english_on_request(stack, people, open_console, replies):
    page = open_console(people["fr2"], width=1200)
    _live(page)
    asking, worried = _phone(), _phone()
    for number in (asking, worried):
        _whatsapp(stack, number, "bonjour, je suis en France")
        _wait_sent(lambda: _whatsapp_sent(stack, number), 0)
    before = len(_whatsapp_sent(stack, asking))
    _whatsapp(stack, asking, "je veux parler à quelqu'un")
    _wait_sent(lambda: _whatsapp_sent(stack, asking), before)
    request = _handoff_of(stack, asking)
    before = len(_whatsapp_sent(stack, worried))
    _whatsapp(stack, worried, "mon fils est frappé à l'école tous les jours, il a peur")
    _wait_sent(lambda: _whatsapp_sent(stack, worried), before)
    safety = _handoff_of(stack, worried)

    _item(page, request["id"]).wait_for()
    _item(page, safety["id"]).wait_for()
    order = [int(i) for i in page.locator("#handoffs .handoff").evaluate_all("nodes => nodes.map(n => n.dataset.id)")]
    assert order.index(safety["id"]) < order.index(request["id"]), "the child's safety is not first"
    badge = _item(page, safety["id"]).locator(".badge-safety")
    assert badge.evaluate("node => getComputedStyle(node).backgroundColor") == "rgb(179, 38, 30)"
    assert "sécurité" in _item(page, safety["id"]).inner_text()

    # The filters: by language (Karim reads French and Arabic) and by country.
    page.locator("#filter-language").select_option("ar")
    _item(page, safety["id"]).wait_for(state="detached")
    page.locator("#filter-language").select_option("")
    page.locator("#filter-country").select_option("BE")
    _item(page, safety["id"]).wait_for(state="detached")
    page.locator("#filter-country").select_option("FR")
    _item(page, safety["id"]).wait_for()
    assert set(page.locator("#handoffs .handoff-country").all_inner_texts()) == {"FR"}

    # A reply being written survives a look at another case.
    _open_conversation(page, safety["id"])
    page.locator("#reply-text").fill("Bonjour, votre fils est-il en sécurité en ce moment ?")
    _open_conversation(page, request["id"])
    assert page.locator("#reply-text").input_value() == ""
    _open_conversation(page, safety["id"])
    assert page.locator("#reply-text").input_value() == "Bonjour, votre fils est-il en sécurité en ce moment ?"

    # Auto-assign: the least-loaded mediator covering France gets the safety case.
    page.locator("#auto-assign").click()
    page.wait_for_selector("#conv-status[data-status='assigned']")
    holder = AccountStore(create_db_engine(stack["database_url"])).get(_handoff_of(stack, worried)["assigned_to"])
    assert holder is not None and holder.role == "mediator" and holder.covers_country("FR")
    assert holder.display_name in page.locator("#conv-assigned").inner_text()

    # The other waits past the escalation wait (30 minutes, content/mediation.yml): the gateway's
    # periodic check (every 30 s) escalates it, and the list highlights it live.
    with create_db_engine(stack["database_url"]).begin() as conn:
        conn.execute(handoffs.update().where(handoffs.c.id == request["id"]).values(created_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=31)))
    page.wait_for_selector(f".handoff.escalated[data-id='{request['id']}']", timeout=45_000)
    assert _item(page, request["id"]).locator(".badge-escalated").inner_text() == "escaladée"
    assert _item(page, safety["id"]).get_attribute("class").split().count("escalated") == 0

    # Resolve it: the family is told, and the case leaves the open list.
    _open_conversation(page, request["id"])
    before = len(_whatsapp_sent(stack, asking))
    page.locator("#resolve").click()
    assert page.locator("#resolve").inner_text() == "Clôturer cette conversation ?"
    page.locator("#resolve").click()
    page.wait_for_url("**/console/mediation")
    _item(page, request["id"]).wait_for(state="detached")
    _wait_sent(lambda: _whatsapp_sent(stack, asking), before, contains=replies.text("handoff_resolved", "fr").splitlines()[0])
    assert _handoff_of(stack, asking)["status"] == "resolved"

    # The language switch in the nav bar (a cookie; French is the default): English.
    page.locator("#nav-lang").select_option("en")
    page.wait_for_function("() => document.documentElement.lang === 'en'")
    page.locator("#handoffs .handoff").first.wait_for()
    assert page.locator(".list-head h2").inner_text() == "Open conversations"
    assert "child's safety" in _item(page, safety["id"]).inner_text()

    # A session that ended (here: its cookie gone) sends the next action to the login page, and back after.
    page.context.clear_cookies()
    page.locator("#refresh").click()
    page.wait_for_url("**/console/login?next=*")
    assert "next=%2Fconsole%2Fmediation" in page.url
    assert page.js_errors == []


# --- The shell -----------------------------------------------------------------------------------------


def test_console_sends_each_role_to_its_console_and_strangers_to_the_login_page(stack, people, open_console):
    gateway = stack["gateway"]
    anonymous = httpx.get(f"{gateway}/console", follow_redirects=False)
    assert anonymous.status_code in (302, 303, 307) and anonymous.headers["location"].startswith("/console/login")
    page = httpx.get(f"{gateway}/console/mediation", follow_redirects=False)
    assert page.status_code in (302, 303, 307) and page.headers["location"].startswith("/console/login?next=")

    mediator = open_console(people["fr"], next_path="/console", lands_on="/console/mediation")
    assert urlsplit(mediator.url).path == "/console/mediation"
    operator = open_console(people["operator"], next_path="/console", lands_on="/console/operators")
    # The dashboard writes its period into the query (?since=…) once it has loaded: the path is what counts.
    assert urlsplit(operator.url).path == "/console/operators"
    # An operator opening the mediators' console is told it is not theirs.
    response = operator.goto(f"{gateway}/console/mediation")
    assert response.status == 403
    assert operator.locator(".denied").is_visible()


def test_the_console_is_sent_with_its_security_headers_and_fits_a_phone(stack, people, open_console):
    page = open_console(people["fr"], width=360)
    response = page.request.get(f"{stack['gateway']}/console/mediation")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    _live(page)
    # The nav bar shows who is signed in, and the page is no wider than the phone.
    assert page.locator("#nav-account").inner_text().startswith("Amina Benali")
    assert page.locator("#logout").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    # Logging out ends the session: the console sends back to the login page.
    page.locator("#logout").click()
    page.wait_for_url("**/console/login**")
    assert page.request.get(f"{stack['gateway']}/api/auth/me").status == 401


def test_the_console_speaks_each_language_and_fits_a_phone_in_it(stack, people, open_console):
    """German words are long, Arabic mirrors the page: each language's labels, in a case and in
    the list, on a 360 px phone, without a page wider than the screen."""
    page = open_console(people["fr2"], width=360)
    number, sent, handoff = _french_family_asks_for_a_person(stack)
    for language in ("es", "it", "de", "ar", "en", "fr"):
        texts = catalog.texts(language)
        page.goto(f"{stack['gateway']}/console/mediation/{handoff['id']}?lang={language}")
        page.wait_for_selector("#transcript .msg")
        assert page.evaluate("[document.documentElement.lang, document.documentElement.dir]") == [language, "rtl" if language == "ar" else "ltr"]
        assert page.locator("#claim").inner_text() == texts["mediation.action.claim"]
        assert page.locator("#hand-back").inner_text() == texts["mediation.action.hand_back"]
        assert page.locator("#conv-status").inner_text() == texts["mediation.status.waiting"]
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, language
        page.locator(".back-to-list").first.click()
        _live(page)
        _item(page, handoff["id"]).wait_for()
        assert page.locator(".list-head h2").inner_text() == texts["mediation.list_title"]
        assert texts["mediation.reason.request"] in _item(page, handoff["id"]).inner_text()
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, language
    assert page.js_errors == []
