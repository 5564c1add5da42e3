"""Prometheus metrics of the HTTP services, defined once per process.

``binormal run`` puts the web tier and the ingest service in one process; each
metric is registered here, once, and both use it (prometheus-client refuses a
second registration of the same name). Gauges read from Redis (stream lag,
dead letters) are refreshed by ``GET /metrics`` just before rendering.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

EVENTS_ACCEPTED = Counter(
    "binormal_events_accepted",
    "Events written to the stream, by HTTP endpoint",
    ["endpoint"],
)
EVENTS_REJECTED = Counter(
    "binormal_events_rejected",
    "Events refused as invalid (nothing written), by HTTP endpoint",
    ["endpoint"],
)
DISCRETE_REQUESTS = Counter(
    "binormal_discrete_requests",
    "POST /discrete requests by outcome (ok, duplicate, stored, timeout, invalid, unavailable, overloaded)",
    ["outcome"],
)
SCORED = Counter(
    "binormal_scored",
    "Scored results received from workers by this web process (request-reply)",
)
LATE_REPLIES = Counter(
    "binormal_late_replies",
    "Replies that arrived after their request gave up (dropped)",
)
BACKPRESSURE = Counter(
    "binormal_backpressure_refusals",
    "POST /events requests refused with 503 because the consumer group lagged",
)
HTTP_CONNECTIONS = Gauge(
    "binormal_http_connections",
    "Open HTTP connections of this process (BINORMAL_MAX_CONNECTIONS caps them)",
)
HTTP_REFUSED = Counter(
    "binormal_http_refused",
    "Requests cut or refused by a bound: connections, websockets, head_timeout, body_timeout, send_timeout",
    ["reason"],
)
RATE_LIMITED = Counter(
    "binormal_rate_limited",
    "Producer requests refused with 429 (BINORMAL_RATE_LIMIT)",
)
REQUEST_SECONDS = Histogram(
    "binormal_request_seconds",
    "HTTP request latency by route and status class",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
STREAM_LAG = Gauge(
    "binormal_stream_lag",
    "Entries of a stream shard not yet acknowledged by the consumer group (read at scrape)",
    ["shard"],
)
DEAD_LETTERED = Gauge(
    "binormal_dead_lettered_entries",
    "Entries in a shard's dead-letter stream (XLEN, read at scrape)",
    ["shard"],
)
REDIS_UP = Gauge(
    "binormal_redis_up",
    "1 when the last Redis check of this process succeeded",
)
WORKER_HEARTBEAT_AGE = Gauge(
    "binormal_worker_heartbeat_age_seconds",
    "Seconds since the newest worker heartbeat, by Redis TIME (read at scrape; +Inf when none)",
)
WORKERS_BEATING = Gauge(
    "binormal_workers_beating",
    "Workers whose heartbeat is younger than BINORMAL_READY_HEARTBEAT_S (read at scrape)",
)


class AlertCounters:
    """``binormal_alerts_{fired,delivered,failed}_total{org,rule}``: the sender's counts (``keys.alert_stats()``).

    Rule names are unique per org only, so each series names the rule's org too (``*``: a rule of
    every org; empty for counts kept before names were per org, field ``<kind>:<rule>``).

    Counters kept in Redis, not in this process (the sender counts them, any web process exports
    them), so ``GET /metrics`` reads the hash and sets :attr:`counts` just before rendering.
    """

    KINDS = ("fired", "delivered", "failed")
    HELP = {
        "fired": "Alerts appended to the alert streams (crossings), per rule",
        "delivered": "Alerts delivered to their webhook (2xx), per rule",
        "failed": "Alerts given up on after their tries (in the failed list), per rule",
    }

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}

    def load(self, raw: Mapping[bytes | str, bytes | str]) -> None:
        """Set the counts from the stats hash (``<kind>:<org>/<rule>`` -> count)."""
        counts: dict[tuple[str, str, str], int] = {}
        for field, value in raw.items():
            text = field.decode("utf-8", "replace") if isinstance(field, bytes) else field
            kind, _, ident = text.partition(":")
            org, _, rule = ident.rpartition("/")
            if kind in self.KINDS and rule:
                counts[(kind, org, rule)] = int(value)
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One counter family per kind (prometheus-client appends ``_total``)."""
        for kind in self.KINDS:
            family = CounterMetricFamily(f"binormal_alerts_{kind}", self.HELP[kind], labels=["org", "rule"])
            for (k, org, rule), n in sorted(self.counts.items()):
                if k == kind:
                    family.add_metric([org, rule], n)
            yield family


ALERTS = AlertCounters()
REGISTRY.register(ALERTS)
