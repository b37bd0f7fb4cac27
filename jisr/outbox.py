"""The send queue: every message Jisr sends goes through here (arq on Redis).

Why a queue even for replies: a provider outage must delay a reply, never
lose it. A job is keyed by its idempotency key (arq refuses a second job with
the same id, and the SQL log refuses a second send of a sent key), retried
with backoff on transient errors, and paused for the whole channel when the
provider says 429. Replies go to their own queue, which its own worker drains
first, so a campaign can never hold up the answer to a family.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional

from arq import Retry, create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.worker import Worker, func
from redis.exceptions import RedisError

from connectors.base import Connector
from connectors.errors import ContactStopped, SendError, Throttled
from connectors.types import Button, Channel, OutboundMessage, Template
from jisr import keys, metrics
from jisr.store.contacts import ContactStore

logger = logging.getLogger(__name__)

REPLIES_QUEUE = "jisr:queue:replies"
BULK_QUEUE = "jisr:queue:bulk"
MAX_TRIES = 8
# arq's own cap on runs of a job. Waiting for capacity, a paused run or a channel pause re-defers
# the job and arq counts each as a try, so this is a safety net only: real provider failures
# are counted separately (``_take_turn``) and stop at MAX_TRIES.
ARQ_MAX_TRIES = 10_000
# Waits for a rate-limit token shorter than this are slept inside the job (no re-queue churn).
IN_JOB_WAIT_SECONDS = 1.0
# A paused campaign run: its jobs look again this often (``jisr campaigns resume`` also wakes them).
PAUSED_RECHECK_SECONDS = 30.0
# Backoff between tries of a transient failure: 1 s, 2 s, 4 s … capped at 5 minutes.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0

# Campaign sends travel in batches: one arq job carries up to BATCH_SIZE sends of one run, one
# channel and one time (campaigns.sending.schedule). Why: arq spends about eight Redis round trips
# and a poll of up to poll_delay on every job; at one job per send that cost more than the send
# (two workers peaked near 300-450 sends/s, `jisr bench campaigns`). Each send in a batch is
# still decided, rate-limited, claimed and recorded on its own, exactly as a single job's.
BATCH_SIZE = 100
# Batch jobs a bulk worker runs at once: their sends share the worker's ``max_jobs`` slots. Several,
# so that batches of every channel go on together (a batch is one channel's; one waiting for its
# channel's rate limit must not leave the others idle) and one waiting for a slow send (a provider
# timeout) does not idle the worker. Measured with limits lifted (two workers, 30,000 sends, runs
# vary by ±15 % on these machines): 3 gave 1,172-1,362 sends/s, 8 gave 938-1,376, 16 gave 902-1,118;
# under the soak's faults (25/s per channel, 5 % 5xx, 2 % 429, 0.5 % 3 s timeouts) 8 gave 42.6
# sends/s, 16 gave 49.5, one job per send 47.7.
BATCHES_IN_FLIGHT = 8
# The shortest wait of a batch run again (its channel's wait may be over by the time it ends).
MIN_BATCH_DEFER_SECONDS = 0.05
# Turn order of replies (_wait_for_turn): how often a waiting turn looks again, and how long a
# conversation's list lives without a new reply.
ORDER_RECHECK_SECONDS = 0.2
ORDER_TTL_SECONDS = 2 * 86400
# A worker says it is alive this often (metrics: jisr_processes_alive); Redis down: poll again after.
HEARTBEAT_SECONDS = 5.0
REDIS_DOWN_RETRY_SECONDS = 1.0

# Default sends per second per channel (the platforms' documented limits; see
# shared/reference/platform-rules.md): overridable in settings.
DEFAULT_RATES = {Channel.WHATSAPP.value: 10.0, Channel.TELEGRAM.value: 30.0, Channel.MESSENGER.value: 40.0, Channel.WEBCHAT.value: 1000.0}

# A token bucket per channel shared by every worker, and one round trip per send: the channel's
# 429 pause, a rate-limit token and the attempt count of the message, in one Lua call.
# A send that finds the bucket empty *reserves* the next free token when it is due within
# ARGV[4] seconds (the bucket goes below zero; the caller sleeps until its turn): waiting jobs
# then wake once, at their turn, instead of all polling Redis every few milliseconds — that
# herd cost more CPU than the sends when a limit was reached.
# Returns "a<attempt>" (send now), "r<seconds>:<attempt>" (send after that long), "w<seconds>"
# (nothing taken: come back then).
_TAKE_TURN = """
local pause = redis.call('PTTL', KEYS[1])
if pause > 0 then return 'w' .. tostring(pause / 1000) end
local rate, burst, now, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[2], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate)
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
  if wait > most then
    redis.call('HSET', KEYS[2], 'tokens', tokens, 'at', now)
    redis.call('PEXPIRE', KEYS[2], 60000)
    return 'w' .. tostring(wait)
  end
