"""The operators' console in a real headless browser (Debian's chromium driven by Playwright, as
tests/test_webchat_browser.py), against a real HTTP server with the console's routers, SQLite,
an embedded Redis and the campaign queue (no sending worker: the sends wait in the queue).

An operator for France signs in, sees the indicators drawn as SVG charts with CSV links (and
a family's message holding markup shown as text), then creates a campaign from an example:
validate, preview, schedule, follow the run's progress, pause it; and opens contacts to see
which reminder topics they receive, in French and in Arabic (right to left).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI

from playwright.sync_api import expect

from jisr.auth.store import AccountStore
from jisr.console import operators as operators_console
from jisr.console.routes import install as install_consoles
from jisr.gateway import auth_routes, campaigns_api, operators_api
from jisr.outbox import Outbox
from jisr.redisconn import connect_redis
from jisr.settings import Settings
from jisr.simulators.server import BackgroundServer
from jisr.store.contacts import ContactStore, ImportedContact, create_db_engine

PASSWORD = "correct horse battery staple 42"
TIMEOUT_MS = 20_000
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"> où est la cantine'


def seed(store: ContactStore) -> None:
    families = [
        ImportedContact(line=n, address=f"whatsapp:+3361234560{n}", channel="whatsapp", consent="opted_in", language=lang,
                        country="FR", role="parent", timezone="Europe/Paris")
        for n, lang in ((1, "fr"), (2, "fr"), (3, "ar"))
    ]
    families.append(ImportedContact(line=4, address="whatsapp:+213550000001", channel="whatsapp", consent="opted_in", language="ar",
                                    country="DZ", role="parent", timezone="Africa/Algiers"))
    store.import_contacts(families, "paper forms at the consulate, 2026-09")
    for n, family in enumerate(families, start=1):
        contact = store.by_address(family.address)
        assert contact is not None
        store.log_outbound(contact.id, "whatsapp", "Bonjour", f"browser-{n}")
        store.mark_sent(f"browser-{n}", f"SM-browser-{n}", 1)
        store.apply_status(f"SM-browser-{n}", "read" if n % 2 else "delivered")
        if n <= 2:  # the same unanswered question from two French families: shown (as text)
            store.log_inbound(contact.id, "whatsapp", f"in-browser-{n}", HOSTILE, [], intent="nlu_fallback", language="fr")
    # The Arabic-speaking family stopped the exam reminders before it unsubscribed (the contact detail shows both).
    store.stop_topics(store.by_address(families[2].address).id, ["exams"], "conversation", "whatsapp")
    # Opt-outs on two days: a line over time.
    now = dt.datetime.now(dt.timezone.utc)
    for n, days_ago in ((1, 2), (2, 0)):
        contact = store.by_address(families[n].address)
        store.record_consent(contact.id, "opted_out", "conversation", channel="whatsapp", at=now - dt.timedelta(days=days_ago))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("operators-browser")
    url = f"sqlite:///{tmp / 'jisr.db'}"
    settings = Settings(database_url=url, var_dir=tmp, operator_api_token=None)
    redis = connect_redis(None, directory=tmp)
    engine = create_db_engine(url)
    store = ContactStore(engine)
    seed(store)
    accounts = AccountStore(engine)
    accounts.create("fr_operator", "Opératrice France", "operator", PASSWORD, countries="FR")
    accounts.create("boss", "Admin", "admin", PASSWORD)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        outbox = await Outbox.connect(redis.host, redis.port, redis.db, redis.password)
        app.state.services = SimpleNamespace(settings=settings, redis=redis, store=store, gateway=None, outbox=outbox)
        try:
            yield
        finally:
            await outbox.close()

    app = FastAPI(lifespan=lifespan)
    for router in (auth_routes.router, operators_api.router, campaigns_api.router):
        app.include_router(router)
    install_consoles(app)
    app.include_router(operators_console.router)
    try:
        with BackgroundServer(app) as base:
            yield base
    finally:
        engine.dispose()
        redis.close()



@contextlib.contextmanager
def signed_in(browser: Any, server: str, username: str) -> Iterator[Any]:
    """A phone-sized window, signed in through the login page."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="fr-FR", base_url=server)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Every refused or failed request counts (the browser's own favicon request aside).
    page.on("response", lambda response: errors.append(f"{response.status} {response.url}") if response.status >= 400 and not response.url.endswith("/favicon.ico") else None)
    page.js_errors = errors  # type: ignore[attr-defined]
    page.goto("/console/operators")
    page.wait_for_url("**/console/login**")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    # By path: the dashboard writes its period into the query (?since=…) as soon as it loads.
    page.wait_for_url(lambda url: urlsplit(url).path == "/console/operators")
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    with signed_in(browser, server, "fr_operator") as page:
        yield page


