"""Signing in and out of the consoles, and the admins' API for accounts and their API tokens.

- GET/POST /console/login: a small HTML form for phones, in the console's language
  (jisr.console.login; ?lang=, cookie, Accept-Language); no script, no external asset. POST /console/logout ends the session.
- GET /api/auth/me: who is signed in, and the CSRF token pages send back as X-CSRF-Token.
- POST /api/auth/login and /api/auth/logout: the same for scripts and tests (JSON).
- /api/accounts and /api/accounts/{id}/tokens: admins only; /api/audit: the audit log, admins.

The logic lives in jisr.auth (AuthService, AccountStore); these routes only translate HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import secrets
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from jisr.auth.dependencies import AccountDep, AdminDep, AuthDep, client_address, current_session, read_form
from jisr.auth.models import Account
from jisr.auth.passwords import PasswordError
from jisr.auth.service import AuthService, LoginRefused, SignedIn
from jisr.auth.sessions import COOKIE
from jisr.auth.store import AccountError, AccountExists, NoSuchAccount
from jisr.console import catalog
from jisr.console.login import render_login
from jisr.console.shell import request_language

CONSOLE_HOME = "/console"
# The login form's own CSRF token (double submit: a cookie and a hidden field that must agree),
# so another site cannot sign a browser into an account of its choosing.
LOGIN_COOKIE = "jisr_login"
MAX_ID = 2**63 - 1

router = APIRouter(tags=["accounts"])

AccountId = Annotated[int, Path(ge=1, le=MAX_ID, description="an account id")]
TokenId = Annotated[int, Path(ge=1, le=MAX_ID, description="an API token id")]


# --- Schemas --------------------------------------------------------------------------------


class AccountPublic(BaseModel):
    id: int
    username: str
    display_name: str
    role: str
    countries: list[str]
    languages: list[str]
    active: bool


def public(account: Account) -> AccountPublic:
    return AccountPublic(
        id=account.id,
        username=account.username,
        display_name=account.display_name,
        role=account.role,
        countries=list(account.countries),
        languages=list(account.languages),
        active=account.active,
    )


class Me(BaseModel):
    account: AccountPublic
    csrf_token: Optional[str] = Field(None, description="send it as X-CSRF-Token with every POST/PUT/PATCH/DELETE; null for API tokens")


class LoginBody(BaseModel):
    username: str = Field(..., max_length=200)
    password: str = Field(..., max_length=4096)


class AccountCreate(BaseModel):
    username: str = Field(..., max_length=200)
    display_name: str = Field(..., max_length=500)
    role: str = Field(..., max_length=32)
    password: str = Field(..., max_length=4096)
    countries: str = Field("", max_length=1000, description='"FR,BE", or "*" for every country')
    languages: str = Field("", max_length=200, description='"fr,ar"')


class AccountUpdate(BaseModel):
    display_name: Optional[str] = Field(None, max_length=500)
    role: Optional[str] = Field(None, max_length=32)
    countries: Optional[str] = Field(None, max_length=1000)
    languages: Optional[str] = Field(None, max_length=200)
    active: Optional[bool] = None
    password: Optional[str] = Field(None, max_length=4096)


class PasswordChange(BaseModel):
    current_password: str = Field(..., max_length=4096)
    new_password: str = Field(..., max_length=4096)


class TokenCreate(BaseModel):
    name: str = Field(..., max_length=200, description="what will use it, e.g. 'campaign scheduler'")


class TokenPublic(BaseModel):
    id: int
    account_id: int
    name: str
    created_at: str
    last_used_at: Optional[str]
    revoked_at: Optional[str]


class TokenCreated(TokenPublic):
    token: str = Field(..., description="shown once: only its hash is kept")


# --- Helpers --------------------------------------------------------------------------------


async def _end_previous_session(request: Request, auth: AuthService) -> None:
    """Signing in again from a browser ends the session its cookie held (one live session per
    cookie jar, and no way to plant a session id before sign-in and keep using it)."""
    previous = request.cookies.get(COOKIE)
    if previous:
        await auth.sessions.end(previous)


def _set_session_cookie(response: Response, auth: AuthService, signed_in: SignedIn) -> None:
    response.set_cookie(
        COOKIE,
        signed_in.session.id,
        max_age=auth.sessions.absolute,
        path="/",
        httponly=True,
        secure=auth.secure_cookies,
        samesite="strict",
    )


def _clear_session_cookie(response: Response, auth: AuthService) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, secure=auth.secure_cookies, samesite="strict")


def _safe_next(target: Optional[str]) -> str:
    """Only a path on this site: never //other.site or a scheme (no open redirect)."""
    if not target or len(target) > 500 or not target.startswith("/") or target.startswith(("//", "/\\")):
        return CONSOLE_HOME
    if any(ord(c) < 0x20 or c == "\\" for c in target):
        return CONSOLE_HOME
    return target


