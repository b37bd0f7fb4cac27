"""/api/operators: the JSON API behind the operators' console (role operator or admin).

Indicators (JSON and CSV), the contact search with each contact's consent history, the CSV
import of contact lists, the campaign examples and runs, and read-only views of the
programmes and calendars (they are edited in content/programmes.yml and content/calendars/).

Access: every route needs an operator or an admin (jisr.auth.dependencies.require_roles);
what a route returns is narrowed to the caller's countries (Account.covers_country: "*"
sees all). Asking for a country one does not cover is a 403, never an empty answer, so a
mistake is visible. Query parameters are validated (pattern and length) before any SQL, and
every value reaches SQL as a bound parameter; LIKE wildcards in a search are escaped.

Addresses are never returned in full: the console shows the channel and the last three
characters ("whatsapp:…678"), enough to tell two contacts apart on the phone with a family.
Reading one contact's profile is written to the audit log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import sqlalchemy as sa
import yaml
from fastapi import APIRouter, Depends, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import Response

from jisr import indicators
from jisr.auth.audit import AuditLog
from jisr.auth.dependencies import require_roles
from jisr.auth.models import Account
from jisr.calendars import CalendarBook
from jisr.gateway import campaigns_api
from jisr.gateway.bodies import read_capped_body
from jisr.gateway.campaigns_api import ServicesDep
from jisr.paths import CONTENT_DIR, PROJECT_ROOT
from jisr.programmes import PROGRAMMES_FILE, load_programmes
from jisr.store import csv_io
from jisr.store.campaign_scope import run_countries
from jisr.store.contacts import ContactStore, ContactTopics
from jisr.store.schema import contacts, messages

# One dependency object for the router and the routes, so FastAPI runs it once per request.
require_operator = require_roles("operator")
OperatorDep = Annotated[Account, Depends(require_operator)]

EXAMPLES_DIR = PROJECT_ROOT / "campaigns" / "examples"
CALENDARS_DIR = CONTENT_DIR / "calendars"
PAGE_SIZE = 50
MAX_PAGE = 10_000
MAX_SEARCH_CHARS = 100
# A contact list of 100,000 rows is about 8 MB; more in one upload is a mistake.
MAX_IMPORT_BYTES = 32 * 1024 * 1024
SHOWN_ADDRESS_CHARS = 3
CHANNELS = ("whatsapp", "telegram", "messenger", "webchat")
COUNTRY_PATTERN = r"^[A-Za-z]{2}$"
LANGUAGE_PATTERN = r"^[a-z]{2,3}$"

Country = Annotated[Optional[str], Query(pattern=COUNTRY_PATTERN, description="ISO 3166 alpha-2 code; default: every country you cover")]
Since = Annotated[Optional[str], Query(max_length=40, description="from this date (YYYY-MM-DD) or ISO date-time, included")]
Until = Annotated[Optional[str], Query(max_length=40, description="to this date, included (or ISO date-time, excluded)")]
ContactId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a contact id, as the search returned it")]

router = APIRouter(prefix="/api/operators", tags=["operators"], dependencies=[Depends(require_operator)])


# --- who sees what ---------------------------------------------------------------------------


def readable_countries(account: Account, country: Optional[str]) -> Optional[tuple[str, ...]]:
    """The countries a request reads: the asked one (403 if not covered), else all the
    caller covers; None = every country, known or not (admins and "*")."""
    if country:
        code = country.upper()
        if not account.covers_country(code):
            raise HTTPException(403, f"you do not cover {code}; your countries: {', '.join(account.countries) or 'none'}")
        return (code,)
    if account.role == "admin" or account.all_countries:
        return None
    return tuple(account.countries)


def scope_of(account: Account, since: Optional[str], until: Optional[str], country: Optional[str]) -> indicators.Scope:
    try:
        start = indicators.parse_bound(since)
        end = indicators.parse_bound(until, end=True)
    except ValueError as error:
        raise HTTPException(422, f"since and until take a date (2026-10-01) or an ISO date-time: {error}") from error
    if start and end and end <= start:
        raise HTTPException(422, "until must come after since")
    return indicators.Scope(since=start, until=end, countries=readable_countries(account, country))


def masked(address: str) -> str:
    """"whatsapp:+33612345678" → "whatsapp:…678": the channel and the last characters only."""
    channel, _, rest = address.partition(":")
    return f"{channel}:…{rest[-SHOWN_ADDRESS_CHARS:]}" if rest else "…"


def _iso(value: Optional[dt.datetime]) -> Optional[str]:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


# --- indicators --------------------------------------------------------------------------------


@router.get("/indicators", summary="Every indicator for a period and the countries you cover")
async def all_indicators(services: ServicesDep, account: OperatorDep, since: Since = None, until: Until = None, country: Country = None) -> dict[str, Any]:
    scope = scope_of(account, since, until, country)
    results = await asyncio.to_thread(indicators.compute_all, services.store.engine, scope)
    return {
        "scope": {"since": _iso(scope.since), "until": _iso(scope.until), "countries": list(scope.countries) if scope.countries is not None else ["*"]},
        "indicators": [result.as_dict() for result in results],
    }


@router.get(
    "/indicators/{name}.csv",
    summary="One indicator as CSV (cells that a spreadsheet would run as formulas are quoted)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
async def indicator_csv(
    name: Annotated[str, PathParam(max_length=40, description="reached, campaigns, delivery, questions, unanswered, handoffs, response_times, opt_outs")],
    services: ServicesDep,
    account: OperatorDep,
    since: Since = None,
    until: Until = None,
    country: Country = None,
) -> Response:
    if name not in indicators.INDICATORS:
        raise HTTPException(404, f"no indicator {name[:40]!r}; there are: {', '.join(indicators.INDICATORS)}")
    scope = scope_of(account, since, until, country)
    result = await asyncio.to_thread(indicators.compute, services.store.engine, name, scope)
    # The dates as asked (the parse above checked that they start with one): an `until` date
    # is stored as the next midnight, which would name the wrong day.
    suffix = "-".join(part for part in ((since or "").strip()[:10], (until or "").strip()[:10], (country or "").upper()) if part)
    filename = f"jisr-{name}{'-' + suffix if suffix else ''}.csv"
    # A byte-order mark: spreadsheets then read the file as UTF-8 (Arabic questions stay readable).
    return Response(
        "\ufeff" + result.to_csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


# --- contacts ------------------------------------------------------------------------------------


def _contact_summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "address": masked(row.address),
        "channel": row.channel,
        "country": row.country,
        "region": row.region,
        "language": row.language,
        "role": row.role,
        "school_level": row.school_level,
        "consent": row.consent,
        "created_at": _iso(row.created_at),
        "last_inbound_at": _iso(row.last_inbound_at),
    }


def search_contacts(
    store: ContactStore,
    countries: Optional[tuple[str, ...]],
    q: Optional[str],
    country: Optional[str],
    language: Optional[str],
    consent: Optional[str],
    channel: Optional[str],
    page: int,
) -> dict[str, Any]:
    """One page of the contacts matching every given filter, newest first, and how many match."""
    conditions: list[Any] = []
    if countries is not None:
        conditions.append(sa.func.upper(contacts.c.country).in_(countries))
    if country:
        conditions.append(sa.func.upper(contacts.c.country) == country.upper())
    if language:
        conditions.append(contacts.c.language == language)
    if consent:
        conditions.append(contacts.c.consent == consent)
    if channel:
        conditions.append(contacts.c.channel == channel)
    if q:
        needle = q.strip().lower()
        # autoescape: "%" and "_" in the search are letters, not LIKE wildcards.
        matches = [
            sa.func.lower(contacts.c.address).contains(needle, autoescape=True),
            sa.func.lower(sa.func.coalesce(contacts.c.region, "")).contains(needle, autoescape=True),
        ]
        if needle.isascii() and needle.isdigit() and len(needle) <= 18:  # "²".isdigit() is true, int("²") fails
            matches.append(contacts.c.id == int(needle))
        conditions.append(sa.or_(*matches))
    query = sa.select(contacts).where(*conditions).order_by(contacts.c.id.desc()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
    count = sa.select(sa.func.count()).select_from(contacts).where(*conditions)
    with store.engine.connect() as conn:
        total = int(conn.execute(count).scalar() or 0)
        rows = conn.execute(query).all()
    return {"total": total, "page": page, "page_size": PAGE_SIZE, "contacts": [_contact_summary(row) for row in rows]}


@router.get("/contacts", summary="Search contacts (addresses are masked)")
async def contacts_search(
    services: ServicesDep,
    account: OperatorDep,
    q: Annotated[Optional[str], Query(max_length=MAX_SEARCH_CHARS, description="part of the address (phone digits, chat id), of the region, or a contact id")] = None,
    country: Country = None,
    language: Annotated[Optional[str], Query(pattern=LANGUAGE_PATTERN)] = None,
    consent: Annotated[Optional[str], Query(pattern=r"^(unknown|opted_in|opted_out)$")] = None,
    channel: Annotated[Optional[str], Query(pattern=r"^(whatsapp|telegram|messenger|webchat)$")] = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
) -> dict[str, Any]:
    if q is not None and ("\x00" in q or not q.isprintable()):
        raise HTTPException(422, "q holds control characters")
    countries = readable_countries(account, country)
    return await asyncio.to_thread(search_contacts, services.store, countries, q, country, language, consent, channel, page)


def contact_profile(store: ContactStore, contact_id: int) -> Optional[dict[str, Any]]:
    contact = store.get(contact_id)
    if contact is None:
        return None
    with store.engine.connect() as conn:
        by_direction = dict(
            conn.execute(
                sa.select(messages.c.direction, sa.func.count()).where(messages.c.contact_id == contact_id).group_by(messages.c.direction)
            ).all()
        )
        linked = []
        if contact.profile_id is not None:
            linked = conn.execute(
                sa.select(contacts.c.id, contacts.c.address, contacts.c.channel, contacts.c.country).where(
                    contacts.c.profile_id == contact.profile_id, contacts.c.id != contact_id
                )
            ).all()
    history = store.consent_history(contact_id)
    topics = store.topics_record(contact_id)
    return {
        "contact": {
            "id": contact.id,
            "address": masked(contact.address),
            "channel": contact.channel,
            "country": contact.country,
            "region": contact.region,
            "language": contact.language,
            "role": contact.role,
            "school_level": contact.school_level,
            "timezone": contact.timezone,
            "consent": contact.consent,
            "created_at": _iso(contact.created_at),
            "last_inbound_at": _iso(contact.last_inbound_at),
            "last_outbound_at": _iso(contact.last_outbound_at),
            "messages_in": int(by_direction.get("in", 0)),
            "messages_out": int(by_direction.get("out", 0)),
        },
        "linked": [{"id": r.id, "address": masked(r.address), "channel": r.channel, "country": r.country} for r in linked],
        "consent_history": [
            {"consent": e.consent, "source": e.source, "basis": e.basis, "channel": e.channel, "at": _iso(e.at)} for e in history
        ],
        "topics": _topics_section(topics) if topics is not None else None,
    }


def _topics_section(topics: ContactTopics) -> dict[str, Any]:
    """Which reminder topics the family receives now and why (jisr.topics.reaches, through
    ContactStore.topics_record). ``mode``: "chosen" (the topics it holds) or "all_by_default"
    (it holds no topic: every topic if it never stopped one). ``none_because`` says why ``receives``
    is empty: "opted_out", "consent_unknown" (no campaign reaches it) or "all_stopped"."""
    receives = list(topics.receives)
    none_because = None
    if not receives:
        none_because = {"opted_out": "opted_out", "opted_in": "all_stopped"}.get(topics.consent, "consent_unknown")
    return {
        "receives": receives,
        "mode": "chosen" if topics.chose else "all_by_default",
        "none_because": none_because,
        "chosen": [{"topic": c.topic, "source": c.source, "at": _iso(c.at)} for c in topics.chosen],
        "stopped": [{"topic": s.topic, "source": s.source, "channel": s.channel, "at": _iso(s.at)} for s in topics.stopped],
    }


@router.get("/contacts/{contact_id}", summary="A contact's profile, consent history and reminder topics (audit-logged)")
async def contact_detail(contact_id: ContactId, services: ServicesDep, account: OperatorDep) -> dict[str, Any]:
    data = await asyncio.to_thread(contact_profile, services.store, contact_id)
    if data is None:
        raise HTTPException(404, f"no contact {contact_id}")
    country = data["contact"]["country"]
    if not account.covers_country(country):
        await AuditLog(services.store.engine).arecord(account, "contact.read_denied", "contact", contact_id, country)
        raise HTTPException(403, "this contact is not in your countries")
    # Linked channels of the family in another country stay hidden from a one-country operator.
    data["linked"] = [item for item in data["linked"] if account.covers_country(item["country"])]
    await AuditLog(services.store.engine).arecord(account, "contact.read", "contact", contact_id, country)
    return data


# --- contact lists -----------------------------------------------------------------------------


def _out_of_scope_rows(store: ContactStore, path: Path, name: str, account: Account, limit: int = 20) -> list[str]:
    """Rows the caller may not write, as `<file>:<line>: <column>: …` (at most ``limit``).

    Checked before anything is written: an operator for France can neither add contacts in
    Algeria nor change one (a row saying "FR" for a known Algerian address would move it into
    their view). Rows that fail validation are left to the import, which reports them as usual.
    """
    found: list[str] = []
    yours = ", ".join(account.countries)
    pending: list[tuple[int, str]] = []

    def check_known() -> None:
        with store.engine.connect() as conn:
            known = dict(conn.execute(sa.select(contacts.c.address, contacts.c.country).where(contacts.c.address.in_([a for _, a in pending]))).all())
        for line, address in pending:
            if address in known and not account.covers_country(known[address]):
                found.append(f"{name}:{line}: address: this contact is in {known[address] or 'no known country'}, not one of your countries ({yours})")
        pending.clear()

    # The import's own reader and row check, so "the row's country" means what the import will write.
    for record in csv_io._records(path, name):
        if len(found) >= limit:
            break
        if record.values is None:
            continue
        contact, _problems = csv_io.validate_row(record.values, record.line)
        if contact is None:
            continue
        if not account.covers_country(contact.country):
            found.append(f"{name}:{record.line}: country: {contact.country or 'none given'} is not one of your countries ({yours})")
        else:
            pending.append((record.line, contact.address))
            if len(pending) >= 500:
                check_known()
    if pending and len(found) < limit:
        check_known()
    found.sort(key=lambda message: int(message.split(":")[1]))
    return found[:limit]


def _import(store: ContactStore, body: bytes, name: str, basis: Optional[str], dry_run: bool, account: Account) -> dict[str, Any]:
    handle, temp = tempfile.mkstemp(prefix="jisr-import-", suffix=".csv")
    path = Path(temp)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        if not (account.role == "admin" or account.all_countries):
            refused = _out_of_scope_rows(store, path, name, account)
            if refused:
                raise HTTPException(403, {"message": "nothing was imported: some rows are outside your countries", "errors": refused})
        report = csv_io.import_csv(store, path, basis, dry_run=dry_run, name=name)
    except csv_io.CsvFileError as error:
        raise HTTPException(422, {"message": "nothing was imported", "errors": [str(error)]}) from error
    finally:
        path.unlink(missing_ok=True)
    result = report.as_dict()
    result["summary"] = report.summary()
    result["errors"] = report.messages()
    return result


@router.post(
    "/contacts/import",
    summary="Import a contact list (CSV in the body, as `jisr contacts import`)",
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def contacts_import(
    request: Request,
    services: ServicesDep,
    account: OperatorDep,
    name: Annotated[str, Query(min_length=1, max_length=120, pattern=r"^[^/\\\x00-\x1f]+$", description="the file's name, used in error messages")] = "contacts.csv",
    basis: Annotated[Optional[str], Query(max_length=500, description="how and where the people on the list agreed (needed for opt-ins)")] = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    body = await read_capped_body(request, MAX_IMPORT_BYTES, f"a contact list holds at most {MAX_IMPORT_BYTES // (1024 * 1024)} MB; split it")
    if not body:
        raise HTTPException(422, "the body is empty: send the CSV file's content")
    result = await asyncio.to_thread(_import, services.store, body, name, basis, dry_run, account)
    if not dry_run:
        await AuditLog(services.store.engine).arecord(
            account, "contacts.import", "contact_list", None, None,
            {"file": name[:120], "rows": result["rows"], "imported": result["imported"], "updated": result["updated"], "rejected": result["rejected"]},
        )
    return result


# --- campaigns: examples and runs ----------------------------------------------------------------


def _examples() -> list[dict[str, str]]:
    found = []
    for path in sorted(EXAMPLES_DIR.glob("*.yml")):
        text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            data = {}
        found.append({"name": path.stem, "title": str(data.get("name") or path.stem), "description": str(data.get("description") or "").strip(), "text": text})
    return found


@router.get("/campaigns/examples", summary="The example campaign files (campaigns/examples/*.yml), to start a new one from")
async def campaign_examples(account: OperatorDep) -> dict[str, Any]:
    return {"examples": await asyncio.to_thread(_examples)}


@router.get("/campaigns/runs", summary="Campaign runs with their sends by status (runs whose every send is in your countries)")
async def campaign_runs(services: ServicesDep, account: OperatorDep, since: Since = None, until: Until = None, country: Country = None) -> dict[str, Any]:
    scope = scope_of(account, since, until, country)
    result = await asyncio.to_thread(indicators.campaigns, services.store.engine, scope)
    runs = [dict(zip(result.columns, (indicators.json_cell(v) for v in row))) for row in reversed(result.rows)]  # newest first
    if not campaigns_api.covers_every_country(account):
        # Only the runs /api/campaigns lets this caller follow and steer (every send in their
        # countries): a run shared with another country's families is not theirs to pause.
        reached = await asyncio.to_thread(run_countries, services.store.engine, [run["run"] for run in runs])
        runs = [run for run in runs if not campaigns_api.uncovered(account, reached[run["run"]])]
    return {"runs": runs}


# --- programmes and calendars (read-only) -------------------------------------------------------


def _content() -> dict[str, Any]:
    programmes = [
        {
            "id": p.id,
            "names": dict(p.names),
            "audience": list(p.audience),
            "topics": list(p.topics),
            "countries": list(p.countries),
            "how_to_join": dict(p.how_to_join),
            "contact": p.contact,
        }
        for p in load_programmes(PROGRAMMES_FILE)
    ]
    calendars = [
        {
            "country": c.country,
            "school_year": c.school_year,
            "source": c.source,
            "reviewed": c.reviewed.isoformat(),
            "file": str(c.path.relative_to(PROJECT_ROOT)),
            "events": [
                {
                    "id": e.id,
                    "kind": e.kind,
                    "names": dict(e.names),
                    "first_day": e.first_day.isoformat(),
                    "last_day": e.last_day.isoformat(),
                    "confirmed": e.confirmed,
                    "regions": {code: [d.first_day.isoformat(), d.last_day.isoformat()] for code, d in e.regions.items()},
                }
                for e in c.events
            ],
        }
        for c in CalendarBook.from_dir(CALENDARS_DIR).all()
    ]
    calendars.sort(key=lambda c: (c["country"], c["school_year"]))
    return {
        "edited_in": {"programmes": str(PROGRAMMES_FILE.relative_to(PROJECT_ROOT)), "calendars": str(CALENDARS_DIR.relative_to(PROJECT_ROOT)) + "/"},
        "programmes": programmes,
        "calendars": calendars,
    }


@router.get("/content", summary="Programmes and school calendars as Jisr reads them (edited in the data files)")
async def content(account: OperatorDep) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(_content)
    except ValueError as error:  # ProgrammeError, CalendarError: a data file is broken
        raise HTTPException(500, f"a content file cannot be read: {error}") from error
