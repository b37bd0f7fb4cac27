"""Run Jisr's custom actions inside the assistant's process.

Rasa calls custom actions over HTTP (`RemoteAction` → `EndpointConfig.request`).
This endpoint answers that same call by handing the JSON to rasa_sdk's own
`ActionExecutor`, so one process serves the model and the actions: no second
server to start, no port, no network hop per action. The request and response
are the exact JSON of the action server protocol, so the actions behave the
same under `python -m rasa_sdk --actions actions`.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Text

from rasa.core.actions.action import RemoteAction
from rasa.shared.constants import DOCS_BASE_URL
from rasa.utils.endpoints import ClientResponseError, EndpointConfig
from rasa_sdk.executor import ActionExecutor
from rasa_sdk.interfaces import ActionExecutionRejection, ActionNotFoundException

logger = logging.getLogger(__name__)

class _ResponseValidator:
    """Rasa's check of an action server's response (``RemoteAction._validate_action_result``), made cheap.

    Rasa calls ``jsonschema.validate`` on every custom action's response. That first checks the
    (constant) schema against the JSON Schema meta-schema — about 40 % of the gateway's CPU per
    message once (`jisr bench gateway`, py-spy) — and then matches every event against the 23
    alternatives of a ``oneOf``, about 10 % (cProfile). Each alternative pins the event's name
    (``"event": {"const": ...}``) and the name is required, so an event is valid exactly when it
    is valid against the alternative of its own name: that one alone is checked. Anything this
    quick check rejects is validated again by the full schema, which raises Rasa's own error.
    """

    def __init__(self) -> None:
        from jsonschema import validators
        from rasa.shared.utils.schemas.events import EVENT_SCHEMA

        self.schema = RemoteAction.action_response_format_spec()
        cls = validators.validator_for(self.schema)
        cls.check_schema(self.schema)
        self.full = cls(self.schema)
        envelope = {**self.schema, "properties": {**self.schema["properties"], "events": {"type": "array"}}}
        self.envelope = cls(envelope)
        common = {key: value for key, value in EVENT_SCHEMA.items() if key != "oneOf"}
        self.by_name = {
            alternative["properties"]["event"]["const"]: cls({**common, "allOf": [alternative]})
            for alternative in EVENT_SCHEMA["oneOf"]
        }

    def quick_check(self, result: Any) -> bool:
        if not self.envelope.is_valid(result):
            return False
        for event in result.get("events") or []:
            checker = self.by_name.get(event.get("event")) if isinstance(event, dict) else None
            if checker is None or not checker.is_valid(event):
                return False
        return True

    def error(self, result: Any) -> Any:
        from jsonschema import exceptions

        return exceptions.best_match(self.full.iter_errors(result))


_response_validator: Optional[_ResponseValidator] = None


def _validate_action_result(self: RemoteAction, result: dict[str, Any]) -> bool:
    """`RemoteAction._validate_action_result`, same verdict and same error, without its per-call costs."""
    global _response_validator
    if _response_validator is None:
        _response_validator = _ResponseValidator()
    if _response_validator.quick_check(result):
        return True
    error = _response_validator.error(result)
    if error is not None:
        error.message += (
            ". Failed to validate Action server response from API, "
            "make sure your response from the Action endpoint is valid. "
            "For more information about the format visit "
            f"{DOCS_BASE_URL}/custom-actions"
        )
        raise error
    return True


class InProcessActionEndpoint(EndpointConfig):
    """An `EndpointConfig` whose requests are served by an in-process `ActionExecutor`."""

    def __init__(self, package: str = "actions") -> None:
        super().__init__(url="inprocess://actions")
        self.executor = ActionExecutor()
        self.executor.register_package(package)
        RemoteAction._validate_action_result = _validate_action_result  # type: ignore[method-assign]

    async def request(
        self,
        method: Text = "post",
        subpath: Optional[Text] = None,
        content_type: Optional[Text] = "application/json",
        compress: bool = False,
        **kwargs: Any,
    ) -> Optional[Any]:
        action_call = kwargs.get("json") or {}
        try:
            return await self.executor.run(action_call)
        except ActionNotFoundException as error:
            raise ClientResponseError(404, "Not Found", str(error)) from error
        except ActionExecutionRejection as error:
            raise ClientResponseError(400, "Bad Request", str(error)) from error
        except Exception as error:  # an action bug must not take the conversation down
            logger.exception("action %s failed", action_call.get("next_action"))
            raise ClientResponseError(500, "Action failed", str(error)) from error

    def copy(self) -> "InProcessActionEndpoint":
        return self
