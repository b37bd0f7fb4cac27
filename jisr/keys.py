"""Every Redis key Jisr writes, in one place (Rasa's own tracker and lock keys are Rasa's)."""

PREFIX = "jisr:"


def dedupe(channel: str, provider_message_id: str) -> str:
    """A webhook already processed (or being processed): providers retry, Jisr answers once."""
    return f"{PREFIX}dedupe:{channel}:{provider_message_id}"


def sender_rate(address_hash: str, minute: int) -> str:
    """Messages from one sender in one minute (flood control)."""
    return f"{PREFIX}rate:sender:{address_hash}:{minute}"


OUTBOX_REPLIES = f"{PREFIX}outbox:replies"      # replies to families: always sent before bulk
OUTBOX_BULK = f"{PREFIX}outbox:bulk"            # campaign sends
OUTBOX_DELAYED = f"{PREFIX}outbox:delayed"      # sorted set: jobs waiting for their retry time
OUTBOX_PROCESSING = f"{PREFIX}outbox:processing:"  # + worker id: jobs taken, not yet acknowledged


def outbox_job(key: str) -> str:
    """The job's body, by idempotency key."""
    return f"{PREFIX}outbox:job:{key}"


def outbox_done(key: str) -> str:
    """Set once a job's send succeeded or failed for good: a re-queued copy is then dropped."""
    return f"{PREFIX}outbox:done:{key}"


def channel_pause(channel: str) -> str:
    """Set with a TTL when a provider said 429: the whole channel waits."""
    return f"{PREFIX}pause:{channel}"


def channel_tokens(channel: str) -> str:
    """The token bucket shared by every worker for a channel's rate limit."""
    return f"{PREFIX}bucket:{channel}"


def webchat_inbox(session_id: str) -> str:
    """Replies waiting for a web chat page to fetch them."""
    return f"{PREFIX}webchat:{session_id}"


# Pub/sub channel (not a key): the session id of every web chat inbox that just got a message,
# so a waiting long poll answers at once instead of re-reading the inbox on a timer.
WEBCHAT_ARRIVALS = f"{PREFIX}webchat-arrivals"
