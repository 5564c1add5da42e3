"""``binormal feed``: an adapter over :mod:`binormal.feedsettings` and :mod:`binormal.feed`.

Temporary: once the feeder is a package exposing ``register``/``run`` itself,
:data:`binormal.cli.COMMANDS` points ``feed`` at it and this module goes.
"""

from __future__ import annotations

import argparse
import sys

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``feed`` and its options."""
    from binormal.feedsettings import add_feed_parser

    add_feed_parser(sub)


def run(args: argparse.Namespace) -> int:
    """Feed the file; a bad option or setting is one line on stderr and exit code 2."""
    from binormal.common.config import ConfigError
    from binormal.feed import main_feed
    from binormal.feedsettings import settings_from_args

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        sys.stderr.write(f"binormal feed: {exc}\n")
        return 2
    return main_feed(settings)
