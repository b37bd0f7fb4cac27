"""The `jisr` command. Each subcommand loads only what it needs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("rasa", "tensorflow", "absl", "matplotlib", "apscheduler", "sanic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("jisr").setLevel(logging.INFO if verbose else logging.WARNING)
    from jisr.privacy.logs import keep_personal_data_out_of_logs

    keep_personal_data_out_of_logs()  # -v must not print request URLs (tokens) or texts


def cmd_train(args: argparse.Namespace) -> int:
    from jisr.assistant.model import ensure_model

    result = ensure_model(force=args.force)
    state = f"trained in {result.seconds:.0f} s" if result.trained_now else "up to date"
    print(f"{result.path.relative_to(result.path.parents[2])}: {state}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from jisr.assistant.runtime import Assistant

    hints: dict[str, Any] = {}
    if args.country:
        hints["country"] = args.country.upper()
    if args.role:
        hints["role"] = args.role
    interactive = sys.stdin.isatty() and not args.json
    if interactive:
        print("Loading Jisr's model…", file=sys.stderr)
    assistant = Assistant.load()

    async def run() -> None:
        if interactive:
            print("Jisr is ready. Write a message (Ctrl-D to quit).", file=sys.stderr)
        while True:
            if interactive:
                print("> ", end="", flush=True, file=sys.stderr)
            raw = sys.stdin.buffer.readline()
            if not raw:
                break
            raw = raw.rstrip(b"\r\n")
            turn = await assistant.handle(args.sender, raw, hints)
            if interactive:
                for reply in turn.replies:
                    print(reply.text)
                    for button in reply.buttons:
                        print(f"   [{button['title']}]")
                print(f"   ({turn.intent} {turn.confidence:.2f}, {turn.language})", file=sys.stderr)
            else:
                print(json.dumps(turn.as_json(), ensure_ascii=False), flush=True)

    asyncio.run(run())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The gateway: webhooks, web chat, reply worker; embedded Redis and SQLite unless configured."""
    import os

    # Rasa's per-conversation lock outlives a gateway killed while holding it: the conversation's
    # next messages wait for it to expire. 60 s by default; 15 s (Twilio's webhook timeout) unless
    # set (docs/deployment.md). Read when Rasa is imported: set before.
    os.environ.setdefault("TICKET_LOCK_LIFETIME", "15")
    import uvicorn

    from jisr.assistant.model import ensure_model
    from jisr.gateway.app import create_app

    ensure_model()
    print(f"Jisr is starting: web chat at http://{args.host}:{args.port}/chat, API docs at /docs", file=sys.stderr)
    from jisr.auth.cli import first_admin_hint

    if hint := first_admin_hint():
        print(f"jisr: {hint}", file=sys.stderr)
    # SIGTERM: uvicorn stops accepting, lets the requests in flight finish (web chat long polls are
    # cut after the timeout), then the lifespan drains the reply worker (docs/deployment.md).
    # uvicorn re-raises the SIGTERM it handled once it has stopped; with this handler in place the
    # process then exits 0 (a clean stop) instead of dying of the signal.
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        create_app(run_worker=not getattr(args, "no_worker", False)), host=args.host, port=args.port, log_level="warning",
        proxy_headers=True, timeout_graceful_shutdown=getattr(args, "grace", 15.0),
    )
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    """Train if needed, then serve Jisr with its web chat on the embedded defaults."""
    cmd_train(argparse.Namespace(force=False))
    return cmd_serve(argparse.Namespace(host=args.host, port=args.port))


def cmd_eval(args: argparse.Namespace) -> int:
    from jisr.evaluation import run_evaluation

    report = run_evaluation(with_baseline=not args.no_baseline)
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(report.as_table())
    return 0


def cmd_bench_gateway(args: argparse.Namespace) -> int:
    """Jisr's gateway beside Rasa's own `rasa run`, same model and actions, on this machine."""
    from jisr.bench.gateway import BenchOptions, main as bench_main

    options = BenchOptions(
        messages=args.messages,
        rate=args.rate,
        duration=args.duration,
        concurrency=args.concurrency,
        max_seconds=args.max_seconds,
        systems=tuple(args.systems.split(",")),
        keep_logs=args.keep_logs,
    )
    return bench_main(options, as_json=args.json)