end
redis.call('HSET', KEYS[2], 'tokens', tokens - 1, 'at', now)
redis.call('PEXPIRE', KEYS[2], 60000 + math.ceil(wait * 1000))
local n = redis.call('INCR', KEYS[3])
if n == 1 then redis.call('EXPIRE', KEYS[3], 172800) end
if wait > 0 then return 'r' .. tostring(wait) .. ':' .. n end
return 'a' .. n
"""


@dataclass(frozen=True)
class SendJob:
    """Messages to send to one address, in order (plain data: it crosses processes).

    The replies of one turn travel as one job so they arrive in the order the
    assistant wrote them; each part has its own idempotency key
    (``<key>:<index>``), so a retry resumes after the parts already sent.
    """

    idempotency_key: str
    channel: str
    address: str
    parts: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()   # (text, ((button title, payload), …))
    template_sid: Optional[str] = None
    template_variables: tuple[tuple[str, str], ...] = ()
    messenger_tag: Optional[str] = None
    contact_id: Optional[int] = None
    lane: str = "replies"
    # A campaign send (lane "bulk"): its run and campaign_sends row. The worker decides at send
    # time, from these rows, whether and in which form (text, template, tag) it goes out.
    run_id: Optional[int] = None
    send_id: Optional[int] = None
    # The campaign's topics (audience.topics): a family that stopped them is skipped at send time.
    topics: tuple[str, ...] = ()

    @property
    def is_campaign(self) -> bool:
        return self.send_id is not None

    def part_key(self, index: int) -> str:
        return f"{self.idempotency_key}:{index}"

    def messages(self) -> list[OutboundMessage]:
        if self.template_sid:
            return [
                OutboundMessage(
                    channel=Channel(self.channel),
                    address=self.address,
                    template=Template(self.template_sid, self.template_variables),
                    idempotency_key=self.part_key(0),
                )
            ]
        return [
            OutboundMessage(
                channel=Channel(self.channel),
                address=self.address,
                text=text,
                buttons=tuple(Button(t, p) for t, p in buttons),
                messenger_tag=self.messenger_tag,
                idempotency_key=self.part_key(index),
            )
            for index, (text, buttons) in enumerate(self.parts)
        ]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SendJob":
        values = dict(data)
        values["parts"] = tuple((text, tuple(tuple(b) for b in buttons)) for text, buttons in values.get("parts") or ())
        values["template_variables"] = tuple(tuple(v) for v in values.get("template_variables") or ())
        values["topics"] = tuple(values.get("topics") or ())
        return cls(**values)


def _redis_settings(host: str, port: int, database: int, password: Optional[str]) -> RedisSettings:
    """arq's connection, waiting out a short Redis restart (jisr.redisconn.patient) instead of
    failing the job that was running: a job failing then would be recorded failed for good."""
    from jisr.redisconn import patient

    return RedisSettings(host=host, port=port, database=database, password=password, **patient())


def reply_key(provider_message_id: str, channel: str) -> str:
    """The idempotency key of the replies to an inbound message: a redelivered webhook maps to the same key."""
    digest = hashlib.sha256(f"{channel}:{provider_message_id}".encode()).hexdigest()[:24]
    return f"reply:{digest}"


def backoff_seconds(job_try: int) -> float:
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (2 ** max(job_try - 1, 0)))


class Outbox:
    """Enqueues send jobs; the workers (``build_worker``) send them."""

    def __init__(self, pool: ArqRedis) -> None:
        self.pool = pool
        # Called with the queue's name after each enqueue: wakes a worker in this process at once.
        self.on_enqueue: Optional[Callable[[str], None]] = None

    @classmethod
    async def connect(cls, host: str, port: int, database: int = 0, password: Optional[str] = None) -> "Outbox":
        return cls(await create_pool(_redis_settings(host, port, database, password)))

    async def enqueue(self, job: SendJob, defer_seconds: float = 0.0, defer_until: Optional[dt.datetime] = None) -> bool:
        """Queue ``job`` once; False if a job with this key is already queued, running or done."""
        queue = REPLIES_QUEUE if job.lane == "replies" else BULK_QUEUE
        if defer_until is not None and defer_until.timestamp() <= time.time():
            # Already due: arq would compute a negative expiry from a past defer_until.
            defer_until = None
        enqueued = await self.pool.enqueue_job(
            "send_message",
            asdict(job),
            _job_id=job.idempotency_key,
            _queue_name=queue,
            _defer_by=(defer_seconds or None) if defer_until is None else None,
            _defer_until=defer_until,
        )
        if enqueued is not None and job.lane == "replies":
            # Turn order (see _wait_for_turn): pushed after the enqueue, so a job found in the list
            # always exists in arq; a crash between the two only loses this turn's place.
            order = keys.reply_order(job.channel, job.address)
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.rpush(order, job.idempotency_key)
                pipe.expire(order, ORDER_TTL_SECONDS)
                await pipe.execute()
        if enqueued is not None and self.on_enqueue is not None:
            self.on_enqueue(queue)
        return enqueued is not None

    async def enqueue_batches(self, batches: list["CampaignBatch"], chunk: int = 20) -> list[bool]:
        """Queue campaign batches (``send_batch`` jobs), ``chunk`` per Redis call; per batch,
        whether it was queued now (False: a job with its id is queued or running).

        The same jobs as ``enqueue`` would make — arq's serialisation, job key, expiry and score
        — checked and written by one Lua script per chunk instead of a WATCH/MULTI transaction
        (four round trips) per job.

        Each run's batch ids and times are also kept in a hash (keys.campaign_batches), so a
        resume or cancel can bring the run's queued batches forward (campaigns.sending._wake)."""
        from arq.constants import result_key_prefix
        from arq.jobs import serialize_job

        done: list[bool] = []
        for start in range(0, len(batches), chunk):
            part = batches[start : start + chunk]
            now_ms = int(time.time() * 1000)
            argv: list[Any] = []
            for batch in part:
                score = max(now_ms, int(batch.at.timestamp() * 1000)) if batch.at is not None else now_ms
                payload = serialize_job("send_batch", ([asdict(job) for job in batch.jobs],), {}, None, now_ms, serializer=self.pool.job_serializer)
                argv += [batch.id, score, score - now_ms + self.pool.expires_extra_ms, payload]
            added = await self.pool.eval(_ENQUEUE_MANY, 1, BULK_QUEUE, job_key_prefix, result_key_prefix, *argv)
            async with self.pool.pipeline(transaction=False) as pipe:
                for batch, flag in zip(part, added):
                    if flag:
                        registry = keys.campaign_batches(batch.run_id)
                        pipe.hset(registry, batch.id, int(batch.at.timestamp() * 1000) if batch.at is not None else now_ms)
                        pipe.expire(registry, BATCH_REGISTRY_TTL_SECONDS)
                await pipe.execute()
            done += [bool(flag) for flag in added]
        if any(done) and self.on_enqueue is not None:
            self.on_enqueue(BULK_QUEUE)
        return done

    async def close(self) -> None:
        await self.pool.close()


