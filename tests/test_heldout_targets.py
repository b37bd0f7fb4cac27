"""Quality gate: the trained model must meet the issue's targets on the held-out set.

The held-out messages (tests/heldout/) were written apart from the training
data and are never trained on (test_nlu_data checks they do not leak).
`jisr eval` prints the same figures beside Rasa's default pipeline.
"""

import pytest

from jisr.assistant.runtime import top_intent
from jisr.evaluation import accuracy, load_heldout
from jisr.language.detector import default_detector
from jisr.paths import LANGUAGE_FORMS, reply_language_of


@pytest.fixture(scope="module")
def predictions(assistant, event_loop_for_session):
    messages = load_heldout()

    async def parse_all():
        out = []
        for m in messages:
            out.append(top_intent(await assistant.parse(m.text))[0])
        return out

    return messages, event_loop_for_session.run_until_complete(parse_all())


def _intent_accuracy(predictions, form=None):
    messages, predicted = predictions
    pairs = [(m.intent, p) for m, p in zip(messages, predicted) if form in (None, m.form)]
    return accuracy([a for a, _ in pairs], [b for _, b in pairs])


def test_intent_accuracy_overall_at_least_92(predictions):
    assert _intent_accuracy(predictions) >= 0.92


def test_intent_accuracy_latin_darija_at_least_85(predictions):
    assert _intent_accuracy(predictions, "ary") >= 0.85


@pytest.mark.parametrize("form", LANGUAGE_FORMS)
def test_no_language_form_below_88(predictions, form):
    assert _intent_accuracy(predictions, form) >= 0.88


def test_language_identification_targets():
    detector = default_detector()
    messages = load_heldout()
    gold = [reply_language_of(m.form) for m in messages]
    predicted = [detector.detect(m.text).language for m in messages]
    assert accuracy(gold, predicted) >= 0.97
    ary = [(g, p) for m, g, p in zip(messages, gold, predicted) if m.form == "ary"]
    assert accuracy([g for g, _ in ary], [p for _, p in ary]) >= 0.90
