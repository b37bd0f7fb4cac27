"""The public subscription page (GET/POST /subscribe): a family opts in to WhatsApp reminders by a web form.

Issue 7 names three ways into a campaign audience: opting in in a conversation, an imported
list with its basis, and this form. The page is for a parent on a cheap phone: one small HTML
page, no script, no external asset, in ar (right to left; Darija speakers read it too), fr,
es, it or de (texts in content/subscribe/<lang>.yml).

Only WhatsApp is offered: a phone number is a WhatsApp address, but a Telegram or Messenger
conversation has an id Jisr only learns when the family writes first, so those families are
told to write "START"/"abonnez-moi" to the bot (the opt_in intent).

Abuse, without sessions or cookies:
- each page carries a signed, time-limited form token (HMAC with JISR_WEBCHAT_SECRET, in a
  domain of its own), so a post must come from a page Jisr served in the last FORM_TOKEN_TTL;
- submissions are counted per client (its IPv4 address or IPv6 /64, as keyed pseudonym) in
  Redis, SUBMISSIONS_PER_HOUR at most;
- a field hidden from people (the honeypot) that bots fill: such a post gets the thank-you page
  and records nothing.
The thank-you page is the same whatever the number's state, so the form tells nobody whether
a number is known (no enumeration). The number is never logged: logs use address_hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional
from urllib.parse import parse_qs

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from campaigns.definitions import DEFAULT_WEEKLY_CAP
from jisr import keys
from jisr.auth.dependencies import client_address, read_form
from jisr.auth.ratelimit import client_bucket
from jisr.http_language import preferred_language
from jisr.paths import CONTENT_DIR, REPLY_LANGUAGES, reply_language_of
from jisr.privacy.pseudonym import address_hash
from jisr.store.contacts import ContactStore
from jisr.topics import SUBSCRIPTION_TOPICS

logger = logging.getLogger(__name__)

router = APIRouter(tags=["subscription"])

# Bump when what the consent box says changes: the consent basis names the version agreed to.
FORM_VERSION = 1
FORM_TOKEN_TTL = 2 * 3600          # seconds a served page may wait before it is posted
SUBMISSIONS_PER_HOUR = 10          # per client (IPv4 address or IPv6 /64): a family needs one
ROLES = ("parent", "student")
HONEYPOT_FIELD = "website"
DEFAULT_LANGUAGE = "fr"
# Language names as their speakers write them (the switch must be readable in any language).
LANGUAGE_NAMES = {"ar": "العربية / الدارجة", "fr": "Français", "es": "Español", "it": "Italiano", "de": "Deutsch"}
# What a phone number may be written with besides digits: spaces, dots, dashes, brackets.
# No script, no outside resource, no framing (a framed form could trick a tick), no referrer.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_SEPARATORS = re.compile(r"[\s.\-()/\u00a0\u200e\u200f]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


# -- texts and countries ------------------------------------------------------------------


@lru_cache(maxsize=None)
def texts(language: str) -> dict[str, Any]:
    """The page's texts in ``language`` (content/subscribe/<lang>.yml)."""
    with open(CONTENT_DIR / "subscribe" / f"{language}.yml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@lru_cache(maxsize=1)
def host_countries() -> tuple[str, ...]:
    """The host countries the assistant knows (content/gazetteer.yml), in the gazetteer's order."""
    with open(CONTENT_DIR / "gazetteer.yml", encoding="utf-8") as handle:
        return tuple(code for code in yaml.safe_load(handle)["countries"] if code != "MA")


def page_code(tag: Optional[str]) -> Optional[str]:
    """The page's language for a tag ("es", "ES", "es-MX", "ary"), or None if it has none:
    Darija (ary) readers get the Arabic page, as a family writing Darija gets Arabic replies."""
    code = (tag or "").strip().lower().replace("_", "-").split("-")[0]
    code = reply_language_of(code)
    return code if code in REPLY_LANGUAGES else None


def page_language(request: Request) -> str:
    """?lang= if it is one of the page's languages, else the browser's most wanted one we have
    (Accept-Language with its q weights, read as the consoles read it), else French."""
    return (
        page_code(request.query_params.get("lang"))
        or preferred_language(request.headers.get("accept-language"), page_code)
        or DEFAULT_LANGUAGE
    )


def normalise_phone(value: str) -> Optional[str]:
    """An international number as E.164 ("+33612345678"), or None when it is not one.

    "0033 6 12…" is accepted as "+33 6 12…"; a national number ("06 12…") is not, since the
    country code cannot be guessed (a family in Belgium may keep a French number)."""
    compact = _SEPARATORS.sub("", value or "")
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    return compact if _E164.fullmatch(compact) else None


# -- the form token -----------------------------------------------------------------------


def _token_key(secret: str) -> bytes:
    # A key of its own derived from the web chat secret: a session id is never a form token.
    return hmac.new(secret.encode(), b"jisr subscribe form token", hashlib.sha256).digest()


def _token_signature(secret: str, issued: int, nonce: str) -> str:
    return hmac.new(_token_key(secret), f"{FORM_VERSION}.{issued}.{nonce}".encode(), hashlib.sha256).hexdigest()[:32]


def new_form_token(secret: str, now: Optional[float] = None) -> str:
    issued = int(now if now is not None else time.time())
    nonce = secrets.token_urlsafe(9)
    return f"{issued}.{nonce}.{_token_signature(secret, issued, nonce)}"


def form_token_valid(secret: str, token: Optional[str], now: Optional[float] = None) -> bool:
    """Signed by us, for this form version, issued within FORM_TOKEN_TTL (and not in the future)."""
    parts = (token or "").split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        return False
    issued, nonce, signature = int(parts[0]), parts[1], parts[2]
    expected = _token_signature(secret, issued, nonce)
    if not hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), expected.encode("ascii")):
        return False
    age = (now if now is not None else time.time()) - issued
    return -60 <= age <= FORM_TOKEN_TTL


