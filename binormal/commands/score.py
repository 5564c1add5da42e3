"""``binormal score``: score an NDJSON log offline (see :mod:`binormal.score`)."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``score FILE [--top N] [--json] [--cap N]``."""
    s = sub.add_parser("score", help="score an NDJSON log offline (no server needed)")
    s.add_argument("file", help="NDJSON file, .gz accepted, - for stdin")
    s.add_argument("--top", type=int, default=10, help="outliers shown per scope")
    s.add_argument("--json", action="store_true", help="one JSON object per individual")
    s.add_argument("--cap", type=int, default=100, help="normalisation cap N")


def run(args: argparse.Namespace) -> int:
    """Score the file and print each scope's outliers (or JSON lines)."""
    from binormal.score import main_score

    return main_score(args.file, args.top, args.json, args.cap)
