"""structlog set up once per process: coloured console lines on a terminal, else JSON lines on stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog

_console = False  # what configure() chose: announce() writes its line only for people


def wants_console(fmt: str, stream: TextIO) -> bool:
    """``console``/``json`` as asked; ``auto``: console when ``stream`` is a terminal."""
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty is not None and isatty())
    return fmt == "console"


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Render structlog events on ``stream`` (stderr) with a timestamp and level.

    ``level`` is a level name (any case); ``fmt`` is ``auto``, ``console`` (structlog's
    ConsoleRenderer, coloured) or ``json`` (one object a line, for containers and log shippers).
    """
    global _console
    out = stream if stream is not None else sys.stderr
    level = level.upper()
    _console = wants_console(fmt, out)
    renderer: structlog.typing.Processor
    if _console:
        renderer = structlog.dev.ConsoleRenderer(colors="NO_COLOR" not in os.environ)  # no-color.org
    else:
        renderer = structlog.processors.JSONRenderer()
    logging.basicConfig(stream=out, level=level, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # The console renderer prints tracebacks itself (exc_info), JSON needs them as a string.
            *(() if _console else (structlog.processors.format_exc_info,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


def browser_url(host: str, port: int) -> str:
    """The URL a person opens for a service bound to ``host``: a wildcard address means this machine."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}"


def announce(service: str, url: str, stream: TextIO | None = None) -> None:
    """On a console, one plain line with the URL to open (JSON logs carry it in their ``listening`` event)."""
    if not _console:
        return
    out = stream if stream is not None else sys.stderr
    out.write(f"\x1b[1mbinormal {service}\x1b[0m: open \x1b[1;36m{url}\x1b[0m  (Ctrl-C stops)\n")
    out.flush()