# -- the form -----------------------------------------------------------------------------


@dataclass
class Submission:
    """What a family posted, checked; ``errors`` holds the keys of the texts to show."""

    phone: str = ""
    address: Optional[str] = None
    country: str = ""
    language: str = ""
    role: str = ""
    topics: list[str] = field(default_factory=list)
    consent: bool = False
    errors: list[str] = field(default_factory=list)


def read_submission(form: dict[str, list[str]]) -> Submission:
    first = {name: (values[0] if values else "") for name, values in form.items()}
    sub = Submission(
        phone=first.get("phone", "")[:64],
        country=first.get("country", "").strip().upper(),
        language=first.get("language", "").strip().lower(),
        role=first.get("role", "").strip().lower(),
        topics=[t.strip() for t in form.get("topics", [])],
        consent=first.get("consent", "") == "yes",
    )
    if first.get("channel", "whatsapp") != "whatsapp":
        sub.errors.append("error_channel")
    number = normalise_phone(sub.phone)
    if number is None:
        sub.errors.append("error_phone")
    else:
        sub.address = f"whatsapp:{number}"
    if sub.country not in host_countries():
        sub.errors.append("error_country")
    if sub.language == "ary":
        sub.language = "ar"
    if sub.language not in REPLY_LANGUAGES:
        sub.errors.append("error_language")
    if sub.role not in ROLES:
        sub.errors.append("error_role")
    if any(t not in SUBSCRIPTION_TOPICS for t in sub.topics):
        sub.errors.append("error_topics")
    if not sub.consent:
        sub.errors.append("error_consent")
    return sub


def consent_basis() -> str:
    """What the consent history says about how the person agreed: no IP, no personal data."""
    return f"web form /subscribe, consent box ticked, form version {FORM_VERSION}"


def record_subscription(store: ContactStore, sub: Submission) -> str:
    """Opt the WhatsApp address in; returns what happened (for the log line, never shown).

    - A new address (also one forgotten earlier: a person who asked to be forgotten may come
      back by themselves, as in a conversation) becomes a contact with the form's profile.
    - A known contact keeps what Jisr knows: only unknown profile fields are filled in.
    - A contact whose last consent change is an opt-out they made themselves (STOP in a
      conversation, or on the platform) is NOT opted in again by the form: anyone can type a
      number here, and a STOP must not be undone by someone else. The thank-you page (the
      same for everybody) tells such a family to write START on WhatsApp.
    """
    assert sub.address is not None
    contact = store.get_or_create(sub.address, "whatsapp")
    if contact.consent == "opted_out":
        history = store.consent_history(contact.id)
        if not history or history[-1].source in ("conversation", "platform", "operator"):
            return "kept opt-out"
    unknown = {name: value for name, value in (("language", sub.language), ("country", sub.country), ("role", sub.role)) if getattr(contact, name) is None}
    store.update_profile(contact.id, **unknown)
    # No topic ticked means every topic, as an opt-in message naming none (jisr/topics.py).
    store.subscribe_topics(contact.id, sub.topics or SUBSCRIPTION_TOPICS, "web_form")
    store.record_consent(contact.id, "opted_in", "web_form", consent_basis(), "whatsapp")
    return "opted in"


