"""What the logs may say: no phone number, chat id, message text or token, at any level Jisr runs at.

Jisr's own log lines name a family only by jisr.privacy.pseudonym.address_hash. The
libraries are another matter, so their loggers that print request URLs, parameters or
message texts at INFO are raised to WARNING here (their warnings and errors still show):

- httpx logs every request URL at INFO ("POST https://api.telegram.org/bot<TOKEN>/sendMessage";
  Graph's Send API wants the page token in the query string);
- twilio's HTTP client logs each request's URL and query parameters at INFO;
- Rasa and rasa_sdk log conversation ids (the address) and texts at DEBUG/INFO;
- python-telegram-bot logs call parameters (chat ids, texts) at DEBUG.

Uvicorn's access log is kept, without query strings: Messenger's verification handshake
carries the verify token there, and a console search (?q=+33612…) a phone number.

arq's worker is kept at INFO (its job timings are useful) but its "→ send_message({...})"
line prints the job's arguments — the address and the text, cut at 80 characters: a filter
hides them (_HideJobArguments).

The connectors also redact tokens from the records that still pass (connectors/telegram.py,
connectors/messenger.py). Database errors carry no statement parameters (hide_parameters in
jisr.store.contacts.create_db_engine), so a failed insert does not log a phone number.
"""

from __future__ import annotations

import logging

# Loggers that print personal data or secrets below WARNING.
TALKATIVE_LOGGERS = ("httpx", "httpcore", "twilio", "twilio.http_client", "rasa", "rasa_sdk", "telegram", "apscheduler", "sanic", "aiogram")


# arq/worker.py: logger.info('%6.2fs → %s(%s)%s', …, ref, args_to_string(args, kwargs), extra)
_JOB_START = "→ %s(%s)"
HIDDEN_ARGUMENTS = "…"


class _HideJobArguments(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and _JOB_START in record.msg and isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            args[2] = HIDDEN_ARGUMENTS
            record.args = tuple(args)
        return True


class _DropQueryStrings(logging.Filter):
    """uvicorn.access: '%s - "%s %s HTTP/%s" %d' with (client, method, path?query, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str) and "?" in record.args[2]:
            args = list(record.args)
            args[2] = args[2].split("?", 1)[0] + "?…"
            record.args = tuple(args)
        return True


def keep_personal_data_out_of_logs() -> None:
    """Raise the talkative libraries to WARNING (never lower a level set higher elsewhere),
    and hide the arguments of arq's job lines. Safe to call more than once."""
    for name in TALKATIVE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, logging.WARNING))
    for name, kind in (("arq.worker", _HideJobArguments), ("uvicorn.access", _DropQueryStrings)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
