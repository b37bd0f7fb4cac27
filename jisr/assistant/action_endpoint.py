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

_response_validator: Any = None


def _validate_action_result(self: RemoteAction, result: dict[str, Any]) -> bool:
    """`RemoteAction._validate_action_result` with its JSON schema checked once per process.

    Rasa calls ``jsonschema.validate`` on every custom action's response, which first checks
    the (constant) schema itself against the JSON Schema meta-schema: that check was about
    40% of the gateway's CPU per message (`jisr bench gateway`, py-spy). The response is
    validated exactly as before, with the same error.
    """
    from jsonschema import exceptions, validators

    global _response_validator
    if _response_validator is None:
        schema = RemoteAction.action_response_format_spec()
        cls = validators.validator_for(schema)
        cls.check_schema(schema)
        _response_validator = cls(schema)
    error = exceptions.best_match(_response_validator.iter_errors(result))
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
