"""The NLU data: every intent in every language form, no contradictions, the held-out set kept apart."""

from collections import defaultdict

import pytest
import yaml

from jisr.evaluation import load_heldout
from jisr.paths import BOT_DIR, LANGUAGE_FORMS, NLU_DATA_DIR
from jisr.text import normalize_for_matching

INTENTS = yaml.safe_load((BOT_DIR / "domain" / "intents.yml").read_text())["intents"]
MIN_EXAMPLES = 25


def _examples():
    found = defaultdict(list)  # (form, intent) -> examples
    for form in LANGUAGE_FORMS:
        for path in sorted((NLU_DATA_DIR / form).glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            for block in data["nlu"]:
                assert path.stem == block["intent"], f"{path}: one intent per file, named like the file"
                lines = [l.strip()[2:] for l in block["examples"].splitlines() if l.strip()]
                found[(form, block["intent"])].extend(lines)
    return found


EXAMPLES = _examples()


@pytest.mark.parametrize("form", LANGUAGE_FORMS)
def test_every_intent_has_examples_in_every_form(form):
    for intent in INTENTS:
        assert len(EXAMPLES[(form, intent)]) >= MIN_EXAMPLES, (form, intent)


def test_only_domain_intents_are_trained():
    assert {intent for _, intent in EXAMPLES} == set(INTENTS)


def test_no_example_is_given_two_intents():
    seen = {}
    clashes = []
    for (form, intent), lines in EXAMPLES.items():
        for line in lines:
            key = normalize_for_matching(line).strip(" ?!.")
            if key in seen and seen[key] != intent:
                clashes.append((line, seen[key], intent))
            seen[key] = intent
    assert not clashes


def test_heldout_messages_never_appear_in_training_data():
    trained = {normalize_for_matching(l).strip(" ?!.") for lines in EXAMPLES.values() for l in lines}
    leaked = [m.text for m in load_heldout() if normalize_for_matching(m.text).strip(" ?!.") in trained and len(m.text.split()) > 2]
    assert not leaked


def test_heldout_set_covers_every_form_and_intent():
    messages = load_heldout()
    for form in LANGUAGE_FORMS:
        in_form = [m for m in messages if m.form == form]
        assert len(in_form) >= 30
        assert {m.intent for m in in_form} == set(INTENTS)