@pytest.fixture
def admin_page(browser: Any, server: str) -> Iterator[Any]:
    with signed_in(browser, server, "boss") as page:
        yield page


def test_the_dashboard_draws_every_indicator_with_csv_links(page: Any) -> None:
    # Locators and expect(), not wait_for_function: the pages' CSP forbids evaluating strings.
    expect(page.locator(".indicator")).to_have_count(8)
    assert page.locator("#op-scope").inner_text().endswith("FR")
    reached = page.locator(".indicator[data-name=reached]")
    # Three French families reached, drawn as bars; the Algerian one is not in this operator's view.
    assert reached.locator("svg.chart rect").count() == 3
    assert page.evaluate("document.documentElement.scrollWidth") <= 390   # nothing wider than the phone
    reached.locator("summary").click()
    assert reached.locator("tbody td").all_inner_texts() == ["FR", "3", "0", "0", "3"]
    csv_link = page.locator(".indicator[data-name=opt_outs] a.csv")
    # The last 30 days by default, in the charts and in the CSV links alike.
    month_ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)).date().isoformat()
    assert csv_link.get_attribute("href") == f"/api/operators/indicators/opt_outs.csv?since={month_ago}"
    assert month_ago in page.locator("#op-scope").inner_text()
    opt_outs = page.locator(".indicator[data-name=opt_outs] svg.chart")
    # Three days from the first opt-out to today: the day between shows as 0, not skipped.
    assert opt_outs.locator("path").count() == 1 and opt_outs.locator("circle").count() == 3
    unanswered = page.locator(".indicator[data-name=unanswered]")
    unanswered.locator("summary").click()
    cell = unanswered.locator("tbody td").first
    assert "<img src=x" in cell.inner_text()          # shown as text…
    assert page.locator("main img").count() == 0        # …never as markup
    assert page.title() != "pwned"
    # The period filter: a period with nothing in it.
    page.fill("#op-since", "2001-01-01")
    page.fill("#op-until", "2001-01-31")
    page.click("form.op-filters button[type=submit]")
    expect(page.locator("#op-scope")).to_contain_text("2001-01-01")
    expect(page.locator(".indicator .empty")).to_have_count(8)
    assert "since=2001-01-01" in page.url
    assert page.js_errors == []  # type: ignore[attr-defined]


def test_a_campaign_from_an_example_to_a_paused_run(page: Any) -> None:
    page.click("a.op-tab[href='/console/operators/campaigns']")
    page.wait_for_selector("#op-example option[value=exam_period_parents]", state="attached")
    page.select_option("#op-example", "exam_period_parents")
    page.click("#load-example")
    assert page.locator("#campaign-text").input_value().startswith("# Strategy P02")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390   # nothing wider than the phone

    page.click("#validate")
    page.wait_for_selector("#campaign-result .result-ok")
    assert "exam_period_parents" in page.locator("#campaign-result").inner_text()

    page.click("#preview")
    page.wait_for_selector("#campaign-result .preview-message")
    preview = page.locator("#campaign-result").inner_text()
    # The example reaches eight countries; this operator covers France: the figures are France's.
    assert "FR" in preview and "DZ" not in preview

    # A broken file: the API's file:line: field: reason is shown.
    page.locator("#campaign-text").fill("id: x\nname: X\n")
    page.click("#validate")
    page.wait_for_selector("#campaign-result .result-error")
    assert "exam_period_parents.yml" in page.locator("#campaign-result").inner_text()

    page.click("#load-example")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#schedule")
    # Scheduling needs every country the campaign reaches: refused, with the missing ones named.
    page.wait_for_selector("#campaign-result .result-error")
    assert "DZ" in page.locator("#campaign-result").inner_text()
    text = page.locator("#campaign-text").input_value()
    page.locator("#campaign-text").fill(text.replace("countries: [FR, ES, IT, DE, BE, NL, DZ, CI]", "countries: [FR]"))
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#schedule")
    page.wait_for_selector("#follow #run-progress")
    assert page.locator("#run-state").inner_text() in ("en cours", "prévu")
    page.wait_for_selector(".run .badge")
    run = page.locator(".run").first
    assert "exam_period_parents" in run.inner_text()

    run.locator("button[data-action=pause]").click()
    expect(page.locator("#run-state")).to_have_text("en pause")
    expect(page.locator(".run .badge").first).to_have_text("en pause")
    # The refusals are the broken file and the campaign for countries beyond France, above.
    assert [e.split(" ", 1)[0] + " " + e.rsplit("/", 1)[-1] for e in page.js_errors] == [  # type: ignore[attr-defined]
        "422 validate?name=exam_period_parents.yml",
        "403 schedule?name=exam_period_parents.yml",
    ]