@dataclass(frozen=True)
class CampaignBatch:
    """Sends of one campaign run, on one channel, due at one time: one ``send_batch`` job."""

    id: str
    run_id: int
    jobs: tuple[SendJob, ...]
    at: Optional[dt.datetime] = None

    @classmethod
    def of(cls, run_id: int, jobs: list[SendJob], at: Optional[dt.datetime]) -> "CampaignBatch":
        """Its id is a digest of its sends' keys: scheduling the same sends again finds it queued."""
        digest = hashlib.sha256("\n".join(job.idempotency_key for job in jobs).encode()).hexdigest()[:24]
        return cls(f"{BATCH_JOB_PREFIX}{run_id}:{digest}", run_id, tuple(jobs), at)


# Job ids of campaign batches start with this (the privacy erasure finds them by it).
BATCH_JOB_PREFIX = "batch:"
# How long a run's batch registry lives after its last batch was queued (a run longer than this
# is still sent; only resume/cancel stop bringing its old batches forward).
BATCH_REGISTRY_TTL_SECONDS = 60 * 86400


# Queue jobs unless their id is already queued, running or done (arq's job or result key), as
# arq's enqueue_job does for one; ARGV: job key prefix, result key prefix, then per job: id, score,
# expiry in ms, serialised job. Returns a list of 1 (queued) / 0 (already there).
_ENQUEUE_MANY = """
local queued = {}
for i = 3, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[1] .. id, ARGV[2] .. id) > 0 then
    table.insert(queued, 0)
  else
    redis.call('PSETEX', ARGV[1] .. id, ARGV[i + 2], ARGV[i + 3])
    redis.call('ZADD', KEYS[1], ARGV[i + 1], id)
    table.insert(queued, 1)
  end
end
return queued
"""


@dataclass
class SendContext:
    """What a worker needs to send: the connectors, the store, the channel limits."""

    connectors: Mapping[str, Connector]
    store: ContactStore
    rates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    paused_recheck_seconds: float = PAUSED_RECHECK_SECONDS
    # Sends in flight at once in this worker, over all its batch jobs (``jisr worker --max-jobs``).
    max_in_flight: int = 50
    _writes: Optional["BatchedWrites"] = field(default=None, init=False, repr=False)
    _slots: Optional[asyncio.Semaphore] = field(default=None, init=False, repr=False)

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on first use, inside the worker's event loop
            self._slots = asyncio.Semaphore(self.max_in_flight)
        return self._slots

    @property
    def writes(self) -> "BatchedWrites":
        if self._writes is None:
            self._writes = BatchedWrites(self.store)
        return self._writes


class Coalesced:
    """Calls made by a worker's concurrent jobs to ``many`` (a function of a list of items that
    returns one result per item, or None), made together: one call, in a thread, per batch.

    Why: a claim, a "sent" record or a send-state read is one SQL transaction per send, ~0.3 to
    1 ms of CPU each (measured on SQLite: connection, BEGIN, statements, COMMIT), which alone
    held two workers under a few hundred sends per second; fifty in one transaction cost ~0.05 ms
    each. No delay is added: a call waits only while the previous batch runs, and the calls that
    arrive meanwhile form the next batch. Each job still waits for *its* result, so a claim is
    committed before its provider call and a job ends only once its send is recorded.
    """

    def __init__(self, many: Callable[[list[Any]], Optional[list[Any]]]) -> None:
        self.many = many
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._flushing: Optional[asyncio.Task] = None

    async def __call__(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # the jobs woken in this same loop turn add theirs first
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self.many, [item for item, _ in batch])
            except Exception as error:  # every job of the batch sees the failure, as it would alone
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for index, (_, future) in enumerate(batch):
                if not future.done():
                    future.set_result(results[index] if results is not None else None)


