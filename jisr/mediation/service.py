"""The handoff lifecycle: open (and tell the family when a person answers), hold (the bot stays
silent), mediator replies within each platform's rules, hand back or resolve, escalate.

The gateway calls two hooks on every message (``hold`` before the assistant, ``after_turn``
after it); the mediators' API (jisr.mediation.api) calls the rest. Both run in every gateway
process: state lives in SQL and Redis only.

What the platform does not let go out now (a mediator's text outside WhatsApp's 24 hours, the
assistant's notice that a case was handed back or resolved days later) is not dropped: it is
logged with the status ``awaiting_window`` (the console shows it as waiting) and goes out,
oldest first, when the family next writes, before the answer to that message — also after the
case ended, so a mediator's answer precedes the notice. Past ``held_messages_expire_after_days``
(content/mediation.yml) it is recorded failed (``expired``) instead: its words are out of date.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

import redis.asyncio as aioredis
import sqlalchemy as sa

from connectors.base import SERVICE_WINDOW, window_open
from connectors.types import InboundMessage
from jisr import keys
from jisr.assistant.runtime import Assistant, Reply, Turn
from jisr.auth.models import Account
from jisr.consent import record_opt_out
from jisr.content import ReplyBook
from jisr.mediation.config import MediationConfig, default_config
from jisr.mediation.hours import eta, eta_text, family_zone
from jisr.mediation.store import AWAITING_WINDOW, Change, Handoff, HandoffStore
from jisr.mediation.triggers import Trigger, count_fallback, decide, sensitive_reason
from jisr.outbox import Outbox, SendJob
from jisr.paths import reply_language_of
from jisr.store.contacts import Contact, ContactStore

logger = logging.getLogger(__name__)

UTC = dt.timezone.utc
HUMAN_AGENT = "HUMAN_AGENT"
MAX_REPLY_CHARS = 4000
# Bot replies that offer or announce a mediator: replaced by the handoff notice once one is open.
OFFER_KEYS = ("mediator_offer", "fallback_mediator")
# The assistant's slots that would open a handoff again after it ended (see clear_handoff_flags).
HANDOFF_SLOTS = {"handoff_requested": False, "handoff_reason": None, "mediator_offered": False, "fallback_count": 0.0}
# The reason the assistant's own answer already tells the family a mediator is coming.
ANNOUNCED_BY_THE_BOT = ("request", "harassment")
# Reply forms that go out now; "template" and "closed" make a message wait for the family.
SENDABLE_NOW = ("text", f"tag:{HUMAN_AGENT}")


class ReplyRefused(Exception):
    """The platform does not allow a reply now (HTTP 409 with this message)."""


@dataclass(frozen=True)
class ReplyForm:
    """How a mediator's reply may go out now: text, tag:HUMAN_AGENT, template, or closed."""

    form: str
    closes_at: Optional[dt.datetime] = None
    reason: str = ""


@dataclass(frozen=True)
class ReplyResult:
    message_id: int
    form: str
    duplicate: bool = False


def reply_form(channel: str, last_inbound_at: Optional[dt.datetime], config: MediationConfig, language: Optional[str], now: Optional[dt.datetime] = None) -> ReplyForm:
    """The platform's rule for a person answering now (shared/reference/platform-rules.md)."""
    now = now or dt.datetime.now(UTC)
    if channel in ("telegram", "webchat"):
        return ReplyForm("text")  # no customer-service window on these channels
    if last_inbound_at is not None and last_inbound_at.tzinfo is None:
        last_inbound_at = last_inbound_at.replace(tzinfo=UTC)
    if window_open(last_inbound_at, now):
        assert last_inbound_at is not None
        return ReplyForm("text", last_inbound_at + SERVICE_WINDOW)
    if channel == "messenger":
        if last_inbound_at is not None and now - last_inbound_at < config.messenger_human_agent:
            return ReplyForm(f"tag:{HUMAN_AGENT}", last_inbound_at + config.messenger_human_agent)
        return ReplyForm("closed", reason=f"Messenger allows a person to answer for {config.messenger_human_agent.days} days after the family's last message; that time is over: the family has to write first")
    if channel == "whatsapp":
        if config.whatsapp_template(language):
            return ReplyForm("template")
        return ReplyForm("closed", reason="outside WhatsApp's 24-hour window only an approved template may be sent, and none is configured (whatsapp_reopen_template in content/mediation.yml)")
    return ReplyForm("closed", reason=f"unknown channel {channel}")


