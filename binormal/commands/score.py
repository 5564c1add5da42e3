"""``binormal score``: score a log offline (see :mod:`binormal.score`)."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers

DEFAULT_REFRESH = 1000  # binormal.score.DEFAULT_REFRESH, not imported here (nothing heavy at import)


def _refresh(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of events, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: Subparsers) -> None:
    """Add ``score FILE [--top N] [--json] [--cap N] [--refresh N | --exact] [--map M | --transform T]``."""
    s = sub.add_parser("score", help="score a log offline (no server needed)")
    s.add_argument("file", help="NDJSON file, .gz accepted, - for stdin")
    s.add_argument("--top", type=int, default=10, help="outliers shown per scope")
    s.add_argument("--json", action="store_true", help="one JSON object per individual")
    s.add_argument("--cap", type=int, default=100, help="normalisation cap N")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument(
        "--refresh",
        type=_refresh,
        default=DEFAULT_REFRESH,
        metavar="N",
        help=f"rebuild a scope's population snapshot every N of its events (default {DEFAULT_REFRESH})",
    )
    mode.add_argument("--exact", action="store_true", help="rebuild the snapshot after every event (slower, exact)")
    conv = s.add_mutually_exclusive_group()
    conv.add_argument("--map", dest="field_map", metavar="SPEC", help="event fields from raw lines: org=acme,id=.user")
    conv.add_argument(
        "--transform", metavar="MODULE:FUNCTION", help="a function turning each parsed line into an event"
    )
    bar = s.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="progress bar on stderr (default: a tty)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score the file and print each scope's outliers (or JSON lines)."""
    from binormal.score import main_score

    refresh = 0 if args.exact else args.refresh
    return main_score(args.file, args.top, args.json, args.cap, refresh, args.field_map, args.transform, args.progress)
