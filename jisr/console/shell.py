"""The layout every console page shares, and the headers that keep it safe.

A page is a small server-rendered skeleton: the nav bar (filled in by static/shell.js from
GET /api/auth/me: the account's name, role and a logout button), a message area, an empty
<main> that the page's own script builds, and the interface texts as a JSON data block (not
a script: the Content-Security-Policy allows scripts from /console/static only, so no inline
script runs, whatever a family's message contains).

Usage from a route (the operators' console does the same)::

    return console_page(request, title_key="mediation.title", page="mediation",
                        scripts=["mediation.js"])
"""

from __future__ import annotations

import hashlib
import html
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

from fastapi import Request
from fastapi.responses import HTMLResponse

from jisr.console import catalog

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/console/static"

# No inline script, no inline style, nothing from another origin; the page may not be framed
# (clickjacking a "resolve" button) and forms post only here.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Pages show families' data: never kept in a shared cache or the browser's history cache.
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=None)
def _static_version(name: str) -> str:
    """A short hash of a static file, added to its URL so a deployment is never served stale
    scripts from the browser's cache."""
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    return f"{STATIC_URL}/{name}?v={_static_version(name)}"


def request_language(request: Request) -> str:
    """The console language: ?lang= (a link), then the nav bar's cookie, then the browser's
    Accept-Language, then French (jisr.console.catalog.choose_language)."""
    return catalog.choose_language(
        request.query_params.get("lang"), request.cookies.get(catalog.LANGUAGE_COOKIE), request.headers.get("accept-language")
    )


def language_options(language: str) -> str:
    """The nav bar's <option>s: each language by its own name ("Español", "العربية"), so a
    person finds theirs whatever the page's language."""
    books = catalog.catalogs()
    return "".join(
        f'<option value="{html.escape(code)}" lang="{html.escape(code)}"{" selected" if code == language else ""}>'
        f'{html.escape(books[code]["shell.language_name"])}</option>'
        for code in catalog.languages()
    )


def _json_for_html(data: object) -> str:
    # Inside <script type="application/json"> only "</script" could end the block early;
    # escaping every "<" (and & for good measure) makes any text safe there.
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(*, language: str, title_key: str, page: str, scripts: Iterable[str], styles: Iterable[str] = (), notice: Optional[str] = None) -> str:
    """The page's HTML. Every dynamic value is escaped; ``page`` names the body's data-page
    (a page script can check it), ``scripts``/``styles`` are file names under static/,
    ``notice`` a text shown in <main> (a page without script: access denied)."""
    language = catalog.pick_language(language)
    texts = catalog.texts(language)
    title = texts.get(title_key, title_key)
    style_links = "".join(f'<link rel="stylesheet" href="{html.escape(static_url(s))}">' for s in ("console.css", *styles))
    script_tags = "".join(f'<script src="{html.escape(static_url(s))}" defer></script>' for s in ("shell.js", *scripts))
    notice_html = f'<p class="denied" role="alert">{html.escape(notice)}</p>' if notice else ""
    return (
        "<!doctype html>"
        f'<html lang="{html.escape(language)}" dir="{catalog.direction(language)}">'
        "<head>"
        '<meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} — Jisr</title>"
        f"{style_links}"
        f'<script type="application/json" id="jisr-texts">{_json_for_html(texts)}</script>'
        f"{script_tags}"
        "</head>"
        f'<body data-page="{html.escape(page)}">'
        '<header class="nav">'
        f'<a class="brand" href="/console">{html.escape(texts["shell.brand"])}</a>'
        f'<span class="nav-title">{html.escape(title)}</span>'
        '<span class="nav-account" id="nav-account"></span>'
        f'<label class="nav-lang"><span class="sr-only">{html.escape(texts["shell.language"])}</span>'
        f'<select id="nav-lang">{language_options(language)}</select></label>'
        f'<button type="button" id="logout" class="btn btn-quiet" hidden>{html.escape(texts["shell.logout"])}</button>'
        "</header>"
        '<div id="flash" class="flash" role="status" aria-live="polite"></div>'
        f'<main id="main">{notice_html}</main>'
        "</body></html>"
    )


def console_page(
    request: Request,
    *,
    title_key: str,
    page: str,
    scripts: Iterable[str],
    styles: Iterable[str] = (),
    status_code: int = 200,
    notice_key: Optional[str] = None,
) -> HTMLResponse:
    """A console page in the shared layout, with the security headers. ``notice_key``: the
    catalog key of a text to show in the page (e.g. "shell.forbidden_role")."""
    language = request_language(request)
    notice = catalog.texts(language).get(notice_key, notice_key) if notice_key else None
    body = render_page(language=language, title_key=title_key, page=page, scripts=scripts, styles=styles, notice=notice)
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def secure(response: HTMLResponse, extra: Optional[dict[str, str]] = None) -> HTMLResponse:
    """Add the consoles' security headers to a page not rendered by console_page (the login page)."""
    for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
        response.headers[name] = value
    return response
