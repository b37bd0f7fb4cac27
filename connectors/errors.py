"""What can go wrong with a provider, each error carrying its policy.

The send queue reads the policy (retry? when? stop messaging this contact?)
instead of knowing provider error codes. One function maps HTTP results.
"""

from __future__ import annotations

from typing import Optional


class ConnectorError(Exception):
    """Base of every channel error."""


class WebhookForbidden(ConnectorError):
    """Missing or wrong signature/secret: answer 403, store nothing, answer nothing."""


class MalformedPayload(ConnectorError):
    """The payload is not what the provider sends: answer 400 with this message as the reason."""


class SendError(ConnectorError):
    """A send that did not go through. Subclasses say what to do about it."""

    retryable: bool = False
    contact_stopped: bool = False

    def __init__(self, message: str, *, code: Optional[str] = None, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class Throttled(SendError):
    """429 or the provider's rate-limit code: pause the whole channel for ``retry_after`` seconds, then retry."""

    retryable = True


class TransientSendError(SendError):
    """5xx, timeout, connection refused: retry later with backoff."""

    retryable = True


class ContactStopped(SendError):
    """The person blocked the bot or sent STOP at the platform (Twilio 21610, Telegram 403): opt them out of this channel."""

    contact_stopped = True


class OutsideWindow(SendError):
    """Free-form message outside the platform's window (WhatsApp 24 h, Messenger 24 h): needs a template or a tag."""


class PermanentSendError(SendError):
    """Any other refusal (bad number, bad request): record the reason, do not retry."""


def error_from_http(status: int, message: str, *, code: Optional[str] = None, retry_after: Optional[float] = None) -> SendError:
    """The one mapping from an HTTP failure to an error with its policy."""
    if status == 429:
        return Throttled(message, code=code or "429", retry_after=retry_after if retry_after is not None else 1.0)
    if status >= 500 or status in (408, 0):
        return TransientSendError(message, code=code or str(status), retry_after=retry_after)
    return PermanentSendError(message, code=code or str(status))
