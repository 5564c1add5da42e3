"""``binormal score``: score a log offline (see :mod:`binormal.score`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from binormal.commands import Subparsers

DEFAULT_REFRESH = 1000  # binormal.score.DEFAULT_REFRESH, not imported here (nothing heavy at import)
SEMANTICS = (
    "Default: the state the service would show after ingesting the file with bounded staleness. "
    "A scope's population snapshot is rebuilt every --refresh N of its events (and when an event's "
    "action is new to it); each individual's score is its score at its last event against the snapshot "
    "in force then, and zscore, pscore and rzscore compare it with the final scores of its scope "
    "(as /api/outliers shows once the file is in). --exact: a snapshot after every event and the zscore "
    "each individual had at its last event (the in-memory engine's results). Rows with fewer than "
    "--min-events events, or in a scope with fewer than --min-individuals individuals, are learning."
)


def whole(low: int, what: str) -> argparse._ActionType:
    """An argparse type: a whole number at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number{what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def add_engine_options(s: argparse.ArgumentParser) -> None:
    """The options ``score`` and ``evaluate`` share: --cap, --weight-cap, --refresh / --exact."""
    s.add_argument("--cap", type=whole(1, ""), default=100, help="normalisation cap N (default 100)")
    s.add_argument(
        "--weight-cap",
        type=whole(0, ""),
        default=None,
        metavar="W",
        help="dominance guard: an individual with more than W events weighs its counts normalised to W "
        "in its population (default: $BINORMAL_WEIGHT_CAP, else N, the --cap; 0 = off; else at least N)",
    )
    mode = s.add_mutually_exclusive_group()
    mode.add_argument(
        "--refresh",
        type=whole(1, " of events"),
        default=DEFAULT_REFRESH,
        metavar="N",
        help=f"rebuild a scope's population snapshot every N of its events (default {DEFAULT_REFRESH})",
    )
    mode.add_argument("--exact", action="store_true", help="rebuild the snapshot after every event (slower, exact)")


def engine_options(args: argparse.Namespace, command: str) -> object | None:
    """:class:`binormal.offline.Options` from the shared options, or None (reported) when unusable."""
    from binormal.offline import Options, check_weight_cap

    try:
        # An option not given falls back to the variable the services read, then to its default.
        weight_cap = _from_env(args.weight_cap, "BINORMAL_WEIGHT_CAP", args.cap)
        learning = (
            _from_env(getattr(args, "min_events", None), "BINORMAL_MIN_EVENTS", 10),
            _from_env(getattr(args, "min_individuals", None), "BINORMAL_MIN_INDIVIDUALS", 30),
        )
    except ValueError as exc:
        sys.stderr.write(f"binormal {command}: {exc}\n")
        return None
    problem = check_weight_cap(weight_cap, args.cap)
    if problem is not None:
        sys.stderr.write(f"binormal {command}: {problem}\n")
        return None
    refresh = 0 if args.exact else args.refresh
    return Options(args.cap, refresh, weight_cap, *learning)


def check_window(window: int, cap: int) -> str | None:
    """Why ``--window`` cannot be used with normalisation cap ``cap`` (None when it can): the window
    is scored unnormalised, so k <= K <= N."""
    if window > cap:
        return f"--window must be at most the normalisation cap --cap {cap}, got {window}"
    return None


def _from_env(given: int | None, name: str, default: int) -> int:
    """``given`` if the option was given, else the variable ``name`` (a whole number >= 0), else ``default``."""
    if given is not None:
        return given
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"{name} must be a whole number >= 0, got {raw!r}")
    return int(raw)


def add_learning_options(s: argparse.ArgumentParser) -> None:
    """--min-events and --min-individuals (what counts as learning)."""
    s.add_argument(
        "--min-events",
        type=whole(0, ""),
        default=None,
        help="fewer events: learning (default $BINORMAL_MIN_EVENTS, 10)",
    )
    s.add_argument(
        "--min-individuals",
        type=whole(0, ""),
        default=None,
        help="a scope with fewer: learning (default $BINORMAL_MIN_INDIVIDUALS, 30)",
    )


def register(sub: Subparsers) -> None:
    """Add ``score FILE [--top N] [--json] [engine options] [--map | --transform] [--progress]``."""
    s = sub.add_parser("score", help="score a log offline (no server needed)", description=SEMANTICS)
    s.set_defaults(logs=False, quick_exit=True)
    s.add_argument("file", help="NDJSON file, .gz accepted, - for stdin")
    s.add_argument("--top", type=int, default=10, help="outliers shown per scope")
    s.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per individual: count, score, zscore, pscore, rzscore, bits_per_event, learning",
    )
    add_engine_options(s)
    add_learning_options(s)
    conv = s.add_mutually_exclusive_group()
    conv.add_argument("--map", dest="field_map", metavar="SPEC", help="event fields from raw lines: org=acme,id=.user")
    conv.add_argument(
        "--transform", metavar="MODULE:FUNCTION", help="a function turning each parsed line into an event"
    )
    s.add_argument(
        "--window",
        type=whole(0, ""),
        default=None,
        metavar="K",
        help="add each individual's recent score to --json: the bits of its last min(K, n // 2) events "
        "against its population (default $BINORMAL_RECENT_WINDOW, else 0 = off; at most --cap)",
    )
    s.add_argument(
        "--jobs",
        type=whole(1, " of processes"),
        default=None,
        metavar="J",
        help="share the scopes of a regular file among J processes, each reading the whole file "
        "(default: one per usable CPU, at most 8; 1 = this process only); the output is the same",
    )
    add_progress_options(s)


def add_progress_options(s: argparse.ArgumentParser) -> None:
    """--progress / --no-progress (default: a bar when stderr is a terminal)."""
    bar = s.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="progress bar on stderr (default: a tty)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score the file and print each scope's outliers (or JSON lines)."""
    from binormal.offline import Options
    from binormal.score import main_score
    from binormal.split import usable_jobs

    opts = engine_options(args, "score")
    if not isinstance(opts, Options):
        return 2
    try:
        window = _from_env(args.window, "BINORMAL_RECENT_WINDOW", 0)
    except ValueError as exc:
        sys.stderr.write(f"binormal score: {exc}\n")
        return 2
    problem = check_window(window, args.cap)
    if problem is not None:
        sys.stderr.write(f"binormal score: {problem}\n")
        return 2
    opts = dataclasses.replace(opts, window=window)
    return main_score(
        args.file,
        args.top,
        args.json,
        opts,
        args.exact,
        args.field_map,
        args.transform,
        args.progress,
        usable_jobs(args.jobs),
    )
