"""``binormal run``: everything in one foreground process tree (see :mod:`binormal.run`)."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``run`` and its ``--open`` flag."""
    r = sub.add_parser("run", help="start everything (embedded Redis unless REDIS_URL is set)")
    r.add_argument(
        "--open",
        action="store_true",
        help="listen on every interface (0.0.0.0; needs a token or BINORMAL_ALLOW_ANONYMOUS=1)",
    )


def run(args: argparse.Namespace) -> int:
    """Embedded Redis (unless REDIS_URL), workers, web tier and ingest service on HOST:PORT."""
    from binormal.run import main_run

    return main_run(args.log_level, open_all=args.open, log_format=args.log_format)
