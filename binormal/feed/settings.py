"""Options of ``binormal feed``: the settings dataclass and its command-line flags.

Kept apart from :mod:`binormal.feed.feeder` so building the CLI parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from binormal.common.config import ConfigError, ServiceSettings, environ, setting
from binormal.common.config import from_env as settings_from_env
from binormal.common.keys import Keyspace
from binormal.common.schema import ID_TTL_MAX

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class FeedSettings(ServiceSettings):
    """Options of one feed run; :meth:`from_env` reads the environment (the declared settings:
    Redis URL, prefix and shards from :class:`ServiceSettings`, and the three below), CLI flags override."""

    url: str = setting("BINORMAL_URL", DEFAULT_URL, doc="binormal feed: the service base URL (--url wins)")
    timeout_s: float = setting(
        "BINORMAL_FEED_TIMEOUT_S", 30.0, minimum=0.1, doc="binormal feed: timeout of one HTTP request"
    )
    # Environment only (argv is visible to everyone); kept out of the repr.
    token: str = setting(
        "BINORMAL_TOKEN", "", repr=False, shown="unset", doc="binormal feed: the producer token it sends"
    )
    files: tuple[str, ...] = ()
    mode: str = "batch"  # batch (POST /events), sync (POST /discrete), direct (XADD)
    transform: str | None = None
    field_map: str | None = None
    strict: bool = False
    state: str | None = None
    from_start: bool = False
    follow: bool = False
    batch: int = 1000  # events per POST /events or XADD pipeline
    batch_bytes: int = 1 << 20  # and at most this many bytes of lines
    retry_for_s: float = 600.0  # give up after failing this long without a break (0: never)
    max_backoff_s: float = 30.0
    min_zscore: float | None = None
    json: bool = False
    progress: bool | None = None  # None: when stderr is a terminal
    save_every_s: float = 0.5  # state file writes at most this often (and at the end)
    id_ttl: int | None = None  # seconds the service remembers each event id (None: its full window)
    max_backlog: int = 200_000  # --direct: wait while the shards hold more entries
    errors_shown: int = 200  # per kind of problem, line reports before going quiet

    def __post_init__(self) -> None:
        if self.mode not in ("batch", "sync", "direct"):
            raise ConfigError(f"unknown mode {self.mode!r}")
        if self.batch < 1 or self.batch_bytes < 1:
            raise ConfigError("--batch must be at least 1")
        if self.timeout_s <= 0:
            raise ConfigError("--timeout must be positive")
        if self.retry_for_s < 0:
            raise ConfigError("--retry-for must be >= 0")
        if self.shards < 1:
            raise ConfigError("--shards must be at least 1")
        if self.save_every_s < 0:
            raise ConfigError("--save-every must be >= 0")
        if self.id_ttl is not None and not 1 <= self.id_ttl <= ID_TTL_MAX:
            raise ConfigError(f"--id-ttl must be 1 to {ID_TTL_MAX} seconds")

    @property
    def keys(self) -> Keyspace:
        """Key builder (``--direct``)."""
        return Keyspace(prefix=self.prefix, shards=self.shards)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> FeedSettings:
        """The declared settings from the environment (``common.config.from_env``); ``overrides`` win."""
        base = settings_from_env(cls, environ() if env is None else env)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``feed`` subcommand to the ``binormal`` subparsers; returns its parser."""
    f = sub.add_parser(
        "feed",
        help="send an NDJSON log to the service (resumable, retries, progress)",
        description="Send NDJSON lines to Binormal: POST /events in batches (default), POST /discrete one by one "
        "(--sync, prints results), or XADD into the stream (--direct). Resumes where it stopped.",
    )
    f.add_argument("files", nargs="+", metavar="FILE", help="NDJSON file (.gz accepted), - for stdin")
    how = f.add_mutually_exclusive_group()
    how.add_argument(
        "--sync",
        action="store_const",
        dest="mode",
        const="sync",
        help="POST /discrete one event at a time and print results (the seed's way)",
    )
    how.add_argument(
        "--direct",
        action="store_const",
        dest="mode",
        const="direct",
        help="XADD straight into the stream shards at --redis-url",
    )
    f.add_argument("--url", help=f"service base URL (env BINORMAL_URL, default {DEFAULT_URL})")
    f.add_argument("--redis-url", help="--direct: Redis URL (env REDIS_URL)")
    f.add_argument("--prefix", help="--direct: key prefix (env BINORMAL_PREFIX, default bn)")
    f.add_argument("--shards", type=int, help="--direct: stream shards (env BINORMAL_SHARDS, default 4)")
    f.add_argument(
        "--transform",
        metavar="MODULE:FUNCTION",
        help="function(line dict) -> event dict or None to skip (default function: process_event)",
    )
    f.add_argument(
        "--map",
        dest="field_map",
        metavar="SPEC",
        help="event fields from the line: org=acme,source=web,id=.user.name,action=.request",
    )
    f.add_argument("--strict", action="store_true", default=None, help="stop at the first transform error")
    f.add_argument("--state", help="state file (default: <FILE>.feedstate.json next to each input)")
    f.add_argument(
        "--save-every",
        dest="save_every_s",
        type=float,
        metavar="SECONDS",
        help="write the state file at most this often, and at the end (default 0.5; 0: after every batch)",
    )
    f.add_argument(
        "--id-ttl",
        type=int,
        metavar="SECONDS",
        help="ask the service to remember each line's event id this long (default: its full window, "
        "1 h); a crashed run must be resumed sooner to count every line once",
    )
    f.add_argument("--from-start", action="store_true", default=None, help="ignore the saved position")
    f.add_argument("--follow", action="store_true", default=None, help="keep reading a growing file (Ctrl-C ends)")
    f.add_argument("--batch", type=int, help="events per request (default 1000)")
    f.add_argument("--timeout", dest="timeout_s", type=float, help="seconds per request (default 30)")
    f.add_argument(
        "--retry-for",
        dest="retry_for_s",
        type=float,
        help="give up after the service failed this many seconds in a row (default 600, 0: never)",
    )
    f.add_argument("--min-zscore", type=float, help="--sync: print only results with zscore >= Z")
    f.add_argument("--json", action="store_true", default=None, help="print a JSON summary on stdout at the end")
    bar = f.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="progress bar even if not a terminal")
    bar.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bar")
    return f


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> FeedSettings:
    """FeedSettings from the environment, overridden by the flags that were given."""
    names = (
        "mode",
        "url",
        "redis_url",
        "prefix",
        "shards",
        "transform",
        "field_map",
        "strict",
        "state",
        "from_start",
        "save_every_s",
        "id_ttl",
        "follow",
        "batch",
        "timeout_s",
        "retry_for_s",
        "min_zscore",
        "json",
        "progress",
    )
    overrides = {n: getattr(args, n, None) for n in names}
    return FeedSettings.from_env(env, files=tuple(args.files), **overrides)
