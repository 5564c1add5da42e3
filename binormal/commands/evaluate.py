"""``binormal evaluate``: detection quality on labelled events (see :mod:`binormal.evaluate`)."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers
from binormal.commands.score import add_engine_options, add_progress_options, check_window, engine_options, whole


def register(sub: Subparsers) -> None:
    """Add ``evaluate EVENTS LABELS [--json] [--cap N] [--weight-cap W] [--refresh N | --exact]`` and ``--feedback``."""
    s = sub.add_parser("evaluate", help="ROC-AUC, AP and precision of each score on labelled events")
    s.set_defaults(logs=False, quick_exit=True)
    s.add_argument("events", nargs="?", help="NDJSON events, replayed in file order (.gz accepted, - for stdin)")
    s.add_argument("labels", nargs="?", help="CSV id,label[,kind]: 1 = anomalous; ids without a label are not counted")
    s.add_argument(
        "--feedback",
        metavar="OUT.csv",
        help="write the analysts' marks in Redis (binormal rules) as labels id,label (confirmed 1, benign 0; - stdout)",
    )
    s.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    s.add_argument(
        "--window",
        type=whole(1, ""),
        default=50,
        metavar="K",
        help="recent window of the recent and drift scores: the last min(K, n // 2) events (default 50; at most --cap)",
    )
    add_engine_options(s)  # the engine of binormal score: same options, same semantics
    add_progress_options(s)


def run(args: argparse.Namespace) -> int:
    """Export the feedback (``--feedback``), then replay the events and print the metrics (if given)."""
    import sys

    if args.feedback is not None:
        from redis.exceptions import RedisError

        from binormal.feedback import export_feedback

        try:
            rows = export_feedback(args.feedback)
        except (RedisError, OSError) as exc:
            sys.stderr.write(f"binormal evaluate --feedback: {exc}\n")
            return 3
        sys.stderr.write(f"{rows} labels written to {args.feedback}\n")
        if args.events is None:
            return 0
    if args.events is None or args.labels is None:
        sys.stderr.write("binormal evaluate: EVENTS and LABELS are required (unless --feedback OUT.csv alone)\n")
        return 2
    import dataclasses

    from binormal.evaluate import main_evaluate
    from binormal.offline import Options

    opts = engine_options(args, "evaluate")
    if not isinstance(opts, Options):
        return 2
    problem = check_window(args.window, args.cap)
    if problem is not None:
        sys.stderr.write(f"binormal evaluate: {problem}\n")
        return 2
    opts = dataclasses.replace(opts, window=args.window)
    return main_evaluate(args.events, args.labels, args.json, opts, args.progress)
