"""``binormal`` console script: one subcommand per service or tool.

Every command is a module of :mod:`binormal.commands` (or elsewhere) with
``register(subparsers)`` and ``run(args) -> int``, listed once in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import NoReturn

# Nothing heavy is imported at module level (asyncio, structlog and the services are imported by
# the subcommands): main() installs its SIGTERM handler within a few ms of the interpreter starting.

COMMANDS: dict[str, str] = {
    "run": "binormal.commands.run",
    "worker": "binormal.commands.worker",
    "web": "binormal.commands.web",
    "ingest": "binormal.commands.ingest",
    "score": "binormal.commands.score",
    "evaluate": "binormal.commands.evaluate",
    "recompute": "binormal.commands.recompute",
    "migrate": "binormal.commands.migrate",
    "rules": "binormal.commands.rules",
    "alerts": "binormal.commands.alerts",
    "dead": "binormal.commands.dead",
    "feed": "binormal.feed",
    "token": "binormal.commands.token",
}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("auto", "console", "json")


def log_level(text: str) -> str:
    """``--log-level``: a level name in any case, returned upper-case."""
    level = text.strip().upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {text!r} (one of {', '.join(x.lower() for x in LEVELS)})")
    return level


def log_format(text: str) -> str:
    """``--log-format``: auto (console on a terminal, else JSON), console or json; any case."""
    fmt = text.strip().lower()
    if fmt not in FORMATS:
        raise argparse.ArgumentTypeError(f"unknown format {text!r} (one of {', '.join(FORMATS)})")
    return fmt


class _VersionAction(argparse.Action):
    """``--version``: read from the installed metadata only when asked (not on every start-up)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        sys.stdout.write(f"binormal {_version()}\n")  # stdout, like argparse's own version action
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("binormal")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word after the global options), None when unsure."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("--log-level", "--log-format"):
            i += 2
        elif word.startswith(("--log-level=", "--log-format=")):
            i += 1
        else:
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: global options, then each module of :data:`COMMANDS` registers its subcommand.

    ``only``: register just that command (what :func:`main` does when the arguments name one), so
    a light command (``binormal score``) does not pay the imports of another's parser
    (``token`` and ``dead`` build theirs from modules that import aiohttp and redis).
    """
    p = argparse.ArgumentParser(prog="binormal", description=__doc__.split("\n", 1)[0])
    p.add_argument("--version", action=_VersionAction)
    # A string default goes through `type` too: a bad BINORMAL_LOG_LEVEL is argparse's error as well.
    p.add_argument(
        "--log-level",
        type=log_level,
        default=os.environ.get("BINORMAL_LOG_LEVEL", "INFO"),
        help="debug, info, warning, error or critical, any case (default: BINORMAL_LOG_LEVEL, else info)",
    )
    p.add_argument(
        "--log-format",
        type=log_format,
        default=os.environ.get("BINORMAL_LOG_FORMAT", "auto"),
        help="console (coloured lines), json (one object a line) or auto: console on a terminal, "
        "else json (default: BINORMAL_LOG_FORMAT, else auto)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            continue
        mod = importlib.import_module(module)
        before = set(sub.choices)
        mod.register(sub)
        for added in set(sub.choices) - before:
            sub.choices[added].set_defaults(func=mod.run)
        if name not in sub.choices:
            raise RuntimeError(f"{module} did not register the {name!r} command")
    return p


def main(argv: list[str] | None = None, *, process: bool = False) -> int:
    """Parse arguments and run the chosen subcommand.

    ``process``: this is the process's entry point (:func:`entry`, ``python -m binormal``), so a
    command that sets ``quick_exit`` ends the process itself once its output is flushed.
    """
    # Until a service installs its own handlers, SIGTERM means "leave now":
    # nothing is in hand yet, so exit 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(chosen_command(words)).parse_args(words)
    if getattr(args, "logs", True):  # an offline tool that logs nothing sets logs=False (structlog costs ~0.1 s)
        from binormal.common import log

        log.configure(args.log_level, args.log_format)
    try:
        code = int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        # ConfigError (a ValueError), imported only now: the offline commands never load the settings module
        from binormal.common.config import ConfigError

        if not isinstance(exc, ConfigError):
            raise
        sys.stderr.write(f"binormal {args.command}: {exc}\n")  # a setting that cannot be used: say which
        return 2
    if process and getattr(args, "quick_exit", False):
        quick_exit(code)
    return code


def quick_exit(code: int) -> NoReturn:
    """Flush stdout and stderr and end the process without the interpreter's teardown.

    For the offline commands (``score``, ``evaluate``): their engine's records point back at their
    scope, cycles that only a collection at exit would free, and that pass over every individual
    costs ~15 ms of a 0.4 s ``binormal score``. Nothing else is left to flush: they write only to
    stdout and stderr and close their files themselves (``os._exit`` runs no ``atexit`` handler).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left (BrokenPipeError), closed or unwritable: nothing to say there
            pass
    os._exit(code)


def entry() -> NoReturn:
    """The ``binormal`` console script."""
    sys.exit(main(process=True))


if __name__ == "__main__":
    entry()
