"""Rasa's per-message costs Jisr removes must not change what Rasa computes.

jisr/assistant/rasa_speedups.py (event type lookup, classifier weight order),
jisr/assistant/action_endpoint.py (action response validation) and
jisr/assistant/tracker_store.py (current session only) each claim "same result, less work":
each claim is checked here against Rasa's own code path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import scipy.sparse as sp
from rasa.core.actions.action import RemoteAction
from rasa.shared.core.events import (
    ActionExecuted,
    BotUttered,
    Event,
    SessionStarted,
    SlotSet,
    UserUttered,
)
from rasa.shared.utils.common import all_subclasses

from jisr.assistant import rasa_speedups
from jisr.assistant.action_endpoint import _validate_action_result
from jisr.assistant.tracker_store import CurrentSessionTrackerStore, saved_trackers


# -- event types --------------------------------------------------------------------------------


def test_every_event_type_resolves_to_the_class_rasa_finds(assistant: Any) -> None:
    rasa_speedups.patch_event_resolution()
    uncached = Event.resolve_by_type.uncached  # type: ignore[attr-defined]
    names = {cls.type_name for cls in all_subclasses(Event) if isinstance(getattr(cls, "type_name", None), str)}
    assert {"user", "bot", "slot", "action", "session_started"} <= names
    for _ in range(2):  # the second round answers from the cache
        for name in names:
            assert Event.resolve_by_type(name) is uncached(name), name


def test_unknown_event_types_behave_as_in_rasa(assistant: Any) -> None:
    rasa_speedups.patch_event_resolution()
    with pytest.raises(ValueError, match="Unknown event name"):
        Event.resolve_by_type("no_such_event")
    assert Event.resolve_by_type("no_such_event", SlotSet) is SlotSet
    with pytest.raises(ValueError):  # the default was not remembered for the name
        Event.resolve_by_type("no_such_event")
    assert Event.resolve_by_type("topic") is None  # Rasa's old TopicSet events


# -- classifier weights --------------------------------------------------------------------------


def _linear_classifiers(assistant: Any) -> list[Any]:
    return [c.clf for c in rasa_speedups.components(assistant.agent) if hasattr(getattr(c, "clf", None), "coef_")]


def test_the_loaded_intent_classifier_has_its_weights_in_fortran_order(assistant: Any) -> None:
    classifiers = _linear_classifiers(assistant)
    assert classifiers, "no linear intent classifier found in the model's graph (the speed-up no longer applies)"
    assert all(clf.coef_.flags.f_contiguous for clf in classifiers)


def test_probabilities_are_identical_with_either_weight_order(assistant: Any) -> None:
    clf = _linear_classifiers(assistant)[0]
    features = clf.coef_.shape[1]
    rng = np.random.default_rng(7)
    rows = sp.random(40, features, density=0.002, format="csr", random_state=rng, data_rvs=lambda n: rng.integers(1, 4, n))
    fortran = clf.predict_proba(rows)
    clf.coef_ = np.ascontiguousarray(clf.coef_)
    try:
        c_order = clf.predict_proba(rows)
    finally:
        clf.coef_ = np.asfortranarray(clf.coef_)
    assert np.array_equal(fortran, c_order)


def test_parsing_gives_the_same_ranking_after_the_speed_ups(assistant: Any, event_loop_for_session: asyncio.AbstractEventLoop) -> None:
    clf = _linear_classifiers(assistant)[0]
    texts = ["salam, wldi f 3eme bghit n3ref chno ydir men ba3d", "¿Cómo matriculo a mi hija?", "Welche Schule nach der Grundschule?",
             "متى تبدأ الدراسة في فرنسا؟", "Come iscrivo mio figlio?", "mon fils est harcelé à l'école"]
    fast = [event_loop_for_session.run_until_complete(assistant.parse(t))["intent_ranking"] for t in texts]
    clf.coef_ = np.ascontiguousarray(clf.coef_)
    try:
        slow = [event_loop_for_session.run_until_complete(assistant.parse(t))["intent_ranking"] for t in texts]
    finally:
        clf.coef_ = np.asfortranarray(clf.coef_)
    assert fast == slow


# -- action responses ----------------------------------------------------------------------------


VALID_RESPONSES = [
    {"events": [], "responses": []},
    {"events": [{"event": "slot", "timestamp": None, "name": "language", "value": "ar"},
                {"event": "slot", "name": "country", "value": None}],
     "responses": [{"text": "مرحبا", "buttons": [{"title": "نعم", "payload": "/affirm"}]}]},
    {"events": [{"event": "bot", "text": "hola", "metadata": {}}, {"event": "followup", "name": "action_listen"},
                {"event": "reset_slots"}, {"event": "action", "name": "utter_x", "policy": None, "confidence": 1.0}],
     "responses": [{"text": "Hallo"}]},
    {"responses": [{"text": "ciao"}]},
]

INVALID_RESPONSES = [
    {"events": [{"event": "no_such_event"}]},
    {"events": [{"name": "language", "value": "fr"}]},                 # no event name
    {"events": [{"event": "slot", "name": 3, "value": "fr"}]},          # a slot's name is a string
    {"events": [{"event": "slot", "name": "x", "timestamp": "today"}]},  # a timestamp is a number
    {"events": ["slot"]},
    {"events": {"event": "slot"}},
    {"events": [], "responses": ["hola"]},
    {"events": [{"event": "user", "text": "hi", "parse_data": {"intent": "not an object"}}]},
    [],
]


@pytest.mark.parametrize("response", VALID_RESPONSES)
def test_valid_action_responses_pass_as_in_rasa(response: dict[str, Any]) -> None:
    jsonschema.validate(response, RemoteAction.action_response_format_spec())  # Rasa's own check
    assert _validate_action_result(None, response) is True  # type: ignore[arg-type]


@pytest.mark.parametrize("response", INVALID_RESPONSES, ids=range(len(INVALID_RESPONSES)))
def test_invalid_action_responses_fail_with_rasas_error(response: Any) -> None:
    with pytest.raises(jsonschema.ValidationError) as rasa_error:
        jsonschema.validate(response, RemoteAction.action_response_format_spec())
    with pytest.raises(jsonschema.ValidationError) as ours:
        _validate_action_result(None, response)  # type: ignore[arg-type]
    assert ours.value.message.startswith(rasa_error.value.message)
    assert "Failed to validate Action server response" in ours.value.message


# -- the tracker store ---------------------------------------------------------------------------


def _session(start: float, language: str, texts: list[str]) -> list[Event]:
    events: list[Event] = [ActionExecuted("action_session_start", timestamp=start), SessionStarted(timestamp=start + 0.1),
                           SlotSet("language", language, timestamp=start + 0.2), ActionExecuted("action_listen", timestamp=start + 0.3)]
    for index, text in enumerate(texts):
        at = start + 1 + index
        events += [UserUttered(text, {"name": "greet", "confidence": 0.9}, timestamp=at),
                   BotUttered("…", timestamp=at + 0.5), ActionExecuted("action_listen", timestamp=at + 0.6)]
    return events


def test_saving_keeps_the_current_session_and_drops_the_earlier_ones(assistant: Any, tmp_path: Path,
                                                                     event_loop_for_session: asyncio.AbstractEventLoop) -> None:
    from rasa.core.tracker_store import RedisTrackerStore
    from rasa.shared.core.trackers import DialogueStateTracker

    from jisr.redisconn import connect_redis

    handle = connect_redis(None, directory=tmp_path)
    domain = assistant.agent.domain
    run = event_loop_for_session.run_until_complete
    try:
        rasa_store = RedisTrackerStore(domain, host=handle.host, port=handle.port, db=1, key_prefix="jisr")
        ours = CurrentSessionTrackerStore(domain, host=handle.host, port=handle.port, db=1, key_prefix="jisr")
        # A conversation Rasa's own store kept: three sessions, days apart.
        old = DialogueStateTracker.from_events("webchat:s1", _session(1_000, "fr", ["bonjour", "merci"])
                                               + _session(200_000, "es", ["hola"]) + _session(400_000, "de", ["hallo", "danke"]), domain.slots)
        run(rasa_store.save(old))
        assert len(run(rasa_store.retrieve_full_tracker("webchat:s1")).events) == len(old.events)

        current = run(ours.retrieve("webchat:s1"))
        assert [e.text for e in current.events if isinstance(e, UserUttered)] == ["hallo", "danke"]
        current.update(UserUttered("wie geht's", {"name": "greet", "confidence": 0.9}, timestamp=400_010))
        current.update(SlotSet("country", "DE", timestamp=400_010.5))
        with saved_trackers() as saved:
            run(ours.save(current))
        assert saved["webchat:s1"] is current

        stored = run(ours.retrieve_full_tracker("webchat:s1"))
        texts = [e.text for e in stored.events if isinstance(e, UserUttered)]
        assert texts == ["hallo", "danke", "wie geht's"]  # the fr and es sessions are gone
        assert stored.get_slot("language") == "de" and stored.get_slot("country") == "DE"
    finally:
        handle.close()


def test_a_save_outside_a_turn_hands_nothing_over(assistant: Any, tmp_path: Path,
                                                  event_loop_for_session: asyncio.AbstractEventLoop) -> None:
    from rasa.shared.core.trackers import DialogueStateTracker

    from jisr.redisconn import connect_redis

    handle = connect_redis(None, directory=tmp_path)
    try:
        store = CurrentSessionTrackerStore(assistant.agent.domain, host=handle.host, port=handle.port, db=1, key_prefix="jisr",
                                           record_exp=3600)
        tracker = DialogueStateTracker.from_events("telegram:42", _session(5_000, "ar", ["سلام"]), assistant.agent.domain.slots)
        with saved_trackers() as saved:
            pass
        event_loop_for_session.run_until_complete(store.save(tracker))
        assert saved == {}
        ttl = store.red.ttl(store.key_prefix + "telegram:42")
        assert 3500 < ttl <= 3600  # the retention period still applies
    finally:
        handle.close()


def test_a_long_session_is_capped_and_keeps_its_slots_and_answers(assistant: Any, tmp_path: Path, monkeypatch: Any,
                                                                  event_loop_for_session: asyncio.AbstractEventLoop) -> None:
    """A family writing all day: the stored session stays bounded, the slots it set early (country,
    language) still hold, and the assistant still answers for that country in its language."""
    from jisr.assistant import tracker_store as module
    from jisr.redisconn import connect_redis

    monkeypatch.setattr(module, "MAX_SESSION_EVENTS", 60)
    monkeypatch.setattr(module, "KEEP_EVENTS", 30)
    handle = connect_redis(None, directory=tmp_path)
    agent = assistant.agent
    store = CurrentSessionTrackerStore(agent.domain, host=handle.host, port=handle.port, db=1, key_prefix="jisr")
    kept = (agent.tracker_store, agent.processor.tracker_store)
    agent.tracker_store = agent.processor.tracker_store = store
    run = event_loop_for_session.run_until_complete
    sender = "whatsapp:+34600000123"
    try:
        first = run(assistant.handle(sender, "Hola, vivimos en Madrid y mi hijo está en la ESO", {"country": "ES"}))
        assert first.language == "es"
        sizes = []
        for text in ["¿Cómo matriculo a mi hija en el colegio?", "gracias", "¿Cuándo son los exámenes?", "vale"] * 6:
            run(assistant.handle(sender, text))
            sizes.append(len(run(store.retrieve_full_tracker(sender)).events))
        assert max(sizes) <= 60 + 20, sizes  # never far past the cap (one turn's events at most)
        assert min(sizes[10:]) >= 30, sizes   # and never cut below what is kept
        stored = run(store.retrieve_full_tracker(sender))
        assert stored.events[0].as_dict()["name"] == "action_session_start"
        assert stored.get_slot("country") == "ES" and stored.get_slot("language") == "es"
        last = run(assistant.handle(sender, "¿Cómo matriculo a mi hija en el colegio?"))
        assert last.intent == "ask_enrollment" and last.language == "es"
        assert last.slots.get("country") == "ES"
    finally:
        agent.tracker_store, agent.processor.tracker_store = kept
        handle.close()
