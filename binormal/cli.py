"""``binormal`` console script: one subcommand per service or tool."""

from __future__ import annotations

import argparse
import signal
import sys

# Nothing heavy is imported at module level (asyncio, structlog and the services are imported by
# the subcommands): main() installs its SIGTERM handler within a few ms of the interpreter starting.


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from binormal.common.runtime import tune_gc
    from binormal.worker import Worker, WorkerSettings

    tune_gc()

    async def main() -> None:
        w = Worker(WorkerSettings.from_env())
        w.install_signal_handlers()
        await w.run()

    asyncio.run(main())
    return 0


def _score(args: argparse.Namespace) -> int:
    from binormal.score import main_score

    return main_score(args.file, args.top, args.json, args.cap)


def _recompute(args: argparse.Namespace) -> int:
    from binormal.common.store import main_recompute

    return main_recompute()


def _dead(args: argparse.Namespace) -> int:
    from binormal.deadletters import main_dead

    return main_dead(args)


def _run(args: argparse.Namespace) -> int:
    from binormal.run import main_run

    return main_run(args.log_level, open_all=args.open)


def _token(args: argparse.Namespace) -> int:
    from binormal.tokens import main_token

    return main_token(args)


def _web(args: argparse.Namespace) -> int:
    from binormal.web.app import main as main_web

    return main_web()


def _ingest(args: argparse.Namespace) -> int:
    from binormal.ingest.app import main as main_ingest

    return main_ingest()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands added by each service)."""
    p = argparse.ArgumentParser(prog="binormal", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="start everything (embedded Redis unless REDIS_URL is set)")
    r.add_argument(
        "--open",
        action="store_true",
        help="listen on every interface (0.0.0.0; needs a token or BINORMAL_ALLOW_ANONYMOUS=1)",
    )
    r.set_defaults(func=_run)

    w = sub.add_parser("worker", help="run one scorer worker against REDIS_URL")
    w.set_defaults(func=_worker)

    wb = sub.add_parser(
        "web", help="run the web tier (/discrete, /api/*, /, /websocket) on HOST:PORT against REDIS_URL"
    )
    wb.set_defaults(func=_web)

    ig = sub.add_parser("ingest", help="run the ingest service (/events) on HOST:INGEST_PORT against REDIS_URL")
    ig.set_defaults(func=_ingest)

    s = sub.add_parser("score", help="score an NDJSON log offline (no server needed)")
    s.add_argument("file", help="NDJSON file, .gz accepted, - for stdin")
    s.add_argument("--top", type=int, default=10, help="outliers shown per scope")
    s.add_argument("--json", action="store_true", help="one JSON object per individual")
    s.add_argument("--cap", type=int, default=100, help="normalisation cap N")
    s.set_defaults(func=_score)

    rc = sub.add_parser("recompute", help="rebuild every scope's score aggregates from scratch (bounds float drift)")
    rc.set_defaults(func=_recompute)

    from binormal import feed
    from binormal.deadletters import add_dead_parser
    from binormal.tokens import add_token_parser

    feed.register(sub)
    add_dead_parser(sub).set_defaults(func=_dead)
    add_token_parser(sub).set_defaults(func=_token)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand."""
    # Until a service installs its own handlers, SIGTERM means "leave now":
    # nothing is in hand yet, so exit 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = build_parser().parse_args(argv)
    from binormal.common import log

    log.configure(args.log_level)
    from binormal.common.config import ConfigError

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:  # a setting that cannot be used: say which, no traceback
        sys.stderr.write(f"binormal {args.command}: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
