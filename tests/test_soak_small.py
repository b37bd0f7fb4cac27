"""`jisr bench soak --quick` as a test: a few dozen conversations on the four channels in the six
language forms, a small campaign, faults on every send (5 % 500s, 2 % 429s, timeouts), webhooks
re-sent as each provider does, the workers killed with SIGKILL and Redis killed and restarted —
and nothing lost, nothing sent twice, nothing to an opted-out contact, no 500 to a provider.

It runs the real thing as deployed: redis-server (appendonly), `jisr serve --no-worker` behind
the soak's proxy, `jisr worker` for replies and for the campaign, the simulators as processes.
About two to three minutes on two cores.
"""

from __future__ import annotations

import asyncio

from jisr.bench.soak import SoakOptions, run_soak


def test_quick_soak_loses_nothing_and_sends_nothing_twice() -> None:
    options = SoakOptions.quick()
    report = asyncio.run(asyncio.wait_for(run_soak(options), options.max_seconds))
    c, k = report.conversations, report.campaign
    print(report.as_table())  # the figures, when run with -s

    # The faults really happened: the crashes, and retries caused by the injected errors.
    assert any("worker kill -9" in e for e in report.events) and any("redis kill -9" in e for e in report.events), report.events
    assert report.metrics["retries"] > 0
    # Every language form and channel carried conversations, and they were answered.
    assert set(c["by_form"]) == {"ar", "ary", "fr", "es", "it", "de"}
    assert set(c["by_channel"]) == {"whatsapp", "telegram", "messenger", "webchat"}
    assert c["messages"] >= 60 and c["answered_once"] >= 0.8 * c["messages"]
    # The checks themselves.
    assert (c["lost"], c["duplicates"], c["out_of_order"]) == (0, 0, 0), c["problems"]
    assert (k["missing"], k["duplicates"], k["sent_to_opted_out"]) == (0, 0, 0), k
    # Every campaign row ended sent, failed or skipped (those opted out before planning are skipped rows too).
    assert sum(k["statuses"].values()) == k["planned"] + k["opted_out_before"], k["statuses"]
    assert k["statuses"].get("skipped:opted_out", 0) >= k["opted_out_before"] + k["opted_out_after"]
    assert all(status.split(":", 1)[1] for status in k["statuses"] if status.startswith(("failed", "skipped"))), "a failure without a reason"
    assert report.webhooks["status_counts"].get("500", 0) == 0
    assert report.unexpected_exits == []
    assert report.passed()
