"""Admins' privacy API: everything about one contact (export), and its erasure (forget).

Contacts are named by their numeric id only: an address in the path would land in access
logs and proxies. Both calls are audit-logged with counts, never with what was exported or
erased.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse

from jisr.auth.audit import AuditLog
from jisr.auth.dependencies import require_roles
from jisr.auth.models import Account
from jisr.privacy.erasure import forget
from jisr.privacy.export import export_contact

router = APIRouter(prefix="/api/admin/contacts", tags=["privacy"])

AdminAccount = Annotated[Account, Depends(require_roles("admin"))]
ContactId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the contact's numeric id (never its address)")]
NO_STORE = {"Cache-Control": "no-store"}


def _services(request: Request) -> Any:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(503, "starting, retry later", headers={"Retry-After": "5"})
    return services


@router.get("/{contact_id}/export", summary="Everything Jisr holds about one contact (JSON)")
async def export(request: Request, contact_id: ContactId, account: AdminAccount) -> JSONResponse:
    services = _services(request)
    document = await export_contact(services.store.engine, services.privacy, contact_id)
    if document is None:
        raise HTTPException(404, f"no contact {contact_id}")
    await AuditLog(services.store.engine).arecord(
        account,
        "contact.export",
        "contact",
        contact_id,
        country=document["contact"].get("country"),
        detail={"messages": len(document["messages"]), "linked": len(document["linked_addresses"])},
    )
    return JSONResponse(document, headers=NO_STORE)


@router.delete("/{contact_id}", summary="Forget a contact: SQL rows, conversation state, queued sends")
async def erase(
    request: Request,
    contact_id: ContactId,
    account: AdminAccount,
    profile: Annotated[bool, Query(description="also forget every address linked to the contact's profile")] = False,
) -> JSONResponse:
    services = _services(request)
    contact = await asyncio.to_thread(services.store.get, contact_id)
    if contact is None:
        raise HTTPException(404, f"no contact {contact_id}")
    report = await forget(services.store.engine, services.privacy, contact_id, whole_profile=profile)
    if report is None:  # erased by someone else in between
        raise HTTPException(404, f"no contact {contact_id}")
    await AuditLog(services.store.engine).arecord(
        account, "contact.forget", "contact", contact_id, country=contact.country, detail={"profile": profile, **report.as_dict()}
    )
    return JSONResponse({"forgotten": contact_id, **report.as_dict()}, headers=NO_STORE)
