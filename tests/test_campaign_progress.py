"""Progress of long CLI operations: a bar redrawn in place on a terminal, a line every 10 % elsewhere."""

from __future__ import annotations

import io

from jisr.progress import Progress


def test_off_a_terminal_a_line_every_tenth_then_the_total():
    out = io.StringIO()
    bar = Progress("contacts", 1000, stream=out, tty=False)
    for _ in range(1000):
        bar.advance()
    bar.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10, lines  # 10 %, 20 % … 90 %, then the final line
    assert lines[0].startswith("contacts: 100/1,000 (10 %)")
    assert lines[-1].startswith("contacts: 1,000/1,000 (100 %)")
    assert "\r" not in out.getvalue()


def test_on_a_terminal_one_line_redrawn_in_place():
    out = io.StringIO()
    bar = Progress("jobs queued", 50, stream=out, tty=True)
    for _ in range(50):
        bar.advance()
    bar.finish()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), "one line, ended once at the finish"
    assert text.startswith("\rjobs queued [") and "50/50 (100 %)" in text.rsplit("\r", 1)[-1]
    assert "#" * 30 in text.rsplit("\r", 1)[-1]


def test_a_wrong_total_still_finishes_at_what_was_done_and_an_empty_one_at_once():
    out = io.StringIO()
    bar = Progress("rows", 3, stream=out, tty=False)
    for _ in range(5):
        bar.advance()
    bar.finish()
    bar.finish()  # twice: once printed
    assert out.getvalue().splitlines()[-1].startswith("rows: 5/5 (100 %)")
    assert out.getvalue().count("5/5") == 1
    empty = io.StringIO()
    nothing = Progress("rows", 0, stream=empty, tty=False)
    nothing.finish()
    assert empty.getvalue().startswith("rows: 0/0 (100 %)")
