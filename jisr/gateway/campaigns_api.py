"""/api/campaigns: the `jisr campaigns` commands over HTTP, for operators' tools.

Every route calls what the command calls (campaigns.definitions, campaigns.planner,
campaigns.sending, jisr.store.campaigns); only the transport differs: the campaign comes as
the request body (YAML text) instead of a file, and errors are HTTP statuses with the
command's message as ``detail``.

Access: operators and admins (jisr.auth), signed in to the console or with an account's API
token (``Authorization: Bearer <token>``); mediators get 403. The older shared
``JISR_OPERATOR_API_TOKEN``, when set, still works here (as an operator covering every country)
so scripts written for it keep running; unset, only accounts get in.

Countries: an operator works only with the families of the countries they cover
(Account.covers_country), as in the rest of the console, and a refusal is a 403 naming the
countries missing, never a silently smaller answer:
- schedule: every country the campaign can reach (audience.countries; none listed means every
  country, so only an admin or an operator covering "*" may), and every country already
  reached by the runs of the same campaign id (scheduling again queues their sends);
- a run's status, report, pause, resume, cancel: every country its sends went to
  (jisr.store.campaign_scope; contacts of no known country need "*");
- preview writes nothing and shows the part of the audience in the caller's countries
  (``narrowed_to`` says so when that is less than the whole); validate reads no data.
Scheduling, control actions, report downloads and refusals are written to the audit log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hmac
import io
from typing import Annotated, Any, Iterable, Optional

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from campaigns import sending
from campaigns.definitions import Campaign, CampaignError, load_campaign_text
from campaigns.planner import parse_now, preview
from jisr.auth.audit import AuditLog
from jisr.auth.dependencies import check_roles, current_account
from jisr.auth.models import Account
from jisr.gateway.bodies import read_capped_body
from jisr.outbox import Outbox
from jisr.paths import LANGUAGE_FORMS
from jisr.settings import Settings
from jisr.store.campaign_scope import run_countries
from jisr.store.campaigns import CampaignStore

UTC = dt.timezone.utc
# Planning far outside the present makes no sense and date arithmetic overflows near year 9999.
EARLIEST_NOW = dt.datetime(2000, 1, 1, tzinfo=UTC)
LATEST_NOW = dt.datetime(2100, 1, 1, tzinfo=UTC)
# A campaign file is a few kilobytes; a body this large is a mistake (or an attack).
MAX_CAMPAIGN_BYTES = 256 * 1024
# The name that stands for the file in `<file>:<line>: <field>: <reason>` when none is given.
DEFAULT_SOURCE_NAME = "campaign.yml"
MAX_RUN_ID = 2**63 - 1  # run ids are signed 64-bit integers in every database Jisr supports

YAML_BODY = {
    "requestBody": {
        "required": True,
        "description": "The campaign file's text (see campaigns/examples/*.yml).",
        "content": {"application/yaml": {"schema": {"type": "string"}}, "text/plain": {"schema": {"type": "string"}}},
    }
}


# --- Dependencies ---------------------------------------------------------------------------


def get_services(request: Request) -> Any:
    """The gateway's Services (jisr.gateway.app), started by its lifespan."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(503, "starting, retry later", headers={"Retry-After": "5"})
    return services


ServicesDep = Annotated[Any, Depends(get_services)]


def get_settings_of_app(services: ServicesDep) -> Settings:
    return services.settings


SettingsDep = Annotated[Settings, Depends(get_settings_of_app)]


# Who the legacy JISR_OPERATOR_API_TOKEN acts as: an operator covering every country. Id 0 is no
# account row; the audit log records it by name.
LEGACY_OPERATOR = Account(
    id=0, username="operator-api-token", display_name="JISR_OPERATOR_API_TOKEN", role="operator", countries=("*",), languages=LANGUAGE_FORMS
)


def _legacy_token_matches(request: Request, settings: Settings) -> bool:
    expected = (settings.operator_api_token or "").strip()
    if not expected:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Bytes, not str: compare_digest refuses non-ASCII strings, and a header may hold anything.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


async def require_operator(request: Request, settings: SettingsDep) -> Account:
    """An operator or an admin: signed in (session, CSRF-checked), with an account's API token,
    or with the legacy JISR_OPERATOR_API_TOKEN when one is configured. Mediators: 403."""
    if _legacy_token_matches(request, settings):
        return LEGACY_OPERATOR
    return check_roles(await current_account(request), ("operator",))


# The same callable as the router's dependency, so FastAPI resolves the caller once per request.
OperatorDep = Annotated[Account, Depends(require_operator)]


def get_campaign_store(services: ServicesDep) -> CampaignStore:
    return CampaignStore(services.store.engine)