class Mediation:
    def __init__(
        self,
        assistant: Assistant,
        contacts: ContactStore,
        redis: aioredis.Redis,
        outbox: Outbox,
        replies: ReplyBook,
        config: Optional[MediationConfig] = None,
        telegram_group: Optional[str] = None,
        console_url: str = "",
    ) -> None:
        self.assistant = assistant
        self.contacts = contacts
        self.handoffs = HandoffStore(contacts.engine)
        self.redis = redis
        self.outbox = outbox
        self.replies = replies
        self.config = config or default_config()
        self.telegram_group = telegram_group
        self.console_url = console_url.rstrip("/")
        self._escalation: Optional[asyncio.Task[None]] = None

    # -- events ---------------------------------------------------------------------------------

    async def publish(self, kind: str, handoff: Handoff) -> None:
        """A live event for the consoles: ids and country only, never text."""
        payload = json.dumps({"type": kind, "handoff_id": handoff.id, "country": handoff.country})
        try:
            await self.redis.publish(keys.MEDIATION_EVENTS, payload)
        except Exception:  # a console missing an update must not cost a family's message
            logger.exception("publishing a mediation event failed")

    # -- gateway hooks ----------------------------------------------------------------------------

    async def hold(self, contact: Contact, message: InboundMessage, message_id: int) -> Optional[Handoff]:
        """If a person holds this conversation: keep the message for them, answer nothing, return the handoff.

        The message is still *understood* (NLU only, no conversation state): an opt-out is
        recorded at once so campaigns stop, the intents feed the case's topics, and a safety cue
        raises the priority. The bot says nothing: the mediator sees all of it in the transcript.

        First, on every message, held or not: the family's window is open again, so whatever
        waited for it goes out now, queued before any answer to this message.
        """
        waiting, handoff = await asyncio.to_thread(self.handoffs.on_family_message, contact.id)
        if waiting:
            await self.release_waiting(contact)
        if handoff is None:
            return None
        text = message.button_payload or message.text or ""
        intent = None
        if text.strip():
            try:
                parse = await self.assistant.parse(text)
                name = (parse.get("intent") or {}).get("name")
                intent = name if name and name != "nlu_fallback" else None
            except Exception:
                logger.exception("understanding a held message failed")
        await asyncio.to_thread(self.handoffs.held_message, handoff.id, message_id, message.received_at, intent)
        if intent == "opt_out":
            # Recorded, not answered: the mediator sees it and can confirm in person. A stop naming
            # topics stops only those, as outside a handoff (jisr/consent.py).
            await asyncio.to_thread(record_opt_out, self.contacts, contact.id, message.text or "", message.channel.value, "while a mediator held the conversation")
        cue = sensitive_reason(self.config, text, intent)
        if cue and self.config.priority(cue) < handoff.priority:
            opened = await asyncio.to_thread(
                self.handoffs.open, contact.id, contact.channel, cue, self.config.priority(cue), handoff.country, handoff.language, handoff.role
            )
            handoff = opened.handoff
            await self.publish("handoff.updated", handoff)
        await self.publish("message.in", handoff)
        return handoff

    async def after_turn(self, contact: Contact, message: InboundMessage, turn: Turn, replies: list[Reply]) -> list[Reply]:
        """Open a handoff if this turn calls for one; the replies to send (with the notice)."""
        fallbacks = await count_fallback(self.redis, contact.id, turn.fell_back)
        trigger = decide(self.config, turn, fallbacks)
        if trigger is None:
            return replies
        fresh = await asyncio.to_thread(self.contacts.get, contact.id) or contact
        handoff, created = await self.open(fresh, trigger, turn)
        language = reply_language_of(turn.slots.get("language") or fresh.language or "fr")
        if not created:
            return replies
        return self._with_notice(replies, handoff, fresh, trigger, language)

    async def open(self, contact: Contact, trigger: Trigger, turn: Optional[Turn] = None) -> tuple[Handoff, bool]:
        topics = [turn.intent] if turn is not None and turn.intent and not turn.fell_back else []
        opened = await asyncio.to_thread(
            self.handoffs.open,
            contact.id,
            contact.channel,
            trigger.reason,
            trigger.priority,
            contact.country,
            (turn.language_form if turn is not None and turn.language_form else None) or contact.language,
            contact.role,
            topics,
        )
        if opened.created or opened.raised:
            await self.clear_handoff_flags(contact.address)
            await self.redis.delete(keys.fallbacks_in_a_row(contact.id))
            await self.publish("handoff.opened" if opened.created else "handoff.updated", opened.handoff)
            logger.info("handoff %s %s (reason %s)", opened.handoff.id, "opened" if opened.created else "raised", trigger.reason)
        return opened.handoff, opened.created

    def _with_notice(self, replies: list[Reply], handoff: Handoff, contact: Contact, trigger: Trigger, language: str) -> list[Reply]:
        offers = {self.replies.text(key, language) for key in OFFER_KEYS}
        kept = [r for r in replies if r.text not in offers]
        lines = []
        if trigger.reason == "not_understood":
            lines.append(self.replies.text("handoff_not_understood", language))
        elif trigger.reason not in ANNOUNCED_BY_THE_BOT:
            lines.append(self.replies.text("handoff_opened", language))
        lines.append(self.eta_sentence(contact, language))
        if trigger.reason == "safety":
            lines.append(self.replies.text("handoff_emergency", language))
        return kept + [Reply("\n".join(lines))]

    def eta_sentence(self, contact: Contact, language: str, now: Optional[dt.datetime] = None) -> str:
        now = now or dt.datetime.now(UTC)
        hours = self.config.hours(contact.country)
        when = eta(hours, now, self.config.expected_response)
        return eta_text(self.replies, language, when, family_zone(contact.timezone, hours), now)

    async def clear_handoff_flags(self, sender: str) -> None:
        """Reset the assistant's handoff slots, so its next turns do not open the handoff again.

        The slots (set by actions/mediator.py and actions/answers.py) stay set in the tracker;
        the gateway reads them once, when the handoff opens. Written under Rasa's own lock for
        the conversation, as Agent.handle_message does.
        """
        from rasa.shared.core.events import SlotSet

        agent = self.assistant.agent
        try:
            async with agent.lock_store.lock(sender):
                tracker = await agent.tracker_store.retrieve(sender)
                if tracker is None:
                    return
                for name, value in HANDOFF_SLOTS.items():
                    tracker.update(SlotSet(name, value))
                await agent.tracker_store.save(tracker)
        except Exception:
            logger.exception("clearing the assistant's handoff slots failed")

    # -- mediators' actions ---------------------------------------------------------------------

    def window(self, handoff: Handoff, contact: Contact) -> ReplyForm:
        return reply_form(handoff.channel, contact.last_inbound_at, self.config, family_language(handoff, contact))

    async def reply(self, handoff: Handoff, account: Account, text: str, idempotency_key: Optional[str]) -> ReplyResult:
        """Send a mediator's text to the family through its channel, in the form the platform allows now."""
        contact = await asyncio.to_thread(self.contacts.get, handoff.contact_id)
        if contact is None:
            raise ReplyRefused("the family's contact was erased")
        if not handoff.is_open:
            raise ReplyRefused(f"this conversation is closed ({handoff.status}): the family's messages go to the assistant again")
        form = self.window(handoff, contact)
        if form.form == "closed":
            raise ReplyRefused(form.reason)
        key = self._reply_key(handoff, account, text, idempotency_key)
        part_key = f"{key}:0"
        if await asyncio.to_thread(self.contacts.outbound_status, part_key) is not None:
            existing = await asyncio.to_thread(self._message_id, part_key)
            return ReplyResult(existing, form.form, duplicate=True)
        try:
            message_id = await asyncio.to_thread(self.contacts.log_outbound, contact.id, handoff.channel, text, part_key)
        except sa.exc.IntegrityError:  # the same key at the same moment (a double click)
            return ReplyResult(await asyncio.to_thread(self._message_id, part_key), form.form, duplicate=True)
        if form.form == "template":
            # The text waits for the family to write back; a template asks them to.
            await self._wait_for_family(handoff, contact, message_id, account.id, key, account)
        else:
            await asyncio.to_thread(self.handoffs.tag_message, message_id, handoff.id, account.id)
            await self.outbox.enqueue(self._text_job(key, handoff.channel, contact, text, form.form))
        await asyncio.to_thread(self.handoffs.first_response, handoff.id)
        await self.publish("message.out", handoff)
        return ReplyResult(message_id, form.form)

    def _message_id(self, idempotency_key: str) -> int:
        from jisr.store.schema import messages

        with self.contacts.engine.connect() as conn:
            return int(conn.execute(sa.select(messages.c.id).where(messages.c.idempotency_key == idempotency_key)).scalar() or 0)

    @staticmethod
    def _reply_key(handoff: Handoff, account: Account, text: str, given: Optional[str]) -> str:
        """The client's key, or one derived from who wrote what in which minute (a resent form
        within the minute is the same reply; the same words a minute later are a new one)."""
        if given:
            material = f"key:{given}"
        else:
            material = f"derived:{account.id}:{int(dt.datetime.now(UTC).timestamp() // 60)}:{text}"
        return f"mediator:{handoff.id}:{hashlib.sha256(material.encode()).hexdigest()[:24]}"

    @staticmethod
    def _text_job(key: str, channel: str, contact: Contact, text: str, form: str = "text") -> SendJob:
        """One text to the family on the replies lane (turn order kept), tagged HUMAN_AGENT when
        that is the form the platform allows now (Messenger, 24 hours to 7 days)."""
        return SendJob(
            idempotency_key=key,
            channel=channel,
            address=contact.address,
            parts=((text, ()),),
            messenger_tag=HUMAN_AGENT if form == f"tag:{HUMAN_AGENT}" else None,
            contact_id=contact.id,
            lane="replies",
        )

    async def _wait_for_family(
        self, handoff: Handoff, contact: Contact, message_id: int, author_id: Optional[int], key: str, asker: Optional[Account]
    ) -> None:
        """Keep a logged message until the family writes (``release_waiting`` sends it then).

        ``asker`` set (WhatsApp with a reopen template): the template, in their name, asks the
        family to write back — once: not when something already waits for them (it was asked).
        """
        await self.expire_held(contact)  # an expired text is no longer a reason not to ask again
        already_asked = bool(await asyncio.to_thread(self.handoffs.awaiting_window, contact.id))
        await asyncio.to_thread(self.handoffs.tag_message, message_id, handoff.id, author_id, AWAITING_WINDOW)
        # The family may have written between the window check and the tag above, and that
        # message's release did not see this one: nobody else would send it until they write again.
        fresh = await asyncio.to_thread(self.contacts.get, contact.id)
        if fresh is not None and self.window(handoff, fresh).form == "text":
            await self.release_waiting(fresh)
            return
        if asker is not None and not already_asked:
            await self._send_template(handoff, contact, asker, key)

    async def _send_template(self, handoff: Handoff, contact: Contact, account: Account, key: str) -> None:
        sid = self.config.whatsapp_template(family_language(handoff, contact))
        assert sid is not None  # reply_form said "template"
        reopen = f"{key}:reopen"
        variables = (("1", account.display_name),)
        logged = f"[template {sid}] {account.display_name}"
        message_id = await asyncio.to_thread(self.contacts.log_outbound, contact.id, handoff.channel, logged, f"{reopen}:0")
        await asyncio.to_thread(self.handoffs.tag_message, message_id, handoff.id, account.id)
        await self.outbox.enqueue(
            SendJob(
                idempotency_key=reopen,
                channel=handoff.channel,
                address=contact.address,
                template_sid=sid,
                template_variables=variables,
                contact_id=contact.id,
                lane="replies",
            )
        )

    async def release_waiting(self, contact: Contact) -> None:
        """The family wrote: the window is open again, so the mediators' texts and the assistant's
        notices that waited for it go out now, oldest first, as plain text (inside the window);
        those kept past the expiry are recorded expired instead."""
        await self.expire_held(contact)
        taken = await asyncio.to_thread(self.handoffs.take_awaiting, contact.id)
        for index, item in enumerate(taken):
            key = str(item["idempotency_key"]).rsplit(":", 1)[0]  # logged as "<job key>:0"
            try:
                await self.outbox.enqueue(self._text_job(key, contact.channel, contact, item["text"] or ""))
            except Exception:
                # Not queued: waiting again, so the retry of the family's message (or their next one) sends it.
                await asyncio.to_thread(self.handoffs.wait_again, [m["id"] for m in taken[index:]])
                raise
        for handoff_id in sorted({item["handoff_id"] for item in taken if item["handoff_id"]}):
            handoff = await asyncio.to_thread(self.handoffs.get, handoff_id)
            if handoff is not None:
                await self.publish("message.out", handoff)

    async def expire_held(self, contact: Contact, now: Optional[dt.datetime] = None) -> int:
        """Record the contact's waiting messages older than ``held_messages_expire_after`` as
        failed (``expired``), so they are never sent; how many. Called before every release and
        before a transcript is shown, so the console never promises what will not go out."""
        now = now or dt.datetime.now(UTC)
        expired = await asyncio.to_thread(self.handoffs.expire_awaiting, contact.id, now - self.config.held_messages_expire_after, now)
        for handoff_id in sorted({item["handoff_id"] for item in expired if item["handoff_id"]}):
            logger.info("handoff %s: waiting message(s) expired unsent after %s days", handoff_id, self.config.held_messages_expire_after.days)
            handoff = await asyncio.to_thread(self.handoffs.get, handoff_id)
            if handoff is not None:
                await self.publish("message.out", handoff)  # the consoles refresh the transcript
        return len(expired)

    async def end(self, handoff: Handoff, status: str, by: Optional[Account] = None) -> Change:
        """Hand back (the bot resumes) or resolve; the family is told in its language (``by``:
        who ended it, named in the WhatsApp template when the notice needs one). A mediator's
        texts still waiting for the window stay queued ahead of that notice (HandoffStore.end);
        their template already asked the family to write, so the notice sends none."""
        change = await asyncio.to_thread(self.handoffs.end, handoff.id, status)
        if not change.ok or change.handoff is None:
            return change
        ended = change.handoff
        contact = await asyncio.to_thread(self.contacts.get, ended.contact_id)
        if contact is not None:
            await self.clear_handoff_flags(contact.address)
            await self.redis.delete(keys.fallbacks_in_a_row(contact.id))
            await self._tell(ended, contact, "handoff_back" if status == "handed_back" else "handoff_resolved", f"handoff:{ended.id}:{status}", by)
        await self.publish("handoff.updated", ended)
        return change

    async def _tell(self, handoff: Handoff, contact: Contact, reply_key_name: str, key: str, by: Optional[Account] = None) -> None:
        """A notice from the assistant about the handoff, in the family's language, never dropped.

        Inside the window it goes now; on Messenger from 24 hours to 7 days with the HUMAN_AGENT
        tag (a notice about a person's handling of the case is what the tag is for). Otherwise it
        waits for the family's next message (``release_waiting``); on WhatsApp the reopen
        template, when configured, asks them to write, as for a mediator's text.
        """
        form = self.window(handoff, contact)
        text = self.replies.text(reply_key_name, family_language(handoff, contact))
        message_id = await asyncio.to_thread(self.contacts.log_outbound, contact.id, handoff.channel, text, f"{key}:0")
        if form.form in SENDABLE_NOW:
            if form.form == "text":
                # The family's message that opened the window may not have released a mediator's
                # waiting text yet (the case ended at that moment): it goes first, then the notice.
                await self.release_waiting(contact)
            await asyncio.to_thread(self.handoffs.tag_message, message_id, handoff.id, None)
            await self.outbox.enqueue(self._text_job(key, handoff.channel, contact, text, form.form))
            return
        asker = await self._template_asker(handoff, by) if form.form == "template" else None
        await self._wait_for_family(handoff, contact, message_id, None, key, asker)
        logger.info("handoff %s: notice kept for the family's next message (%s outside its window%s)", handoff.id, handoff.channel, "; template sent" if asker else "")

    async def _template_asker(self, handoff: Handoff, by: Optional[Account]) -> Optional[Account]:
        """Whose name the reopen template gives: who ended the case, else who held it (none: no template)."""
        if by is not None:
            return by
        if handoff.assigned_to is None:
            return None
        from jisr.auth.store import AccountStore

        return await asyncio.to_thread(AccountStore(self.contacts.engine).get, handoff.assigned_to)

    # -- escalation -------------------------------------------------------------------------------

    async def escalate_due(self, now: Optional[dt.datetime] = None) -> list[Handoff]:
        """Escalate handoffs left waiting past the configured wait; notify the mediators' group."""
        escalated = await asyncio.to_thread(self.handoffs.escalate_due, self.config.escalation_wait, now)
        for handoff in escalated:
            await self.publish("handoff.updated", handoff)
            if self.telegram_group:
                await self._notify_group(handoff, now or dt.datetime.now(UTC))
        return escalated

    async def _notify_group(self, handoff: Handoff, now: dt.datetime) -> None:
        minutes = int((now - handoff.created_at).total_seconds() // 60)
        link = f"{self.console_url}/console/mediation?handoff={handoff.id}" if self.console_url else ""
        text = self.config.escalation_notice.format(
            id=handoff.id, minutes=minutes, reason=handoff.reason, priority=handoff.priority, country=handoff.country or "?", language=handoff.language or "?", link=link
        ).strip()
        group = str(self.telegram_group)
        address = group if group.startswith("telegram:") else f"telegram:{group}"
        # No contact and no message log: the group is not a family. The job id makes it once.
        await self.outbox.enqueue(SendJob(idempotency_key=f"escalation:{handoff.id}", channel="telegram", address=address, parts=((text, ()),), lane="replies"))

    def start_escalation(self, interval_seconds: float) -> None:
        """Run the periodic escalation check in the background of this process (see stop)."""
        if self._escalation is None:
            self._escalation = asyncio.create_task(self.run_escalation(interval_seconds))

    async def stop(self) -> None:
        task, self._escalation = self._escalation, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def run_escalation(self, interval_seconds: float) -> None:
        """The periodic check inside `jisr serve`: safe with several gateway processes (see HandoffStore.escalate_due)."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.escalate_due()
            except Exception:  # a database hiccup must not end the loop
                logger.exception("escalation check failed; trying again at the next interval")


def family_language(handoff: Handoff, contact: Contact) -> str:
    """The reply language of what the family reads (a Darija speaker reads the Arabic texts)."""
    return reply_language_of(contact.language or handoff.language or "fr")


def least_loaded(candidates: list[Account], load: dict[int, int]) -> Optional[Account]:
    """The candidate with the fewest open handoffs (ties: the lowest id, for a stable choice)."""
    if not candidates:
        return None
    return min(candidates, key=lambda a: (load.get(a.id, 0), a.id))


def covers_language(account: Account, language: Optional[str]) -> bool:
    """Does this person read the family's language form? Unset languages: any; ar readers read ary."""
    if account.role == "admin" or not account.languages or not language:
        return True
    readable = set(account.languages)
    if "ar" in readable:
        readable.add("ary")
    return language in readable

