"""The public subscription form (/subscribe, issue 7): through the real gateway app (model,
embedded Redis, SQLite file), in fr, ar, es and de, from the page to a campaign plan.

Every post counts against its client's hourly budget in Redis; the tests come from one
client, so each test starts with that client's counter removed (the rate-limit test then
fills it up on purpose)."""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from campaigns.definitions import DEFAULT_WEEKLY_CAP, load_campaign
from campaigns.planner import plan
from jisr import keys
from jisr.auth.ratelimit import client_bucket
from jisr.gateway import subscribe
from jisr.paths import CONTENT_DIR, REPLY_LANGUAGES
from jisr.privacy.pseudonym import address_hash, suppression_hash
from jisr.store import schema
from jisr.store.campaigns import CampaignStore
from jisr.store.contacts import ContactStore
from jisr.topics import SUBSCRIPTION_TOPICS
from tests.conftest import provider_simulators, simulator_settings

UTC = dt.timezone.utc
TOKEN_RE = re.compile(r'name="form_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from jisr.gateway.app import create_app

    tmp = tmp_path_factory.mktemp("subscribe")
    with provider_simulators() as urls:
        settings = simulator_settings(urls, database_url=f"sqlite:///{tmp / 'jisr.db'}", redis_url=None, var_dir=tmp)
        app = create_app(settings)
        with TestClient(app) as client:
            services = app.state.services
            yield {"client": client, "services": services, "store": ContactStore(services.store.engine), "tmp": tmp}


@pytest.fixture()
def gw(app_client: dict[str, Any]) -> dict[str, Any]:
    """The app with this client's hourly submission counter emptied."""
    key = keys.subscribe_rate(address_hash("client:" + client_bucket("testclient")), int(time.time() // 3600))
    redis = app_client["services"].redis.sync_client()
    redis.delete(key)
    redis.close()
    return app_client


def _token(gw: dict[str, Any], lang: str = "fr") -> str:
    page = gw["client"].get(f"/subscribe?lang={lang}")
    assert page.status_code == 200
    return TOKEN_RE.search(page.text).group(1)


def _post(gw: dict[str, Any], lang: str, token: Optional[str] = None, **fields: Any) -> Any:
    data: dict[str, Any] = {"form_token": token if token is not None else _token(gw, lang), "channel": "whatsapp", "website": ""}
    data.update(fields)
    return gw["client"].post(f"/subscribe?lang={lang}", data=data)


def _good(phone: str, **extra: Any) -> dict[str, Any]:
    fields = {"phone": phone, "country": "FR", "language": "fr", "role": "parent", "consent": "yes"}
    fields.update(extra)
    return fields


def _texts(lang: str) -> dict[str, Any]:
    return yaml.safe_load((CONTENT_DIR / "subscribe" / f"{lang}.yml").read_text(encoding="utf-8"))


# -- content ----------------------------------------------------------------------------------


def test_every_language_has_the_same_texts_and_every_host_country_and_topic():
    reference = _texts("fr")
    for lang in REPLY_LANGUAGES:
        t = _texts(lang)
        assert set(t) == set(reference), lang
        assert set(t["countries"]) == set(subscribe.host_countries()), lang
        assert set(t["topics"]) == set(SUBSCRIPTION_TOPICS), lang
        assert "{cap}" in t["consent_label"] and "STOP" in t["consent_label"], lang


# -- the page ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lang, direction, words",
    [
        ("fr", "ltr", ["Recevoir les rappels", "au plus 2 messages par semaine", "STOP", "abonnez-moi"]),
        ("ar", "rtl", ["استقبال تذكيرات", "رسائل في الأسبوع", "STOP", "اشتراك"]),
        ("es", "ltr", ["Recibir los recordatorios", "como máximo 2 mensajes por semana", "STOP", "suscríbeme"]),
        ("de", "ltr", ["Erinnerungen von Jisr", "höchstens 2 Nachrichten pro Woche", "STOP", "anmelden"]),
        ("it", "ltr", ["Ricevere i promemoria", "al massimo 2 messaggi a settimana", "STOP", "iscrivimi"]),
    ],
)
def test_the_page_renders_in_the_family_language(gw, lang, direction, words):
    assert DEFAULT_WEEKLY_CAP == 2  # the texts below name it
    page = gw["client"].get(f"/subscribe?lang={lang}")
    assert page.status_code == 200
    assert f'<html lang="{lang}" dir="{direction}">' in page.text
    for word in words:
        assert word in page.text, word
    # Light and script-free: no script, no external asset, the consent box not ticked.
    assert "<script" not in page.text and "http" not in page.text.replace('hreflang', '')
    assert re.search(r'<input type="checkbox" name="consent" value="yes" required>', page.text)
    assert len(page.content) < 12_000
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none' forbids scripts
    for code in ("FR", "ES", "IT", "DE", "BE", "NL", "DZ", "CI"):
        assert f'<option value="{code}"' in page.text
    for topic in SUBSCRIPTION_TOPICS:
        assert f'value="{topic}"' in page.text
    # The language switch reaches every language, Darija readers included (ar).
    for code in REPLY_LANGUAGES:
        assert f'href="/subscribe?lang={code}"' in page.text


def test_the_browser_language_chooses_the_page_and_darija_reads_arabic(gw):
    assert '<html lang="es"' in gw["client"].get("/subscribe", headers={"Accept-Language": "es-ES,es;q=0.9"}).text
    assert '<html lang="ar" dir="rtl"' in gw["client"].get("/subscribe?lang=ary").text
    assert '<html lang="fr"' in gw["client"].get("/subscribe", headers={"Accept-Language": "nl-NL"}).text
    # The weights decide, not the order (jisr.http_language, as the consoles read it).
    assert '<html lang="es"' in gw["client"].get("/subscribe", headers={"Accept-Language": "de;q=0.2, es;q=0.9"}).text


# -- a good submission ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lang, phone, stored, country, role, topics, thanks",
    [
        ("fr", "+33 6 12 34 56 01", "+33612345601", "FR", "parent", ["exams", "orientation"], "Merci !"),
        ("ar", "0034-612-345-602", "+34612345602", "ES", "parent", [], "شكراً!"),
        ("es", "+34 (612) 345 603", "+34612345603", "ES", "student", ["deadlines"], "¡Gracias!"),
        ("de", "+49 151 2345 6004", "+4915123456004", "DE", "parent", ["tutoring", "exams"], "Danke!"),
    ],
)
def test_a_good_submission_records_consent_profile_and_topics(gw, lang, phone, stored, country, role, topics, thanks):
    response = _post(gw, lang, phone=phone, country=country, language=lang, role=role, consent="yes", topics=topics)
    assert response.status_code == 200, response.text
    assert thanks in response.text
    contact = gw["store"].by_address(f"whatsapp:{stored}")
    assert contact is not None and contact.channel == "whatsapp"
    assert (contact.consent, contact.language, contact.country, contact.role) == ("opted_in", lang, country, role)
    [event] = gw["store"].consent_history(contact.id)
    assert (event.consent, event.source, event.channel) == ("opted_in", "web_form", "whatsapp")
    assert event.basis == f"web form /subscribe, consent box ticked, form version {subscribe.FORM_VERSION}"
    # No topic ticked: every topic, as an opt-in message naming none.
    assert gw["store"].topics_of(contact.id) == sorted(topics or SUBSCRIPTION_TOPICS)


def test_a_known_contact_keeps_its_profile_and_the_thank_you_page_is_the_same(gw):
    store: ContactStore = gw["store"]
    known = store.get_or_create("whatsapp:+33612345610", "whatsapp")
    store.update_profile(known.id, language="ar", country="BE")
    first = _post(gw, "fr", **_good("+33612345610", country="FR", language="fr", role="parent"))
    fresh = _post(gw, "fr", **_good("+33612345611"))
    assert first.status_code == fresh.status_code == 200
    assert first.text == fresh.text  # nothing says the number was known
    contact = store.get(known.id)
    assert (contact.language, contact.country, contact.role, contact.consent) == ("ar", "BE", "parent", "opted_in")


def test_a_stop_the_family_sent_is_not_undone_by_the_form(gw):
    store: ContactStore = gw["store"]
    contact = store.get_or_create("whatsapp:+33612345620", "whatsapp")
    store.record_consent(contact.id, "opted_out", "conversation")
    response = _post(gw, "fr", **_good("+33612345620"))
    assert response.status_code == 200 and "START" in response.text
    assert store.get(contact.id).consent == "opted_out"
    assert [e.source for e in store.consent_history(contact.id)] == ["conversation"]


def test_a_forgotten_number_can_subscribe_again_and_its_suppression_entry_stays(gw):
    engine = gw["services"].store.engine
    address = "whatsapp:+33612345630"
    with engine.begin() as conn:
        conn.execute(schema.suppressed_addresses.insert().values(address_hash=suppression_hash(address), at=dt.datetime.now(UTC)))
    assert _post(gw, "fr", **_good("+33612345630")).status_code == 200
    contact = gw["store"].by_address(address)
    assert contact is not None and contact.consent == "opted_in"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.suppressed_addresses).where(
            schema.suppressed_addresses.c.address_hash == suppression_hash(address))).scalar() == 1


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lang, message",
    [
        ("fr", "Cochez la case d'accord pour vous abonner."),
        ("ar", "ضعوا علامة في خانة الموافقة للاشتراك."),
        ("es", "Marque la casilla de aceptación para suscribirse."),
        ("de", "Kreuzen Sie das Einverständnis-Kästchen an, um sich anzumelden."),
    ],
)
def test_without_the_consent_tick_nothing_is_recorded(gw, lang, message):
    phone = f"+3361234564{REPLY_LANGUAGES.index(lang)}"
    fields = _good(phone, language=lang)
    del fields["consent"]
    response = _post(gw, lang, **fields)
    assert response.status_code == 422
    assert html.escape(message) in response.text
    assert phone in response.text  # what was typed comes back
    assert 'name="consent" value="yes" required>' in response.text  # never ticked for them
    assert gw["store"].by_address(f"whatsapp:{phone}") is None


