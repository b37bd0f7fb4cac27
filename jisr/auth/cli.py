"""`jisr accounts …`: manage console accounts and their API tokens on DATABASE_URL.

Passwords are read from a prompt (twice, not echoed) or, for scripts, from the first line of
standard input with --password-stdin; never from the command line, where they would land in
the shell history and the process list. Bad input exits 2 with the reason. Every change is
written to the audit log (actor: the command line).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional


def _store_and_audit() -> tuple[Any, Any]:
    from jisr.auth.audit import AuditLog
    from jisr.auth.store import AccountStore
    from jisr.settings import Settings
    from jisr.store.contacts import create_db_engine

    # Settings() rather than get_settings(): like `jisr contacts`, this touches only the database.
    engine = create_db_engine(Settings().database_url)
    return AccountStore(engine), AuditLog(engine)


def _fail(message: str) -> int:
    print(f"jisr: {message}", file=sys.stderr)
    return 2


def _read_password(args: argparse.Namespace, username: str) -> Optional[str]:
    """The new password, checked against the policy; None (after saying why) if refused."""
    from jisr.auth.passwords import PasswordError, check_policy

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass(f"password for {username}: ")
        if getpass.getpass("again: ") != password:
            _fail("the two passwords differ; nothing changed")
            return None
    try:
        check_policy(password)
    except PasswordError as error:
        _fail(f"{error}; nothing changed")
        return None
    return password


def _describe(account: Any) -> dict[str, Any]:
    return {
        "id": account.id,
        "username": account.username,
        "display_name": account.display_name,
        "role": account.role,
        "countries": ",".join(account.countries),
        "languages": ",".join(account.languages),
        "active": account.active,
    }


CLI = {"via": "cli"}


def cmd_add(args: argparse.Namespace) -> int:
    from jisr.auth.passwords import PasswordError
    from jisr.auth.store import AccountError, parse_countries, parse_display_name, parse_languages, parse_role, parse_username

    store, audit = _store_and_audit()
    # Check everything before asking for a password: a typo in --countries should not cost a prompt.
    try:
        username = parse_username(args.username)
        role = parse_role(args.role)
        countries = args.countries if args.countries is not None else ("*" if role == "admin" else "")
        parse_countries(countries)
        parse_languages(args.languages or "")
        parse_display_name(args.name or username)
    except AccountError as error:
        return _fail(str(error))
    if store.get_by_username(username) is not None:
        return _fail(f"an account named {username!r} exists already")
    password = _read_password(args, username)
    if password is None:
        return 2
    try:
        account = store.create(username, args.name or username, role, password, countries, args.languages or "")
    except (AccountError, PasswordError) as error:
        return _fail(str(error))
    audit.record(None, "account.create", "account", account.id, detail={**CLI, "username": account.username, "role": account.role})
    print(f"account {account.id} {account.username}: {account.role}, countries {','.join(account.countries) or '-'}, languages {','.join(account.languages) or '-'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store, _ = _store_and_audit()
    accounts = store.list()
    if args.json:
        print(json.dumps([_describe(a) for a in accounts], ensure_ascii=False, indent=2))
        return 0
    if not accounts:
        print("no accounts yet: jisr accounts add USERNAME --role admin --name \"Your Name\"", file=sys.stderr)
        return 0
    print(f"{'id':>4}  {'username':<20} {'role':<9} {'countries':<16} {'languages':<14} {'active':<6} name")
    for a in accounts:
        print(
            f"{a.id:>4}  {a.username:<20} {a.role:<9} {','.join(a.countries) or '-':<16} {','.join(a.languages) or '-':<14} "
            f"{'yes' if a.active else 'no':<6} {a.display_name}"
        )
    return 0


def _account(store: Any, username: str) -> Any:
    from jisr.auth.store import NoSuchAccount

    try:
        return store.require(username)
    except NoSuchAccount as error:
        _fail(str(error))
        return None


def cmd_passwd(args: argparse.Namespace) -> int:
    store, audit = _store_and_audit()
    account = _account(store, args.username)
    if account is None:
        return 2
    password = _read_password(args, account.username)
    if password is None:
        return 2
    store.set_password(account.id, password)
    audit.record(None, "account.password", "account", account.id, detail=CLI)
    print(f"{account.username}: password changed; the account's open sessions have ended")
    return 0


def _set_active(args: argparse.Namespace, active: bool) -> int:
    from jisr.auth.store import AccountError

    store, audit = _store_and_audit()
    account = _account(store, args.username)
    if account is None:
        return 2
    try:
        store.update(account.id, active=active)
    except AccountError as error:
        return _fail(str(error))
    audit.record(None, "account.update", "account", account.id, detail={**CLI, "active": active})
    # Sessions check the account on every request: a disabled account's sessions stop at once.
    print(f"{account.username}: {'enabled' if active else 'disabled (its sessions and API tokens stop working now)'}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    return _set_active(args, False)


def cmd_enable(args: argparse.Namespace) -> int:
    return _set_active(args, True)


def cmd_set(args: argparse.Namespace) -> int:
    from jisr.auth.store import AccountError

    store, audit = _store_and_audit()
    account = _account(store, args.username)
    if account is None:
        return 2
    changes = {k: v for k, v in dict(role=args.role, countries=args.countries, languages=args.languages, display_name=args.name).items() if v is not None}
    if not changes:
        return _fail("nothing to change: give --role, --countries, --languages or --name")
    try:
        updated = store.update(account.id, **changes)
    except AccountError as error:
        return _fail(str(error))
    audit.record(None, "account.update", "account", account.id, detail={**CLI, **changes})
    print(json.dumps(_describe(updated), ensure_ascii=False))
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from jisr.auth.store import AccountError

    store, audit = _store_and_audit()
    account = _account(store, args.username)
    if account is None:
        return 2
    try:
        new = store.create_token(account.id, args.name)
    except AccountError as error:
        return _fail(str(error))
    audit.record(None, "token.create", "api_token", new.record.id, detail={**CLI, "account_id": account.id, "name": new.record.name})
    print(f"token {new.record.id} for {account.username} ({new.record.name}); shown once, keep it secret:", file=sys.stderr)
    print(new.token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    store, audit = _store_and_audit()
    record = store.token(args.id)
    if record is None:
        return _fail(f"no token {args.id}")
    if not store.revoke_token(args.id):
        return _fail(f"token {args.id} is revoked already")
    audit.record(None, "token.revoke", "api_token", args.id, detail={**CLI, "account_id": record.account_id})
    print(f"token {args.id} revoked")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    store, _ = _store_and_audit()
    account_id = None
    if args.username:
        account = _account(store, args.username)
        if account is None:
            return 2
        account_id = account.id
    for token in store.list_tokens(account_id):
        state = f"revoked {token.revoked_at:%Y-%m-%d}" if token.revoked_at else (f"last used {token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never used")
        print(f"{token.id:>4}  account {token.account_id:<5} {token.name:<30} created {token.created_at:%Y-%m-%d}  {state}")
    return 0


def first_admin_hint() -> Optional[str]:
    """What to do when the database has no active admin yet (a new installation), else None.

    There is no default admin and no sign-up page: a default password would be the first thing
    tried against every installation. The first admin is made on the server's command line,
    by whoever can already read DATABASE_URL.
    """
    try:
        store, _ = _store_and_audit()
        if store.count_admins():
            return None
    except Exception:  # the database is unreachable: serving will say so more clearly
        return None
    return 'no admin account yet: create the first with  jisr accounts add USERNAME --role admin --name "Your Name"  (then sign in at /console/login)'


def add_parser(sub: Any) -> None:
    """Register `jisr accounts …` on the main parser's subcommands."""
    accounts = sub.add_parser("accounts", help="console accounts (admin, operator, mediator) and their API tokens, on DATABASE_URL")
    cmds = accounts.add_subparsers(dest="accounts_command", required=True)

    def password_source(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--password-stdin", action="store_true", help="read the password from the first line of standard input (scripts)")

    add = cmds.add_parser("add", help="create an account (asks for its password)")
    add.add_argument("username")
    add.add_argument("--role", required=True, help="admin, operator or mediator")
    add.add_argument("--countries", help='ISO codes such as FR,BE, or "*" for every country (admins: * by default)')
    add.add_argument("--languages", help="language forms read, such as fr,ar (of ar, ary, fr, es, it, de)")
    add.add_argument("--name", help="the display name colleagues see (default: the username)")
    password_source(add)
    add.set_defaults(func=cmd_add)

    listing = cmds.add_parser("list", help="every account")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    passwd = cmds.add_parser("passwd", help="set an account's password (ends its sessions)")
    passwd.add_argument("username")
    password_source(passwd)
    passwd.set_defaults(func=cmd_passwd)

    disable = cmds.add_parser("disable", help="deactivate an account: its sessions and tokens stop at once")
    disable.add_argument("username")
    disable.set_defaults(func=cmd_disable)

    enable = cmds.add_parser("enable", help="reactivate an account")
    enable.add_argument("username")
    enable.set_defaults(func=cmd_enable)

    change = cmds.add_parser("set", help="change an account's role, countries, languages or name")
    change.add_argument("username")
    change.add_argument("--role")
    change.add_argument("--countries")
    change.add_argument("--languages")
    change.add_argument("--name")
    change.set_defaults(func=cmd_set)

    token = cmds.add_parser("token", help="API tokens for automation")
    token_cmds = token.add_subparsers(dest="token_command", required=True)
    create = token_cmds.add_parser("create", help="a new token for an account, printed once")
    create.add_argument("username")
    create.add_argument("name", help="what will use it, e.g. 'campaign scheduler'")
    create.set_defaults(func=cmd_token_create)
    revoke = token_cmds.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=cmd_token_revoke)
    tokens = token_cmds.add_parser("list", help="tokens (never the tokens themselves)")
    tokens.add_argument("username", nargs="?")
    tokens.set_defaults(func=cmd_token_list)