# -- HTML ---------------------------------------------------------------------------------

_STYLE = (
    "body{font:16px/1.45 system-ui,sans-serif;margin:0;padding:12px;max-width:34em;color:#1d1d1d;background:#fff}"
    "h1{font-size:1.3em;margin:.3em 0}label,legend{display:block;font-weight:600;margin-top:1em}"
    "input[type=tel],select{width:100%;font-size:1.05em;padding:.45em;box-sizing:border-box}"
    "fieldset{border:0;padding:0;margin:0}.opt{font-weight:normal;margin:.35em 0}.hint{color:#555;font-size:.9em}"
    ".err{background:#fde8e8;border:1px solid #c33;padding:.5em .8em}.consent{background:#f3f7f3;padding:.6em;margin-top:1em}"
    "button{margin:1.2em 0;font-size:1.1em;padding:.6em 1.4em;background:#0a7d4f;color:#fff;border:0;border-radius:4px}"
    ".hp{position:absolute;left:-9999px}nav a{margin-inline-end:.7em}"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(lang: str, title: str, body: str) -> str:
    direction = "rtl" if lang == "ar" else "ltr"
    switch = " ".join(
        f'<a href="/subscribe?lang={code}" hreflang="{code}" lang="{code}">{_e(name)}</a>' for code, name in LANGUAGE_NAMES.items()
    )
    return (
        f'<!doctype html><html lang="{lang}" dir="{direction}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="referrer" content="no-referrer"><title>{_e(title)}</title><style>{_STYLE}</style></head><body>'
        f'<nav aria-label="{_e(texts(lang)["language_switch"])}">{switch}</nav>{body}</body></html>'
    )


def render_form(lang: str, token: str, sub: Optional[Submission] = None) -> str:
    t = texts(lang)
    sub = sub or Submission(language=lang)
    parts = [f"<h1>{_e(t['title'])}</h1><p>{_e(t['intro'])}</p>"]
    if sub.errors:
        items = "".join(f"<li>{_e(t[key])}</li>" for key in dict.fromkeys(sub.errors))
        parts.append(f'<div class="err" role="alert"><p>{_e(t["errors_title"])}</p><ul>{items}</ul></div>')
    parts.append(f'<form method="post" action="/subscribe?lang={lang}" accept-charset="utf-8">')
    parts.append(f'<input type="hidden" name="form_token" value="{_e(token)}">')
    parts.append(
        f'<fieldset><legend>{_e(t["channel_label"])}</legend>'
        f'<label class="opt"><input type="radio" name="channel" value="whatsapp" checked> {_e(t["channel_whatsapp"])}</label>'
        f'<p class="hint">{_e(t["channel_other"])}</p></fieldset>'
    )
    parts.append(
        f'<label for="phone">{_e(t["phone_label"])}</label>'
        f'<input type="tel" id="phone" name="phone" dir="ltr" inputmode="tel" autocomplete="tel" required value="{_e(sub.phone)}">'
        f'<p class="hint">{_e(t["phone_hint"])}</p>'
    )
    options = "".join(
        f'<option value="{code}"{" selected" if code == sub.country else ""}>{_e(t["countries"][code])}</option>' for code in host_countries()
    )
    parts.append(
        f'<label for="country">{_e(t["country_label"])}</label>'
        f'<select id="country" name="country" required><option value="">{_e(t["country_choose"])}</option>{options}</select>'
    )
    languages = "".join(
        f'<option value="{code}"{" selected" if code == (sub.language or lang) else ""}>{_e(name)}</option>' for code, name in LANGUAGE_NAMES.items()
    )
    parts.append(f'<label for="language">{_e(t["language_label"])}</label><select id="language" name="language">{languages}</select>')
    roles = "".join(
        f'<label class="opt"><input type="radio" name="role" value="{role}"{" checked" if role == sub.role else ""} required> {_e(t["role_" + role])}</label>'
        for role in ROLES
    )
    parts.append(f'<fieldset><legend>{_e(t["role_label"])}</legend>{roles}</fieldset>')
    topics = "".join(
        f'<label class="opt"><input type="checkbox" name="topics" value="{topic}"{" checked" if topic in sub.topics else ""}> {_e(t["topics"][topic])}</label>'
        for topic in SUBSCRIPTION_TOPICS
    )
    parts.append(f'<fieldset><legend>{_e(t["topics_label"])}</legend><p class="hint">{_e(t["topics_hint"])}</p>{topics}</fieldset>')
    # The honeypot: off screen and out of the tab order, so only a bot fills it.
    parts.append(
        f'<div class="hp" aria-hidden="true"><label for="{HONEYPOT_FIELD}">{_e(t["honeypot_label"])}</label>'
        f'<input type="text" id="{HONEYPOT_FIELD}" name="{HONEYPOT_FIELD}" tabindex="-1" autocomplete="off"></div>'
    )
    # Never pre-ticked, not even when the form comes back with another error.
    parts.append(
        f'<div class="consent"><label class="opt"><input type="checkbox" name="consent" value="yes" required> '
        f'{_e(t["consent_label"].format(cap=DEFAULT_WEEKLY_CAP))}</label></div>'
    )
    parts.append(f'<button type="submit">{_e(t["submit"])}</button></form><p class="hint">{_e(t["privacy_note"])}</p>')
    return _page(lang, t["title"], "".join(parts))


def render_message(lang: str, title_key: str, body_key: str) -> str:
    t = texts(lang)
    return _page(
        lang, t[title_key],
        f'<h1>{_e(t[title_key])}</h1><p>{_e(t[body_key])}</p><p><a href="/subscribe?lang={lang}">{_e(t["back"])}</a></p>',
    )


# -- routes -------------------------------------------------------------------------------


def _html(page: str, status: int = 200, extra: Optional[dict[str, str]] = None) -> HTMLResponse:
    return HTMLResponse(page, status_code=status, headers={**PAGE_HEADERS, **(extra or {})})


def _services(request: Request) -> Any:
    return request.app.state.services


async def _over_the_limit(request: Request) -> bool:
    """Count this post against its client's hourly budget (keyed pseudonym of the client, no IP in Redis)."""
    services = _services(request)
    hour = int(time.time() // 3600)
    key = keys.subscribe_rate(address_hash("client:" + client_bucket(client_address(request))), hour)
    redis = services.gateway.redis
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, 3700)
        count, _ = await pipe.execute()
    return int(count) > SUBMISSIONS_PER_HOUR


@router.get("/subscribe", response_class=HTMLResponse, summary="The public subscription form (WhatsApp reminders)")
async def subscribe_page(request: Request) -> HTMLResponse:
    lang = page_language(request)
    token = new_form_token(_services(request).settings.webchat_secret)
    return _html(render_form(lang, token))


@router.post("/subscribe", response_class=HTMLResponse, summary="Subscribe a WhatsApp number (consent recorded with source web_form)")
async def subscribe_post(request: Request) -> HTMLResponse:
    lang = page_language(request)
    services = _services(request)
    if await _over_the_limit(request):
        return _html(render_message(lang, "errors_title", "error_rate"), 429, {"Retry-After": "3600"})
    await read_form(request)  # content type and size checks (415, 413, 400)
    # Again, keeping every value: the topics are several checkboxes of one name.
    form = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    if not form_token_valid(services.settings.webchat_secret, (form.get("form_token") or [""])[0]):
        return _html(render_message(lang, "errors_title", "error_token"), 403)
    thanks = _html(render_message(lang, "thanks_title", "thanks_body"))
    if (form.get(HONEYPOT_FIELD) or [""])[0].strip():
        logger.info("subscription form: honeypot filled, nothing recorded")
        return thanks
    sub = read_submission(form)
    if sub.errors:
        # The same page with the errors, a fresh token, and what was typed (escaped).
        token = new_form_token(services.settings.webchat_secret)
        return _html(render_form(lang, token, sub), 422)
    outcome = await asyncio.to_thread(record_subscription, services.store, sub)
    logger.info("subscription form: %s %s (%s, %s)", address_hash(sub.address or ""), outcome, sub.country, sub.language)
    return thanks