@pytest.mark.parametrize(
    "lang, phone, message",
    [
        ("fr", "06 12 34 56 78", "Ce numéro n'est pas valide"),
        ("ar", "+0612", "هذا الرقم غير صحيح"),
        ("es", "+34 abc 345 678", "Este número no es válido"),
        ("de", "+49 1512345678901234", "Diese Nummer ist ungültig"),
    ],
)
def test_a_bad_number_is_refused_in_the_family_language(gw, lang, phone, message):
    response = _post(gw, lang, **_good(phone, language=lang))
    assert response.status_code == 422
    assert html.escape(message) in response.text
    with gw["services"].store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.contacts).where(schema.contacts.c.address.like("%345678%"))).scalar() == 0


def test_unknown_country_role_language_and_topic_are_each_named(gw):
    response = _post(gw, "fr", **_good("+33612345650", country="MA", role="uncle", language="nl", topics=["holidays"]))
    assert response.status_code == 422
    t = _texts("fr")
    for key in ("error_country", "error_role", "error_language", "error_topics"):
        assert html.escape(t[key]) in response.text, key
    assert gw["store"].by_address("whatsapp:+33612345650") is None


@pytest.mark.parametrize("lang", ["fr", "de"])
def test_a_forged_or_expired_form_token_is_refused(gw, lang):
    secret = gw["services"].settings.webchat_secret
    expired = subscribe.new_form_token(secret, now=time.time() - subscribe.FORM_TOKEN_TTL - 10)
    forged = subscribe.new_form_token("not-our-secret")
    for token in (expired, forged, "", "1.2.3"):
        response = _post(gw, lang, token=token, **_good("+33612345660"))
        assert response.status_code == 403
        assert html.escape(_texts(lang)["error_token"]) in response.text
    assert gw["store"].by_address("whatsapp:+33612345660") is None


