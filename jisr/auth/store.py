"""Accounts and API tokens in SQL (tables accounts and api_tokens, migration step 5).

Every read returns jisr.auth.models.Account, the one type the consoles and APIs see. The
password hash never leaves this module except through ``verify_login``'s yes or no.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr.auth import passwords
from jisr.auth.models import ALL_COUNTRIES, ROLES, Account
from jisr.paths import LANGUAGE_FORMS
from jisr.store.schema import accounts, api_tokens

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MAX_DISPLAY_NAME = 120
MAX_TOKEN_NAME = 80
# Prefix of every account API token: recognisable in a leaked file or a secret scanner.
TOKEN_PREFIX = "jisr_"
# How precisely a token's last use is recorded.
TOKEN_USE_RESOLUTION = dt.timedelta(minutes=1)


class AccountError(ValueError):
    """Bad input for an account; the message says what and why."""


class AccountExists(AccountError):
    pass


class NoSuchAccount(AccountError):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _valid_country_codes() -> frozenset[str]:
    from jisr.store.csv_io import country_codes

    return country_codes()


def parse_username(value: str) -> str:
    name = (value or "").strip().lower()
    if not USERNAME.match(name):
        raise AccountError(
            f"a username has 2 to 64 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit (not {value!r})"
        )
    return name


def parse_role(value: str) -> str:
    role = (value or "").strip().lower()
    if role not in ROLES:
        raise AccountError(f"role is one of {', '.join(ROLES)} (not {value!r})")
    return role


def parse_countries(value: str | Iterable[str]) -> tuple[str, ...]:
    """ "FR,BE" or ["FR", "BE"] → ("BE", "FR"); "*" → ("*",). Codes are ISO 3166 alpha-2."""
    items = value.split(",") if isinstance(value, str) else list(value)
    codes = sorted({item.strip().upper() for item in items if item and item.strip()})
    if not codes:
        raise AccountError('countries: give ISO codes such as "FR,BE", or "*" for every country')
    if ALL_COUNTRIES in codes:
        if len(codes) > 1:
            raise AccountError('countries: "*" already means every country; give it alone')
        return (ALL_COUNTRIES,)
    known = _valid_country_codes()
    unknown = [code for code in codes if code not in known]
    if unknown:
        raise AccountError(f"countries: unknown ISO 3166 code(s) {', '.join(unknown)}")
    return tuple(codes)


def parse_languages(value: str | Iterable[str]) -> tuple[str, ...]:
    """ "fr,ar" → ("ar", "fr"): Jisr's language forms only (the console filters by them)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    forms = sorted({item.strip().lower() for item in items if item and item.strip()})
    unknown = [form for form in forms if form not in LANGUAGE_FORMS]
    if unknown:
        raise AccountError(f"languages: unknown language form(s) {', '.join(unknown)}; Jisr's are {', '.join(LANGUAGE_FORMS)}")
    return tuple(forms)


def parse_display_name(value: str) -> str:
    name = " ".join((value or "").split())
    if not name:
        raise AccountError("a display name is needed (the name colleagues see)")
    if len(name) > MAX_DISPLAY_NAME:
        raise AccountError(f"a display name has at most {MAX_DISPLAY_NAME} characters")
    return name


def _account(row: Any) -> Account:
    return Account(
        id=int(row.id),
        username=row.username,
        display_name=row.display_name,
        role=row.role,
        countries=tuple(c for c in (row.countries or "").split(",") if c),
        languages=tuple(lang for lang in (row.languages or "").split(",") if lang),
        active=bool(row.active),
    )


