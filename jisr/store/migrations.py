"""Schema migrations: numbered steps applied in order, each recorded in schema_version.

A step is a function of a connection, written with SQLAlchemy so it runs on
SQLite and PostgreSQL alike. Add a step to the end; never edit an applied one.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from jisr.store import schema

logger = logging.getLogger(__name__)


def _v1_initial(conn: Connection) -> None:
    schema.contacts.create(conn)
    schema.messages.create(conn)
    sa.Index("ix_messages_contact_created", schema.messages.c.contact_id, schema.messages.c.created_at).create(conn)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "contacts and message log", _v1_initial),
]


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            return 0
        return int(conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar() or 0)


def migrate(engine: Engine) -> int:
    """Apply every pending step, each in its own transaction. Returns the schema version."""
    with engine.begin() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            schema.schema_version.create(conn)
    version = current_version(engine)
    for number, description, step in MIGRATIONS:
        if number <= version:
            continue
        with engine.begin() as conn:
            step(conn)
            conn.execute(schema.schema_version.insert().values(version=number, applied_at=dt.datetime.now(dt.timezone.utc)))
        logger.info("database migrated to version %d (%s)", number, description)
        version = number
    return version