def _open_contact(page: Any, digits: str) -> None:
    page.fill("#op-q", digits)
    page.click("form.op-filters button[type=submit]")
    expect(page.locator("#contacts tbody tr")).to_have_count(1)
    page.locator("#contacts tbody tr").click()


def test_a_contacts_reminder_topics_in_french_and_in_arabic(page: Any) -> None:
    page.click("a.op-tab[href='/console/operators/contacts']")
    _open_contact(page, "612345601")  # on a list with consent, no topics column: every topic
    expect(page.locator("#contact-topics")).to_have_text(
        "Reçoit : rentrée scolaire, examens, dates limites et inscriptions, orientation, filières et formations, soutien scolaire"
        " (tous les thèmes : n'a jamais choisi)"
    )
    expect(page.locator("#contact-topic-stops")).to_have_count(0)
    # In Arabic, right to left: the family that stopped exam reminders, then unsubscribed.
    page.goto("/console/operators/contacts?lang=ar")
    _open_contact(page, "612345603")
    expect(page.locator("#contact-topics")).to_have_text("لا يتلقى أي تذكير: ألغى الاشتراك في كل شيء")
    stop = page.locator("#contact-topic-stops li")
    expect(stop).to_have_count(1)
    assert stop.inner_text().startswith("أوقف الامتحانات في ") and stop.inner_text().endswith("(conversation · whatsapp)")
    assert stop.evaluate("node => getComputedStyle(node).direction") == "rtl"
    # Topic, date, then how, laid out from the right: each value isolated, none pulled out of place.
    topic, at, how = (stop.locator("bdi").nth(i).bounding_box() for i in range(3))
    assert topic["x"] > at["x"] > how["x"], (topic, at, how)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390   # nothing wider than the phone
    assert page.js_errors == []  # type: ignore[attr-defined]


def test_an_admin_creates_an_operator_and_an_api_token(admin_page: Any) -> None:
    page = admin_page
    expect(page.locator("a.op-tab")).to_have_count(5)
    page.click("a.op-tab[href='/console/operators/accounts']")
    page.wait_for_selector("[data-account]")
    page.fill("#new-username", "nadia")
    page.fill("#new-display_name", "Nadia <b>K.</b>")
    page.select_option("#op-role", "operator")
    page.fill("#new-password", PASSWORD)
    page.fill("#new-countries", "BE,NL")
    page.fill("#new-languages", "fr,ar")
    page.click("#new-account button[type=submit]")
    item = page.locator("li.run", has_text="nadia")
    expect(item).to_contain_text("Nadia <b>K.</b> (nadia)")   # a name is text, never markup
    assert page.locator("main b").count() == 0
    item.get_by_role("button", name="Jetons d'API").click()
    page.fill("#tokens input", "tableau de bord")
    page.click("#tokens .row button")
    expect(page.locator("#tokens code")).to_have_count(1)
    assert len(page.locator("#tokens code").inner_text()) >= 20
    expect(page.locator("#tokens tbody tr")).to_have_count(1)
    assert page.js_errors == []  # type: ignore[attr-defined]
