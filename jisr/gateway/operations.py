"""What operators run the gateway with: /metrics, Redis outages answered 503, a graceful stop.

Kept out of app.py so the routes there stay about families and operators' work.
See docs/deployment.md for how these fit a multi-process deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jisr import metrics
from jisr.outbox import BULK_QUEUE, REPLIES_QUEUE

if TYPE_CHECKING:
    from jisr.gateway.app import Services

logger = logging.getLogger(__name__)

# On SIGTERM the in-process reply worker stops taking jobs and gives the running ones this long
# to finish; what is left is cancelled and stays queued (another worker sends it).
SHUTDOWN_GRACE_SECONDS = 10.0
READY_CHECK_SECONDS = 2.0


def install(app: FastAPI) -> None:
    """/metrics, and a 503 with Retry-After instead of a 500 whenever Redis is unreachable."""

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics of the whole deployment (shared through Redis)")
    async def metrics_page(request: Request) -> Response:
        svc: "Services" = request.app.state.services
        gauges = await _gauges(svc)
        return Response(await metrics.render(svc.gateway.redis, gauges), media_type=metrics.CONTENT_TYPE)

    async def redis_down(request: Request, error: Exception) -> JSONResponse:
        # A request that needed Redis while it restarts: the client (a provider, the web chat page)
        # tries again; a 500 would read as a bug.
        logger.warning("redis unavailable during %s %s: answered 503", request.method, request.url.path)
        return JSONResponse({"detail": "temporarily unavailable, retry later"}, status_code=503, headers={"Retry-After": "2"})

    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)


async def _gauges(svc: "Services") -> list[tuple[str, dict[str, Any], float]]:
    redis = svc.gateway.redis
    now_ms = time.time() * 1000
    gauges: list[tuple[str, dict[str, Any], float]] = []
    for lane, queue in (("replies", REPLIES_QUEUE), ("bulk", BULK_QUEUE)):
        total = await redis.zcard(queue)
        due = await redis.zcount(queue, "-inf", now_ms)
        gauges.append(("jisr_queue_jobs", {"lane": lane, "state": "due"}, due))
        gauges.append(("jisr_queue_jobs", {"lane": lane, "state": "deferred"}, total - due))
    from jisr import keys

    gauges.append(("jisr_inbound_pending", {}, await redis.hlen(keys.INBOUND_PENDING)))
    alive = await metrics.live_processes(redis)
    for kind in ("gateway", "worker-replies", "worker-bulk"):
        gauges.append(("jisr_processes_alive", {"kind": kind}, alive.get(kind, 0)))
    for status, count in await asyncio.to_thread(_handoffs_by_status, svc.store.engine):
        gauges.append(("jisr_handoffs", {"status": status}, count))
    return gauges


def _handoffs_by_status(engine: Any) -> Iterable[tuple[str, int]]:
    import sqlalchemy as sa

    from jisr.store import schema

    table = getattr(schema, "handoffs", None)
    if table is None or "status" not in table.c:
        return []
    with engine.connect() as conn:
        return [(str(s), int(n)) for s, n in conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status))]


async def count_webhook(svc: "Services", channel: str, outcomes: Optional[list[Any]], status: int, started: float) -> None:
    """Inbound events by outcome, the answer's status, and the time it took."""
    redis = svc.gateway.redis
    for outcome in outcomes or [None]:
        await metrics.inc(redis, "jisr_inbound_messages_total", {"channel": channel, "outcome": outcome.status if outcome else "error"})
    await metrics.inc(redis, "jisr_webhook_responses_total", {"channel": channel, "status": status})
    await metrics.observe(redis, "jisr_webhook_seconds", time.perf_counter() - started, {"channel": channel})


async def ready_check(svc: "Services") -> Optional[str]:
    """None when Redis and the database answer within READY_CHECK_SECONDS, else why not."""
    try:
        await asyncio.wait_for(svc.gateway.redis.ping(), READY_CHECK_SECONDS)
        await asyncio.wait_for(asyncio.to_thread(svc.store.get, 0), READY_CHECK_SECONDS)
    except asyncio.TimeoutError:
        return "timeout"
    except Exception as error:
        return type(error).__name__
    return None


async def drain_worker(worker: Any, task: Optional["asyncio.Task[Any]"], grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
    """Stop taking jobs, let the running ones finish within ``grace``, cancel the rest (they stay queued)."""
    if worker is not None:
        worker.allow_pick_jobs = False
        deadline = time.monotonic() + grace
        while any(not t.done() for t in worker.tasks.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = sum(not t.done() for t in worker.tasks.values())
        if left:
            logger.warning("shutdown: %d send jobs still running after %.0f s are cancelled and stay queued", left, grace)
        for t in worker.tasks.values():
            t.cancel()
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def stop_background(tasks: Iterable["asyncio.Task[Any]"]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
