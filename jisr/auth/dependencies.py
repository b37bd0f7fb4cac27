"""FastAPI dependencies: who is calling, and may they?

    from jisr.auth.dependencies import AccountDep, current_account, require_roles

    @router.get("/api/handoffs")
    async def waiting(account: AccountDep): ...                       # any signed-in account

    @router.post("/api/contacts/{id}/forget")
    async def forget(account: Annotated[Account, Depends(require_roles("admin"))]): ...

``current_account`` accepts either
- the ``jisr_session`` cookie of a console session (GET /console/login), or
- ``Authorization: Bearer <API token>`` (an account's token, made by an admin).
Missing or invalid: 401 with ``WWW-Authenticate: Bearer``.

CSRF is folded into ``current_account``: a request authenticated by the session cookie whose
method changes state (POST, PUT, PATCH, DELETE) must carry the session's CSRF token in the
``X-CSRF-Token`` header (pages get it from GET /api/auth/me) or, for a plain HTML form
(url-encoded), in a ``csrf_token`` form field; else 403. A browser sends the cookie by itself to any site's form,
never a header or a field it does not know. Bearer requests are exempt: no browser adds an
``Authorization`` header on its own.

The account is re-read from SQL on every request, so a deactivated account, a changed role or
a new password (which ends older sessions) takes effect at once, even from the CLI.

``page_account`` is ``current_account`` for HTML pages: instead of a 401 it redirects to the
login page (and comes back after).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Awaitable, Callable
from urllib.parse import parse_qs, quote

from fastapi import Depends, HTTPException, Request

from jisr.auth.models import Account
from jisr.auth.service import AuthService
from jisr.auth.sessions import COOKIE, Session

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
LOGIN_PAGE = "/console/login"
UNAUTHORIZED = "sign in, or send Authorization: Bearer <API token>"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 16 * 1024


def get_auth(request: Request) -> AuthService:
    """The AuthService of the running gateway, built once from its Services (settings, Redis,
    SQL engine) and kept on the app."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(503, "starting, retry later", headers={"Retry-After": "5"})
    auth = getattr(request.app.state, "auth", None)
    if auth is None or auth.owner is not services:
        gateway = getattr(services, "gateway", None)
        # The gateway's own async client when there is one (its life is the app's); else one of our own.
        redis = getattr(gateway, "redis", None) or services.redis.client()
        auth = AuthService(services.settings, redis, services.store.engine, owner=services)
        request.app.state.auth = auth
    return auth


AuthDep = Annotated[AuthService, Depends(get_auth)]


def unauthorized(detail: str = UNAUTHORIZED) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy, uvicorn's --proxy-headers puts the real one here)."""
    return request.client.host if request.client else "unknown"


async def read_form(request: Request) -> dict[str, str]:
    """An HTML form's fields (application/x-www-form-urlencoded; the first value of each name).

    Parsed here rather than by Starlette, which needs python-multipart for any form; console
    forms are small, so the body is capped. Starlette keeps the body on the request, so the
    route can read it again after the CSRF check did.
    """
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        raise HTTPException(415, f"this form is sent as {FORM_TYPE}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise HTTPException(413, f"a form holds at most {MAX_FORM_BYTES // 1024} KiB")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"a form holds at most {MAX_FORM_BYTES // 1024} KiB")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as error:
        raise HTTPException(400, "the form is not valid UTF-8 url-encoded text") from error
    return {name: values[0] for name, values in fields.items()}


async def _check_csrf(request: Request, session: Session) -> None:
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM_TYPE:
        given = (await read_form(request)).get(CSRF_FIELD)
    if not session.csrf_matches(given):
        raise HTTPException(
            403,
            f"missing or wrong CSRF token: a signed-in page sends the {CSRF_HEADER} header (or a {CSRF_FIELD} form field) "
            "with the csrf_token of GET /api/auth/me",
        )


async def current_account(request: Request) -> Account:
    """The signed-in account (session cookie, CSRF-checked) or the API token's account; else 401."""
    auth = get_auth(request)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Authorization takes Bearer <API token>")
        account = await asyncio.to_thread(auth.accounts.verify_token, token)
        if account is None:
            raise unauthorized("invalid or revoked API token")
        request.state.account = account
        request.state.session = None
        return account
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise unauthorized()
    session = await auth.sessions.get(session_id)
    if session is None:
        raise unauthorized("your session has ended: sign in again")
    state = await asyncio.to_thread(auth.accounts.with_password_stamp, session.account_id)
    if state is None or not state[0].active:
        await auth.end_sessions(session.account_id)
        raise unauthorized("this account is deactivated")
    account, password_stamp = state
    if password_stamp != session.password_stamp:
        await auth.sessions.end(session.id, session.account_id)
        raise unauthorized("the password changed: sign in again")
    if request.method.upper() not in SAFE_METHODS:
        await _check_csrf(request, session)
    request.state.account = account
    request.state.session = session
    return account


AccountDep = Annotated[Account, Depends(current_account)]


def check_roles(account: Account, roles: tuple[str, ...]) -> Account:
    if not account.has_role(*roles):
        raise HTTPException(403, f"this needs the role {' or '.join(('admin',) + tuple(r for r in roles if r != 'admin'))}; {account.username} is {account.role}")
    return account


def require_roles(*roles: str) -> Callable[..., Awaitable[Account]]:
    """A dependency: the current account if it has one of ``roles`` (admin always passes); else 403."""

    async def dependency(account: AccountDep) -> Account:
        return check_roles(account, roles)

    dependency.__name__ = f"require_roles_{'_'.join(roles) or 'admin'}"
    return dependency


AdminDep = Annotated[Account, Depends(require_roles("admin"))]


async def page_account(request: Request) -> Account:
    """current_account for HTML pages: not signed in → 303 to the login page, then back here."""
    try:
        return await current_account(request)
    except HTTPException as error:
        if error.status_code != 401:
            raise
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, "sign in first", headers={"Location": f"{LOGIN_PAGE}?next={quote(target, safe='')}"}) from error


PageAccountDep = Annotated[Account, Depends(page_account)]


def current_session(request: Request) -> Any:
    """The Session behind the current request (after current_account), or None for a token."""
    return getattr(request.state, "session", None)