StoreDep = Annotated[CampaignStore, Depends(get_campaign_store)]


def get_outbox(services: ServicesDep) -> Outbox:
    return services.outbox


OutboxDep = Annotated[Outbox, Depends(get_outbox)]

RunId = Annotated[int, Path(ge=1, le=MAX_RUN_ID, description="a run id, as `schedule` returned it")]
SourceName = Annotated[
    str,
    Query(max_length=200, description="the name that stands for the file in error messages (`<name>:<line>: <field>: <reason>`)"),
]
Now = Annotated[
    Optional[str],
    Query(max_length=64, description="plan as if it were this moment: ISO date-time, no offset means UTC (default: now)"),
]


async def campaign_body(request: Request, name: SourceName = DEFAULT_SOURCE_NAME) -> Campaign:
    """The campaign in the body, validated as `jisr campaigns validate` validates a file."""
    body = await read_capped_body(request, MAX_CAMPAIGN_BYTES, f"a campaign file holds at most {MAX_CAMPAIGN_BYTES // 1024} KiB")
    try:
        return await asyncio.to_thread(load_campaign_text, body, name or DEFAULT_SOURCE_NAME)
    except CampaignError as error:
        raise HTTPException(422, str(error)) from error


CampaignDep = Annotated[Campaign, Depends(campaign_body)]


def moment(now: Now = None) -> dt.datetime:
    try:
        parsed = parse_now(now)
        if not EARLIEST_NOW <= parsed < LATEST_NOW:
            raise ValueError(now)
    except (ValueError, OverflowError) as error:
        raise HTTPException(
            422, f"now takes an ISO date-time between 2000 and 2099 such as 2026-08-20T10:00+02:00, not {now!r}"
        ) from error
    return parsed


MomentDep = Annotated[dt.datetime, Depends(moment)]


def _no_run(run_id: int) -> HTTPException:
    return HTTPException(404, f"no run {run_id}")


def _enabled(campaign: Campaign, what: str) -> None:
    if not campaign.enabled:
        raise HTTPException(409, f"campaign {campaign.id} is disabled (enabled: false); nothing {what}")


# --- Countries: who may schedule, preview and steer what -----------------------------------

NO_KNOWN_COUNTRY = "contacts of no known country"


def covers_every_country(account: Account) -> bool:
    return account.role == "admin" or account.all_countries


def uncovered(account: Account, countries: Iterable[Optional[str]]) -> list[Optional[str]]:
    """The countries (None: unknown) the account does not cover, sorted, unknown last."""
    return sorted({c for c in countries if not account.covers_country(c)}, key=lambda c: (c is None, c or ""))


def country_names(countries: Iterable[Optional[str]]) -> str:
    return ", ".join(c or NO_KNOWN_COUNTRY for c in countries)


def _yours(account: Account) -> str:
    return f"your countries: {', '.join(account.countries) or 'none'}"


def audit_countries(countries: Iterable[Optional[str]]) -> list[str]:
    """Countries as the audit log's detail holds them ("?" for unknown)."""
    return sorted(c or "?" for c in countries)


def _one_country(countries: Iterable[Optional[str]]) -> Optional[str]:
    """The audit row's country column: set when exactly one country is concerned."""
    found = set(countries)
    return next(iter(found)) if len(found) == 1 else None


def _audit(services: Any) -> AuditLog:
    return AuditLog(services.store.engine)


async def check_schedule_scope(account: Account, campaign: Campaign, store: CampaignStore, services: Any) -> None:
    """403 unless the caller covers every country the campaign can reach and every country
    reached by the runs already planned under its id: planning again adds to those runs and
    queues their pending sends with this file's messages, so reusing another country's
    campaign id must not reach that country's families."""
    if covers_every_country(account):
        return
    audience = campaign.audience.countries
    if not audience:
        await _audit(services).arecord(account, "campaign.schedule_denied", "campaign", campaign.id, detail={"countries": ["*"]})
        raise HTTPException(
            403,
            f"campaign {campaign.id} lists no audience.countries, so it reaches every country: only an admin or an operator "
            f"covering every country may schedule it ({_yours(account)}); list the countries it is for in audience.countries",
        )
    missing = uncovered(account, audience)
    if missing:
        await _audit(services).arecord(account, "campaign.schedule_denied", "campaign", campaign.id, detail={"uncovered": audit_countries(missing)})
        raise HTTPException(403, f"campaign {campaign.id} reaches {country_names(missing)}, which you do not cover ({_yours(account)})")
    runs = [run["id"] for run in await asyncio.to_thread(store.runs, campaign.id)]
    reached = await asyncio.to_thread(run_countries, store.engine, runs)
    for run_id in runs:
        missing = uncovered(account, reached[run_id])
        if missing:
            await _audit(services).arecord(
                account, "campaign.schedule_denied", "campaign", campaign.id, detail={"run": run_id, "uncovered": audit_countries(missing)}
            )
            raise HTTPException(
                403,
                f"campaign {campaign.id} already has run {run_id}, whose sends reach {country_names(missing)}, which you do not cover "
                f"({_yours(account)}): scheduling it again would queue those sends; give your campaign another id",
            )


