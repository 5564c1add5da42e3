"""``binormal feed``: send an NDJSON log to the service, resumable, with retries and progress.

The package, in the order a line goes through it:

* :mod:`~binormal.feed.settings`: :class:`FeedSettings` and the command-line flags;
* :mod:`~binormal.feed.reader`: the :class:`~binormal.feed.reader.Source` of each input (file, .gz, stdin, --follow);
* :mod:`~binormal.feed.convert`: lines into validated events (--transform, --map);
* :mod:`~binormal.feed.transport`: the :class:`~binormal.feed.transport.Transport` (POST /events, --sync, --direct);
* :mod:`~binormal.feed.state`: event ids and the atomic resume state file;
* :mod:`~binormal.feed.report`: per-line problems, the progress bar and the summary;
* :mod:`~binormal.feed.feeder`: the run that ties them together.

Importing the package is light (no asyncio, aiohttp or redis): the CLI builds its parser from it.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``feed`` subcommand to the ``binormal`` subparsers (its ``func`` is :func:`run`)."""
    from binormal.feed.settings import add_parser

    add_parser(subparsers).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``binormal feed`` with the parsed ``args`` (the environment fills in the rest); the exit code."""
    from binormal.common.config import ConfigError
    from binormal.feed.settings import settings_from_args

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        sys.stderr.write(f"binormal feed: {exc}\n")
        return 2
    from binormal.feed.feeder import feed

    return feed(settings)
