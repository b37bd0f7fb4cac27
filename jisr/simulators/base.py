"""What every provider simulator shares: a record of requests and injected failures."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse


@dataclass
class Failure:
    """One injected failure: an HTTP status (429 with retry_after, 5xx), a timeout, or "blocked by the user"."""

    status: Optional[int] = None
    retry_after: Optional[float] = None
    timeout: Optional[float] = None      # seconds to hang before answering 504
    blocked: bool = False                # the provider's own "user blocked the bot / sent STOP" refusal


@dataclass
class FailurePlan:
    """Failures to inject: the next ``queue`` ones in order, then at random by ``rates``."""

    queue: list[Failure] = field(default_factory=list)
    rate_5xx: float = 0.0
    status_5xx: int = 503                # the server error injected at rate_5xx (500, 502, 503)
    rate_429: float = 0.0
    rate_timeout: float = 0.0
    retry_after: float = 1.0
    timeout_seconds: float = 5.0
    blocked_addresses: set[str] = field(default_factory=set)
    seed: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def next_failure(self, address: Optional[str] = None) -> Optional[Failure]:
        with self._lock:
            if address and address in self.blocked_addresses:
                return Failure(blocked=True)
            if self.queue:
                return self.queue.pop(0)
            roll = self._random.random()
            if roll < self.rate_5xx:
                return Failure(status=self.status_5xx)
            if roll < self.rate_5xx + self.rate_429:
                return Failure(status=429, retry_after=self.retry_after)
            if roll < self.rate_5xx + self.rate_429 + self.rate_timeout:
                return Failure(timeout=self.timeout_seconds)
            return None


# How each provider re-sends a webhook that failed (5xx, timeout, connection refused): the delays
# before each retry, in seconds. Used by the soak (``retry_delays`` of each /_sim/inbound); real
# schedules are longer, these keep their shape within a run of minutes.
# - Twilio retries only within its connection-override budget (``#rc=…&rp=…`` on the webhook
#   URL; by default once, on a connection timeout): a few immediate retries, ~15 s at most;
# - Telegram keeps an update for 24 h and re-sends it "a reasonable amount of attempts", with
#   growing delays;
# - Meta re-sends at once a few times, then with decreasing frequency for hours.
REDELIVERY_DELAYS = {
    "twilio": (0.0, 0.0, 0.0),
    "telegram": (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0, 60.0),
    "meta": (0.0, 0.0, 5.0, 15.0, 30.0, 60.0, 60.0),
}


def redelivery_delays(retries: int, retry_delay: float, retry_delays: Optional[list[float]]) -> list[float]:
    """The waits before each retry: an explicit schedule, else ``retries`` times ``retry_delay``."""
    if retry_delays is not None:
        return [max(0.0, float(d)) for d in retry_delays]
    return [max(0.0, retry_delay)] * max(0, retries)


class SimulatorState:
    """Requests received and failures planned; shared by a simulator's routes."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan = FailurePlan()
        self._lock = threading.Lock()

    def record(self, **request: Any) -> dict[str, Any]:
        """Keep a request (with the time it arrived, for latency figures); the entry, to complete later."""
        request.setdefault("at", time.time())
        with self._lock:
            self.requests.append(request)
        return request

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.plan = FailurePlan()


def control_router(state: SimulatorState) -> APIRouter:
    """/_sim/requests, /_sim/fail, /_sim/reset: how tests and benchmarks drive a simulator over HTTP."""
    router = APIRouter(prefix="/_sim", tags=["simulator control"])

    @router.get("/requests")
    def requests() -> dict[str, Any]:
        return {"requests": state.requests}

    @router.post("/reset")
    def reset() -> dict[str, str]:
        state.reset()
        return {"status": "reset"}

    @router.post("/fail")
    def fail(plan: dict[str, Any]) -> dict[str, str]:
        queue = [Failure(**f) for f in plan.pop("queue", [])]
        blocked = set(plan.pop("blocked_addresses", []))
        state.plan = FailurePlan(queue=queue, blocked_addresses=blocked, **plan)
        return {"status": "planned"}

    return router


async def apply_failure(failure: Optional[Failure], blocked_response: JSONResponse) -> Optional[JSONResponse]:
    """The response a failure produces (None: no failure, serve normally)."""
    if failure is None:
        return None
    if failure.blocked:
        return blocked_response
    if failure.timeout:
        await asyncio.sleep(failure.timeout)
        return JSONResponse({"error": "gateway timeout"}, status_code=504)
    headers = {"Retry-After": str(int(failure.retry_after))} if failure.retry_after else {}
    return JSONResponse({"error": "injected", "status": failure.status}, status_code=failure.status or 500, headers=headers)


def mount_control(app: FastAPI, state: SimulatorState) -> None:
    app.include_router(control_router(state))
    app.state.simulator = state
