"""Structured logs: one JSON object per line (``JISR_LOG_FORMAT=json`` or ``jisr --log-json``).

For log collectors (journald, Loki, Cloud Logging): each line has the time (UTC, ISO 8601),
level, logger, message, the process kind and id, and — for an exception — its type and the
frames (file, line, function), but not the exception's message: a library's message can
carry the values it choked on (a phone number, a text). Jisr's own messages never name a
family but by jisr.privacy.pseudonym.address_hash (see jisr/privacy/logs.py for the
libraries' loggers kept quiet).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import traceback
from typing import Any, Optional

# The process's role in a deployment (gateway, worker-replies, worker-bulk…): set by the command.
PROCESS_KIND = {"value": os.environ.get("JISR_PROCESS_KIND", "")}


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if PROCESS_KIND["value"]:
            entry["process"] = PROCESS_KIND["value"]
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, tb = record.exc_info
            entry["exception"] = kind.__name__
            entry["frames"] = [f"{frame.filename}:{frame.lineno} {frame.name}" for frame in traceback.extract_tb(tb)][-8:]
        return json.dumps(entry, ensure_ascii=False)


def wants_json(flag: bool = False) -> bool:
    return flag or os.environ.get("JISR_LOG_FORMAT", "").lower() == "json"


def use_json_lines(level: Optional[int] = None) -> None:
    """Every record, Jisr's and the libraries', as one JSON line on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)
