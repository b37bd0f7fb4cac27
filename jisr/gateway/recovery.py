"""Inbound messages survive a gateway killed mid-message: claims with an owner, and a sweep.

A webhook is answered 2xx only once its message is safely claimed: the claim (the dedupe
key, ``processing:<gateway id>``) and the message itself (``keys.INBOUND_PENDING``) are
written in one atomic step, and removed when the message is done. So a message whose
gateway died (kill -9, out of memory, a node lost) is still in Redis, and:

- a redelivery by the provider (Telegram and Meta retry for hours) finds the claim's owner
  dead and processes the message at once, in the conversation's order;
- when the provider does not redeliver (Twilio retries a few times within ~15 s at most,
  and its redelivery may have been answered "in progress" by a live gateway), every
  gateway's sweep (``sweep_forever``, once a second) takes over claims whose owner stopped
  saying it is alive (``keys.process_alive("gateway", id)``, refreshed by ``heartbeat_forever``)
  and claims of its own process that nothing is working on (the release failed: Redis down).

Taking over is a compare-and-set on the claim: two gateways never both process a message.
A message may run twice only if its gateway is alive but silent for longer than
``ALIVE_SECONDS`` (a frozen process); its reply is still sent once (the reply job's id is the
provider message's).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from typing import TYPE_CHECKING, Any

from jisr import keys, metrics

if TYPE_CHECKING:
    from connectors.types import InboundMessage
    from jisr.gateway.service import Gateway

logger = logging.getLogger(__name__)

ALIVE_SECONDS = 8            # a gateway silent this long is dead: its claims are taken over
HEARTBEAT_SECONDS = 2.0
SWEEP_SECONDS = 1.0
CLAIM_SECONDS = 3600         # the claim key's own expiry: a safety net only (the sweep decides)

# A message waits at most this long for the earlier messages of its conversation (a safety net:
# a dead gateway's message is taken over within ALIVE_SECONDS + SWEEP_SECONDS).
TURN_WAIT_SECONDS = 60.0
TURN_RECHECK_SECONDS = 0.05

# Claim: the dedupe key if free, the pending message, and its place in the conversation (atomically).
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then
  redis.call('HSET', KEYS[2], KEYS[1], ARGV[2])
  redis.call('RPUSH', KEYS[3], KEYS[1])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return 1
end
return 0
"""
# Take over: only if the claim is still the abandoned one we saw (or gone while still pending).
_TAKE_OVER = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or (not current and redis.call('HEXISTS', KEYS[2], KEYS[1]) == 1) then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
  redis.call('HSET', KEYS[2], KEYS[1], ARGV[3])
  return 1
end
return 0
"""


def _claim_value(gateway: "Gateway") -> bytes:
    return b"processing:" + gateway.ident.encode()


def _pending(gateway: "Gateway", message: "InboundMessage") -> bytes:
    return pickle.dumps((gateway.ident, time.time(), message))


def _order(message: "InboundMessage") -> str:
    return keys.inbound_order(message.channel.value, message.address)


async def claim(gateway: "Gateway", dedupe: str, message: "InboundMessage") -> bool:
    return bool(await gateway.redis.eval(
        _CLAIM, 3, dedupe, keys.INBOUND_PENDING, _order(message), _claim_value(gateway), _pending(gateway, message), CLAIM_SECONDS
    ))


async def wait_for_turn(gateway: "Gateway", dedupe: str, message: "InboundMessage") -> None:
    """Return once the earlier messages of this conversation are done (or after TURN_WAIT_SECONDS).

    Why: a family writes again as soon as its provider delivered the first message; if the
    first is still being processed (slowly, or by a gateway that died and whose message is
    being taken over), the second must not overtake it — the answers would come in the wrong
    order, and the assistant would read the conversation in the wrong order too.
    """
    order = _order(message)
    deadline = time.monotonic() + TURN_WAIT_SECONDS
    while True:
        head = await gateway.redis.lindex(order, 0)
        if head is None or head.decode() == dedupe:
            return
        state = await gateway.redis.get(head)
        if state is None or state == b"done":
            await gateway.redis.lrem(order, 1, head)  # finished (or given back to the provider): not waited for
            continue
        if time.monotonic() > deadline:
            logger.warning("an earlier message of a conversation is still not done after %.0f s: not waiting longer", TURN_WAIT_SECONDS)
            return
        await asyncio.sleep(TURN_RECHECK_SECONDS)


async def release(gateway: "Gateway", dedupe: str, message: "InboundMessage") -> None:
    """Give the message back to the provider's retry (processing failed)."""
    try:
        async with gateway.redis.pipeline(transaction=True) as pipe:
            pipe.delete(dedupe)
            pipe.hdel(keys.INBOUND_PENDING, dedupe)
            pipe.lrem(_order(message), 1, dedupe)
            await pipe.execute()
    except Exception as error:
        logger.warning("releasing an inbound claim failed (%s): the sweep retakes it", type(error).__name__)