def test_the_honeypot_gets_the_thank_you_page_and_records_nothing(gw):
    response = _post(gw, "es", **_good("+34612345670"), website="http://spam.example")
    assert response.status_code == 200 and "¡Gracias!" in response.text
    assert gw["store"].by_address("whatsapp:+34612345670") is None


def test_too_many_posts_from_one_client_get_429(gw):
    for _ in range(subscribe.SUBMISSIONS_PER_HOUR):
        assert _post(gw, "de", **_good("12")).status_code == 422
    response = _post(gw, "de", **_good("+4915123456080"))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3600"
    assert "Zu viele Versuche" in response.text
    assert gw["store"].by_address("whatsapp:+4915123456080") is None


def test_html_in_the_fields_is_escaped(gw):
    attack = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    response = _post(gw, "fr", phone=attack, country=attack, language=attack, role=attack, topics=[attack])
    assert response.status_code == 422
    assert "<script>alert" not in response.text and "<img src=x" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


def test_a_wrong_content_type_is_refused(gw):
    response = gw["client"].post("/subscribe?lang=fr", json={"phone": "+33612345690"})
    assert response.status_code == 415


# -- privacy of the logs ----------------------------------------------------------------------


def test_the_number_never_reaches_the_logs(gw, caplog):
    phone = "+33 6 12 34 56 99"
    with caplog.at_level(logging.DEBUG):
        assert _post(gw, "fr", **_good(phone)).status_code == 200
        assert _post(gw, "fr", **_good(phone, consent="")).status_code == 422
    lines = [record.getMessage() for record in caplog.records]
    assert any(address_hash("whatsapp:+33612345699") in line for line in lines)  # the pseudonym, once recorded
    for line in lines:
        assert "12345699" not in line and "12 34 56 99" not in line and "612345699" not in line, line


