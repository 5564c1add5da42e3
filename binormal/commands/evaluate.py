"""``binormal evaluate``: detection quality on labelled events (see :mod:`binormal.evaluate`)."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers
from binormal.commands.score import add_engine_options, add_progress_options, engine_options


def register(sub: Subparsers) -> None:
    """Add ``evaluate EVENTS LABELS [--json] [--cap N] [--weight-cap W] [--refresh N | --exact]``."""
    s = sub.add_parser("evaluate", help="ROC-AUC, AP and precision of each score on labelled events")
    s.set_defaults(logs=False)
    s.add_argument("events", help="NDJSON events, replayed in file order (.gz accepted, - for stdin)")
    s.add_argument("labels", help="CSV id,label[,kind]: 1 = anomalous; ids without a label are not counted")
    s.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    add_engine_options(s)  # the engine of binormal score: same options, same semantics
    add_progress_options(s)


def run(args: argparse.Namespace) -> int:
    """Replay the events and print the metrics."""
    from binormal.evaluate import main_evaluate
    from binormal.offline import Options

    opts = engine_options(args, "evaluate")
    if not isinstance(opts, Options):
        return 2
    return main_evaluate(args.events, args.labels, args.json, opts, args.progress)
