"""`jisr bench gateway`'s accounting: a message kept for a mediator is neither an answer nor an error."""

from __future__ import annotations

from types import SimpleNamespace

from jisr.bench.gateway import HELD, BenchReport, Runner


def _report(outcomes: list, p95_ms_wanted: float = 40.0) -> BenchReport:
    runner = Runner([("fr", "bonjour")])
    meter = SimpleNamespace(server_cpu=2.0, other_cores=0.0)
    phase = runner.result(SimpleNamespace(name="Jisr"), "open", outcomes, 10.0, meter, offered_rate=20.0)  # type: ignore[arg-type]
    report = BenchReport(model="m", cores=2, load_before=(0, 0, 0), load_after=(0, 0, 0), busy_elsewhere=[], settings={"duration": 10})
    report.phases.append(phase)
    return report


def test_held_messages_are_counted_apart_and_do_not_miss_the_target() -> None:
    report = _report([(0.030, None)] * 90 + [(None, HELD)] * 10)
    phase = report.phase("Jisr", "open")
    assert (phase.sent, phase.answered, phase.held, phase.errors) == (100, 90, 10, {})
    assert phase.server_cpu_ms_per_message == 20.0  # 2 s of server CPU over the 100 messages processed
    assert round(phase.p95_ms) == 30
    verdict = report.targets()["p95_under_150ms_at_rate"]
    assert verdict["met"] and verdict["held"] == 10 and verdict["errors"] == 0
    assert "10 held for a mediator — met" in report.as_table()


def test_an_unanswered_message_still_misses_the_target() -> None:
    report = _report([(0.030, None)] * 98 + [(None, HELD), (None, "timeout")])
    assert report.phase("Jisr", "open").errors == {"timeout": 1}
    assert not report.targets()["p95_under_150ms_at_rate"]["met"]


def test_a_slow_p95_misses_the_target() -> None:
    report = _report([(0.030, None)] * 90 + [(0.400, None)] * 10)
    verdict = report.targets()["p95_under_150ms_at_rate"]
    assert verdict["p95_ms"] > 150 and not verdict["met"]
