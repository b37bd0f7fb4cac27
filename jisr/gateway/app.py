"""`jisr serve`: the FastAPI app with every channel's webhook, the web chat and health checks.

One process holds the model (with Jisr's actions in-process), the reply
worker, and — when no REDIS_URL is given — an embedded Redis. Conversation
state lives in Redis (Rasa's RedisTrackerStore and RedisLockStore), so several
gateway processes can share the load behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from connectors.base import Connector
from connectors.errors import MalformedPayload, WebhookForbidden
from connectors.types import Channel, InboundEvent, WebhookRequest
from connectors.webchat import WebChatConnector
from jisr.assistant.runtime import Assistant
from jisr.channels import build_connectors  # noqa: F401  (re-exported: it lived here)
from jisr.console.routes import install as install_consoles
from jisr.gateway import auth_routes, campaigns_api, privacy_api
from jisr.gateway import subscribe as subscribe_page
from jisr.console import operators as operators_console
from jisr.gateway import operators_api
from jisr.gateway import operations, recovery
from jisr.gateway.service import Gateway
from jisr.gateway.webchat_page import WEBCHAT_HTML
from jisr.mediation import api as mediation_api
from jisr.mediation.service import Mediation
from jisr.outbox import REPLIES_QUEUE, Outbox, SendContext, build_worker
from jisr.privacy.logs import keep_personal_data_out_of_logs
from jisr.privacy.pseudonym import configure as configure_pseudonyms
from jisr.privacy.retention import purge_daily
from jisr.privacy.state import ConversationRedis
from jisr.redisconn import RedisHandle, connect_redis, make_patient
from jisr.settings import Settings, get_settings
from jisr.store.contacts import ContactStore, create_db_engine

logger = logging.getLogger(__name__)

MAX_WEBCHAT_INDEX = 2**63 - 1
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
# A waiting web chat long poll is woken by the reply's arrival notice; it re-reads the inbox
# this often anyway (and notices a client that went away).
LONG_POLL_RECHECK_SECONDS = 0.5


@dataclass
class Services:
    settings: Settings
    redis: RedisHandle
    store: ContactStore
    outbox: Outbox
    gateway: Gateway
    connectors: dict[str, Connector]
    worker_task: Optional[asyncio.Task] = None
    worker: Any = None                              # the in-process reply worker (drained on shutdown)
    background: list = dataclasses.field(default_factory=list)  # inbound recovery: heartbeat and sweep
    privacy: Optional[ConversationRedis] = None     # the three Redis databases of conversation state
    purge_task: Optional[asyncio.Task] = None       # the daily retention purge


def _load_content() -> None:
    """Read what the actions answer from (knowledge, calendars, programmes, follow-up openers) at start-up, in a thread.

    Loaded lazily, the first question after start-up parsed a second or more of YAML on the
    event loop, holding up every other request meanwhile. A failure here is only logged: the
    first answer that needs the content tries again, as before.
    """
    from jisr.calendars import default_calendars
    from jisr.knowledge import default_knowledge
    from jisr.nlu.entities import follow_up_openers
    from jisr.programmes import default_programmes

    for load in (default_knowledge, default_calendars, default_programmes, follow_up_openers):
        try:
            load()
        except Exception:
            logger.exception("loading content at start-up failed (%s)", load.__name__)


async def start_services(settings: Settings, assistant_factory: Callable[..., Assistant], run_worker: bool = True) -> Services:
    settings.check_secrets()
    configure_pseudonyms(settings.log_pseudonym_key)
    keep_personal_data_out_of_logs()
    from rasa.core.lock_store import RedisLockStore

    from jisr.assistant.tracker_store import CurrentSessionTrackerStore

    handle = connect_redis(settings.redis_url, directory=settings.var_dir)
    store = ContactStore(create_db_engine(settings.database_url))
    # Conversation state in Redis db 1, Rasa's locks in db 2, Jisr's queue and keys in the URL's db.
    # A conversation idle for the retention period expires with its tracker, which holds the
    # current session only (jisr/assistant/tracker_store.py, docs/privacy.md).
    tracker_store = CurrentSessionTrackerStore(
        domain=None, host=handle.host, port=handle.port, db=1, password=handle.password, key_prefix="jisr",
        record_exp=settings.retention_days * 86400,
    )
    lock_store = RedisLockStore(host=handle.host, port=handle.port, db=2, password=handle.password, key_prefix="jisr")
    make_patient(tracker_store.red)  # Rasa's own clients wait out a short Redis restart too
    make_patient(lock_store.red)
    assistant = await asyncio.to_thread(assistant_factory, tracker_store=tracker_store, lock_store=lock_store)
    await asyncio.to_thread(_load_content)
    redis_client = handle.client()
    connectors = build_connectors(settings, redis_client)
    outbox = await Outbox.connect(handle.host, handle.port, handle.db, handle.password)
    gateway = Gateway(
        assistant, store, redis_client, outbox,
        sender_messages_per_minute=settings.sender_messages_per_minute,
        disclosure_after_silence_days=settings.disclosure_after_silence_days,
    )
    services = Services(settings, handle, store, outbox, gateway, connectors, privacy=ConversationRedis.from_handle(handle))
    # Handoffs to mediators: the gateway holds conversations a person took over (jisr/mediation).
    gateway.mediation = Mediation(
        assistant, store, redis_client, outbox, gateway.replies,
        telegram_group=settings.mediators_telegram_chat_id, console_url=settings.public_url,
    )
    services.background = recovery.start_background(gateway)  # messages of a gateway that died mid-way
    if run_worker:
        worker = build_worker(SendContext(connectors, store), handle.host, handle.port, handle.db, handle.password, queue=REPLIES_QUEUE)
        outbox.on_enqueue = worker.wake  # a reply queued here is sent at once, not at the next poll
        services.worker_task = asyncio.create_task(worker.async_run())
        services.worker = worker
        services.purge_task = asyncio.create_task(purge_daily(store.engine, services.privacy, settings.retention_days))
        # Escalation of handoffs left waiting: every process checks, each handoff is escalated once.
        gateway.mediation.start_escalation(settings.mediation_check_seconds)
    return services


async def stop_services(services: Services) -> None:
    if getattr(services.gateway, "mediation", None) is not None:
        await services.gateway.mediation.stop()
    if services.purge_task is not None:
        services.purge_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await services.purge_task
    if services.privacy is not None:
        with contextlib.suppress(Exception):
            await services.privacy.close()
    # Graceful: running sends finish (within a grace period) or stay queued; nothing is lost.
    await operations.drain_worker(services.worker, services.worker_task)
    await operations.stop_background(services.background)
    for connector in services.connectors.values():
        with contextlib.suppress(Exception):
            await connector.close()
    await services.outbox.close()
    await services.gateway.redis.close()
    services.redis.close()


def _webhook_request(request: Request, body: bytes) -> WebhookRequest:
    return WebhookRequest(
        method=request.method,
        url=str(request.url),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
        query=dict(request.query_params),
    )


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _well_formed(event: InboundEvent) -> InboundEvent:
    """The event with each lone UTF-16 surrogate in its text fields replaced by U+FFFD.

    JSON can carry one ("\\ud800": half an emoji, a text cut short) and Python decodes it,
    but no database, Redis key or log line can encode it: the message would fail to be
    stored at every retry of the provider.
    """
    changes = {
        field.name: _LONE_SURROGATE.sub("\ufffd", value)
        for field in dataclasses.fields(event)
        if isinstance(value := getattr(event, field.name), str) and _LONE_SURROGATE.search(value)
    }
    return dataclasses.replace(event, **changes) if changes else event


def _verify(connector: Connector, webhook: WebhookRequest, public_url: str) -> None:
    """Check the signature against the URL as received, then as the public URL.

    Behind a reverse proxy that ends HTTPS the app sees an internal URL, while
    Twilio signs the public one: both are tried, and both need the secret.
    """
    try:
        connector.verify(webhook)
    except WebhookForbidden:
        path = webhook.url.split("://", 1)[-1].split("/", 1)[-1]
        public = f"{public_url.rstrip('/')}/{path}"
        if public == webhook.url:
            raise
        connector.verify(dataclasses.replace(webhook, url=public))


def create_app(
    settings: Optional[Settings] = None,
    assistant_factory: Optional[Callable[..., Assistant]] = None,
    run_worker: bool = True,
) -> FastAPI:
    settings = settings or get_settings()
    factory = assistant_factory or Assistant.load

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await start_services(settings, factory, run_worker=run_worker)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await stop_services(app.state.services)

    app = FastAPI(
        title="Jisr gateway",
        description="Webhooks of WhatsApp (Twilio), Telegram and Messenger, Jisr's web chat, and the operators' campaign API.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.ready = False

    def services(request: Request) -> Services:
        return request.app.state.services

    async def receive(request: Request, channel: str) -> Response:
        svc = services(request)
        connector = svc.connectors[channel]
        body = await request.body()
        webhook = _webhook_request(request, body)
        try:
            _verify(connector, webhook, svc.settings.public_url)
        except WebhookForbidden:
            logger.warning("forged or unsigned %s webhook refused", channel)
            return JSONResponse({"detail": "invalid or missing signature"}, status_code=403)
        try:
            events = [_well_formed(event) for event in connector.parse(webhook)]
        except MalformedPayload as error:
            return JSONResponse({"detail": f"malformed {channel} payload: {error}"}, status_code=400)
        acknowledge = getattr(connector, "acknowledge", None)
        if acknowledge is not None:
            for event in events:
                with contextlib.suppress(Exception):  # a spinner left turning must not lose the message
                    await acknowledge(event)
        started = time.perf_counter()
        try:
            outcomes = [await svc.gateway.handle(event) for event in events]
        except Exception:
            logger.exception("processing a %s webhook failed; the provider will retry", channel)
            await operations.count_webhook(svc, channel, None, 503, started)
            return JSONResponse({"detail": "temporarily unavailable, retry later"}, status_code=503, headers={"Retry-After": "5"})
        await operations.count_webhook(svc, channel, outcomes, 200, started)
        if channel == Channel.WHATSAPP.value:
            return Response(TWIML_EMPTY, media_type="application/xml")
        return JSONResponse({"ok": True, "processed": [o.status for o in outcomes]})

    @app.post("/webhooks/whatsapp", tags=["webhooks"], summary="Twilio WhatsApp messages and status callbacks")
    async def whatsapp(request: Request) -> Response:
        return await receive(request, Channel.WHATSAPP.value)

    @app.post("/webhooks/telegram", tags=["webhooks"], summary="Telegram Bot API updates")
    async def telegram(request: Request) -> Response:
        return await receive(request, Channel.TELEGRAM.value)

    @app.post("/webhooks/messenger", tags=["webhooks"], summary="Messenger Platform events")
    async def messenger(request: Request) -> Response:
        return await receive(request, Channel.MESSENGER.value)

    @app.get("/webhooks/messenger", tags=["webhooks"], summary="Messenger verification handshake")
    async def messenger_handshake(request: Request) -> Response:
        connector = services(request).connectors[Channel.MESSENGER.value]
        try:
            challenge = connector.handshake(_webhook_request(request, b""))
        except WebhookForbidden:
            return JSONResponse({"detail": "verification token mismatch"}, status_code=403)
        return PlainTextResponse(challenge or "")

    # -- web chat -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/chat")

    @app.get("/chat", response_class=HTMLResponse, tags=["web chat"], summary="The web chat page")
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(WEBCHAT_HTML)

    @app.post("/api/webchat/session", tags=["web chat"], summary="Start a web chat session")
    async def webchat_session(request: Request) -> dict[str, str]:
        connector: WebChatConnector = services(request).connectors[Channel.WEBCHAT.value]  # type: ignore[assignment]
        return {"session": connector.new_session()}

    @app.post("/api/webchat/messages", tags=["web chat"], summary="Send a message from the web chat")
    async def webchat_send(request: Request) -> Response:
        return await receive(request, Channel.WEBCHAT.value)

    @app.get("/api/webchat/messages", tags=["web chat"], summary="Replies for a web chat session (long polling)")
    async def webchat_receive(request: Request, after: int = 0, wait: float = 20.0) -> Response:
        connector: WebChatConnector = services(request).connectors[Channel.WEBCHAT.value]  # type: ignore[assignment]
        session = request.headers.get("x-jisr-session")
        if not connector.session_valid(session):
            return JSONResponse({"detail": "missing or invalid web chat session"}, status_code=403)
        if not 0 <= after <= MAX_WEBCHAT_INDEX:  # Redis list indexes are signed 64-bit integers
            return JSONResponse({"detail": f"'after' must be between 0 and {MAX_WEBCHAT_INDEX}"}, status_code=400)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(wait, 25.0))
        async with connector.arrivals(session or "") as arrived:
            while True:
                arrived.clear()  # before reading: a reply appended after the read wakes the wait below
                messages = await connector.messages_after(session or "", after)
                if messages or loop.time() >= deadline or await request.is_disconnected():
                    return JSONResponse({"messages": messages, "next": after + len(messages)})
                # Woken by the reply's arrival notice; re-read anyway now and then (a lost notice, a
                # client gone away).
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(arrived.wait(), min(LONG_POLL_RECHECK_SECONDS, max(0.0, deadline - loop.time())))

    # -- campaigns (operators) ------------------------------------------------------------
    app.include_router(campaigns_api.router)

    # -- accounts: sign in and out, the admins' accounts and tokens API ---------------------
    app.include_router(auth_routes.router)

    # -- privacy: a contact's export and erasure (admins) ----------------------------------
    app.include_router(privacy_api.router)

    # -- the public subscription form (families opt in to WhatsApp reminders) ---------------
    app.include_router(subscribe_page.router)

    # -- the operators' console API: indicators, contacts, imports, content ----------------
    app.include_router(operators_api.router)

    # -- the mediators' API: handoffs, replies, notes, live events, figures ------------------
    app.include_router(mediation_api.router)

    # -- consoles (mediators, operators): pages and their static files ---------------------
    install_consoles(app)
    app.include_router(operators_console.router)

    # -- health ---------------------------------------------------------------------------
    @app.get("/health", tags=["operations"], summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], summary="Readiness: model loaded, Redis and database reachable")
    async def ready(request: Request) -> Response:
        if not request.app.state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        problem = await operations.ready_check(services(request))
        if problem:
            return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ready"})

    operations.install(app)  # /metrics; Redis unreachable: 503, not 500

    return app