def _bad_input(error: Exception) -> HTTPException:
    if isinstance(error, NoSuchAccount):
        return HTTPException(404, str(error))
    if isinstance(error, AccountExists):
        return HTTPException(409, str(error))
    return HTTPException(422, str(error))


async def _target_account(auth: AuthService, account_id: int) -> Account:
    account = await asyncio.to_thread(auth.accounts.get, account_id)
    if account is None:
        raise HTTPException(404, f"no account {account_id}")
    return account


# --- The login page -------------------------------------------------------------------------

def _login_page(
    request: Request, secure: bool, status: int = 200, next_path: str = CONSOLE_HOME, username: str = "", retry_after: Optional[int] = None
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    language = request_language(request)
    page = render_login(language=language, csrf=token, next_path=next_path, username=username, status=status, retry_after=retry_after)
    headers = {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    }
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    response = HTMLResponse(page, status_code=status, headers=headers)
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/console/login", httponly=True, secure=secure, samesite="strict")
    if catalog.supported(request.query_params.get("lang")):
        # A language picked on this page (its links) stays for the console, as the nav bar's switch does.
        response.set_cookie(catalog.LANGUAGE_COOKIE, language, max_age=365 * 24 * 3600, path="/console", secure=secure, samesite="lax")
    return response


@router.get("/console/login", response_class=HTMLResponse, summary="The sign-in page")
async def login_page(request: Request, auth: AuthDep, next: Annotated[Optional[str], Query(max_length=500)] = None) -> HTMLResponse:  # noqa: A002
    return _login_page(request, auth.secure_cookies, next_path=_safe_next(next))


@router.post("/console/login", response_class=HTMLResponse, summary="Sign in from the form; a session cookie, then the console")
async def login_form(request: Request, auth: AuthDep) -> Response:
    form = await read_form(request)
    next_path = _safe_next(form.get("next"))
    username = form.get("username", "")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    given = form.get("csrf_token", "")
    if not expected or not hmac.compare_digest(expected.encode("utf-8", "surrogateescape"), given.encode("utf-8", "surrogateescape")):
        return _login_page(request, auth.secure_cookies, 403, next_path, username)
    try:
        signed_in = await auth.login(username, form.get("password", ""), client_address(request))
    except LoginRefused as refused:
        return _login_page(request, auth.secure_cookies, refused.status, next_path, username, refused.retry_after)
    await _end_previous_session(request, auth)
    response = RedirectResponse(next_path, status_code=303)
    _set_session_cookie(response, auth, signed_in)
    response.delete_cookie(LOGIN_COOKIE, path="/console/login")
    return response


@router.post("/console/logout", summary="Sign out (form with csrf_token)")
async def logout_form(request: Request, account: AccountDep, auth: AuthDep) -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    session = current_session(request)
    if session is not None:
        await auth.logout(account, session)
        _clear_session_cookie(response, auth)
    return response


# --- The JSON API for the signed-in person --------------------------------------------------


@router.post("/api/auth/login", response_model=Me, summary="Sign in (JSON): a session cookie and the CSRF token")
async def login_json(body: LoginBody, request: Request, auth: AuthDep) -> Response:
    try:
        signed_in = await auth.login(body.username, body.password, client_address(request))
    except LoginRefused as refused:
        headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after else None
        return JSONResponse({"detail": refused.message}, status_code=refused.status, headers=headers)
    await _end_previous_session(request, auth)
    response = JSONResponse(Me(account=public(signed_in.account), csrf_token=signed_in.session.csrf_token).dict())
    _set_session_cookie(response, auth, signed_in)
    return response


@router.post("/api/auth/logout", status_code=204, summary="Sign out (JSON; X-CSRF-Token)")
async def logout_json(request: Request, account: AccountDep, auth: AuthDep) -> Response:
    response = Response(status_code=204)
    session = current_session(request)
    if session is not None:
        await auth.logout(account, session)
        _clear_session_cookie(response, auth)
    return response


@router.get("/api/auth/me", response_model=Me, summary="Who is signed in, and the CSRF token to send back")
async def me(request: Request, account: AccountDep) -> Me:
    session = current_session(request)
    return Me(account=public(account), csrf_token=session.csrf_token if session else None)


@router.post("/api/auth/password", status_code=204, summary="Change one's own password; other sessions end")
async def change_password(body: PasswordChange, request: Request, account: AccountDep, auth: AuthDep) -> Response:
    if account.id <= 0:
        raise HTTPException(403, "this caller has no password")
    verified = await asyncio.to_thread(auth.accounts.verify_login, account.username, body.current_password)
    if verified is None:
        raise HTTPException(403, "the current password is wrong")
    try:
        await asyncio.to_thread(auth.accounts.set_password, account.id, body.new_password)
    except (AccountError, PasswordError) as error:
        raise _bad_input(error) from error
    await auth.end_sessions(account.id)
    await auth.audit.arecord(account, "account.password", "account", account.id)
    response = Response(status_code=204)
    # This browser keeps working: a fresh session replaces the ones just ended.
    session = current_session(request)
    if session is not None:
        fresh = await auth.open_session(account.id)
        _set_session_cookie(response, auth, SignedIn(account, fresh))
    return response


# --- Admins: accounts and their tokens ------------------------------------------------------


@router.get("/api/accounts", response_model=list[AccountPublic], summary="Every account (admins)")
async def list_accounts(admin: AdminDep, auth: AuthDep) -> list[AccountPublic]:
    return [public(a) for a in await asyncio.to_thread(auth.accounts.list)]


@router.post("/api/accounts", response_model=AccountPublic, status_code=201, summary="Create an account (admins)")
async def create_account(body: AccountCreate, admin: AdminDep, auth: AuthDep) -> AccountPublic:
    try:
        account = await asyncio.to_thread(
            auth.accounts.create, body.username, body.display_name, body.role, body.password, body.countries, body.languages
        )
    except (AccountError, PasswordError) as error:
        raise _bad_input(error) from error
    await auth.audit.arecord(
        admin, "account.create", "account", account.id, detail={"username": account.username, "role": account.role, "countries": ",".join(account.countries)}
    )
    return public(account)


@router.get("/api/accounts/{account_id}", response_model=AccountPublic, summary="One account (admins)")
async def get_account(account_id: AccountId, admin: AdminDep, auth: AuthDep) -> AccountPublic:
    return public(await _target_account(auth, account_id))


@router.patch("/api/accounts/{account_id}", response_model=AccountPublic, summary="Change an account (admins)")
async def update_account(account_id: AccountId, body: AccountUpdate, admin: AdminDep, auth: AuthDep) -> AccountPublic:
    await _target_account(auth, account_id)
    changes = body.dict(exclude_unset=True, exclude={"password"})
    changes = {k: v for k, v in changes.items() if v is not None}
    try:
        if body.password is not None:
            await asyncio.to_thread(auth.accounts.set_password, account_id, body.password)
        account = await asyncio.to_thread(lambda: auth.accounts.update(account_id, **changes))
    except (AccountError, PasswordError) as error:
        raise _bad_input(error) from error
    if body.password is not None or changes.get("active") is False:
        await auth.end_sessions(account_id)
    detail: dict[str, Any] = {k: (v if not isinstance(v, (list, tuple)) else ",".join(v)) for k, v in changes.items()}
    if body.password is not None:
        detail["password_changed"] = True
    await auth.audit.arecord(admin, "account.update", "account", account_id, detail=detail)
    return public(account)


@router.delete("/api/accounts/{account_id}", response_model=AccountPublic, summary="Deactivate an account; its sessions end at once (admins)")
async def deactivate_account(account_id: AccountId, admin: AdminDep, auth: AuthDep) -> AccountPublic:
    await _target_account(auth, account_id)
    try:
        account = await asyncio.to_thread(auth.accounts.deactivate, account_id)
    except AccountError as error:
        raise _bad_input(error) from error
    ended = await auth.end_sessions(account_id)
    await auth.audit.arecord(admin, "account.update", "account", account_id, detail={"active": False, "sessions_ended": ended})
    return public(account)


@router.get("/api/accounts/{account_id}/tokens", response_model=list[TokenPublic], summary="An account's API tokens, without the tokens (admins)")
async def list_tokens(account_id: AccountId, admin: AdminDep, auth: AuthDep) -> list[dict[str, Any]]:
    await _target_account(auth, account_id)
    return [t.as_dict() for t in await asyncio.to_thread(auth.accounts.list_tokens, account_id)]


@router.post("/api/accounts/{account_id}/tokens", response_model=TokenCreated, status_code=201, summary="A new API token, shown once (admins)")
async def create_token(account_id: AccountId, body: TokenCreate, admin: AdminDep, auth: AuthDep) -> dict[str, Any]:
    await _target_account(auth, account_id)
    try:
        new = await asyncio.to_thread(auth.accounts.create_token, account_id, body.name)
    except AccountError as error:
        raise _bad_input(error) from error
    await auth.audit.arecord(admin, "token.create", "api_token", new.record.id, detail={"account_id": account_id, "name": new.record.name})
    return {**new.record.as_dict(), "token": new.token}


@router.delete("/api/accounts/{account_id}/tokens/{token_id}", response_model=TokenPublic, summary="Revoke an API token (admins)")
async def revoke_token(account_id: AccountId, token_id: TokenId, admin: AdminDep, auth: AuthDep) -> dict[str, Any]:
    record = await asyncio.to_thread(auth.accounts.token, token_id)
    if record is None or record.account_id != account_id:
        raise HTTPException(404, f"account {account_id} has no token {token_id}")
    if not await asyncio.to_thread(auth.accounts.revoke_token, token_id):
        raise HTTPException(409, f"token {token_id} is revoked already")
    await auth.audit.arecord(admin, "token.revoke", "api_token", token_id, detail={"account_id": account_id})
    return (await asyncio.to_thread(auth.accounts.token, token_id)).as_dict()  # type: ignore[union-attr]


# --- Admins: the audit log ------------------------------------------------------------------


class AuditPublic(BaseModel):
    id: int
    at: str
    account_id: Optional[int]
    action: str
    target_kind: Optional[str]
    target_id: Optional[str]
    country: Optional[str]
    detail: dict[str, Any]


@router.get("/api/audit", response_model=list[AuditPublic], summary="The audit log, newest first (admins)")
async def audit_log(
    admin: AdminDep,
    auth: AuthDep,
    account_id: Annotated[Optional[int], Query(ge=1, le=MAX_ID)] = None,
    action: Annotated[Optional[str], Query(max_length=48, description='an action, or a family ending in "." ("handoff.")')] = None,
    target_kind: Annotated[Optional[str], Query(max_length=24)] = None,
    target_id: Annotated[Optional[str], Query(max_length=64)] = None,
    country: Annotated[Optional[str], Query(min_length=2, max_length=2)] = None,
    since: Annotated[Optional[dt.datetime], Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    entries = await asyncio.to_thread(
        lambda: auth.audit.list(
            account_id=account_id, action=action, target_kind=target_kind, target_id=target_id, country=country, since=since, limit=limit
        )
    )
    return [e.as_dict() for e in entries]
