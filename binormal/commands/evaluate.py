"""``binormal evaluate``: detection quality on labelled events (see :mod:`binormal.evaluate`)."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``evaluate EVENTS LABELS [--json] [--cap N]``."""
    s = sub.add_parser("evaluate", help="ROC-AUC, AP and precision of each score on labelled events")
    s.add_argument("events", help="NDJSON events, replayed in file order (.gz accepted, - for stdin)")
    s.add_argument("labels", help="CSV id,label[,kind]: 1 = anomalous; ids without a label are not counted")
    s.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    s.add_argument("--cap", type=int, default=100, help="normalisation cap N")


def run(args: argparse.Namespace) -> int:
    """Replay the events and print the metrics."""
    from binormal.evaluate import main_evaluate

    return main_evaluate(args.events, args.labels, args.json, args.cap)
