"""The privacy commands of `jisr`: one contact's export, forget, and the retention purge.

Kept apart from jisr/cli.py (which only wires the arguments) so the commands read as one
piece. Conversation state lives in Redis: these commands reach it through REDIS_URL, the
Redis the gateways share. An embedded Redis (no REDIS_URL) is private to the gateway that
started it: then use the admin API (GET/DELETE /api/admin/contacts/{id}) on that gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

NO_SHARED_REDIS = (
    "no REDIS_URL: the conversation state lives in the gateway's embedded Redis; "
    "use DELETE /api/admin/contacts/{id} on the gateway, or --sql-only to erase the SQL rows alone"
)


def _engine() -> Any:
    from jisr.settings import Settings
    from jisr.store.contacts import create_db_engine

    return create_db_engine(Settings().database_url)


def _conversation_redis() -> Any:
    """Clients on the shared Redis, or None without REDIS_URL."""
    from jisr.privacy.state import ConversationRedis
    from jisr.redisconn import connect_redis
    from jisr.settings import Settings

    url = Settings().redis_url
    return ConversationRedis.from_handle(connect_redis(url)) if url else None


def _resolve(engine: Any, reference: str) -> Optional[int]:
    from jisr.privacy.export import resolve_contact

    contact_id = resolve_contact(engine, reference)
    if contact_id is None:
        # Not echoed: the reference may be a phone number, and terminals keep logs.
        print("jisr: no such contact (give its numeric id or its address, e.g. whatsapp:+33…)", file=sys.stderr)
    return contact_id


def export_one(reference: str, output: Optional[Path]) -> int:
    from jisr.privacy.export import export_contact

    engine = _engine()
    contact_id = _resolve(engine, reference)
    if contact_id is None:
        return 2

    async def run() -> Any:
        redis = _conversation_redis()
        try:
            return await export_contact(engine, redis, contact_id)
        finally:
            if redis is not None:
                await redis.close()

    document = asyncio.run(run())
    if document is None:
        print("jisr: no such contact", file=sys.stderr)
        return 2
    text = json.dumps(document, ensure_ascii=False, indent=2)
    if output is None:
        print(text)
        return 0
    # The file holds a family's conversations: readable by its owner only.
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", encoding="utf-8") as out:
        out.write(text + "\n")
    print(f"{output}: contact {contact_id} exported ({len(document['messages'])} messages)", file=sys.stderr)
    return 0


def _confirm(prompt: str) -> bool:
    if not sys.stdin.isatty():
        return False
    print(prompt, end=" ", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes", "o", "oui")


def forget(args: argparse.Namespace) -> int:
    from jisr.privacy.erasure import erasure_target, forget as erase

    engine = _engine()
    contact_id = _resolve(engine, args.contact)
    if contact_id is None:
        return 2
    redis = None if args.sql_only else _conversation_redis()
    if redis is None and not args.sql_only:
        print(f"jisr: {NO_SHARED_REDIS}; nothing erased", file=sys.stderr)
        return 2
    target = erasure_target(engine, contact_id, args.profile)
    assert target is not None
    what = f"contact {contact_id}" + (f" and its {len(target.contact_ids) - 1} linked addresses" if len(target.contact_ids) > 1 else "")
    if not args.yes and not _confirm(f"Forget {what}: messages, consent history, campaign sends, handoffs, conversation state? This cannot be undone. [y/N]"):
        print("jisr: not confirmed (--yes to skip the question); nothing erased", file=sys.stderr)
        return 1

    async def run() -> Any:
        try:
            return await erase(engine, redis, contact_id, whole_profile=args.profile)
        finally:
            if redis is not None:
                await redis.close()

    report = asyncio.run(run())
    if report is None:
        print("jisr: no such contact", file=sys.stderr)
        return 2
    from jisr.auth.audit import AuditLog

    AuditLog(engine).record(None, "contact.forget", "contact", contact_id, detail={"via": "cli", "profile": args.profile, **report.as_dict()})
    if args.json:
        print(json.dumps({"forgotten": contact_id, **report.as_dict()}, indent=2))
        return 0
    rows = ", ".join(f"{table} {count}" for table, count in report.rows.items() if count)
    print(f"forgot {what}: {rows or 'no rows'}; {report.jobs_removed} queued sends removed; "
          + (f"{report.redis_keys} Redis keys deleted" if report.redis_erased else "Redis not touched (--sql-only)"))
    return 0


def purge(args: argparse.Namespace) -> int:
    from jisr.privacy.retention import purge as run_purge
    from jisr.settings import Settings

    days = args.days or Settings().retention_days
    engine = _engine()

    async def run() -> Any:
        redis = _conversation_redis()
        try:
            return await run_purge(engine, redis, days, dry_run=args.dry_run)
        finally:
            if redis is not None:
                await redis.close()

    report = asyncio.run(run())
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    return 0
