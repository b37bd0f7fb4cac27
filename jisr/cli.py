"""The `jisr` command. Each subcommand loads only what it needs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
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
    import uvicorn

    from jisr.assistant.model import ensure_model
    from jisr.gateway.app import create_app

    ensure_model()
    print(f"Jisr is starting: web chat at http://{args.host}:{args.port}/chat, API docs at /docs", file=sys.stderr)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning", proxy_headers=True)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jisr", description="Jisr: school assistant and outreach for Moroccan families abroad.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
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
    serve.set_defaults(func=cmd_serve)

    evaluate = sub.add_parser("eval", help="accuracy on the held-out set, beside Rasa's default pipeline and langdetect")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.add_argument("--no-baseline", action="store_true", help="skip Rasa's default pipeline (it trains for a long time)")
    evaluate.set_defaults(func=cmd_eval)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.country and not (len(args.country) == 2 and args.country.isalpha()) if hasattr(args, "country") else False:
        print(f"jisr: --country takes an ISO 3166 alpha-2 code such as FR or DZ, not {args.country!r}", file=sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
