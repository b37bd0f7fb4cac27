"""Bots say they are bots: the first reply of a conversation starts with one line saying so.

The greeting already says it, but a family whose first message is a question never sees the
greeting. So the first reply to a new contact, and to one silent for a long time
(JISR_DISCLOSURE_AFTER_SILENCE_DAYS), starts with the "bot_disclosure" line in the family's
language — unless that reply is the greeting or the answer to "are you a bot?", which say it
already.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional, Sequence

from jisr.assistant.runtime import Reply
from jisr.content import ReplyBook
from jisr.paths import reply_language_of

DISCLOSURE_KEY = "bot_disclosure"
# Replies that already say Jisr is an automatic assistant.
DISCLOSING_KEYS = ("greet", "bot_challenge")


def needs_disclosure(last_inbound_at: Optional[dt.datetime], now: dt.datetime, silence_days: int) -> bool:
    """A new contact (no earlier message), or one silent for ``silence_days`` or more."""
    return last_inbound_at is None or now - last_inbound_at >= dt.timedelta(days=silence_days)


def with_disclosure(replies: Sequence[Reply], book: ReplyBook, language: Optional[str]) -> list[Reply]:
    """``replies`` with the disclosure line at the top of the first one (once)."""
    if not replies:
        return list(replies)
    language = reply_language_of(language) if language else None
    first = replies[0]
    if any(first.text.strip() == book.text(key, language) for key in DISCLOSING_KEYS):
        return list(replies)
    line = book.text(DISCLOSURE_KEY, language)
    return [Reply(f"{line}\n\n{first.text}", first.buttons), *replies[1:]]
