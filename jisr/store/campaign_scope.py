"""Which countries a campaign run reaches: the countries of the contacts of its sends.

Who may follow or steer a run (jisr.gateway.campaigns_api) depends on it: a run whose sends
went to Algerian families is not for an operator who covers only France. The countries are
read from the contacts at the time of asking rather than stored with the run, so a run
planned before this check existed is covered too. A family whose country is corrected later
counts under its new country, whose operators are the ones who now answer for it.

Every send counts, skipped ones included: the report lists them all (contact id, country).
"""

from __future__ import annotations

from typing import Iterable, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jisr.store.schema import campaign_sends, contacts

# Run ids per query: far below SQLite's oldest limit on bound parameters (999).
CHUNK = 500


def run_countries(engine: Engine, run_ids: Iterable[int]) -> dict[int, frozenset[Optional[str]]]:
    """run id → the countries (upper case) of its sends' contacts; None stands for contacts
    whose country is unknown. A run without sends (or an unknown id) maps to an empty set."""
    ids = sorted(set(run_ids))
    found: dict[int, set[Optional[str]]] = {}
    country = sa.func.nullif(sa.func.upper(sa.func.trim(contacts.c.country)), "")
    with engine.connect() as conn:
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            query = (
                sa.select(campaign_sends.c.run_id, country)
                .select_from(campaign_sends.join(contacts, contacts.c.id == campaign_sends.c.contact_id))
                .where(campaign_sends.c.run_id.in_(chunk))
                .distinct()
            )
            for run_id, code in conn.execute(query):
                found.setdefault(int(run_id), set()).add(code)
    return {run_id: frozenset(found.get(run_id, ())) for run_id in ids}
