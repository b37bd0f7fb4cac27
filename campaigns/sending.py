"""Campaign sending: schedule planned sends on the bulk queue, decide each one at send time,
and control and report runs.

The split of work:

- ``schedule`` plans (campaigns.planner.plan), renders each send's text *and* its WhatsApp
  template variables, and enqueues the planned sends on the bulk lane in batches (one job per
  up to jisr.outbox.BATCH_SIZE sends of one channel and time), deferred to their
  ``scheduled_at``; a batch's id is a digest of its sends' keys, so scheduling again queues no
  second job for them (arq refuses the id), and a send is never sent twice anyway (the worker
  re-reads each send's status and claims it before the provider call).
- ``prepare`` runs in the worker just before sending: the plan only *predicted* consent and the
  24-hour windows, so they are decided again here, with the run's state (paused → look again
  later, cancelled → skipped). It returns the concrete message, or the outcome when nothing is sent.
- Sending itself, retries, the 429 channel pause and "contact stopped" are jisr.outbox's, shared
  with replies.

Replies to families stay ahead of campaigns because they have their own queue
(``jisr:queue:replies``) drained by the gateway's worker (or ``jisr worker --queue replies``),
while campaign jobs wait on ``jisr:queue:bulk`` for ``jisr worker --queue bulk`` processes; the
two lanes share only each channel's rate limit (the platform's).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Optional, Union

from arq import Retry

from campaigns.definitions import MESSENGER_SKIP, Campaign, render, template_variables
from campaigns.planner import Occurrence, Plan, occurrences, plan
from connectors.base import window_open
from jisr import keys
from jisr.calendars import CalendarBook, default_calendars
from jisr.outbox import BATCH_SIZE, BULK_QUEUE, RETRY_JOB_PREFIX, CampaignBatch, Outbox, SendContext, SendJob
from jisr.progress import ProgressFactory
from jisr.topics import reaches
from jisr.store.campaigns import CampaignStore

UTC = dt.timezone.utc

# Reasons a send is skipped at send time (besides the planner's).
CANCELLED = "cancelled"
OPTED_OUT = "opted_out"
NO_CONSENT = "no_consent"
OUTSIDE_WINDOW = "outside_window"
NO_TEMPLATE = "no_template"
TOPIC_STOPPED = "topic_stopped"


# Sends queued per step when scheduling (their batches in one Redis script, then marked queued in SQL).
ENQUEUE_CHUNK = 2000


@dataclass
class ScheduleResult:
    """What ``schedule`` did: the plan, then how many jobs it queued (new) or found queued."""

    plan: Plan
    enqueued: int = 0
    already_queued: int = 0
    by_run: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "enqueued": self.enqueued, "already_queued": self.already_queued, "queued_by_run": self.by_run}


def campaign_job(campaign: Campaign, occurrence: Optional[Occurrence], send: dict[str, Any], run_id: int) -> SendJob:
    """The bulk job of one planned send: every form it may take, so the worker only chooses.

    Rendering happens here, once, from the campaign file that was planned; the worker needs
    no campaign files and a later edit of the file does not change a queued run.
    """
    event = occurrence.event if occurrence is not None else None
    country = (occurrence.country if occurrence is not None and occurrence.country else None) or send["country"]
    language = send["language"]
    text = render(campaign, language, event, country, send["region"])
    sid: Optional[str] = None
    variables: tuple[tuple[str, str], ...] = ()
    if send["channel"] == "whatsapp" and campaign.whatsapp_template is not None:
        sid = campaign.whatsapp_template.sid_for(campaign.message_language(language))
        variables = tuple(sorted(template_variables(campaign, language, event, country, send["region"]).items()))
    tag = None
    if send["channel"] == "messenger" and campaign.messenger_outside_window != MESSENGER_SKIP:
        tag = campaign.messenger_outside_window
    return SendJob(
        idempotency_key=send["idempotency_key"],
        channel=send["channel"],
        address=send["address"],
        parts=((text, ()),),
        template_sid=sid,
        template_variables=variables,
        messenger_tag=tag,
        contact_id=send["contact_id"],
        lane="bulk",
        run_id=run_id,
        send_id=send["id"],
        topics=campaign.audience.topics,
    )


async def schedule(
    campaign: Campaign,
    store: CampaignStore,
    outbox: Outbox,
    now: Optional[dt.datetime] = None,
    calendars: Optional[CalendarBook] = None,
    progress: Optional[ProgressFactory] = None,
) -> ScheduleResult:
    """Plan, then queue every pending send of the campaign's runs, each deferred to its time.

    ``progress`` reports the planning (contacts read) and then the queueing (jobs)."""
    calendars = calendars if calendars is not None else default_calendars()
    planned = await asyncio.to_thread(plan, campaign, store, now, calendars, progress)
    result = ScheduleResult(planned)
    by_key = {o.key: o for o in occurrences(campaign, planned.now, calendars)}
    pending = {}
    for run_id in planned.runs.values():
        await asyncio.to_thread(store.set_run_state, run_id, "running", ("planned",))
        pending[run_id] = await asyncio.to_thread(store.pending_sends, run_id)
    bar = progress("jobs queued", sum(len(s) for s in pending.values())) if progress is not None else None
    for occurrence_key, run_id in planned.runs.items():
        occurrence = by_key.get(occurrence_key)
        sends = pending[run_id]
        for chunk in _chunks(_batches(sends), ENQUEUE_CHUNK // BATCH_SIZE or 1):
            batches = [CampaignBatch.of(run_id, [campaign_job(campaign, occurrence, send, run_id) for send in batch], batch[0]["scheduled_at"]) for batch in chunk]
            outcomes = await outbox.enqueue_batches(batches)
            for batch, queued in zip(batches, outcomes):
                result.enqueued += len(batch.jobs) if queued else 0
                result.already_queued += 0 if queued else len(batch.jobs)
            ids = [send["id"] for batch in chunk for send in batch]
            # Marked per chunk: a schedule interrupted half-way leaves the rest 'planned', and
            # scheduling again queues them (a batch already queued is refused by its id).
            await asyncio.to_thread(store.mark_queued, ids)
            if bar is not None:
                bar.advance(len(ids))
        result.by_run[run_id] = len(sends)
    if bar is not None:
        bar.finish()
    return result


def _batches(sends: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A run's sends cut into batches of one channel and one time, at most BATCH_SIZE each.

    One channel: a 429 pause of one platform must not hold another's sends. One time: a batch
    is due when its sends are (each contact's own local time gives a few distinct times)."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for send in sends:
        groups.setdefault((send["channel"], send["scheduled_at"]), []).append(send)
    ordered = sorted(groups.items(), key=lambda item: (item[0][1] is not None, item[0][1] or 0, item[0][0]))
    return [group[i : i + BATCH_SIZE] for _, group in ordered for i in range(0, len(group), BATCH_SIZE)]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def prepare(send_ctx: SendContext, job: SendJob) -> Union[SendJob, str]:
    """Decide a campaign job at send time: the message to send, or the outcome (a string).

    Raises arq's Retry while the run is paused, so the job looks again later.
    """
    assert job.send_id is not None
    store = CampaignStore(send_ctx.store.engine)
    state = await send_ctx.writes.send_state(job.send_id)  # read together with the other jobs' (jisr.outbox.Coalesced)
    if state is None:
        return "send not found"  # the run was deleted (or the contact erased)
    if state["status"] not in ("planned", "queued"):
        return f"already {state['status']}"  # sent or settled before: a second job or a retry
    if state["run_state"] == "paused":
        raise Retry(defer=send_ctx.paused_recheck_seconds)
    reason = _refusal(state) or _topic_refusal(job, state)
    if reason is None:
        decided = _form(job, state)
        if isinstance(decided, str):
            reason = decided
        else:
            job = decided
    if reason is not None:
        await asyncio.to_thread(store.skip_send, job.send_id, reason)
        return f"skipped {reason}"
    # The send loop logs it like a reply, claimed, in the transaction that claims it: the log's
    # status is what stops a second send after a crash, and its provider id is how receipts find
    # the message (and the campaign send).
    return job


def _refusal(state: dict[str, Any]) -> Optional[str]:
    """Why the send must not go out whatever its form: cancelled run, consent withdrawn."""
    if state["run_state"] == "cancelled":
        return CANCELLED
    if state["consent"] == "opted_out":
        return OPTED_OUT
    if state["consent"] != "opted_in":
        return NO_CONSENT
    return None


def _topic_refusal(job: SendJob, state: dict[str, Any]) -> Optional[str]:
    """A campaign about topics the family has stopped since it was planned (jisr.topics.reaches)."""
    if job.topics and not reaches(job.topics, state.get("topics", ()), state.get("stopped_topics", ())):
        return TOPIC_STOPPED
    return None


def _form(job: SendJob, state: dict[str, Any]) -> Union[SendJob, str]:
    """The form the platform allows now: text inside the 24-hour window, else template or tag."""
    inside = window_open(state["last_inbound_at"])
    if job.channel == "whatsapp":
        if inside:
            return dataclasses.replace(job, template_sid=None, template_variables=())
        return job if job.template_sid else NO_TEMPLATE
    if job.channel == "messenger":
        if inside:
            return dataclasses.replace(job, messenger_tag=None)
        return job if job.messenger_tag else OUTSIDE_WINDOW
    return dataclasses.replace(job, template_sid=None, template_variables=(), messenger_tag=None)


# --- Control --------------------------------------------------------------------------------


async def _wake(outbox: Outbox, store: CampaignStore, run_id: int, respect_schedule: bool) -> int:
    """Move the run's queued jobs to the front of the bulk queue (not before their time when
    ``respect_schedule``), so a resume or cancel acts now rather than at the next re-check:
    its batches (from the run's registry, keys.campaign_batches) and any single send job."""
    now_ms = int(time.time() * 1000)
    woken = 0
    registry = await outbox.pool.hgetall(keys.campaign_batches(run_id))
    moves = {job_id.decode(): max(int(at) if respect_schedule else now_ms, now_ms) for job_id, at in registry.items()}
    for send in await asyncio.to_thread(store.pending_sends, run_id):
        at = int(send["scheduled_at"].timestamp() * 1000) if respect_schedule and send["scheduled_at"] else now_ms
        # A single send's job: one queued before batches, or one a batch handed off to retry on its own.
        moves[send["idempotency_key"]] = moves[RETRY_JOB_PREFIX + send["idempotency_key"]] = max(at, now_ms)
    items = list(moves.items())
    for start in range(0, len(items), 1000):
        # XX: only jobs still in the queue; a finished job is not re-created.
        woken += int(await outbox.pool.zadd(BULK_QUEUE, dict(items[start : start + 1000]), xx=True, ch=True) or 0)
    return woken


def pause(store: CampaignStore, run_id: int) -> bool:
    """Stop sending the run's messages (jobs wait and look again); True if it was running."""
    return store.set_run_state(run_id, "paused", ("planned", "running"))


async def resume(store: CampaignStore, outbox: Outbox, run_id: int) -> bool:
    changed = await asyncio.to_thread(store.set_run_state, run_id, "running", ("paused",))
    if changed:
        await _wake(outbox, store, run_id, respect_schedule=True)
    return changed


async def cancel(store: CampaignStore, outbox: Optional[Outbox], run_id: int) -> bool:
    """Cancel the run: sends without a job are skipped now, queued ones by the worker (which
    may be sending one at this moment: only it can tell whether that one went out)."""
    changed = await asyncio.to_thread(store.set_run_state, run_id, "cancelled", ("planned", "running", "paused"))
    if changed:
        await asyncio.to_thread(store.skip_planned, run_id, CANCELLED)
        if outbox is not None:
            await _wake(outbox, store, run_id, respect_schedule=False)
    return changed


# --- Status and report ------------------------------------------------------------------------

FINAL = ("sent", "delivered", "read", "failed", "skipped")


def status(store: CampaignStore, run_id: int) -> Optional[dict[str, Any]]:
    """Counts by status and progress; a running run with nothing pending becomes done."""
    run = store.run(run_id)
    if run is None:
        return None
    counts = Counter()
    reasons = store.status_counts(run_id)
    for key, count in reasons.items():
        counts[key.split(":", 1)[0]] += count
    total = sum(counts.values())
    settled = sum(counts[s] for s in FINAL)
    if run["state"] == "running" and total and settled == total:
        store.set_run_state(run_id, "done", ("running",))
        run["state"] = "done"
    return {
        "run": run_id,
        "campaign": run["campaign_id"],
        "occurrence": run["occurrence"],
        "state": run["state"],
        "total": total,
        "by_status": dict(sorted(counts.items())),
        "by_status_and_reason": dict(sorted(reasons.items())),
        "progress": round(settled / total, 4) if total else 1.0,
    }


REPORT_COLUMNS = ("send_id", "contact_id", "channel", "country", "language", "form", "status", "reason", "scheduled_at", "sent_at", "attempts", "replied_after", "opted_out_after")


def report(store: CampaignStore, run_id: int, csv_out: Optional[IO[str]] = None) -> Optional[dict[str, Any]]:
    """What happened to a run: outcomes by status, reason, country, language and channel, and
    the replies and opt-outs that followed its messages. ``csv_out`` gets one row per send."""
    run = store.run(run_id)
    if run is None:
        return None
    rows = store.report_rows(run_id)
    reached = ("sent", "delivered", "read")
    by_status: Counter = Counter(r["status"] for r in rows)
    dims: dict[str, dict[str, Counter]] = {"country": {}, "language": {}, "channel": {}}
    for row in rows:
        for dim in dims:
            dims[dim].setdefault(str(row[dim] or "?").upper() if dim == "country" else str(row[dim] or "?"), Counter())[row["status"]] += 1
    data = {
        "run": run_id,
        "campaign": run["campaign_id"],
        "occurrence": run["occurrence"],
        "state": run["state"],
        "total": len(rows),
        # Planned by the planner: the planner's own skips have no form; sends skipped later keep theirs.
        "planned": sum(1 for r in rows if r["form"] is not None),
        "sent": sum(1 for r in rows if r["status"] in reached),          # accepted by the provider (some since delivered or read)
        "delivered": sum(1 for r in rows if r["status"] in ("delivered", "read")),
        "read": by_status["read"],
        "failed": by_status["failed"],
        "queued": by_status["queued"] + by_status["planned"],
        "failed_by_reason": dict(sorted(Counter(r["reason"] or "?" for r in rows if r["status"] == "failed").items())),
        "skipped_by_reason": dict(sorted(Counter(r["reason"] or "?" for r in rows if r["status"] == "skipped").items())),
        "by_country": {k: dict(sorted(v.items())) for k, v in sorted(dims["country"].items())},
        "by_language": {k: dict(sorted(v.items())) for k, v in sorted(dims["language"].items())},
        "by_channel": {k: dict(sorted(v.items())) for k, v in sorted(dims["channel"].items())},
        "replied_after": sum(1 for r in rows if r["replies_after"]),
        "opted_out_after": sum(1 for r in rows if r["opted_out_after"]),
    }
    if csv_out is not None:
        writer = csv.writer(csv_out)
        writer.writerow(REPORT_COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    r["id"], r["contact_id"], r["channel"], r["country"] or "", r["language"] or "", r["form"] or "", r["status"], r["reason"] or "",
                    r["scheduled_at"].isoformat() if r["scheduled_at"] else "", r["sent_at"].isoformat() if r["sent_at"] else "",
                    r["attempts"] or 0, int(bool(r["replies_after"])), int(r["opted_out_after"]),
                ]
            )
    return data
