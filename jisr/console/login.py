"""The sign-in page's HTML, in the console's language (jisr.gateway.auth_routes serves it and
checks the form).

It is the one console page without a script (nothing to run before the person is known), so
its few styles are inline and its language switch is a row of links (?lang=…) instead of the
nav bar's select; the route keeps a chosen language in the nav bar's cookie, so the console
opens in it after sign-in. Arabic gets dir="rtl"; the layout is a single column and mirrors
as it is.
"""

from __future__ import annotations

import html
from typing import Optional
from urllib.parse import urlencode

from jisr.console import catalog

# The refusal's HTTP status → its text in the catalog ({seconds}: the wait after too many tries).
ERROR_KEYS = {401: "login.error.wrong", 403: "login.error.expired", 429: "login.error.too_many"}

_STYLE = """
  * { box-sizing: border-box; }
  body { margin:0; font:16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans Arabic", sans-serif; color:#1d2433; background:#fafbfc; }
  header { padding:.7rem 1rem; background:#1f6f5c; color:#fff; font-weight:600; }
  main { max-width:26rem; margin:1.5rem auto; padding:0 1rem; }
  h1 { font-size:1.5rem; margin:0 0 .5rem; }
  label { display:block; margin:.9rem 0 .25rem; font-weight:600; }
  input { width:100%; padding:.65rem .8rem; border:1px solid #c9d2dc; border-radius:8px; font-size:16px; }
  button { width:100%; margin-top:1.2rem; padding:.75rem; border:0; border-radius:8px; background:#1f6f5c; color:#fff; font-size:1rem; font-weight:600; }
  .error { margin:1rem 0 0; padding:.6rem .8rem; border-radius:8px; background:#fdecea; color:#8a1c12; }
  .langs { display:flex; flex-wrap:wrap; gap:.3rem .9rem; margin:1.6rem 0 0; padding:0; list-style:none; font-size:.92rem; }
  .langs a { color:#1f6f5c; }
  .langs [aria-current] { font-weight:700; color:#1d2433; text-decoration:none; }
"""


def _language_link(code: str, name: str, next_path: str, current: bool) -> str:
    # The link keeps ?next= so a person sent here from a link still lands where it pointed.
    href = "/console/login?" + urlencode({"lang": code, "next": next_path})
    mark = ' aria-current="page"' if current else ""
    return f'<li><a href="{html.escape(href)}" lang="{code}" hreflang="{code}"{mark}>{html.escape(name)}</a></li>'


def render_login(*, language: str, csrf: str, next_path: str, username: str = "", status: int = 200, retry_after: Optional[int] = None) -> str:
    """The sign-in form. ``status`` 401/403/429 adds its refusal; every value is escaped."""
    language = catalog.pick_language(language)
    texts = catalog.texts(language)
    books = catalog.catalogs()
    error = ""
    if status in ERROR_KEYS:
        message = texts[ERROR_KEYS[status]].replace("{seconds}", str(retry_after or ""))
        error = f'<p class="error" role="alert">{html.escape(message)}</p>'
    links = "".join(_language_link(code, books[code]["shell.language_name"], next_path, current=code == language) for code in catalog.languages())
    return (
        "<!doctype html>\n"
        f'<html lang="{language}" dir="{catalog.direction(language)}">\n'
        "<head>\n"
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>Jisr — {html.escape(texts['login.title'])}</title>\n"
        f"<style>{_STYLE}</style>\n"
        "</head>\n"
        "<body>\n"
        f"<header>{html.escape(texts['shell.brand'])}</header>\n"
        "<main>\n"
        f"<h1>{html.escape(texts['login.title'])}</h1>\n"
        f"{error}\n"
        '<form method="post" action="/console/login" autocomplete="on">\n'
        f'  <input type="hidden" name="csrf_token" value="{html.escape(csrf)}">\n'
        f'  <input type="hidden" name="next" value="{html.escape(next_path)}">\n'
        f'  <label for="username">{html.escape(texts["login.username"])}</label>\n'
        '  <input id="username" name="username" dir="auto" autocomplete="username" autocapitalize="none" spellcheck="false" required maxlength="64"'
        f' value="{html.escape(username[:64])}">\n'
        f'  <label for="password">{html.escape(texts["login.password"])}</label>\n'
        '  <input id="password" name="password" dir="ltr" type="password" autocomplete="current-password" required maxlength="1024">\n'
        f'  <button type="submit">{html.escape(texts["login.submit"])}</button>\n'
        "</form>\n"
        f'<nav aria-label="{html.escape(texts["shell.language"])}"><ul class="langs">{links}</ul></nav>\n'
        "</main>\n"
        "</body>\n"
        "</html>\n"
    )
