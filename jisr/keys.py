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


def campaign_batches(run_id: int) -> str:
    """Hash: a campaign run's queued batch job ids → their time in ms (campaigns.sending._wake)."""
    return f"{PREFIX}campaign:{run_id}:batches"


def webchat_inbox(session_id: str) -> str:
    """Replies waiting for a web chat page to fetch them."""
    return f"{PREFIX}webchat:{session_id}"


METRICS = f"{PREFIX}metrics"                    # hash: every counter and histogram series (jisr/metrics.py)
# Hash: inbound messages claimed and not finished, by dedupe key -> (owner, message). A gateway
# that dies mid-message leaves its entry; another gateway takes it over (jisr.gateway.service).
INBOUND_PENDING = f"{PREFIX}inbound:pending"


def process_alive(kind: str, ident: str) -> str:
    """Set with a short TTL by a live gateway or worker process: liveness, and who owns a claim."""
    return f"{PREFIX}alive:{kind}:{ident}"


def inbound_order(channel: str, address: str) -> str:
    """The inbound messages of one conversation being processed, in arrival order (jisr.gateway.recovery)."""
    import hashlib

    return f"{PREFIX}inorder:{channel}:{hashlib.sha256(address.encode()).hexdigest()[:16]}"


def reply_order(channel: str, address: str) -> str:
    """The reply jobs of one conversation in turn order: a turn's replies wait for the previous turn's.

    The address is hashed: keys show up in monitoring tools, phone numbers must not.
    """
    import hashlib

    return f"{PREFIX}order:{channel}:{hashlib.sha256(address.encode()).hexdigest()[:16]}"


# Pub/sub channel (not a key): the session id of every web chat inbox that just got a message,
# so a waiting long poll answers at once instead of re-reading the inbox on a timer.
WEBCHAT_ARRIVALS = f"{PREFIX}webchat-arrivals"


def session(session_digest: str) -> str:
    """A console session, by the sha256 of its id (a Redis dump holds no usable cookie)."""
    return f"{PREFIX}session:{session_digest}"


def account_sessions(account_id: int) -> str:
    """The session digests of one account: ended together on deactivation or a new password."""
    return f"{PREFIX}account-sessions:{account_id}"


def subscribe_rate(client_hash: str, hour: int) -> str:
    """Posts of the public subscription form from one client (keyed pseudonym) in one hour."""
    return f"{PREFIX}rate:subscribe:{client_hash}:{hour}"


def login_failures(kind: str, subject_hash: str) -> str:
    """Sorted set of recent failed logins (scores: times) per username or per client (kind)."""
    return f"{PREFIX}login-failures:{kind}:{subject_hash}"


# Rasa's own keys, as its RedisTrackerStore and RedisLockStore (key_prefix "jisr") write them,
# in the Redis databases jisr.gateway.app.start_services gives them: the privacy code reads
# and erases one conversation's state by these names.
RASA_TRACKER_DB = 1
RASA_LOCK_DB = 2


def rasa_tracker(sender_id: str) -> str:
    """A conversation's tracker (every event, message texts included); the sender id is the address."""
    return f"jisr:tracker:{sender_id}"


def rasa_lock(sender_id: str) -> str:
    return f"jisr:lock:{sender_id}"


def attempts(part_key: str) -> str:
    """Provider calls made for one message part (jisr.outbox counts them)."""
    return f"{PREFIX}attempts:{part_key}"


def disclosure_claim(address_hash: str) -> str:
    """Set for a few minutes when a reply discloses the bot: two first messages arriving at
    once from a new family get the disclosure once."""
    return f"{PREFIX}disclosed:{address_hash}"


# Held by the gateway process that runs the daily retention purge (the others skip it).
PURGE_LOCK = f"{PREFIX}privacy:purge-lock"


def fallbacks_in_a_row(contact_id: int) -> str:
    """Messages in a row the assistant did not understand (the second one hands over to a mediator)."""
    return f"{PREFIX}mediation:fallbacks:{contact_id}"


# Pub/sub channel (not a key): handoff.opened | handoff.updated | message.in | message.out, with
# the handoff id and country only, for the mediators' live console (/api/mediation/events).
MEDIATION_EVENTS = f"{PREFIX}mediation-events"
