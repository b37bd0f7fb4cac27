"""`jisr ask` as a script uses it: lines in, JSON lines out, one model load."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

JISR = [sys.executable, "-m", "jisr.cli"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ask_output():
    lines = [
        "bonjour",
        "quelle filiere apres la 3eme ?",
        "salam, wldi f 3eme w bghit n3ref chno ydir",
        "ok",
        "",
        "wie melde ich mein kind an der schule an",
    ]
    done = subprocess.run(
        JISR + ["ask", "--country", "FR", "--role", "parent", "--sender", "cli-test"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_one_json_object_per_input_line(ask_output):
    assert len(ask_output) == 6
    for obj in ask_output:
        assert set(obj) >= {"text", "language", "intent", "confidence", "replies"}
        assert obj["replies"], obj


def test_languages_and_intents(ask_output):
    assert [o["language"] for o in ask_output] == ["fr", "fr", "ar", "ar", "ar", "de"]
    assert ask_output[1]["intent"] == "ask_school_tracks"
    assert ask_output[5]["intent"] == "ask_enrollment"


def test_country_option_is_used(ask_output):
    # --country FR: the tracks question is answered, not met with "which country?"
    assert "?" not in ask_output[1]["replies"][0][:80] or len(ask_output[1]["replies"][0]) > 200


def test_bad_country_code_is_refused():
    done = subprocess.run(JISR + ["ask", "--country", "France"], input="", capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "ISO 3166" in done.stderr