def narrowed_for(account: Account, campaign: Campaign) -> tuple[Campaign, Optional[list[str]]]:
    """The campaign with its audience cut to the caller's countries, and those countries
    (None when nothing was cut); 403 when no country of the audience is the caller's."""
    if covers_every_country(account):
        return campaign, None
    audience = campaign.audience.countries
    if audience and not uncovered(account, audience):
        return campaign, None
    shown = [c for c in audience if account.covers_country(c)] if audience else sorted(account.countries)
    if not shown:
        raise HTTPException(403, f"campaign {campaign.id} reaches only {country_names(uncovered(account, audience))}, none of which you cover ({_yours(account)})")
    return dataclasses.replace(campaign, audience=dataclasses.replace(campaign.audience, countries=tuple(shown))), shown


async def visible_run(request: Request, run_id: RunId, store: StoreDep, account: OperatorDep, services: ServicesDep) -> frozenset[Optional[str]]:
    """The countries the run reaches, if it exists (else 404) and the caller covers them all
    (else 403, written to the audit log)."""
    if await asyncio.to_thread(store.run, run_id) is None:
        raise _no_run(run_id)
    countries = (await asyncio.to_thread(run_countries, store.engine, [run_id]))[run_id]
    missing = uncovered(account, countries)
    if missing:
        action = request.url.path.rsplit("/", 1)[-1]
        action = "status" if action == str(run_id) else action
        await _audit(services).arecord(
            account, "campaign_run.denied", "campaign_run", run_id, detail={"action": action, "uncovered": audit_countries(missing)}
        )
        raise HTTPException(403, f"run {run_id} has sends to {country_names(missing)}, which you do not cover ({_yours(account)})")
    return countries


RunCountriesDep = Annotated[frozenset, Depends(visible_run)]


# --- Schemas --------------------------------------------------------------------------------


class Valid(BaseModel):
    valid: bool
    campaign: str


class SummaryPublic(BaseModel):
    campaign: str
    now: str
    occurrences: list[str]
    planned: int
    by_country: dict[str, int]
    by_language: dict[str, int]
    by_channel: dict[str, int]
    by_form: dict[str, int]
    by_occurrence: dict[str, int]
    excluded: dict[str, int]
    past: int
    first_send: Optional[str]
    last_send: Optional[str]
    estimated_seconds: float
    estimated_seconds_by_channel: dict[str, float]
    seconds: float


class PreviewPublic(SummaryPublic):
    messages: dict[str, str]
    # The caller's countries the figures were cut to, when the audience reaches more; else null.
    narrowed_to: Optional[list[str]] = None


class SchedulePublic(SummaryPublic):
    runs: dict[str, int]
    inserted: int
    existing: int
    enqueued: int
    already_queued: int
    queued_by_run: dict[int, int]


class RunStatus(BaseModel):
    run: int
    campaign: str
    occurrence: str
    state: str
    total: int
    by_status: dict[str, int]
    by_status_and_reason: dict[str, int]
    progress: float


class RunControl(BaseModel):
    run: int
    state: str
    changed: bool


class RunReport(BaseModel):
    run: int
    campaign: str
    occurrence: str
    state: str
    total: int
    planned: int
    sent: int
    delivered: int
    read: int
    failed: int
    queued: int
    failed_by_reason: dict[str, int]
    skipped_by_reason: dict[str, int]
    by_country: dict[str, dict[str, int]]
    by_language: dict[str, dict[str, int]]
    by_channel: dict[str, dict[str, int]]
    replied_after: int
    opted_out_after: int


# --- Routes ---------------------------------------------------------------------------------

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"], dependencies=[Depends(require_operator)])


@router.post("/validate", response_model=Valid, summary="Check a campaign file", openapi_extra=YAML_BODY)
async def validate(campaign: CampaignDep) -> Valid:
    """200 if Jisr accepts the campaign, else 422 with `<file>:<line>: <field>: <reason>`."""
    return Valid(valid=True, campaign=campaign.id)


