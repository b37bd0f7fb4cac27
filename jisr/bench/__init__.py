"""Benchmarks run on this machine (`jisr bench …`)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any, Awaitable, Callable, Protocol


class Report(Protocol):
    def as_dict(self) -> dict[str, Any]: ...

    def as_table(self) -> str: ...


def progress(message: str) -> None:
    """What a benchmark is doing, on stderr (the figures go to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_bounded(
    command: str,
    run: Callable[[Callable[[str], None]], Awaitable[Report]],
    max_seconds: float,
    as_json: bool,
    *,
    use_uvloop: bool = False,
) -> int:
    """Run one benchmark within ``max_seconds`` and print its report; every process it started is stopped on any exit.

    SIGTERM is turned into KeyboardInterrupt so that it unwinds through the
    benchmark's finally blocks, which stop what it started.
    """

    async def bounded() -> Report:
        return await asyncio.wait_for(run(progress), max_seconds)

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if use_uvloop:
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
        report = asyncio.run(bounded())
    except asyncio.TimeoutError:
        print(f"{command}: stopped after {max_seconds:.0f} s (--max-seconds)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        print(report.as_table())
    return 0