class BatchedWrites:
    """The send path's SQL, coalesced across a worker's jobs (see Coalesced)."""

    def __init__(self, store: ContactStore) -> None:
        from jisr.store.campaigns import CampaignStore

        self._claim = Coalesced(store.claim_outbound_many)
        self._sent = Coalesced(store.mark_sent_many)
        self._state = Coalesced(CampaignStore(store.engine).send_states)

    async def claim(self, key: str, token: int, log: Optional[tuple[int, str, str]]) -> tuple[str, Optional[dt.datetime], Optional[int]]:
        return await self._claim((key, token, None, log))

    async def mark_sent(self, key: str, provider_message_id: str, attempts: int, send_id: Optional[int]) -> None:
        await self._sent((key, provider_message_id, attempts, send_id))

    async def send_state(self, send_id: int) -> Optional[dict[str, Any]]:
        """A campaign send as it is now (campaigns.sending.prepare decides from it)."""
        return await self._state(send_id)


class ChannelBusy(Retry):
    """The channel cannot send for a while (its 429 pause, or its rate limit's queue is longer
    than IN_JOB_WAIT_SECONDS): the job comes back then. Not a failure of this message, and true
    of every message on the channel, so a batch stops asking for turns (see send_batch)."""


class ClaimHeld(Retry):
    """Another attempt's claim on this message may still be live: look again when it cannot be."""


async def _take_turn(redis: ArqRedis, channel: str, rate: float, key: str) -> int:
    """Return once this channel may send (raise Retry when the wait is long: a 429 pause, a busy
    bucket), having counted one provider call for ``key``; returns the call's number.

    Calls are counted apart from arq's job_try, which also counts the re-deferrals that are not
    failures (rate limit, channel pause, paused run): backoff and MAX_TRIES see real calls only;
    the number is also the call's claim token (unique for the key across workers, kept 2 days).
    """
    while True:
        answer = await redis.eval(_TAKE_TURN, 3, keys.channel_pause(channel), keys.channel_tokens(channel), f"{keys.PREFIX}attempts:{key}",
                                  rate, max(rate, 1.0), time.time(), IN_JOB_WAIT_SECONDS)
        answer = answer.decode() if isinstance(answer, bytes) else str(answer)
        if answer.startswith("a"):
            return int(answer[1:])
        if answer.startswith("r"):  # a token reserved for later: sleep until it is ours
            wait, _, attempt = answer[1:].partition(":")
            await asyncio.sleep(float(wait))
            pause_ms = await redis.pttl(keys.channel_pause(channel))
            if pause_ms and pause_ms > 0:  # a 429 came while waiting: the provider asked for a pause
                raise ChannelBusy(defer=pause_ms / 1000.0)
            return int(attempt)
        raise ChannelBusy(defer=float(answer[1:]))  # a 429 pause, or a queue longer than IN_JOB_WAIT_SECONDS