async def finish(gateway: "Gateway", dedupe: str, message: "InboundMessage") -> None:
    from jisr.gateway.service import DEDUPE_DONE_SECONDS

    async with gateway.redis.pipeline(transaction=True) as pipe:
        pipe.set(dedupe, b"done", ex=DEDUPE_DONE_SECONDS)
        pipe.hdel(keys.INBOUND_PENDING, dedupe)
        pipe.lrem(_order(message), 1, dedupe)
        await pipe.execute()


async def abandoned(gateway: "Gateway", dedupe: str, state: bytes) -> bool:
    """Is this claim's owner gone (or is it ours with nothing working on it)?"""
    if not state.startswith(b"processing:"):
        return False
    owner = state[len(b"processing:"):].decode()
    if owner == gateway.ident:
        return dedupe not in gateway.in_flight
    if not owner:  # a claim from before claims had owners
        return False
    return not await gateway.redis.exists(keys.process_alive("gateway", owner))


async def take_over(gateway: "Gateway", dedupe: str, state: bytes, message: "InboundMessage") -> bool:
    taken = bool(await gateway.redis.eval(
        _TAKE_OVER, 2, dedupe, keys.INBOUND_PENDING, state, _claim_value(gateway), _pending(gateway, message), CLAIM_SECONDS
    ))
    if taken:
        logger.info("took over an inbound message abandoned by gateway %s", state[len(b"processing:"):].decode())
        await metrics.inc(gateway.redis, "jisr_inbound_takeovers_total", {"channel": message.channel.value})
    return taken


async def sweep_once(gateway: "Gateway") -> int:
    """Process every abandoned pending message; the number taken over."""
    taken = 0
    pending = await gateway.redis.hgetall(keys.INBOUND_PENDING)
    for field, payload in pending.items():
        dedupe = field.decode()
        if dedupe in gateway.in_flight:
            continue
        state = await gateway.redis.get(dedupe)
        if state == b"done":
            await gateway.redis.hdel(keys.INBOUND_PENDING, dedupe)  # finished, the cleanup was cut short
            continue
        try:
            owner, claimed_at, message = pickle.loads(payload)
        except Exception:
            logger.exception("an unreadable pending inbound message was dropped")
            await gateway.redis.hdel(keys.INBOUND_PENDING, dedupe)
            continue
        if owner == gateway.ident and time.time() - claimed_at < ALIVE_SECONDS:
            continue  # just claimed here: the handler may not have marked it in flight yet
        if state is not None and not await abandoned(gateway, dedupe, state):
            continue
        if not await take_over(gateway, dedupe, state or b"", message):
            continue
        taken += 1
        try:
            await gateway.run_claimed(dedupe, message)
        except Exception:
            logger.exception("processing a taken-over message failed; it stays pending")
    return taken


async def heartbeat_forever(gateway: "Gateway") -> None:
    while True:
        await metrics.heartbeat(gateway.redis, "gateway", gateway.ident, ALIVE_SECONDS)
        await asyncio.sleep(HEARTBEAT_SECONDS)


async def sweep_forever(gateway: "Gateway") -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            await sweep_once(gateway)
        except Exception as error:  # Redis restarting: the next sweep tries again
            logger.debug("inbound sweep skipped: %s", type(error).__name__)


def start_background(gateway: "Gateway") -> list["asyncio.Task[Any]"]:
    """The heartbeat first (a claim must never look abandoned), then the sweep."""
    return [asyncio.create_task(heartbeat_forever(gateway)), asyncio.create_task(sweep_forever(gateway))]
