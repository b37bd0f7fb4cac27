"""/api/mediation: the JSON API the mediators' console is built on.

Who may do what:
- every route needs a signed-in account (session cookie + CSRF, or an API token) with the role
  mediator or admin; the figures also accept operators;
- a handoff is visible only to those covering its country (Account.covers_country); one whose
  country is unknown only to those covering every country ("*") and to admins. Every per-id
  route answers 403 otherwise — the same answer whether the case exists in another country or
  not would leak nothing more, but a 404 for a case that exists would confuse the console, so a
  403 says "not yours";
- the *list* is also narrowed to the caller's languages when the account has languages set
  (an "ar" reader also reads "ary"); cases in an unknown language, and the caller's own cases,
  are always listed. Opening a case by id is decided by country only: a colleague may send a
  link to a case in a language the reader does not list;
- every transcript read and every action is written to the audit log (ids, never text).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
from typing import Annotated, Any, AsyncIterator, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from jisr import keys
from jisr.auth.audit import AuditLog
from jisr.auth.dependencies import require_roles
from jisr.auth.models import Account
from jisr.auth.store import AccountStore
from jisr.mediation.service import MAX_REPLY_CHARS, Mediation, ReplyRefused, covers_language, least_loaded
from jisr.mediation.store import CLOSED, EXPIRED, MAX_NOTE_CHARS, OPEN, Handoff, ListedHandoff
from jisr.paths import REPLY_LANGUAGES, reply_language_of

UTC = dt.timezone.utc
KEEP_ALIVE_SECONDS = 15.0
MAX_ID = 2**63 - 1
LIST_STATUSES = ("open", "waiting", "assigned", "mine", "closed")

router = APIRouter(prefix="/api/mediation", tags=["mediation"])

MediatorDep = Annotated[Account, Depends(require_roles("mediator"))]
ReaderDep = Annotated[Account, Depends(require_roles("mediator", "operator"))]


class ReplyBody(BaseModel):
    text: str
    idempotency_key: Optional[str] = None


class NoteBody(BaseModel):
    text: str


class AssignBody(BaseModel):
    account_id: Optional[int] = None


class TransferBody(BaseModel):
    account_id: int


# --- plumbing -------------------------------------------------------------------------------


def _services(request: Request) -> Any:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(503, "starting, retry later", headers={"Retry-After": "5"})
    return services


def _mediation(request: Request) -> Mediation:
    mediation = getattr(_services(request).gateway, "mediation", None)
    if mediation is None:
        raise HTTPException(503, "mediation is not running in this process")
    return mediation


MediationDep = Annotated[Mediation, Depends(_mediation)]


async def _audit(mediation: Mediation, account: Account, action: str, handoff: Optional[Handoff], **detail: Any) -> None:
    await AuditLog(mediation.contacts.engine).arecord(
        account, action, "handoff", handoff.id if handoff else None, handoff.country if handoff else None, detail or None
    )


async def _visible(mediation: Mediation, account: Account, handoff_id: int, action: str) -> Handoff:
    """The handoff if the caller may see it: 404 unknown, 403 another country (audited)."""
    if not 1 <= handoff_id <= MAX_ID:
        raise HTTPException(404, f"no handoff {handoff_id}")
    handoff = await asyncio.to_thread(mediation.handoffs.get, handoff_id)
    if handoff is None:
        raise HTTPException(404, f"no handoff {handoff_id}")
    if not account.covers_country(handoff.country):
        await _audit(mediation, account, "handoff.denied", handoff, attempted=action)
        where = f"country {handoff.country}" if handoff.country else "an unknown country (only those covering every country see it)"
        raise HTTPException(403, f"this conversation is from {where}, which your account does not cover")
    return handoff


def _iso(value: Optional[dt.datetime]) -> Optional[str]:
    return value.astimezone(UTC).isoformat() if value else None


def _summary(item: ListedHandoff, now: dt.datetime) -> dict[str, Any]:
    h = item.handoff
    end = h.claimed_at if h.claimed_at else (h.ended_at or now)
    return {
        "id": h.id,
        "status": h.status,
        "reason": h.reason,
        "priority": h.priority,
        "country": h.country,
        "language": h.language,
        "role": h.role,
        "channel": h.channel,
        "created_at": _iso(h.created_at),
        "waiting_seconds": max(0, int((end - h.created_at).total_seconds())),
        "assigned_to": {"id": h.assigned_to, "display_name": item.assigned_name} if h.assigned_to else None,
        "escalated": h.escalated_at is not None,
        "last_inbound_at": _iso(h.last_inbound_at),
        "unread": item.unread,
    }


def _detail(handoff: Handoff, assigned_name: Optional[str], now: dt.datetime) -> dict[str, Any]:
    data = _summary(ListedHandoff(handoff, assigned_name), now)
    data.update(
        claimed_at=_iso(handoff.claimed_at),
        first_response_at=_iso(handoff.first_response_at),
        escalated_at=_iso(handoff.escalated_at),
        ended_at=_iso(handoff.ended_at),
    )
    return data


def _check_text(text: str, what: str, limit: int) -> str:
    cleaned = (text or "").replace("\x00", "").strip()
    if not cleaned:
        raise HTTPException(422, f"the {what} is empty")
    if len(cleaned) > limit:
        raise HTTPException(422, f"the {what} is too long: {len(cleaned)} characters, at most {limit}")
    return cleaned


def _holds_or_admin(account: Account, handoff: Handoff) -> None:
    if handoff.assigned_to not in (None, account.id) and account.role != "admin":
        raise HTTPException(409, "another mediator holds this conversation: ask them to transfer it to you")


async def _colleagues(mediation: Mediation, handoff: Handoff) -> list[Account]:
    accounts = await asyncio.to_thread(AccountStore(mediation.contacts.engine).list, include_inactive=False)
    return [a for a in accounts if a.role in ("mediator", "admin") and a.covers_country(handoff.country)]


async def _assignee(mediation: Mediation, handoff: Handoff, account_id: int) -> Account:
    target = await asyncio.to_thread(AccountStore(mediation.contacts.engine).get, account_id)
    if target is None or not target.active:
        raise HTTPException(422, f"no active account {account_id}")
    if target.role not in ("mediator", "admin"):
        raise HTTPException(422, f"{target.username} is not a mediator")
    if not target.covers_country(handoff.country):
        raise HTTPException(422, f"{target.username} does not cover {handoff.country or 'conversations of an unknown country'}")
    return target


# --- the list and one case ---------------------------------------------------------------------


@router.get("/handoffs", summary="Handoffs the caller may see, most urgent and longest waiting first")
async def list_handoffs(
    account: MediatorDep,
    mediation: MediationDep,
    status: str = "open",
    country: Optional[str] = Query(None, max_length=2),
    language: Optional[str] = Query(None, max_length=8),
) -> dict[str, Any]:
    if status not in LIST_STATUSES:
        raise HTTPException(422, f"status is one of {', '.join(LIST_STATUSES)}")
    statuses = {"open": OPEN, "waiting": ("waiting",), "assigned": ("assigned",), "mine": OPEN, "closed": CLOSED}[status]
    items = await asyncio.to_thread(mediation.handoffs.list, statuses, country, language)
    now = dt.datetime.now(UTC)
    shown = []
    for item in items:
        h = item.handoff
        if not account.covers_country(h.country):
            continue
        mine = h.assigned_to == account.id
        if status == "mine" and not mine:
            continue
        if not mine and not covers_language(account, h.language):
            continue
        shown.append(_summary(item, now))
    return {"handoffs": shown}


@router.get("/handoffs/{handoff_id}", summary="One handoff: the case, the family's profile, the transcript, the notes, the reply window")
async def get_handoff(handoff_id: int, account: MediatorDep, mediation: MediationDep) -> dict[str, Any]:
    handoff = await _visible(mediation, account, handoff_id, "read")
    contact = await asyncio.to_thread(mediation.contacts.get, handoff.contact_id)
    if contact is None:
        raise HTTPException(404, "the family's data was erased")
    await mediation.expire_held(contact)  # what will never go out must not read "goes out when the family answers"
    rows = await asyncio.to_thread(mediation.handoffs.transcript, contact.id)
    notes = await asyncio.to_thread(mediation.handoffs.notes, handoff.id)
    topics = sorted(set(handoff.topics) | set(await asyncio.to_thread(mediation.handoffs.topics_seen, contact.id)))
    assigned = None
    if handoff.assigned_to:
        holder = await asyncio.to_thread(AccountStore(mediation.contacts.engine).get, handoff.assigned_to)
        assigned = holder.display_name if holder else None
    window = mediation.window(handoff, contact)
    await _audit(mediation, account, "handoff.read", handoff)
    return {
        "handoff": _detail(handoff, assigned, dt.datetime.now(UTC)),
        "contact": {
            "language": contact.language,
            "country": contact.country,
            "region": contact.region,
            "role": contact.role,
            "school_level": contact.school_level,
            "channel": contact.channel,
        },
        "topics": topics,
        "transcript": [_transcript_item(row) for row in rows],
        "notes": [{"id": n.id, "author_name": n.author_name, "text": n.text, "at": _iso(n.at)} for n in notes],
        "window": {"reply_form": window.form, "closes_at": _iso(window.closes_at), "reason": window.reason or None},
    }


def _transcript_item(row: dict[str, Any]) -> dict[str, Any]:
    """One message for the console; a waiting message dropped at its expiry reads ``expired``
    (recorded failed with that reason), not the generic "not delivered"."""
    if row["direction"] == "in":
        author, name = "family", None
    elif row.get("author_account_id"):
        author, name = "mediator", row.get("author_name")
    else:
        author, name = "bot", "Jisr"
    return {
        "id": row["id"],
        "direction": row["direction"],
        "author": author,
        "author_name": name,
        "text": row.get("text") or "",
        "media": json.loads(row["media"]) if row.get("media") else [],
        "status": EXPIRED if row["status"] == "failed" and row.get("error_code") == EXPIRED else row["status"],
        "at": _iso(row["created_at"]),
    }


# --- who holds it ------------------------------------------------------------------------------


@router.post("/handoffs/{handoff_id}/claim", summary="Take a waiting handoff (409 if someone else holds it)")
async def claim(handoff_id: int, account: MediatorDep, mediation: MediationDep) -> dict[str, Any]:
    handoff = await _visible(mediation, account, handoff_id, "claim")
    change = await asyncio.to_thread(mediation.handoffs.claim, handoff.id, account.id)
    if not change.ok:
        raise HTTPException(409, change.reason)
    await _audit(mediation, account, "handoff.claim", change.handoff)
    await mediation.publish("handoff.updated", change.handoff)
    return {"handoff": _detail(change.handoff, account.display_name, dt.datetime.now(UTC))}


@router.post("/handoffs/{handoff_id}/assign", summary="Give a handoff to a mediator; account_id null = the least-loaded one covering its country and language")
async def assign(handoff_id: int, body: AssignBody, account: MediatorDep, mediation: MediationDep) -> dict[str, Any]:
    handoff = await _visible(mediation, account, handoff_id, "assign")
    if not handoff.is_open:
        raise HTTPException(409, f"this conversation is closed ({handoff.status})")
    _holds_or_admin(account, handoff)
    if body.account_id is None:
        candidates = [a for a in await _colleagues(mediation, handoff) if a.role == "mediator"]
        speaking = [a for a in candidates if covers_language(a, handoff.language)]
        load = await asyncio.to_thread(mediation.handoffs.open_load)
        target = least_loaded(speaking or candidates, load)
        if target is None:
            raise HTTPException(409, f"no active mediator covers {handoff.country or 'conversations of an unknown country'}")
    else:
        target = await _assignee(mediation, handoff, body.account_id)
    holder = handoff.assigned_to
    change = await asyncio.to_thread(mediation.handoffs.assign, handoff.id, target.id, holder, holder is None)
    if not change.ok:
        raise HTTPException(409, change.reason)
    await _audit(mediation, account, "handoff.assign", change.handoff, to=target.id, auto=body.account_id is None)
    await mediation.publish("handoff.updated", change.handoff)
    return {"handoff": _detail(change.handoff, target.display_name, dt.datetime.now(UTC))}


@router.post("/handoffs/{handoff_id}/transfer", summary="Pass a handoff you hold to a colleague who covers its country")
async def transfer(handoff_id: int, body: TransferBody, account: MediatorDep, mediation: MediationDep) -> dict[str, Any]:
    handoff = await _visible(mediation, account, handoff_id, "transfer")
    if not handoff.is_open:
        raise HTTPException(409, f"this conversation is closed ({handoff.status})")
    if handoff.assigned_to != account.id and account.role != "admin":
        raise HTTPException(409, "only the mediator holding a conversation (or an admin) can transfer it: claim it first")
    target = await _assignee(mediation, handoff, body.account_id)
    change = await asyncio.to_thread(mediation.handoffs.assign, handoff.id, target.id, handoff.assigned_to, handoff.assigned_to is None)
    if not change.ok:
        raise HTTPException(409, change.reason)
    await _audit(mediation, account, "handoff.transfer", change.handoff, to=target.id)
    await mediation.publish("handoff.updated", change.handoff)
    return {"handoff": _detail(change.handoff, target.display_name, dt.datetime.now(UTC))}


# --- talking to the family ---------------------------------------------------------------------


@router.post("/handoffs/{handoff_id}/reply", summary="Send a mediator's reply through the family's channel (claims the case if nobody holds it)")
async def reply(handoff_id: int, body: ReplyBody, account: MediatorDep, mediation: MediationDep) -> dict[str, Any]:
    handoff = await _visible(mediation, account, handoff_id, "reply")
    text = _check_text(body.text, "reply", MAX_REPLY_CHARS)
    if body.idempotency_key is not None and not 1 <= len(body.idempotency_key) <= 128:
        raise HTTPException(422, "idempotency_key is 1 to 128 characters")
    if not handoff.is_open:
        raise HTTPException(409, f"this conversation is closed ({handoff.status}): the family's messages go to the assistant again")
    _holds_or_admin(account, handoff)
    if handoff.assigned_to is None:
        change = await asyncio.to_thread(mediation.handoffs.claim, handoff.id, account.id)
        if not change.ok:
            raise HTTPException(409, change.reason)
        handoff = change.handoff
        await _audit(mediation, account, "handoff.claim", handoff, by="reply")
    try:
        result = await mediation.reply(handoff, account, text, body.idempotency_key)
    except ReplyRefused as refused:
        await _audit(mediation, account, "handoff.reply_refused", handoff)
        raise HTTPException(409, str(refused)) from refused
    await _audit(mediation, account, "handoff.reply", handoff, message_id=result.message_id, form=result.form, duplicate=result.duplicate)
    return {"message_id": result.message_id, "form": result.form, "duplicate": result.duplicate}


@router.post("/handoffs/{handoff_id}/notes", summary="Add a note to the case (mediators only; never sent)")
async def add_note(handoff_id: int, body: NoteBody, account: MediatorDep, mediation: MediationDep) -> dict[str, Any]:
    handoff = await _visible(mediation, account, handoff_id, "note")
    text = _check_text(body.text, "note", MAX_NOTE_CHARS)
    note_id = await asyncio.to_thread(mediation.handoffs.add_note, handoff.id, account.id, text)
    await _audit(mediation, account, "handoff.note", handoff, note_id=note_id)
    await mediation.publish("handoff.updated", handoff)
    return {"id": note_id, "author_name": account.display_name, "text": text, "at": _iso(dt.datetime.now(UTC))}


async def _end(handoff_id: int, account: Account, mediation: Mediation, status: str, action: str) -> dict[str, Any]:
    handoff = await _visible(mediation, account, handoff_id, action)
    if not handoff.is_open:
        raise HTTPException(409, f"this conversation is already closed ({handoff.status})")
    _holds_or_admin(account, handoff)
    change = await mediation.end(handoff, status, by=account)
    if not change.ok:
        raise HTTPException(409, change.reason)
    await _audit(mediation, account, f"handoff.{action}", change.handoff)
    return {"handoff": _detail(change.handoff, None, dt.datetime.now(UTC))}


@router.post("/handoffs/{handoff_id}/hand-back", summary="Give the conversation back to the assistant (the family is told)")
async def hand_back(handoff_id: int, account: MediatorDep, mediation: MediationDep) -> dict[str, Any]:
    return await _end(handoff_id, account, mediation, "handed_back", "hand_back")


@router.post("/handoffs/{handoff_id}/resolve", summary="Close the case (the family is told; its next message goes to the assistant)")
async def resolve(handoff_id: int, account: MediatorDep, mediation: MediationDep) -> dict[str, Any]:
    return await _end(handoff_id, account, mediation, "resolved", "resolve")


# --- colleagues, quick replies -------------------------------------------------------------------


@router.get("/mediators", summary="Colleagues covering a handoff's country, with their open load")
async def mediators(account: MediatorDep, mediation: MediationDep, handoff_id: int = Query(...)) -> dict[str, Any]:
    handoff = await _visible(mediation, account, handoff_id, "mediators")
    load = await asyncio.to_thread(mediation.handoffs.open_load)
    people = await _colleagues(mediation, handoff)
    return {
        "mediators": [
            {
                "id": a.id,
                "display_name": a.display_name,
                "role": a.role,
                "languages": list(a.languages),
                "speaks_language": covers_language(a, handoff.language),
                "open_load": load.get(a.id, 0),
            }
            for a in sorted(people, key=lambda a: (load.get(a.id, 0), a.display_name))
        ]
    }


@router.get("/quick-replies", summary="Ready-made replies in the family's language (ary: the Arabic ones)")
async def quick_replies(account: MediatorDep, mediation: MediationDep, language: str = Query(..., max_length=8)) -> dict[str, Any]:
    reply_language = reply_language_of(language)
    if reply_language not in REPLY_LANGUAGES:
        raise HTTPException(422, f"language is one of ar, ary, fr, es, it, de (got {language!r})")
    return {"language": reply_language, "quick_replies": list(mediation.config.quick_replies.get(reply_language, ()))}


# --- live events -------------------------------------------------------------------------------


@router.get("/events", summary="Server-Sent Events: handoff.opened, handoff.updated, message.in, message.out (ids only)")
async def events(request: Request, account: MediatorDep, mediation: MediationDep) -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        pubsub = mediation.redis.pubsub()
        await pubsub.subscribe(keys.MEDIATION_EVENTS)
        try:
            yield b": connected\n\n"
            loop = asyncio.get_running_loop()
            last = loop.time()
            while not await request.is_disconnected():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    if loop.time() - last >= KEEP_ALIVE_SECONDS:
                        last = loop.time()
                        yield b": keep-alive\n\n"
                    continue
                try:
                    event = json.loads(message["data"])
                except (TypeError, ValueError):
                    continue
                if not account.covers_country(event.get("country")):
                    continue
                last = loop.time()
                yield f"event: {event.get('type')}\ndata: {json.dumps({'handoff_id': event.get('handoff_id')})}\n\n".encode()
        finally:
            await pubsub.unsubscribe(keys.MEDIATION_EVENTS)
            await pubsub.close()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --- figures for the observatory ------------------------------------------------------------------


def _parse_when(value: Optional[str], name: str) -> Optional[dt.datetime]:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{name} is an ISO date or date-time (2026-12-01 or 2026-12-01T09:00+01:00), not {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _spread(seconds: list[float]) -> dict[str, Optional[float]]:
    if not seconds:
        return {"count": 0, "median_seconds": None, "p90_seconds": None}
    ordered = sorted(seconds)
    p90 = ordered[max(0, -(-len(ordered) * 9 // 10) - 1)]  # nearest rank
    return {"count": len(ordered), "median_seconds": round(statistics.median(ordered), 1), "p90_seconds": round(p90, 1)}


@router.get("/figures", summary="Handoffs per reason, country and language; time to first response and to resolution")
async def figures(account: ReaderDep, mediation: MediationDep, since: Optional[str] = None, until: Optional[str] = None) -> dict[str, Any]:
    start, end = _parse_when(since, "since"), _parse_when(until, "until")
    if start and end and end <= start:
        raise HTTPException(422, "until must be after since")
    handoffs = [h for h in await asyncio.to_thread(mediation.handoffs.between, start, end) if account.covers_country(h.country)]
    now = dt.datetime.now(UTC)

    def count(field: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for h in handoffs:
            value = getattr(h, field) or "unknown"
            counts[value] = counts.get(value, 0) + 1
        return dict(sorted(counts.items()))

    waiting = [h for h in await asyncio.to_thread(mediation.handoffs.list, ("waiting",)) if account.covers_country(h.handoff.country)]
    await AuditLog(mediation.contacts.engine).arecord(account, "handoff.figures", "handoff", None, None, {"since": since, "until": until})
    return {
        "since": _iso(start),
        "until": _iso(end),
        "total": len(handoffs),
        "by_reason": count("reason"),
        "by_country": count("country"),
        "by_language": count("language"),
        "by_status": count("status"),
        "first_response": _spread([(h.first_response_at - h.created_at).total_seconds() for h in handoffs if h.first_response_at]),
        "resolution": _spread([(h.ended_at - h.created_at).total_seconds() for h in handoffs if h.ended_at]),
        "waiting_now": {
            "count": len(waiting),
            "escalated": sum(1 for w in waiting if w.handoff.escalated_at),
            "longest_seconds": max((int((now - w.handoff.created_at).total_seconds()) for w in waiting), default=0),
        },
    }