async def send_message(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    """The worker function for both lanes: a reply job, or a campaign send decided at send time.

    A campaign job is first checked against its run and contact as they are *now* (paused,
    cancelled, opted out, 24-hour window) by campaigns.sending.prepare, which returns the
    message to send or the outcome; then both kinds share one send loop, so retries, the
    429 channel pause and "contact stopped" behave the same for replies and campaigns.
    """
    job = SendJob.from_dict(payload)
    send_ctx: SendContext = ctx["send_context"]
    if job.is_campaign:
        return await _campaign_send(ctx, send_ctx, job)
    redis: ArqRedis = ctx["redis"]
    if job.lane != "replies":
        return await _send_counted(ctx, send_ctx, job)
    await _wait_for_turn(redis, job)
    outcome = await _send_counted(ctx, send_ctx, job)  # a Retry keeps this turn at the head: later turns wait
    await redis.lrem(keys.reply_order(job.channel, job.address), 1, job.idempotency_key)
    enqueued_at = ctx.get("enqueue_time")
    if enqueued_at is not None:
        await metrics.observe(redis, "jisr_reply_seconds", max(0.0, time.time() - enqueued_at.timestamp()), {"channel": job.channel})
    return outcome


async def _campaign_send(ctx: dict[str, Any], send_ctx: SendContext, job: SendJob, tally: Optional[Counter] = None) -> str:
    """One campaign send: decided now (campaigns.sending.prepare), then sent like any message."""
    from campaigns.sending import prepare  # imported here: campaigns imports this module

    prepared = await prepare(send_ctx, job)
    if isinstance(prepared, str):
        return prepared
    return await _send_counted(ctx, send_ctx, prepared, tally)


async def send_batch(ctx: dict[str, Any], payloads: list[dict[str, Any]]) -> str:
    """The worker function of a campaign batch: each send as a single job would do it, together.

    The sends run concurrently within the worker's slots, and none holds the others up:

    - a send the provider refused for now (5xx, timeout, a 429 for this message), one that
      another attempt's claim may still hold, or one that failed unexpectedly leaves the batch
      for its own job (``send_message``, id ``retry:<key>``), which retries it with its own
      backoff and MAX_TRIES, as any single send;
    - when the channel cannot send for a while (ChannelBusy: its 429 pause, or a rate-limit
      queue longer than IN_JOB_WAIT_SECONDS), or the run is paused, the sends not done stay in
      the batch: its body is rewritten with them only, and it runs again after the wait.

    Every send is still decided, claimed and recorded on its own, so a batch run again after a
    crash finds what was settled (its row's status) and skips it.
    """
    send_ctx: SendContext = ctx["send_context"]
    redis: ArqRedis = ctx["redis"]
    tally: Counter = Counter()
    later: list[dict[str, Any]] = []   # sends this batch does on its next run
    waits: list[float] = []            # until when (time.monotonic()) the run is paused
    busy: list[float] = []             # until when the channel said "not now": the sends not started wait too
    handed_off = 0
    # A batch stops starting sends after half its job timeout (arq cancels a job running longer,
    # cutting its sends mid-call): the rest go on in its next run, at once.
    stop_starting_at = time.monotonic() + float(ctx.get("claim_lease_seconds") or CLAIM_LEASE_SECONDS) / 2

    async def one(payload: dict[str, Any]) -> None:
        nonlocal handed_off
        async with send_ctx.slots:
            if busy or time.monotonic() > stop_starting_at:
                later.append(payload)
                return
            try:
                await _campaign_send(ctx, send_ctx, SendJob.from_dict(payload), tally)
            except ChannelBusy as retry:
                busy.append(time.monotonic() + (retry.defer_score or 0) / 1000.0)
                later.append(payload)
            except Retry as retry:
                if retry.__cause__ is None and not isinstance(retry, ClaimHeld):  # the run is paused
                    waits.append(time.monotonic() + (retry.defer_score or 0) / 1000.0)
                    later.append(payload)
                else:  # the provider's refusal, or another attempt's claim: this send's own wait
                    await _hand_off(redis, payload, (retry.defer_score or 0) / 1000.0)
                    handed_off += 1
            except Exception:  # noqa: BLE001 - the other sends go on
                logger.exception("a campaign send failed unexpectedly: it is retried on its own")
                await _hand_off(redis, payload, backoff_seconds(1))
                handed_off += 1

    await asyncio.gather(*(one(p) for p in payloads))
    await metrics.inc_many(redis, tally)
    if later:
        enqueued = ctx.get("enqueue_time")
        await rewrite_batch(redis, str(ctx["job_id"]), later, enqueued.timestamp() if enqueued is not None else time.time())
        # The waits were said while other sends were still going: counted from then, not from now
        # (a batch that waited for its last reserved turns would otherwise leave its channel idle).
        until = max(waits + busy) if waits or busy else time.monotonic()  # none: it ran out of time
        raise Retry(defer=max(until - time.monotonic(), MIN_BATCH_DEFER_SECONDS))
    return f"batch of {len(payloads)} done ({handed_off} to retry on their own)"


async def rewrite_batch(redis: Any, job_id: str, payloads: list[dict[str, Any]], enqueued_at: float, job_try: Optional[int] = None) -> None:
    """Leave only ``payloads`` in a queued batch job (arq keeps a job's body across its retries,
    so its next run sends these): send_batch keeps the sends not done, an erasure takes a
    family's out. The body keeps its expiry; a job gone meanwhile is not brought back."""
    body = serialize_job("send_batch", (payloads,), {}, job_try, int(enqueued_at * 1000), serializer=getattr(redis, "job_serializer", None))
    await redis.set(job_key_prefix + job_id, body, keepttl=True, xx=True)


# A campaign send a batch handed off (see send_batch) is retried by its own job of this id.
RETRY_JOB_PREFIX = "retry:"


async def _hand_off(redis: ArqRedis, payload: dict[str, Any], defer: float) -> None:
    """Queue one send of a batch as its own job, after ``defer`` (its backoff or retry-after).
    A job of that id already there (a batch run again after a crash) keeps it: one is enough."""
    await redis.enqueue_job(
        "send_message", payload, _job_id=RETRY_JOB_PREFIX + payload["idempotency_key"], _queue_name=BULK_QUEUE, _defer_by=max(defer, 0.0) or None
    )


async def _send_counted(ctx: dict[str, Any], send_ctx: SendContext, job: SendJob, tally: Optional[Counter] = None) -> str:
    """_send_parts, counted for /metrics: the outcome, or the retry and why (jisr/metrics.py).

    A Retry raised from a provider's error is a retry; one raised while waiting for capacity,
    a paused run or a claim (no cause) is not a provider failure and is not counted. ``tally``:
    a batch's counters, written once for the whole batch (metrics.inc_many).
    """
    redis: ArqRedis = ctx["redis"]
    labels = {"channel": job.channel, "lane": job.lane}

    async def count(name: str, extra: dict[str, str]) -> None:
        if tally is not None:
            tally[(name, tuple(sorted({**labels, **extra}.items())))] += 1
        else:
            await metrics.inc(redis, name, {**labels, **extra})

    try:
        outcome = await _send_parts(ctx, send_ctx, job)
    except Retry as retry:
        cause = retry.__cause__
        if cause is not None:
            reason = "throttled" if isinstance(cause, Throttled) else "error" if isinstance(cause, SendError) else "unexpected"
            await count("jisr_send_retries_total", {"reason": reason})
        raise
    kind = "sent" if outcome.startswith("sent") else "contact_stopped" if outcome == "contact stopped" else "failed"
    await count("jisr_sends_total", {"outcome": kind})
    return outcome


async def _wait_for_turn(redis: ArqRedis, job: SendJob) -> None:
    """Return when every earlier turn of this conversation has finished; else Retry shortly.

    Why: a turn's reply retried after a provider error (backoff) could be overtaken by the
    next turn's reply, and the family would read the answers in the wrong order. The gateway
    lists each conversation's reply jobs in turn order (Outbox.enqueue); a job goes only when
    it is first. An earlier job no longer known to arq (finished, or failed for good, without
    unlinking itself: a crash) is dropped from the list. Waiting is not a provider attempt.
    """
    order = keys.reply_order(job.channel, job.address)
    while True:
        head = await redis.lindex(order, 0)
        if head is None or head.decode() == job.idempotency_key:
            return
        if await redis.exists(job_key_prefix + head.decode()):
            raise Retry(defer=ORDER_RECHECK_SECONDS)
        await redis.lrem(order, 1, head)


async def _send_parts(ctx: dict[str, Any], send_ctx: SendContext, job: SendJob) -> str:
    """Send a job's parts in order, deciding on failure whether and when to try again.

    Each part is claimed durably before its provider call (see ``_claim``), so a worker
    killed in the middle of a call leaves a trace that the next attempt reconciles instead
    of blindly sending a second time.
    """
    redis: ArqRedis = ctx["redis"]
    store = send_ctx.store
    connector = send_ctx.connectors[job.channel]
    lease = float(ctx.get("claim_lease_seconds") or CLAIM_LEASE_SECONDS)
    sent = 0
    for index, message in enumerate(job.messages()):
        key = message.idempotency_key or job.idempotency_key
        # Waiting for capacity is not a failure: it does not count as an attempt. A part already
        # sent (a retry after a crash or of a later part) is found settled by the claim: never twice.
        tries = await _take_turn(redis, job.channel, send_ctx.rates.get(job.channel, 10.0), key)
        # A campaign send is logged here, with its claim, in one transaction (a reply was logged by the gateway).
        log = (job.contact_id, job.channel, _logged_text(job, index)) if job.is_campaign and job.contact_id else None
        claim = await _claim(send_ctx, connector, message, key, tries, lease, job.send_id, log, resend_in_doubt=job.lane == "replies")
        if claim == SETTLED:
            continue
        try:
            result = await connector.send(message)
        except Throttled as error:
            await _release(store, key, tries, claim)
            pause = error.retry_after or 1.0
            await redis.set(keys.channel_pause(job.channel), b"1", px=int(pause * 1000), nx=True)
            logger.warning("channel %s throttled: pausing %.1f s", job.channel, pause)
            raise Retry(defer=pause) from error
        except ContactStopped as error:
            # The opt-out is recorded before the failure: whoever sees the failed send
            # (a status page, a test, an operator) then also sees the contact opted out.
            if job.contact_id:
                await asyncio.to_thread(store.record_consent, job.contact_id, "opted_out", "platform", f"provider refusal {error.code or ''}".strip(), job.channel)
            await _fail_rest(store, job, error.code or "contact_stopped", tries)
            logger.info("contact stopped the bot on %s: opted out", job.channel)
            return "contact stopped"
        except SendError as error:
            if error.retryable and tries < MAX_TRIES:
                await _release(store, key, tries, claim)
                raise Retry(defer=error.retry_after or backoff_seconds(tries)) from error
            await _fail_rest(store, job, error.code or type(error).__name__, tries)
            logger.warning("send failed for good on %s: %s", job.channel, type(error).__name__)
            return "failed"
        except Exception as error:  # unexpected: treated as transient, retried, then recorded
            if tries < MAX_TRIES:
                await _release(store, key, tries, claim)
                logger.exception("unexpected send error on %s", job.channel)
                raise Retry(defer=backoff_seconds(tries)) from error
            await _fail_rest(store, job, "unexpected", tries)
            return "failed"
        await send_ctx.writes.mark_sent(key, result.provider_message_id, tries, job.send_id)
        sent += 1
    return f"sent {sent}"


# --- Claims: at most once, and nothing lost silently ------------------------------------------
#
# Why a claim. Checking "not sent yet" in SQL, calling the provider, then writing "sent" leaves
# a gap: a worker killed (kill -9, OOM, power) after the provider accepted the message and
# before the write commits has sent it, yet the log still says "queued", and arq hands the job
# to another worker once the dead one's in-progress lock expires (job_timeout + 10 s). With one
# job in flight per worker that gap was one message; with 50 in flight, up to 50 — the bench
# measured 4 duplicates per kill. Providers have no idempotency keys (Twilio, Telegram and
# Messenger all accept the same message twice), so the provider cannot close the gap for us.
#
# So each provider call is preceded by a *claim*, committed before the call: the message's log
# row goes to status 'sending' with a token (the attempt number from ``_take_turn``, unique for
# the key across workers) and the claim's time. Then:
#
# - success: 'sent' (mark_sent), as before;
# - a refusal the provider answered (429, 5xx, connection refused…): the claim is released
#   ('queued' again) and the job retried as before — the provider said it did not take it;
# - no answer at all (the process died): the row stays 'sending'. The next attempt finds the
#   claim. A claim younger than the lease (the job timeout: arq cancels a job that runs longer,
#   so no live attempt holds a claim older than that) may belong to a live attempt: look again
#   later. An older one is in doubt, and is *reconciled*:
#     * where the platform can list what it accepted (``Connector.sent_since``: Twilio's GET
#       Messages.json by To/From, Messenger's Conversations API), a message to the address
#       created within the claim's lease whose id our log does not already hold is the one in
#       doubt: recorded 'sent' with its id; none: it did not go out, and it is claimed again and
#       sent;
#     * where it cannot (Telegram, web chat), a campaign send is recorded 'failed'
#       with the reason ``in_doubt``: at most once, and an operator sees it in the report
#       (failed_by_reason), rather than thousands of families risking a second copy; a *reply*
#       is sent again: a family waiting for an answer is better served by a rare second copy
#       of one part than by an answer cut short (the soak measured both: a kill -9 of the reply
#       worker cut 2 reply parts out of 1,600 messages' replies).
#
# The window left: a read timeout answered by nobody is still treated as a refusal and retried
# (a provider that took the message but whose answer was lost is the same doubt as a crash;
# the retry policy of the connectors decides those today).

SETTLED = "settled"
CLAIMED = "claimed"
UNCLAIMED = "unclaimed"   # no log row to hold a claim (a send nobody logged): sent as before
IN_DOUBT = "in_doubt"
# A claim is presumed dead after this long when the worker does not say its job timeout.
CLAIM_LEASE_SECONDS = 60.0
# Provider clocks and list filters are second-grained: the look-up starts this much earlier.
LOOKUP_SKEW_SECONDS = 2.0


def _logged_text(job: SendJob, index: int) -> str:
    """What the message log keeps of a part: its text, or the template and its variables."""
    if job.template_sid:
        return f"[template {job.template_sid}] " + " | ".join(v for _, v in job.template_variables)
    return job.parts[index][0]


async def _claim(
    send_ctx: SendContext,
    connector: Connector,
    message: OutboundMessage,
    key: str,
    token: int,
    lease: float,
    send_id: Optional[int],
    log: Optional[tuple[int, str, str]] = None,
    resend_in_doubt: bool = False,
) -> str:
    """Claim ``key`` for the call numbered ``token``: CLAIMED, UNCLAIMED, or SETTLED (sent or
    recorded in doubt by a reconciliation here or by another attempt). Raises Retry while
    another attempt's claim may still be live. ``log`` (contact id, channel, text): log the
    message in the same transaction when it is not logged yet."""
    store = send_ctx.store
    status, at, holder = await send_ctx.writes.claim(key, token, log)
    if status == CLAIMED:
        return CLAIMED
    if status == "missing":
        return UNCLAIMED
    if status != "sending":
        return SETTLED
    age = (dt.datetime.now(dt.timezone.utc) - at).total_seconds() if at is not None else lease + 1
    if age < lease:
        raise ClaimHeld(defer=max(lease - age, 1.0))
    assert at is not None and holder is not None
    try:
        candidates = await connector.sent_since(message.address, at - dt.timedelta(seconds=LOOKUP_SKEW_SECONDS))
    except NotImplementedError:
        if resend_in_doubt:
            # A reply: the family is waiting for this answer. Sent again, at the risk of a second
            # copy if the dead attempt's had gone out, rather than leaving the answer cut short.
            status, _, _ = await asyncio.to_thread(store.claim_outbound, key, token, int(holder))
            logger.warning("a reply on %s was in flight when its worker died: sent again (a copy may already be there)", message.channel.value)
            return CLAIMED if status == CLAIMED else SETTLED
        await asyncio.to_thread(store.mark_failed, key, IN_DOUBT, int(holder), send_id)
        logger.warning("a send on %s was in flight when its worker died: recorded failed (in_doubt), not resent", message.channel.value)
        return SETTLED
    until = at + dt.timedelta(seconds=lease + LOOKUP_SKEW_SECONDS)
    in_window = [sid for sid, created in candidates if created <= until]
    known = await asyncio.to_thread(store.known_provider_ids, in_window)
    ours = [sid for sid in in_window if sid not in known]
    if ours:
        await asyncio.to_thread(store.mark_sent, key, ours[-1], int(holder), send_id)  # the oldest unknown one
        logger.info("a send on %s in flight when its worker died had gone out: recorded sent", message.channel.value)
        return SETTLED
    status, _, _ = await asyncio.to_thread(store.claim_outbound, key, token, int(holder))
    return CLAIMED if status == CLAIMED else SETTLED


async def _release(store: ContactStore, key: str, token: int, claim: str) -> None:
    if claim == CLAIMED:
        await asyncio.to_thread(store.release_claim, key, token)


FINAL_STATUSES = ("sent", "delivered", "read", "failed", "undelivered")


async def _fail_rest(store: ContactStore, job: SendJob, code: str, tries: int) -> None:
    """Record every part not yet sent as failed, with the reason."""
    for message in job.messages():
        key = message.idempotency_key or job.idempotency_key
        if await asyncio.to_thread(store.outbound_status, key) not in FINAL_STATUSES:
            await asyncio.to_thread(store.mark_failed, key, code, tries, job.send_id)


class WakeableWorker(Worker):
    """An arq worker that can be woken: a job enqueued in this process starts at once.

    arq polls its queue every ``poll_delay``; a reply enqueued just after a poll waited for
    the next one. Here each poll ends by waiting for a wake-up *or* ``poll_delay``, whichever
    comes first, so jobs from other processes and deferred retries are found as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_poll_s = self.poll_delay_s
        if not self.burst:
            self.poll_delay_s = 0.0  # arq's own sleep between polls: the wait below replaces it
        self._wake = asyncio.Event()
        self.ident = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._beat_at = 0.0

    def wake(self, queue: Optional[str] = None) -> None:
        if queue is None or queue == self.queue_name:
            self._wake.set()

    async def _poll_iteration(self) -> None:
        self._wake.clear()  # before reading the queue: a job enqueued after the read wakes the wait
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as error:  # ConnectionError, TimeoutError, WatchError (a watch cut by the restart)
            # Redis restarting: arq would let the error end the worker. Wait and poll again; the
            # jobs are in Redis (persisted), a job cut short is run again once its lock expires.
            logger.warning("redis unavailable (%s): polling again in %.0f s", type(error).__name__, REDIS_DOWN_RETRY_SECONDS)
            await asyncio.sleep(REDIS_DOWN_RETRY_SECONDS)
            return
        if time.monotonic() - self._beat_at >= HEARTBEAT_SECONDS:
            self._beat_at = time.monotonic()
            kind = "worker-replies" if self.queue_name == REPLIES_QUEUE else "worker-bulk"
            await metrics.heartbeat(self.pool, kind, self.ident, int(HEARTBEAT_SECONDS * 3))
        if self.burst:
            return  # a burst run keeps arq's own pacing
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.idle_poll_s)


def build_worker(
    send_context: SendContext,
    host: str,
    port: int,
    database: int = 0,
    password: Optional[str] = None,
    queue: str = REPLIES_QUEUE,
    burst: bool = False,
    max_jobs: int = 50,
    job_timeout: float = 60,
    job_completion_wait: float = 0,
) -> WakeableWorker:
    """An arq worker for one queue (replies or bulk) that sends with ``send_context``.

    ``job_completion_wait``: on SIGTERM/SIGINT (when the caller lets arq handle signals, as
    ``jisr worker`` does) the running jobs get this long to finish; the rest are cancelled
    and stay queued (arq runs a cancelled job again).
    """

    bulk = queue == BULK_QUEUE
    # A bulk worker's max_jobs are sends in flight, shared by a few batch jobs (send_batch).
    send_context.max_in_flight = max_jobs

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["send_context"] = send_context
        # arq cancels a job running longer than this: a send claim older than it is dead.
        ctx["claim_lease_seconds"] = job_timeout
        # Every job waits on threads (SQL, the Twilio SDK): the default pool (cores + 4) would
        # hold most of max_jobs waiting for a thread rather than for the network.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=min(64, max_jobs + 4), thread_name_prefix="send"))

    return WakeableWorker(
        # A batch's outcome is in SQL, per send: no result kept (it would hold every address).
        functions=[send_message, func(send_batch, keep_result=0)],
        redis_settings=_redis_settings(host, port, database, password),
        queue_name=queue,
        on_startup=startup,
        max_tries=ARQ_MAX_TRIES,  # re-deferrals count as tries too; real failures stop at MAX_TRIES
        burst=burst,
        max_jobs=BATCHES_IN_FLIGHT if bulk else max_jobs,
        keep_result=3600,
        poll_delay=0.05,
        handle_signals=False,
        job_completion_wait=job_completion_wait,
        # A killed worker's jobs are taken up by another one job_timeout + 10 s later (arq's
        # in-progress lock), so this is also how long a crash delays them.
        job_timeout=job_timeout,
    )
