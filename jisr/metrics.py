"""Prometheus-style metrics shared by every Jisr process through Redis.

Why Redis and not per-process counters: the workers have no HTTP server, and a
process killed with kill -9 (or restarted by its supervisor) would take its
counters with it. Each event adds to one Redis hash (``keys.METRICS``), so any
gateway's ``GET /metrics`` shows the totals of the whole deployment — gateways
and workers — and they survive restarts (Redis is persisted). Scrape one
gateway (the service address), not each of them: they all report the same
totals. The gauges (queue depth, live workers, open handoffs) are read at
scrape time.

Recording never breaks the work it counts: a Redis error while counting is
logged at debug level and the count is lost.

The text is written by hand in the Prometheus exposition format 0.0.4
(prometheus_client is not a dependency).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping, Optional

from jisr import keys

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a reply within a second is the normal case; the tail shows retries and crashes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HELP = {
    "jisr_inbound_messages_total": ("counter", "Inbound webhook events by channel and outcome (processed, duplicate, in_progress, status_recorded, flood…, error)."),
    "jisr_webhook_responses_total": ("counter", "Webhook answers by channel and HTTP status."),
    "jisr_webhook_seconds": ("histogram", "Time to handle one webhook request, from arrival to the answer."),
    "jisr_reply_seconds": ("histogram", "Time from a reply job's queueing to the provider's acceptance of its last part."),
    "jisr_sends_total": ("counter", "Provider calls by channel, lane (replies, bulk) and outcome (sent, failed, contact_stopped)."),
    "jisr_send_retries_total": ("counter", "Sends put back for a later try, by channel, lane and reason (throttled, error, unexpected)."),
    "jisr_inbound_takeovers_total": ("counter", "Inbound messages whose gateway died mid-processing, processed by another gateway."),
    "jisr_queue_jobs": ("gauge", "Jobs in a send queue (state: due now, or deferred to a later time)."),
    "jisr_inbound_pending": ("gauge", "Inbound messages claimed by a gateway and not finished yet."),
    "jisr_processes_alive": ("gauge", "Gateway and worker processes that reported in the last seconds, by kind."),
    "jisr_handoffs": ("gauge", "Mediator handoffs by status."),
}


def _labels(labels: Mapping[str, Any]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


async def inc(redis: Any, name: str, labels: Optional[Mapping[str, Any]] = None, amount: int = 1) -> None:
    """Add ``amount`` to a counter."""
    try:
        await redis.hincrby(keys.METRICS, name + _labels(labels or {}), amount)
    except Exception as error:  # a metric must never fail the work it counts
        logger.debug("metric %s lost: %s", name, type(error).__name__)


async def inc_many(redis: Any, counts: Mapping[tuple[str, tuple[tuple[str, Any], ...]], int]) -> None:
    """Add to several counters, ``{(name, ((label, value), …)): amount}``, in one round trip
    (a campaign batch counts its sends once at its end rather than once per send)."""
    counted = [(name, dict(labels), n) for (name, labels), n in counts.items() if n]
    if not counted:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for name, labels, n in counted:
                pipe.hincrby(keys.METRICS, name + _labels(labels), n)
            await pipe.execute()
    except Exception as error:  # a metric must never fail the work it counts
        logger.debug("metrics lost: %s", type(error).__name__)


async def observe(redis: Any, name: str, seconds: float, labels: Optional[Mapping[str, Any]] = None, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
    """Record one value in a histogram (cumulative buckets, sum and count), in one round trip."""
    base = dict(labels or {})
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for bound in buckets:
                if seconds <= bound:
                    pipe.hincrby(keys.METRICS, f"{name}_bucket" + _labels({**base, "le": _bound(bound)}), 1)
            pipe.hincrby(keys.METRICS, f"{name}_bucket" + _labels({**base, "le": "+Inf"}), 1)
            pipe.hincrbyfloat(keys.METRICS, f"{name}_sum" + _labels(base), seconds)
            pipe.hincrby(keys.METRICS, f"{name}_count" + _labels(base), 1)
            await pipe.execute()
    except Exception as error:
        logger.debug("metric %s lost: %s", name, type(error).__name__)


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


async def heartbeat(redis: Any, kind: str, ident: str, ttl_seconds: int) -> None:
    """Say this process is alive for ``ttl_seconds`` (workers: each poll; gateways: a timer)."""
    try:
        await redis.set(keys.process_alive(kind, ident), b"1", ex=ttl_seconds)
    except Exception as error:
        logger.debug("heartbeat lost: %s", type(error).__name__)


async def live_processes(redis: Any) -> dict[str, int]:
    """Processes alive by kind (gateway, worker-replies, worker-bulk)."""
    counts: dict[str, int] = {}
    async for key in redis.scan_iter(match=keys.process_alive("*", "*"), count=200):
        kind = (key.decode() if isinstance(key, bytes) else key)[len(keys.process_alive("", "")) - 1 :].split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


async def render(redis: Any, gauges: Iterable[tuple[str, Mapping[str, Any], float]] = ()) -> str:
    """The exposition text: the shared counters and histograms, then the gauges given."""
    raw = await redis.hgetall(keys.METRICS)
    samples: dict[str, list[tuple[str, str]]] = {}
    for field, value in raw.items():
        field = field.decode() if isinstance(field, bytes) else field
        value = value.decode() if isinstance(value, bytes) else value
        series = field.split("{", 1)[0]
        family = series
        for suffix in ("_bucket", "_sum", "_count"):
            if series.endswith(suffix) and series[: -len(suffix)] in HELP:
                family = series[: -len(suffix)]
        samples.setdefault(family, []).append((field, value))
    for name, labels, value in gauges:
        samples.setdefault(name, []).append((name + _labels(labels), _number(value)))
    lines: list[str] = []
    for family in sorted(samples):
        kind, text = HELP.get(family, ("untyped", family))
        lines.append(f"# HELP {family} {text}")
        lines.append(f"# TYPE {family} {kind}")
        lines.extend(f"{series} {value}" for series, value in sorted(samples[family], key=_sample_order))
    return "\n".join(lines) + "\n"


def _sample_order(sample: tuple[str, str]) -> tuple[str, float]:
    """Buckets in increasing ``le`` order (Prometheus does not need it; people reading do)."""
    series = sample[0]
    if 'le="' in series:
        bound = series.split('le="', 1)[1].split('"', 1)[0]
        rest = series.replace(f'le="{bound}"', "")
        return rest, math.inf if bound == "+Inf" else float(bound)
    return series, 0.0


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