def cmd_bench_campaigns(args: argparse.Namespace) -> int:
    """A generated campaign planned, sent, rate-limited and crash-resumed against the simulators."""
    from jisr.bench.campaigns import CampaignBenchOptions, main as bench_main

    options = CampaignBenchOptions(
        contacts=args.contacts,
        rate=args.rate,
        rate_seconds=args.rate_seconds,
        crash_contacts=args.crash_contacts,
        max_jobs=args.max_jobs,
        max_seconds=args.max_seconds,
        keep_logs=args.keep_logs,
    )
    return bench_main(options, as_json=args.json)


def cmd_bench_soak(args: argparse.Namespace) -> int:
    """Conversations and a campaign through injected faults, kill -9s and a Redis restart: nothing lost or twice."""
    import dataclasses

    from jisr.bench.soak import SoakOptions, main as soak_main

    options = SoakOptions.quick() if args.quick else SoakOptions()
    chosen = {name: getattr(args, name) for name in ("minutes", "conversations", "campaign_sends", "database", "max_seconds", "keep_logs")
              if getattr(args, name) is not None}
    return soak_main(dataclasses.replace(options, **chosen), as_json=args.json)


def _positive(kind: type) -> Any:
    def parse(value: str) -> Any:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
        return number

    return parse


def _contact_store() -> Any:
    """The contact store on DATABASE_URL (or JISR_DATABASE_URL)."""
    from jisr.settings import Settings
    from jisr.store.contacts import ContactStore, create_db_engine

    # Settings() rather than get_settings(): these commands touch only the database, so
    # they must work in production without the channel secrets the gateway checks.
    return ContactStore(create_db_engine(Settings().database_url))


