"""The consoles' pages: GET /console sends each role to its console; the mediators' console.

The pages are skeletons in the shared layout (jisr.console.shell); their scripts read
everything through the JSON APIs (/api/auth, /api/mediation), which check access on every
call. The page routes check only what decides which page to show (signed in? which role?).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from jisr.auth.dependencies import LOGIN_PAGE, PageAccountDep, current_account
from jisr.console.shell import STATIC_DIR, STATIC_URL, console_page

MEDIATION_PAGE = "/console/mediation"
OPERATORS_PAGE = "/console/operators"

router = APIRouter(tags=["consoles"], include_in_schema=False)


@router.get("/console")
async def console_home(request: Request) -> Response:
    """Mediators to their conversations, operators and admins to the operators' console,
    anyone else to the login page."""
    try:
        account = await current_account(request)
    except HTTPException as error:
        if error.status_code != 401:
            raise
        return RedirectResponse(LOGIN_PAGE, status_code=303)
    target = MEDIATION_PAGE if account.role == "mediator" else OPERATORS_PAGE
    return RedirectResponse(target, status_code=303)


def _mediation_page(request: Request, account: PageAccountDep) -> Response:
    if not account.has_role("mediator"):
        return console_page(request, title_key="mediation.title", page="forbidden", scripts=[], status_code=403, notice_key="shell.forbidden_role")
    return console_page(request, title_key="mediation.title", page="mediation", scripts=["mediation.js"])


@router.get(MEDIATION_PAGE)
async def mediation_console(request: Request, account: PageAccountDep) -> Response:
    return _mediation_page(request, account)


@router.get(MEDIATION_PAGE + "/{handoff_id}")
async def mediation_conversation(request: Request, handoff_id: int, account: PageAccountDep) -> Response:
    """The same page, opened on one conversation: its script reads it (and shows "access
    denied" when the API answers 403), so a shared link works like a click in the list."""
    return _mediation_page(request, account)


def install(app: FastAPI) -> None:
    """Mount the consoles' static files and pages on the gateway app."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="console-static")
    app.include_router(router)
