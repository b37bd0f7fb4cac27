"""From a normalised inbound message to queued replies: de-duplicate, remember, understand, answer.

Every channel's webhook ends here, so the rules that must hold everywhere
(answer once per provider message id, never drop media, remember the
profile, flood control, nothing in clear in the logs) hold in one place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import redis.asyncio as aioredis

from connectors.types import InboundEvent, InboundMessage, MediaKind, StatusUpdate
from jisr import keys
from jisr.assistant.runtime import FALLBACK_INTENT, Assistant, Reply, Turn
from jisr.consent import record_opt_in, record_opt_out
from jisr.content import ReplyBook, default_reply_book
from jisr.outbox import Outbox, SendJob, reply_key
from jisr.privacy.disclosure import needs_disclosure, with_disclosure
from jisr.privacy.pseudonym import address_hash  # noqa: F401  (re-exported: it lived here)
from jisr.store.contacts import PROFILE_FIELDS, Contact, ContactStore
from jisr.topics import unsubscribed_topics

logger = logging.getLogger(__name__)

# What a connector reports when the platform itself says the person blocked the bot (Telegram "kicked").
PLATFORM_OPT_OUT = "/opt_out"
CONSENT_OF_INTENT = {"opt_out": "opted_out", "opt_in": "opted_in"}
DEDUPE_PROCESSING_SECONDS = 120       # a crashed worker's claim expires; the provider's retry is then processed
DEDUPE_DONE_SECONDS = 7 * 24 * 3600   # providers retry for hours at most
DISCLOSURE_CLAIM_SECONDS = 600        # two first messages at once: the disclosure goes with one of them


@dataclass(frozen=True)
class InboundOutcome:
    status: str                     # processed | duplicate | in_progress | status_recorded | flood
    turn: Optional[Turn] = None
    replies: tuple[Reply, ...] = ()


class Gateway:
    """The services a message needs, wired once per process."""

    def __init__(
        self,
        assistant: Assistant,
        store: ContactStore,
        redis: aioredis.Redis,
        outbox: Outbox,
        replies: Optional[ReplyBook] = None,
        sender_messages_per_minute: int = 20,
        disclosure_after_silence_days: int = 30,
    ) -> None:
        self.assistant = assistant
        self.store = store
        self.redis = redis
        self.outbox = outbox
        self.replies = replies or default_reply_book()
        self.sender_messages_per_minute = sender_messages_per_minute
        self.disclosure_after_silence_days = disclosure_after_silence_days
        # jisr.mediation.service.Mediation, set by start_services: holds conversations a person took over.
        self.mediation: Any = None
        # Who this process is in inbound claims, and the claims it is working on right now
        # (jisr.gateway.recovery: a claim of a live gateway that is not in flight was abandoned).
        self.ident = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.in_flight: set[str] = set()

    async def handle(self, event: InboundEvent) -> InboundOutcome:
        if isinstance(event, StatusUpdate):
            await asyncio.to_thread(self.store.apply_status, event.provider_message_id, event.status.value, event.error_code)
            return InboundOutcome("status_recorded")
        return await self.handle_message(event)

    async def handle_message(self, message: InboundMessage) -> InboundOutcome:
        """Claim the message (once per provider id), process it, mark it done.

        The claim names this gateway process and keeps the message in Redis until it is done
        (keys.INBOUND_PENDING, jisr.gateway.recovery): a gateway killed mid-message (kill -9,
        OOM) leaves it there, and the provider's redelivery — or, when the provider does not
        redeliver (Twilio gives up within seconds), another gateway's sweep — processes it.
        """
        from jisr.gateway import recovery

        dedupe = keys.dedupe(message.channel.value, message.provider_message_id)
        claimed = await recovery.claim(self, dedupe, message)
        if not claimed:
            state = await self.redis.get(dedupe)
            if state == b"done":
                return InboundOutcome("duplicate")
            if state is not None and await recovery.abandoned(self, dedupe, state) and await recovery.take_over(self, dedupe, state, message):
                return await self.run_claimed(dedupe, message)  # its gateway died: answered now, in turn
            return InboundOutcome("in_progress")
        return await self.run_claimed(dedupe, message)

    async def run_claimed(self, dedupe: str, message: InboundMessage) -> InboundOutcome:
        from jisr.gateway import recovery

        self.in_flight.add(dedupe)
        try:
            try:
                await recovery.wait_for_turn(self, dedupe, message)  # the conversation's earlier messages first
                outcome = await self._process(message)
            except BaseException:
                # Let the provider's retry (or our own) process it again. If Redis is down the
                # release fails too: the claim stays ours and our sweep retakes it later.
                await recovery.release(self, dedupe, message)
                raise
            await recovery.finish(self, dedupe, message)
        finally:
            self.in_flight.discard(dedupe)
        return outcome

    async def _process(self, message: InboundMessage) -> InboundOutcome:
        media = [
            {"kind": m.kind.value, "url": m.url, "provider_id": m.provider_id, "mime_type": m.mime_type} for m in message.media
        ]
        if message.location:
            media.append({"kind": MediaKind.LOCATION.value, "latitude": message.location.latitude, "longitude": message.location.longitude})
        # The contact as it was before this message (its last_inbound_at is the previous one's).
        contact, message_id = await asyncio.to_thread(
            self.store.receive_inbound, message.address, message.channel.value, message.provider_message_id, message.text, media,
            message.received_at,
        )

        if message.button_payload == PLATFORM_OPT_OUT and not message.text:
            # The platform says the person blocked the bot: record it, and send nothing (it would be refused).
            await asyncio.to_thread(self.store.record_consent, contact.id, "opted_out", "platform", "blocked the bot", message.channel.value)
            logger.info("platform opt-out on %s for %s", message.channel.value, address_hash(contact.address))
            return InboundOutcome("opted_out")

        if self.mediation is not None and await self.mediation.hold(contact, message, message_id) is not None:
            # A mediator holds the conversation: the message is theirs (logged above), the bot says nothing.
            return InboundOutcome("held")

        flood = await self._flood_state(contact)
        if flood == "ignore":
            return InboundOutcome("flood_ignored")
        if flood == "warn":
            replies = [Reply(self.replies.text("too_many_messages", contact.language))]
            await self._queue(contact, message, replies)
            return InboundOutcome("flood", replies=tuple(replies))

        text = message.button_payload or message.text
        if not text.strip() and media:
            # Voice notes, photos, documents: kept for a mediator (logged above), answered helpfully.
            kind = media[0]["kind"]
            kinds = self.replies.raw("media_kinds", contact.language)
            replies = [Reply(self.replies.text("media_received", contact.language, media_kind=kinds.get(kind, kinds.get("other", kind))))]
            await self._queue(contact, message, replies)
            return InboundOutcome("processed", replies=tuple(replies))

        hints: dict[str, Any] = await asyncio.to_thread(self.store.shared_profile, contact)
        if not contact.language and message.language_hint:
            hints.setdefault("language", message.language_hint.split("-")[0])
        if unsubscribed_topics(message.text or ""):
            # Should this be a "stop the exam reminders", the assistant says which reminders
            # continue (actions/subscription.py): it needs what the family receives now.
            hints["consent"] = contact.consent
            hints["topics"] = list(await asyncio.to_thread(self.store.reminder_topics, contact.id))
        turn = await self.assistant.handle(contact.address, text, hints)
        # A fallback is logged as the fallback marker, not as the guessed intent: the indicators
        # count these as questions the assistant could not answer (jisr/indicators.py).
        logged_intent = FALLBACK_INTENT if turn.fell_back else turn.intent
        learned = {name: turn.slots.get(name) for name in PROFILE_FIELDS}
        learned["language"] = turn.slots.get("language")
        await asyncio.to_thread(self.store.record_understanding, message_id, logged_intent, turn.language, contact.id, learned)
        if turn.intent in CONSENT_OF_INTENT and not turn.fell_back:
            # Consent lives in Jisr's own store, whatever the channel offers: a STOP here stops
            # campaigns at once; a STOP naming topics stops only those (jisr/consent.py).
            record = record_opt_out if turn.intent == "opt_out" else record_opt_in
            await asyncio.to_thread(record, self.store, contact.id, message.text or "", message.channel.value)
        replies = list(turn.replies)
        if self.mediation is not None:
            # A request, two messages not understood, or a sensitive situation: hand over to a person.
            replies = await self.mediation.after_turn(contact, message, turn, replies)
        await self._queue(contact, message, replies, language=turn.language)
        logger.info("answered %s on %s (intent %s)", address_hash(contact.address), message.channel.value, turn.intent)
        return InboundOutcome("processed", turn=turn, replies=tuple(replies))

    async def _flood_state(self, contact: Contact) -> str:
        """ok, warn (the first message over the limit gets a polite answer) or ignore (logged, not answered)."""
        key = keys.sender_rate(address_hash(contact.address), int(time.time() // 60))
        count = await self.redis.incr(key)
        if count == 1:
            await self.redis.expire(key, 120)
        if count <= self.sender_messages_per_minute:
            return "ok"
        return "warn" if count == self.sender_messages_per_minute + 1 else "ignore"

    async def _queue(
        self, contact: Contact, message: InboundMessage, replies: list[Reply] | tuple[Reply, ...], language: Optional[str] = None
    ) -> None:
        """Log every reply, then queue them as one job so they arrive in order.

        ``contact`` is as read before this message (its last_inbound_at is the previous
        message's): the first reply to a new or long-silent family says Jisr is a bot.
        """
        if not replies:
            return
        if needs_disclosure(contact.last_inbound_at, message.received_at, self.disclosure_after_silence_days):
            claim = keys.disclosure_claim(address_hash(contact.address))
            if await self.redis.set(claim, b"1", nx=True, ex=DISCLOSURE_CLAIM_SECONDS):
                replies = with_disclosure(replies, self.replies, language or contact.language or (message.language_hint or "").split("-")[0] or None)
        job = SendJob(
            idempotency_key=reply_key(message.provider_message_id, message.channel.value),
            channel=message.channel.value,
            address=contact.address,
            parts=tuple((r.text, tuple((b["title"], b["payload"]) for b in r.buttons)) for r in replies),
            contact_id=contact.id,
            lane="replies",
        )
        parts = [(reply.text, job.part_key(index)) for index, reply in enumerate(replies)]
        await asyncio.to_thread(self.store.log_outbound_many, contact.id, message.channel.value, parts)
        await self.outbox.enqueue(job)
