"""When a conversation goes to a person, and why: decided from the assistant's turn and the text.

The rules, most urgent first (priorities in content/mediation.yml):
- safety: a safety cue (violence, a weapon, danger, self-harm, a child gone missing) in *any*
  message, whatever the classifier said — a child in danger must not depend on the NLU;
- harassment: the assistant understood report_harassment (its answer already says a mediator
  is told);
- dropout: ask_dropout_help — a child leaving or refusing school goes to a person at once, as the
  handoff issue asks (the answer used to only *offer* a mediator);
- discrimination / school_conflict: ask_parent_rights whose text carries a discrimination or a
  conflict cue; other rights questions (meetings, appeals, insurance) stay with the bot;
- request: the assistant set handoff_requested (request_mediator, or "yes" to its offer);
- not_understood: the second message in a row the assistant fell back on (counted in Redis,
  per contact, so it holds across gateway processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import redis.asyncio as aioredis

from jisr import keys
from jisr.assistant.runtime import Turn
from jisr.mediation.config import MediationConfig

FALLBACKS_IN_A_ROW = 2
FALLBACK_MEMORY_SECONDS = 24 * 3600
INTENT_REASONS = {"report_harassment": "harassment", "ask_dropout_help": "dropout"}
# The assistant's handoff_reason slot (actions/): a topic, "requested" or "accepted_offer".
SLOT_REASONS = {"harassment": "harassment", "dropout_help": "dropout"}


@dataclass(frozen=True)
class Trigger:
    reason: str
    priority: int


def sensitive_reason(config: MediationConfig, text: str, intent: Optional[str]) -> Optional[str]:
    """The reason a message is sensitive by its words alone (safety anywhere; rights cues under ask_parent_rights)."""
    if not text:
        return None
    if "safety" in config.cues and config.cues["safety"].found_in(text):
        return "safety"
    if intent == "ask_parent_rights":
        for reason in ("discrimination", "school_conflict"):
            if reason in config.cues and config.cues[reason].found_in(text):
                return reason
    return None


async def count_fallback(redis: aioredis.Redis, contact_id: int, fell_back: bool) -> int:
    """Consecutive messages not understood, this one included (0 when it was understood)."""
    key = keys.fallbacks_in_a_row(contact_id)
    if not fell_back:
        await redis.delete(key)
        return 0
    count = int(await redis.incr(key))
    await redis.expire(key, FALLBACK_MEMORY_SECONDS)
    return count


def decide(config: MediationConfig, turn: Turn, fallbacks_in_a_row: int) -> Optional[Trigger]:
    """The most urgent reason this turn hands the conversation over, or None."""
    intent = None if turn.fell_back else turn.intent
    reasons = []
    cue = sensitive_reason(config, turn.text, intent)
    if cue:
        reasons.append(cue)
    if intent in INTENT_REASONS:
        reasons.append(INTENT_REASONS[intent])
    if turn.slots.get("handoff_requested"):
        reasons.append(SLOT_REASONS.get(str(turn.slots.get("handoff_reason") or ""), "request"))
    if fallbacks_in_a_row >= FALLBACKS_IN_A_ROW:
        reasons.append("not_understood")
    if not reasons:
        return None
    reason = min(reasons, key=config.priority)
    return Trigger(reason, config.priority(reason))