def _stamp(when: Optional[dt.datetime]) -> str:
    return when.isoformat() if when else ""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """A token's record; the token itself exists only in ``NewToken.token``, once."""

    id: int
    account_id: int
    name: str
    created_at: dt.datetime
    last_used_at: Optional[dt.datetime]
    revoked_at: Optional[dt.datetime]

    def as_dict(self) -> dict[str, Any]:
        iso = lambda d: d.isoformat() if d else None  # noqa: E731
        return {
            "id": self.id,
            "account_id": self.account_id,
            "name": self.name,
            "created_at": iso(self.created_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
        }


@dataclass(frozen=True)
class NewToken:
    record: ApiToken
    token: str  # shown to the person once; only its sha256 is stored


def _api_token(row: Any) -> ApiToken:
    return ApiToken(int(row.id), int(row.account_id), row.name, row.created_at, row.last_used_at, row.revoked_at)


class AccountStore:
    """Create, read and change accounts; create, verify and revoke their API tokens."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- accounts -------------------------------------------------------------------------

    def create(
        self,
        username: str,
        display_name: str,
        role: str,
        password: str,
        countries: str | Sequence[str] = "",
        languages: str | Sequence[str] = "",
    ) -> Account:
        """A new active account. Admins cover every country unless told otherwise."""
        name = parse_username(username)
        role = parse_role(role)
        if role == "admin" and not countries:
            countries = ALL_COUNTRIES
        codes = parse_countries(countries)
        forms = parse_languages(languages)
        display = parse_display_name(display_name)
        hashed = passwords.hash_password(password)  # PasswordError (an AccountError's sibling) if too short
        now = _now()
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(
                    accounts.insert().values(
                        username=name,
                        display_name=display,
                        password_hash=hashed,
                        role=role,
                        countries=",".join(codes),
                        languages=",".join(forms),
                        active=True,
                        created_at=now,
                        password_changed_at=now,
                    )
                ).inserted_primary_key[0]
        except sa.exc.IntegrityError as error:
            raise AccountExists(f"an account named {name!r} exists already") from error
        return Account(int(new_id), name, display, role, codes, forms, True)

    def get(self, account_id: int) -> Optional[Account]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        return _account(row) if row else None

    def with_password_stamp(self, account_id: int) -> Optional[tuple[Account, str]]:
        """The account and a stamp of when its password last changed: a session remembers the
        stamp it was opened with, and a new password (by any route, the CLI included) makes
        every older session invalid without needing Redis."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        if row is None:
            return None
        return _account(row), _stamp(row.password_changed_at)

    def get_by_username(self, username: str) -> Optional[Account]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.username == (username or "").strip().lower())).first()
        return _account(row) if row else None

    def require(self, username_or_id: str | int) -> Account:
        """The account by id (an int, or digits) or username; NoSuchAccount otherwise."""
        account = (
            self.get(int(username_or_id))
            if isinstance(username_or_id, int) or str(username_or_id).isdigit()
            else self.get_by_username(str(username_or_id))
        )
        if account is None:
            raise NoSuchAccount(f"no account {username_or_id!r}")
        return account

    def list(self, *, include_inactive: bool = True) -> list[Account]:
        query = sa.select(accounts).order_by(accounts.c.username)
        if not include_inactive:
            query = query.where(accounts.c.active == sa.true())
        with self.engine.connect() as conn:
            return [_account(row) for row in conn.execute(query)]

    def count_admins(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(accounts).where(accounts.c.role == "admin", accounts.c.active == sa.true())
                ).scalar_one()
            )

    def verify_login(self, username: str, password: str) -> Optional[Account]:
        """The active account if the password is right, else None. Takes as long for an unknown
        username as for a wrong password. Re-hashes a password stored with old parameters."""
        try:
            name = parse_username(username)
        except AccountError:
            passwords.burn_time(password if isinstance(password, str) else "")
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.username == name)).first()
        if row is None:
            passwords.burn_time(password)
            return None
        if not passwords.verify_password(password, row.password_hash) or not row.active:
            return None
        if passwords.needs_rehash(row.password_hash):
            with self.engine.begin() as conn:
                conn.execute(accounts.update().where(accounts.c.id == row.id).values(password_hash=passwords.hash_password(password)))
        return _account(row)

    def set_password(self, account_id: int, password: str) -> None:
        hashed = passwords.hash_password(password)
        with self.engine.begin() as conn:
            changed = conn.execute(
                accounts.update().where(accounts.c.id == account_id).values(password_hash=hashed, password_changed_at=_now())
            ).rowcount
        if not changed:
            raise NoSuchAccount(f"no account {account_id}")

    def update(
        self,
        account_id: int,
        *,
        display_name: Optional[str] = None,
        role: Optional[str] = None,
        countries: Optional[str | Sequence[str]] = None,
        languages: Optional[str | Sequence[str]] = None,
        active: Optional[bool] = None,
    ) -> Account:
        """Change what is given; the account as it is now. The last active admin cannot be
        demoted or deactivated (nobody could manage accounts any more)."""
        values: dict[str, Any] = {}
        if display_name is not None:
            values["display_name"] = parse_display_name(display_name)
        if role is not None:
            values["role"] = parse_role(role)
        if countries is not None:
            values["countries"] = ",".join(parse_countries(countries))
        if languages is not None:
            values["languages"] = ",".join(parse_languages(languages))
        if active is not None:
            values["active"] = bool(active)
        current = self.require(account_id)
        losing_admin = current.role == "admin" and current.active and (values.get("role", "admin") != "admin" or values.get("active") is False)
        with self.engine.begin() as conn:
            if losing_admin:
                admins = conn.execute(
                    sa.select(sa.func.count()).select_from(accounts).where(accounts.c.role == "admin", accounts.c.active == sa.true())
                ).scalar_one()
                if admins <= 1:
                    raise AccountError(f"{current.username} is the last active admin: make another admin first")
            if values:
                conn.execute(accounts.update().where(accounts.c.id == account_id).values(**values))
        return self.require(account_id)

    def deactivate(self, account_id: int) -> Account:
        """The account can no longer sign in, and its API tokens stop working (its sessions are
        ended by the caller, which holds Redis: see SessionStore.end_all)."""
        return self.update(account_id, active=False)

    # -- API tokens -----------------------------------------------------------------------

    def create_token(self, account_id: int, name: str) -> NewToken:
        label = " ".join((name or "").split())
        if not label or len(label) > MAX_TOKEN_NAME:
            raise AccountError(f"a token has a name of 1 to {MAX_TOKEN_NAME} characters saying what uses it")
        account = self.require(account_id)
        if not account.active:
            raise AccountError(f"{account.username} is deactivated: no new token")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = _now()
        with self.engine.begin() as conn:
            new_id = conn.execute(
                api_tokens.insert().values(account_id=account.id, name=label, token_hash=token_hash(token), created_at=now)
            ).inserted_primary_key[0]
        return NewToken(ApiToken(int(new_id), account.id, label, now, None, None), token)

    def verify_token(self, token: str) -> Optional[Account]:
        """The active account a live token belongs to (and notes its use), else None."""
        if not token or len(token) > 200:
            return None
        digest = token_hash(token)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_tokens.c.id.label("token_id"), api_tokens.c.token_hash, api_tokens.c.revoked_at, api_tokens.c.last_used_at, accounts)
                .join(accounts, accounts.c.id == api_tokens.c.account_id)
                .where(api_tokens.c.token_hash == digest)
            ).first()
        # The lookup is by an index on the hash; comparing again in constant time costs nothing.
        if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None or not row.active:
            return None
        now = _now()
        # One write a minute at most: a script calling every second must not turn reads into writes.
        if row.last_used_at is None or now - row.last_used_at > TOKEN_USE_RESOLUTION:
            with self.engine.begin() as conn:
                conn.execute(api_tokens.update().where(api_tokens.c.id == row.token_id).values(last_used_at=now))
        return _account(row)

    def token(self, token_id: int) -> Optional[ApiToken]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
        return _api_token(row) if row else None

    def revoke_token(self, token_id: int) -> bool:
        """True if the token was live and is now revoked; False if unknown or already revoked."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                api_tokens.update().where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None)).values(revoked_at=_now())
            ).rowcount
        return bool(changed)

    def list_tokens(self, account_id: Optional[int] = None) -> list[ApiToken]:
        query = sa.select(api_tokens).order_by(api_tokens.c.id)
        if account_id is not None:
            query = query.where(api_tokens.c.account_id == account_id)
        with self.engine.connect() as conn:
            return [_api_token(row) for row in conn.execute(query)]
