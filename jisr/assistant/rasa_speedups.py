"""Two of Rasa 3.6's costs on every message, removed without changing what Rasa computes.

Measured with cProfile on 300 held-out messages through the gateway (`jisr bench gateway`
explains the set-up; README, "Channels"):

- **Event types resolved by walking the class tree.** Rasa turns every stored event back into
  an object through ``Event.resolve_by_type``, which lists every subclass of ``Event``
  (recursively, checking each for abstract methods) to find the one whose ``type_name``
  matches — for each event, each time a conversation is read from Redis. It was about 15 % of
  the gateway's CPU per message. The answer for a name never changes once Rasa's event classes
  are imported, so it is looked up once per name.
- **The intent classifier's weights copied on every prediction.** scikit-learn computes
  ``X @ coef_.T``; scipy's sparse product ravels the dense operand, which for a C-ordered
  ``coef_`` (n_intents × ~50,000 features) is a copy of the whole matrix, twice per message.
  Stored in Fortran order, ``coef_.T`` is C-contiguous and the ravel is a view. The products
  and their order of summation are the same, so the probabilities are identical.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

logger = logging.getLogger(__name__)

_patched = False


def patch_event_resolution() -> None:
    """Make ``Event.resolve_by_type`` look a name up once (idempotent)."""
    global _patched
    if _patched:
        return
    from rasa.shared.core.events import Event

    original = Event.resolve_by_type
    found: dict[str, type] = {}

    def resolve_by_type(type_name: str, default: Optional[type] = None) -> Optional[type]:
        cls = found.get(type_name)
        if cls is not None:
            return cls
        cls = original(type_name, default)
        # Only a real match is remembered: a default is the caller's choice, and an unknown name
        # raises as before (or answers None for the old "topic" events).
        if cls is not None and cls is not default and getattr(cls, "type_name", None) == type_name:
            found[type_name] = cls
        return cls

    resolve_by_type.__doc__ = original.__doc__
    resolve_by_type.uncached = original  # type: ignore[attr-defined]  (the tests compare both)
    Event.resolve_by_type = staticmethod(resolve_by_type)  # type: ignore[assignment]
    _patched = True


def components(agent: Any) -> list[Any]:
    """The loaded components of the agent's prediction graph."""
    runner = getattr(getattr(agent, "processor", None), "graph_runner", None)
    nodes = getattr(runner, "_instantiated_nodes", {}) or {}
    return [node._component for node in nodes.values() if getattr(node, "_component", None) is not None]


def store_classifier_weights_for_prediction(agent: Any) -> int:
    """Fortran-order the weights of the agent's linear intent classifiers; how many were changed."""
    changed = 0
    for component in components(agent):
        clf = getattr(component, "clf", None)
        coef = getattr(clf, "coef_", None)
        if isinstance(coef, np.ndarray) and coef.ndim == 2 and not coef.flags.f_contiguous:
            clf.coef_ = np.asfortranarray(coef)
            changed += 1
    return changed


def apply(agent: Any) -> None:
    patch_event_resolution()
    changed = store_classifier_weights_for_prediction(agent)
    logger.debug("rasa speed-ups applied (%d classifier weight matrices re-ordered)", changed)
