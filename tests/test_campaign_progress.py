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


def test_contacts_import_reports_progress_and_a_missing_file_still_exits_2(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JISR_")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'jisr.db'}"
    path = tmp_path / "families.csv"
    path.write_text("channel,address,language,consent\ntelegram,1,ar,opted_out\ntelegram,2,de,opted_out\ntelegram,3,es,opted_out\n", encoding="utf-8")

    def jisr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jisr.cli", *args], capture_output=True, text=True, cwd=root, env=env, timeout=120)

    done = jisr("contacts", "import", str(path), "--json")
    assert done.returncode == 0, done.stderr
    assert "rows: 3/3 (100 %)" in done.stderr and done.stdout.lstrip().startswith("{"), "progress on stderr, JSON alone on stdout"
    missing = jisr("contacts", "import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "cannot be read" in missing.stderr
