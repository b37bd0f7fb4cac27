"""The operators' console pages: indicators, campaigns, contacts, programmes and calendars,
accounts (admins).

Each page is the shared skeleton (jisr.console.shell) with static/operators.js, which builds
the section named by the body's data-page from the JSON APIs (/api/operators, /api/campaigns,
/api/accounts); those check access on every call. The routes here only decide which page to
show: signed in (else the login page), operator or admin (else a 403 page), and for the
accounts page, admin.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from jisr.auth.dependencies import PageAccountDep
from jisr.console.shell import console_page

OPERATORS_PAGE = "/console/operators"
# Section → the role it needs besides admin (None: operators too).
SECTIONS = {"dashboard": "operator", "campaigns": "operator", "contacts": "operator", "content": "operator", "accounts": "admin"}

router = APIRouter(tags=["consoles"], include_in_schema=False)


def _page(request: Request, account: PageAccountDep, section: str) -> Response:
    needed = SECTIONS[section]
    if not account.has_role(needed):
        return console_page(
            request, title_key="operators.title", page="forbidden", scripts=[], status_code=403, notice_key="shell.forbidden_role"
        )
    return console_page(request, title_key=f"operators.nav.{section}", page=f"operators-{section}", scripts=["operators.js"], styles=["operators.css"])


@router.get(OPERATORS_PAGE)
async def dashboard(request: Request, account: PageAccountDep) -> Response:
    return _page(request, account, "dashboard")


@router.get(OPERATORS_PAGE + "/{section}")
async def section_page(request: Request, section: str, account: PageAccountDep) -> Response:
    if section not in SECTIONS:
        return console_page(request, title_key="operators.title", page="not-found", scripts=[], status_code=404, notice_key="operators.not_found")
    return _page(request, account, section)
