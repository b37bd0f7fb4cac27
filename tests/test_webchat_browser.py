"""The web chat page in a real headless browser (Debian's chromium, driven by Playwright),
against the real gateway of the `stack` fixture (conftest.py): a family types in French,
then in Arabic (laid out right to left), taps a country button, and reloads the page.

Chromium is required, not optional: CI installs it (.ci/run), so a missing browser fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from jisr.knowledge import default_knowledge

REPLY_TIMEOUT_MS = 20_000

FRENCH_QUESTION = "bonjour, comment inscrire mon fils au collège ?"
ARABIC_QUESTION = "السلام عليكم، متى امتحانات الباكالوريا؟"



@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh profile (empty localStorage: a new visitor) with a phone-sized window."""
    context = browser.new_context(viewport={"width": 420, "height": 860}, locale="fr-FR")
    page = context.new_page()
    page.set_default_timeout(REPLY_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()


def _bot_texts(page: Any) -> list[str]:
    return page.locator(".msg.bot").all_inner_texts()


def _say(page: Any, text: str) -> None:
    page.locator("#text").fill(text)
    page.locator("#text").press("Enter")


def _wait_for_bot_bubbles(page: Any, more_than: int) -> list[str]:
    """Wait for new bot bubbles, then for the reply to settle (one job can carry several parts)."""
    page.wait_for_function("n => document.querySelectorAll('.msg.bot').length > n", arg=more_than, timeout=REPLY_TIMEOUT_MS)
    page.wait_for_timeout(400)
    return _bot_texts(page)[more_than:]


def _direction(locator: Any) -> str:
    return locator.evaluate("element => getComputedStyle(element).direction")


def test_a_family_chats_in_french_and_arabic_taps_a_country_and_reloads(page, stack, replies, tmp_path: Path):
    session_requests: list[str] = []
    page.on("request", lambda request: session_requests.append(request.url) if request.url.endswith("/api/webchat/session") else None)
    page.goto(f"{stack['gateway']}/chat")
    assert page.title() == "Jisr"

    # 1. A question in French: the answer is in French (the country question, with the countries as buttons).
    _say(page, FRENCH_QUESTION)
    assert page.locator(".msg.me").last.inner_text() == FRENCH_QUESTION
    french = _wait_for_bot_bubbles(page, 0)
    # The first reply of a conversation says first that this is a bot (issue 7's disclosure).
    assert french[0] == replies.text("bot_disclosure", "fr") + "\n\n" + replies.text("ask_country", "fr"), french
    assert _direction(page.locator(".msg.bot").first) == "ltr"
    assert page.locator(".buttons").last.get_by_role("button", name="France").is_visible()

    # 2. A question in Arabic script: the reply is Arabic and laid out right to left, as is the question.
    seen = len(_bot_texts(page))
    _say(page, ARABIC_QUESTION)
    arabic = _wait_for_bot_bubbles(page, seen)
    assert arabic[0] == replies.text("ask_country", "ar"), arabic
    assert any("\u0600" <= ch <= "\u06ff" for ch in arabic[0])
    assert _direction(page.locator(".msg.bot").nth(seen)) == "rtl"
    assert _direction(page.locator(".msg.me").last) == "rtl"
    assert _direction(page.locator(".buttons").last.locator("button").first) == "rtl"

    # 3. "When is the bac?" brings the country buttons; tapping France answers for France, in French.
    seen = len(_bot_texts(page))
    _say(page, "c'est quand le bac ?")
    asked = _wait_for_bot_bubbles(page, seen)
    assert asked[0] == replies.text("ask_country", "fr"), asked
    seen = len(_bot_texts(page))
    page.locator(".buttons").last.get_by_role("button", name="France").click()
    assert page.locator(".msg.me").last.inner_text() == "France"
    expected = default_knowledge().entry("FR", "exam_calendar").text("fr").split("\n\n")[0].split("{dates}")[0].strip()
    answer = _wait_for_bot_bubbles(page, seen)
    assert any(text.startswith(expected) for text in answer), answer
    assert _direction(page.locator(".msg.bot").last) == "ltr"

    before = _bot_texts(page)
    session = page.evaluate("localStorage.getItem('jisr-session')")
    assert session and len(session_requests) == 1, session_requests

    # 4. A reload keeps the session and shows the conversation (the assistant's messages) again.
    page.reload()
    page.wait_for_function("n => document.querySelectorAll('.msg.bot').length >= n", arg=len(before), timeout=REPLY_TIMEOUT_MS)
    page.wait_for_timeout(500)
    assert _bot_texts(page) == before
    assert page.evaluate("localStorage.getItem('jisr-session')") == session
    assert len(session_requests) == 1, "the reload reused the session"
    assert page.locator(".buttons").count() >= 3, "the quick replies come back too"
    assert page.locator("#status").inner_text() == ""
    assert page.js_errors == []

    shot = tmp_path / "webchat.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_a_message_sent_before_the_session_arrives_uses_the_one_session(page, stack, replies):
    """On a slow connection the page's first poll is still fetching a session when the family
    sends their first message: both must wait for that one session (two would send the message
    under one and poll the replies of the other)."""
    held: list[Any] = []
    page.route("**/api/webchat/session", lambda route: held.append(route))
    page.goto(f"{stack['gateway']}/chat")
    _say(page, "bonjour")
    page.wait_for_timeout(300)
    requested = len(held)
    for route in held:
        route.continue_()
    page.unroute("**/api/webchat/session")
    assert requested == 1, f"{requested} sessions were requested at once"
    greeting = _wait_for_bot_bubbles(page, 0)
    assert greeting[0] == replies.text("greet", "fr"), greeting
    assert page.js_errors == []