def cmd_contacts_import(args: argparse.Namespace) -> int:
    """Exit status: 0 all rows imported, 1 some rows rejected, 2 nothing imported (file unusable)."""
    from jisr.store.csv_io import CsvFileError, import_csv

    name = str(args.file)
    try:
        report = import_csv(_contact_store(), args.file, args.source_basis, dry_run=args.dry_run, name=name, progress=_progress())
    except CsvFileError as error:
        if args.json:
            print(json.dumps({"file": name, "error": str(error)}, ensure_ascii=False))
        print(f"jisr: {error}; nothing imported", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        # Rejections name the line and the column, never the address: this is safe in a terminal log.
        for message in report.messages():
            print(message, file=sys.stderr)
        print(report.summary())
    return report.exit_code


def cmd_contacts_export(args: argparse.Namespace) -> int:
    """With a contact (ID, address or --id): everything held about it as JSON; else every contact as CSV."""
    import os

    from jisr.store.csv_io import export_csv

    if args.contact is not None and args.id is not None:
        print("jisr: give the contact once (as ID or with --id)", file=sys.stderr)
        return 2
    if (args.contact or args.id) is not None:
        from jisr.privacy.cli import export_one

        return export_one(str(args.id if args.id is not None else args.contact), args.output)
    store = _contact_store()
    if args.output is None:
        export_csv(store, sys.stdout)
        return 0
    # The file holds phone numbers: readable by its owner only.
    descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", encoding="utf-8", newline="") as out:
        count = export_csv(store, out)
    print(f"{args.output}: {count} contacts exported", file=sys.stderr)
    return 0


def cmd_contacts_forget(args: argparse.Namespace) -> int:
    from jisr.privacy.cli import forget

    return forget(args)


def cmd_privacy_purge(args: argparse.Namespace) -> int:
    from jisr.privacy.cli import purge

    return purge(args)


def cmd_contacts_link(args: argparse.Namespace) -> int:
    """Link a family's addresses on several channels into one profile."""
    store = _contact_store()
    ids = store.ids_for_addresses(args.addresses)
    unknown = [position + 1 for position, address in enumerate(args.addresses) if ids[address] is None]
    if unknown:
        # Say which argument, not the address itself: terminal logs must not hold phone numbers.
        print(f"jisr: no contact for address number {', '.join(map(str, unknown))}; nothing linked", file=sys.stderr)
        return 2
    profile = store.link([i for i in ids.values() if i is not None])
    print(f"{len(ids)} addresses linked into profile {profile}")
    return 0


def cmd_campaigns_validate(args: argparse.Namespace) -> int:
    """Each file OK, or its `file:line: field: reason`; exit 1 if any file is refused."""
    from campaigns.definitions import CampaignError, load_campaign

    invalid = 0
    for path in args.files:
        try:
            load_campaign(path)
        except CampaignError as error:
            invalid += 1
            print(error)
        else:
            print(f"{path}: OK")
    return 1 if invalid else 0


def _parse_now(value: Optional[str]) -> Any:
    """--now: an ISO date-time; without an offset it is taken as UTC."""
    from campaigns.planner import parse_now

    return parse_now(value)


def _load_for_planning(args: argparse.Namespace) -> Any:
    """(campaign, store, now), or an exit status after printing why not."""
    from campaigns.definitions import CampaignError, load_campaign

    try:
        now = _parse_now(args.now)
    except ValueError:
        print(f"jisr: --now takes an ISO date-time such as 2026-08-20T10:00+02:00, not {args.now!r}", file=sys.stderr)
        return 2
    try:
        campaign = load_campaign(args.file)
    except CampaignError as error:
        print(error, file=sys.stderr)
        return 1
    from jisr.store.campaigns import CampaignStore

    return campaign, CampaignStore(_contact_store().engine), now


def _progress() -> Any:
    """Progress of a long operation on stderr: a bar on a terminal, a line every 10 % elsewhere."""
    from jisr.progress import on_stderr

    return on_stderr


def _print_summary(data: dict[str, Any]) -> None:
    print(f"campaign {data['campaign']}: {data['planned']} sends planned over {len(data['occurrences'])} occurrences")
    for name in ("by_country", "by_language", "by_channel", "by_form", "excluded"):
        if data[name]:
            print(f"  {name.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in data[name].items()))
    if data["past"]:
        print(f"  already past: {data['past']}")
    if data["first_send"]:
        print(f"  first send {data['first_send']}, last send {data['last_send']}")
    print(f"  estimated sending time: {data['estimated_seconds']:.0f} s at the outbox's default rates")


def cmd_campaigns_preview(args: argparse.Namespace) -> int:
    from campaigns.planner import preview

    loaded = _load_for_planning(args)
    if isinstance(loaded, int):
        return loaded
    result = preview(*loaded, progress=_progress())
    data = result.as_dict()
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    _print_summary(data)
    for language, text in data["messages"].items():
        print(f"\n--- {language} ---\n{text}")
    print(f"\n(previewed in {result.seconds:.2f} s; nothing written)")
    return 0


def cmd_campaigns_plan(args: argparse.Namespace) -> int:
    from campaigns.planner import plan

    loaded = _load_for_planning(args)
    if isinstance(loaded, int):
        return loaded
    campaign = loaded[0]
    if not campaign.enabled:
        print(f"jisr: campaign {campaign.id} is disabled (enabled: false); nothing planned", file=sys.stderr)
        return 1
    result = plan(*loaded, progress=_progress())
    data = result.as_dict()
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    for occurrence, run_id in data["runs"].items():
        print(f"run {run_id}: {occurrence}")
    _print_summary(data)
    print(f"  rows written: {data['inserted']}, already planned before: {data['existing']}")
    return 0


def _redis_handle() -> Any:
    """The shared Redis of REDIS_URL: workers and the scheduler must meet the gateway there
    (an embedded Redis is private to the process that started it)."""
    from jisr.redisconn import connect_redis
    from jisr.settings import Settings

    url = Settings().redis_url
    if not url:
        print("jisr: set REDIS_URL (or JISR_REDIS_URL): campaign jobs live in the Redis the workers share", file=sys.stderr)
        return None
    return connect_redis(url)


async def _outbox(handle: Any) -> Any:
    from jisr.outbox import Outbox

    return await Outbox.connect(handle.host, handle.port, handle.db, handle.password)


def cmd_campaigns_schedule(args: argparse.Namespace) -> int:
    """Plan, then queue every planned send on the bulk lane at its time (idempotent)."""
    from campaigns.sending import schedule

    loaded = _load_for_planning(args)
    if isinstance(loaded, int):
        return loaded
    campaign, store, now = loaded
    if not campaign.enabled:
        print(f"jisr: campaign {campaign.id} is disabled (enabled: false); nothing scheduled", file=sys.stderr)
        return 1
    handle = _redis_handle()
    if handle is None:
        return 2

    async def run() -> Any:
        outbox = await _outbox(handle)
        try:
            return await schedule(campaign, store, outbox, now, progress=_progress())
        finally:
            await outbox.close()

    result = asyncio.run(run())
    data = result.as_dict()
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    for occurrence, run_id in data["runs"].items():
        print(f"run {run_id}: {occurrence}: {data['queued_by_run'].get(run_id, 0)} sends queued")
    _print_summary(data)
    print(f"  jobs queued now: {data['enqueued']}, already queued: {data['already_queued']}")
    print("  sent by `jisr worker --queue bulk` (REDIS_URL, DATABASE_URL and the channel settings)")
    return 0


def _campaign_store() -> Any:
    from jisr.store.campaigns import CampaignStore

    return CampaignStore(_contact_store().engine)


def cmd_campaigns_status(args: argparse.Namespace) -> int:
    from campaigns.sending import status

    data = status(_campaign_store(), args.run)
    if data is None:
        print(f"jisr: no run {args.run}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    print(f"run {data['run']} ({data['campaign']} {data['occurrence']}): {data['state']}, {data['progress']:.0%} settled of {data['total']}")
    for key, count in data["by_status_and_reason"].items():
        print(f"  {key}: {count}")
    return 0


def cmd_campaigns_control(args: argparse.Namespace) -> int:
    """pause, resume or cancel a run."""
    from campaigns import sending

    store = _campaign_store()
    run = store.run(args.run)
    if run is None:
        print(f"jisr: no run {args.run}", file=sys.stderr)
        return 2
    action = args.campaigns_command
    if action == "pause":
        changed = sending.pause(store, args.run)
    else:
        # Resume and cancel also move the run's queued jobs forward, when Redis is configured.
        from jisr.settings import Settings

        async def run_action() -> bool:
            outbox = None
            if Settings().redis_url:
                handle = _redis_handle()
                outbox = await _outbox(handle)
            try:
                if action == "resume":
                    if outbox is None:
                        return store.set_run_state(args.run, "running", ("paused",))  # jobs notice at their next re-check
                    return await sending.resume(store, outbox, args.run)
                return await sending.cancel(store, outbox, args.run)
            finally:
                if outbox is not None:
                    await outbox.close()

        changed = asyncio.run(run_action())
    state = store.run(args.run)["state"]
    print(f"run {args.run}: {state}" + ("" if changed else f" (unchanged: {action} does not apply to a {run['state']} run)"))
    return 0 if changed else 1


def cmd_campaigns_report(args: argparse.Namespace) -> int:
    import os

    from campaigns.sending import report

    store = _campaign_store()
    if args.csv is not None:
        descriptor = os.open(args.csv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="utf-8", newline="") as out:
            data = report(store, args.run, out)
    else:
        data = report(store, args.run)
    if data is None:
        print(f"jisr: no run {args.run}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    print(f"run {data['run']} ({data['campaign']} {data['occurrence']}): {data['state']}")
    for name in ("total", "planned", "queued", "sent", "delivered", "read", "failed", "replied_after", "opted_out_after"):
        print(f"  {name.replace('_', ' ')}: {data[name]}")
    for name in ("failed_by_reason", "skipped_by_reason"):
        if data[name]:
            print(f"  {name.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in data[name].items()))
    for name in ("by_country", "by_language", "by_channel"):
        for key, counts in data[name].items():
            print(f"  {name.replace('_', ' ')} {key}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _parse_rates(values: Sequence[str]) -> dict[str, float]:
    from jisr.outbox import DEFAULT_RATES

    rates = dict(DEFAULT_RATES)
    for value in values:
        channel, _, number = value.partition("=")
        if channel not in rates or not number:
            raise argparse.ArgumentTypeError(f"--rate takes CHANNEL=PER_SECOND with a channel of {', '.join(rates)}, not {value!r}")
        rates[channel] = float(number)
    return rates


def cmd_worker(args: argparse.Namespace) -> int:
    """A standalone send worker on one queue; run several for more throughput or resilience."""
    import contextlib
    import signal

    from jisr.channels import build_connectors
    from jisr.outbox import BULK_QUEUE, REPLIES_QUEUE, SendContext, build_worker
    from jisr.settings import get_settings
    from jisr.store.contacts import ContactStore, create_db_engine

    try:
        rates = _parse_rates(args.rate or [])
    except argparse.ArgumentTypeError as error:
        print(f"jisr: {error}", file=sys.stderr)
        return 2
    settings = get_settings()
    handle = _redis_handle()
    if handle is None:
        return 2
    store = ContactStore(create_db_engine(settings.database_url))

    async def run() -> None:
        connectors = build_connectors(settings, handle.client())
        context = SendContext(connectors, store, rates=rates)
        worker = build_worker(
            context,
            handle.host,
            handle.port,
            handle.db,
            handle.password,
            queue=BULK_QUEUE if args.queue == "bulk" else REPLIES_QUEUE,
            burst=args.burst,
            max_jobs=args.max_jobs,
            job_timeout=args.job_timeout,
            job_completion_wait=args.grace,
        )
        # SIGTERM or Ctrl-C: take no new job, let the running sends finish within --grace, cancel
        # the rest (they stay queued: another worker sends them), exit 0.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.handle_sig_wait_for_completion, signum)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await worker.async_run()
        finally:
            try:
                await worker.close()
            except Exception as error:  # Redis gone at shutdown: the jobs are safe in it, nothing to clean up here
                logging.getLogger("jisr.worker").warning("closing the worker's Redis connection failed: %s", type(error).__name__)
            for connector in connectors.values():
                await connector.close()

    print(f"jisr worker: sending from the {args.queue} queue" + (" until it is empty" if args.burst else " (Ctrl-C to stop)"), file=sys.stderr)
    try:
        import uvloop  # a faster event loop where installed: a send worker is mostly loop and sockets

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_telegram(args: argparse.Namespace) -> int:
    """Register the webhook with Telegram, or run in long-polling mode for development."""
    from jisr.settings import get_settings

    settings = get_settings()

    async def register() -> int:
        from connectors.telegram import TelegramConnector

        connector = TelegramConnector.from_settings(settings)
        url = args.url or f"{settings.public_url.rstrip('/')}/webhooks/telegram"
        try:
            await connector.set_webhook(url)
        finally:
            await connector.close()
        print(f"Telegram will call {url} (with the secret token)")
        return 0

    async def poll() -> int:
        from jisr.assistant.model import ensure_model
        from jisr.assistant.runtime import Assistant
        from jisr.gateway.app import start_services, stop_services

        ensure_model()
        services = await start_services(settings, Assistant.load)
        print("Polling Telegram for updates (Ctrl-C to stop)…", file=sys.stderr)
        try:
            await services.connectors["telegram"].poll(services.gateway.handle)  # type: ignore[attr-defined]
        finally:
            await stop_services(services)
        return 0

    try:
        return asyncio.run(register() if args.action == "webhook" else poll())
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jisr", description="Jisr: school assistant and outreach for Moroccan families abroad.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines (also JISR_LOG_FORMAT=json)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the assistant's model if its data changed")
    train.add_argument("--force", action="store_true", help="train even if an up-to-date model exists")
    train.set_defaults(func=cmd_train)

    ask = sub.add_parser("ask", help="talk to the assistant: one message per line on stdin, one JSON object per line out")
    ask.add_argument("--country", help="host country, ISO 3166 alpha-2 (FR, ES, IT, DE, BE, NL, DZ, CI…)")
    ask.add_argument("--role", choices=["parent", "student"], help="who is writing")
    ask.add_argument("--sender", default="cli", help="conversation id: lines with the same sender are one conversation")
    ask.add_argument("--json", action="store_true", help="JSON output even on a terminal")
    ask.set_defaults(func=cmd_ask)

    start = sub.add_parser("start", help="train if needed, then serve Jisr (web chat at /chat)")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=8000)
    start.set_defaults(func=cmd_start)

    serve = sub.add_parser("serve", help="serve the gateway: channel webhooks, web chat, API docs")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="no reply worker in this process (run `jisr worker --queue replies` beside it)")
    serve.add_argument("--grace", type=float, default=15.0, help="on SIGTERM, seconds for requests in flight to finish (default 15)")
    serve.set_defaults(func=cmd_serve)

    evaluate = sub.add_parser("eval", help="accuracy on the held-out set, beside Rasa's default pipeline and langdetect")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.add_argument("--no-baseline", action="store_true", help="skip Rasa's default pipeline (it trains for a long time)")
    evaluate.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="measure on this machine")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    gateway = bench_sub.add_parser(
        "gateway",
        help="Jisr's gateway (web chat API) beside Rasa's `rasa run` (REST channel), same model and actions: latency, throughput, memory",
    )
    gateway.add_argument("--messages", type=_positive(int), default=200, help="messages in the sequential run (default 200)")
    gateway.add_argument("--rate", type=_positive(float), default=20.0, help="open-loop rate, messages per second (default 20)")
    gateway.add_argument("--duration", type=_positive(float), default=20.0, help="seconds of the open- and closed-loop runs (default 20)")
    gateway.add_argument("--concurrency", type=_positive(int), default=8, help="concurrent senders in the closed-loop run (default 8)")
    gateway.add_argument("--max-seconds", type=_positive(float), default=1200.0, help="stop the whole run after this long (default 1200)")
    gateway.add_argument("--systems", default="jisr,rasa", choices=["jisr,rasa", "jisr", "rasa"], metavar="{jisr,rasa|jisr|rasa}", help="which systems to run (default both)")
    gateway.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the servers' logs to DIR at the end")
    gateway.add_argument("--json", action="store_true", help="machine-readable output")
    gateway.set_defaults(func=cmd_bench_gateway)
    bench_campaigns = bench_sub.add_parser(
        "campaigns",
        help="a generated campaign against the provider simulators: plan time, send throughput (2 workers), rate accuracy, kill -9 and resume",
    )
    bench_campaigns.add_argument("--contacts", type=_positive(int), default=100_000, help="generated contacts (default 100000)")
    bench_campaigns.add_argument("--rate", type=_positive(float), default=200.0, help="configured telegram rate of the rate phase, per second (default 200)")
    bench_campaigns.add_argument("--rate-seconds", type=_positive(float), default=20.0, help="length of the rate phase at that rate, seconds (default 20)")
    bench_campaigns.add_argument("--crash-contacts", type=_positive(int), default=10_000, help="contacts of the kill -9 phase (default 10000, at most --contacts)")
    bench_campaigns.add_argument("--max-jobs", type=_positive(int), default=50, help="sends in flight per worker (default 50)")
    bench_campaigns.add_argument("--max-seconds", type=_positive(float), default=1800.0, help="stop the whole run after this long (default 1800)")
    bench_campaigns.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the workers' and simulators' logs to DIR at the end")
    bench_campaigns.add_argument("--json", action="store_true", help="machine-readable output")
    bench_campaigns.set_defaults(func=cmd_bench_campaigns)

    soak = bench_sub.add_parser(
        "soak",
        help="conversations on every channel and a campaign through faults, kill -9 and a Redis restart; checks nothing is lost or sent twice",
    )
    soak.add_argument("--minutes", type=_positive(float), help="minutes of conversations (default 3; --quick 0.75)")
    soak.add_argument("--conversations", type=_positive(int), help="concurrent conversations (default 200; --quick 30)")
    soak.add_argument("--campaign-sends", type=_positive(int), help="planned campaign sends (default 20000; --quick 600)")
    soak.add_argument("--database", choices=["auto", "postgres", "sqlite"], help="auto: PostgreSQL when installed (default; --quick sqlite)")
    soak.add_argument("--quick", action="store_true", help="a small run: one gateway, one kill -9 of the workers, one Redis restart")
    soak.add_argument("--max-seconds", type=_positive(float), help="stop the whole run after this long (default 1500; --quick 420)")
    soak.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy every process's log to DIR at the end")
    soak.add_argument("--json", action="store_true", help="machine-readable output")
    soak.set_defaults(func=cmd_bench_soak)

    contacts = sub.add_parser("contacts", help="import and export contact lists (CSV) on DATABASE_URL")
    contacts_sub = contacts.add_subparsers(dest="contacts_command", required=True)
    imports = contacts_sub.add_parser(
        "import",
        help="import a CSV contact list: bad rows are reported and skipped",
        description="Columns: channel, address, consent (required); language, country, region, role, child_level, timezone. "
        "Exit status: 0 all rows imported, 1 some rows rejected, 2 nothing imported.",
    )
    imports.add_argument("file", type=Path, help="UTF-8 CSV file with a header line")
    imports.add_argument(
        "--source-basis",
        metavar="TEXT",
        help='how and where the people on the list agreed, e.g. "paper form signed at the consulate of Oran, 2026-10-12" '
        "(required if a row opts in; recorded with every consent change)",
    )
    imports.add_argument("--dry-run", action="store_true", help="validate and count, write nothing")
    imports.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    imports.set_defaults(func=cmd_contacts_import)
    link = contacts_sub.add_parser("link", help="link a family's addresses on several channels into one profile")
    link.add_argument("addresses", nargs="+", help="addresses such as whatsapp:+33612345678 telegram:123456789")
    link.set_defaults(func=cmd_contacts_link)

    campaigns = sub.add_parser("campaigns", help="check campaign files, preview, plan and schedule their sends; control and report runs")
    campaigns_sub = campaigns.add_subparsers(dest="campaigns_command", required=True)
    validate = campaigns_sub.add_parser("validate", help="check campaign files: each OK or file:line: field: reason (exit 1 if any is refused)")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(func=cmd_campaigns_validate)
    for name, func, text in (
        ("preview", cmd_campaigns_preview, "what planning would write, without writing: counts, exclusions, messages, duration"),
        ("plan", cmd_campaigns_plan, "write the campaign's runs and planned sends on DATABASE_URL (idempotent)"),
    ):
        command = campaigns_sub.add_parser(name, help=text)
        command.add_argument("file", type=Path, metavar="FILE")
        command.add_argument("--now", metavar="ISO", help="plan as if it were this moment (default: now; no offset means UTC)")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        command.set_defaults(func=func)

    schedule = campaigns_sub.add_parser(
        "schedule", help="plan, then queue every planned send on the bulk lane at its time (REDIS_URL; idempotent: scheduling again sends nothing twice)"
    )
    schedule.add_argument("file", type=Path, metavar="FILE")
    schedule.add_argument("--now", metavar="ISO", help="plan as if it were this moment (default: now; no offset means UTC)")
    schedule.add_argument("--json", action="store_true", help="machine-readable output")
    schedule.set_defaults(func=cmd_campaigns_schedule)
    status = campaigns_sub.add_parser("status", help="a run's sends by status and its progress")
    status.add_argument("run", type=int, metavar="RUN")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_campaigns_status)
    for name, text in (
        ("pause", "pause a run: its queued sends wait (checked again every 30 s)"),
        ("resume", "resume a paused run"),
        ("cancel", "cancel a run: its sends not yet sent are skipped (cancelled)"),
    ):
        command = campaigns_sub.add_parser(name, help=text)
        command.add_argument("run", type=int, metavar="RUN")
        command.set_defaults(func=cmd_campaigns_control)
    report = campaigns_sub.add_parser("report", help="a run's outcomes by status, reason, country, language and channel; replies and opt-outs that followed")
    report.add_argument("run", type=int, metavar="RUN")
    report.add_argument("--csv", type=Path, metavar="FILE", help="also write one row per send (no addresses) to FILE")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=cmd_campaigns_report)

    worker = sub.add_parser(
        "worker",
        help="a standalone send worker (REDIS_URL, DATABASE_URL, channel settings); several may run at once",
        description="Campaign sends wait on the bulk queue; replies on the replies queue (the gateway runs a replies worker itself). "
        "Run bulk workers separately so a campaign never delays an answer to a family.",
    )
    worker.add_argument("--queue", choices=["bulk", "replies"], default="bulk", help="which queue to drain (default bulk)")
    worker.add_argument("--burst", action="store_true", help="stop once the queue is empty (deferred jobs included)")
    worker.add_argument("--max-jobs", type=_positive(int), default=10, help="sends in flight at once (default 10; a bulk worker shares them among its campaign batches)")
    worker.add_argument("--job-timeout", type=_positive(float), default=60.0, help="seconds a send may take; a crashed worker's jobs resume this + 10 s later (default 60)")
    worker.add_argument("--rate", action="append", metavar="CHANNEL=PER_SECOND", help="a channel's send rate (default: the platform limits); repeatable")
    worker.add_argument("--grace", type=float, default=20.0, help="on SIGTERM, seconds the running sends get to finish; the rest stay queued (default 20)")
    worker.set_defaults(func=cmd_worker)

    telegram = sub.add_parser("telegram", help="Telegram: register the webhook, or poll for development")
    telegram.add_argument("action", choices=["webhook", "poll"])
    telegram.add_argument("--url", help="webhook URL (default: JISR_PUBLIC_URL/webhooks/telegram)")
    telegram.set_defaults(func=cmd_telegram)

    exports = contacts_sub.add_parser(
        "export",
        help="every contact (web chat sessions aside) as CSV, in the import's columns + consent_changed_at, topics; "
        "with a contact: everything Jisr holds about it, as JSON",
    )
    exports.add_argument("contact", nargs="?", metavar="ID", help="one contact: its numeric id or its address (whatsapp:+33…, telegram:123…)")
    exports.add_argument("--id", metavar="ID", help="the same, as an option")
    exports.add_argument("--output", "-o", type=Path, help="write to this file (created readable by you only) instead of stdout")
    exports.set_defaults(func=cmd_contacts_export)
    forget = contacts_sub.add_parser(
        "forget",
        help="erase a contact: SQL rows, conversation state and queued sends (REDIS_URL); keeps only a keyed hash so old lists cannot re-import it",
    )
    forget.add_argument("contact", metavar="ID", help="its numeric id or its address")
    forget.add_argument("--profile", action="store_true", help="also forget every address linked to its profile (all the family's channels)")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    forget.add_argument("--sql-only", action="store_true", help="no shared Redis: erase the SQL rows only (the gateway's conversation state stays)")
    forget.add_argument("--json", action="store_true", help="machine-readable report (counts only)")
    forget.set_defaults(func=cmd_contacts_forget)

    privacy = sub.add_parser("privacy", help="retention: empty conversation content older than JISR_RETENTION_DAYS")
    privacy_sub = privacy.add_subparsers(dest="privacy_command", required=True)
    purge = privacy_sub.add_parser("purge", help="empty old message texts, media, mediators' notes and idle conversation state; keep the counts")
    purge.add_argument("--dry-run", action="store_true", help="count what would be emptied, change nothing")
    purge.add_argument("--days", type=_positive(int), help="retention in days (default JISR_RETENTION_DAYS, 180)")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    purge.set_defaults(func=cmd_privacy_purge)

    from jisr.auth.cli import add_parser as add_accounts_parser  # `jisr accounts …` lives with the accounts

    add_accounts_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    from jisr.logging_setup import use_json_lines, wants_json

    if wants_json(getattr(args, "log_json", False)):
        use_json_lines()
    if args.country and not (len(args.country) == 2 and args.country.isalpha()) if hasattr(args, "country") else False:
        print(f"jisr: --country takes an ISO 3166 alpha-2 code such as FR or DZ, not {args.country!r}", file=sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
