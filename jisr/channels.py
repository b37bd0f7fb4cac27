"""The real connectors of every channel, built from settings.

Here rather than in the gateway so a standalone send worker (``jisr worker``) builds them
without importing the gateway's assistant (Rasa takes seconds to import).
"""

from __future__ import annotations

from typing import Any

from connectors.base import Connector
from connectors.types import Channel
from jisr.settings import Settings


def build_connectors(settings: Settings, redis_client: Any) -> dict[str, Connector]:
    from connectors.messenger import MessengerConnector
    from connectors.telegram import TelegramConnector
    from connectors.webchat import WebChatConnector
    from connectors.whatsapp_twilio import TwilioWhatsAppConnector

    return {
        Channel.WHATSAPP.value: TwilioWhatsAppConnector.from_settings(settings),
        Channel.TELEGRAM.value: TelegramConnector.from_settings(settings),
        Channel.MESSENGER.value: MessengerConnector.from_settings(settings),
        Channel.WEBCHAT.value: WebChatConnector(settings.webchat_secret, redis_client),
    }