@router.post("/preview", response_model=PreviewPublic, summary="What planning would write, without writing", openapi_extra=YAML_BODY)
async def preview_campaign(campaign: CampaignDep, store: StoreDep, now: MomentDep, account: OperatorDep) -> Any:
    shown, narrowed_to = narrowed_for(account, campaign)
    return {**(await asyncio.to_thread(preview, shown, store, now)).as_dict(), "narrowed_to": narrowed_to}


@router.post("/schedule", response_model=SchedulePublic, summary="Plan, then queue every planned send (idempotent)", openapi_extra=YAML_BODY)
async def schedule_campaign(campaign: CampaignDep, store: StoreDep, outbox: OutboxDep, now: MomentDep, account: OperatorDep, services: ServicesDep) -> Any:
    _enabled(campaign, "scheduled")
    await check_schedule_scope(account, campaign, store, services)
    data = (await sending.schedule(campaign, store, outbox, now)).as_dict()
    countries = campaign.audience.countries
    await _audit(services).arecord(
        account,
        "campaign.schedule",
        "campaign",
        campaign.id,
        _one_country(countries),
        detail={
            "countries": list(countries) or ["*"],
            "runs": sorted(data["runs"].values()),
            "planned": data["planned"],
            "inserted": data["inserted"],
            "enqueued": data["enqueued"],
        },
    )
    return data


@router.get("/runs/{run_id}", response_model=RunStatus, summary="A run's sends by status and its progress")
async def run_status(run_id: RunId, store: StoreDep, countries: RunCountriesDep) -> Any:
    data = await asyncio.to_thread(sending.status, store, run_id)
    if data is None:
        raise _no_run(run_id)
    return data


async def _control(
    store: CampaignStore, run_id: int, action: str, act: Any, account: Account, countries: frozenset, services: Any
) -> RunControl:
    run = await asyncio.to_thread(store.run, run_id)
    if run is None:
        raise _no_run(run_id)
    changed = await act()
    if not changed:
        raise HTTPException(409, f"run {run_id} is {run['state']}: {action} does not apply to a {run['state']} run")
    state = (await asyncio.to_thread(store.run, run_id))["state"]
    await _audit(services).arecord(
        account,
        f"campaign_run.{action}",
        "campaign_run",
        run_id,
        _one_country(countries),
        detail={"campaign": run["campaign_id"], "occurrence": run["occurrence"], "countries": audit_countries(countries), "state": state},
    )
    return RunControl(run=run_id, state=state, changed=True)


@router.post("/runs/{run_id}/pause", response_model=RunControl, summary="Pause a run: its queued sends wait")
async def pause_run(run_id: RunId, store: StoreDep, account: OperatorDep, countries: RunCountriesDep, services: ServicesDep) -> RunControl:
    return await _control(store, run_id, "pause", lambda: asyncio.to_thread(sending.pause, store, run_id), account, countries, services)


@router.post("/runs/{run_id}/resume", response_model=RunControl, summary="Resume a paused run")
async def resume_run(run_id: RunId, store: StoreDep, outbox: OutboxDep, account: OperatorDep, countries: RunCountriesDep, services: ServicesDep) -> RunControl:
    return await _control(store, run_id, "resume", lambda: sending.resume(store, outbox, run_id), account, countries, services)


@router.post("/runs/{run_id}/cancel", response_model=RunControl, summary="Cancel a run: its sends not yet sent are skipped")
async def cancel_run(run_id: RunId, store: StoreDep, outbox: OutboxDep, account: OperatorDep, countries: RunCountriesDep, services: ServicesDep) -> RunControl:
    return await _control(store, run_id, "cancel", lambda: sending.cancel(store, outbox, run_id), account, countries, services)


@router.get("/runs/{run_id}/report", response_model=RunReport, summary="A run's outcomes")
async def run_report(run_id: RunId, store: StoreDep, countries: RunCountriesDep) -> Any:
    data = await asyncio.to_thread(sending.report, store, run_id)
    if data is None:
        raise _no_run(run_id)
    return data


@router.get(
    "/runs/{run_id}/report.csv",
    summary="One row per send of a run (no addresses)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
async def run_report_csv(run_id: RunId, store: StoreDep, account: OperatorDep, countries: RunCountriesDep, services: ServicesDep) -> Response:
    out = io.StringIO()
    data = await asyncio.to_thread(sending.report, store, run_id, out)
    if data is None:
        raise _no_run(run_id)
    # One row per contact (ids and countries): who downloaded which run's rows is kept.
    await _audit(services).arecord(
        account,
        "campaign_run.report",
        "campaign_run",
        run_id,
        _one_country(countries),
        detail={"campaign": data["campaign"], "rows": data["total"], "countries": audit_countries(countries)},
    )
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}.csv"'},
    )