# -- reaching the campaign audience -----------------------------------------------------------


def test_a_campaign_planned_afterwards_includes_the_subscribed_family(gw, tmp_path: Path):
    assert _post(gw, "it", **_good("+39 312 345 6700", country="IT", language="it", role="parent", topics=["exams"])).status_code == 200
    assert _post(gw, "it", **_good("+39 312 345 6701", country="IT", language="it", role="parent", topics=["tutoring"])).status_code == 200
    subscribed = gw["store"].by_address("whatsapp:+393123456700")
    other_topic = gw["store"].by_address("whatsapp:+393123456701")
    path = tmp_path / "it-exams.yml"
    day = (dt.datetime.now(UTC) + dt.timedelta(days=20)).date()
    path.write_text(
        f"""id: it-exams-web-form
name: Exams in Italy
audience:
  countries: [IT]
  languages: [it]
  channels: [whatsapp]
  topics: [exams]
trigger:
  at: "{day.isoformat()}T12:00"
send_window: {{start: "09:00", end: "20:00"}}
fallback_language: it
messages:
  it: "Promemoria: gli esami si avvicinano."
whatsapp_template:
  content_sid: HX{'2' * 32}
  variables: {{1: country}}
""",
        encoding="utf-8",
    )
    campaign = load_campaign(path)
    store = CampaignStore(gw["services"].store.engine)
    result = plan(campaign, store)
    sends = {row["contact_id"]: row for row in store.sends()}
    assert subscribed.id in sends and sends[subscribed.id]["status"] == "planned"
    assert sends[subscribed.id]["form"] == "template"  # the first message is a template naming Jisr
    assert other_topic.id not in sends
    assert result.planned >= 1

