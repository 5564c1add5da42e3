"""Prometheus metrics of the HTTP services, defined once per process.

``binormal run`` puts the web tier and the ingest service in one process; each
metric is registered here, once, and both use it (prometheus-client refuses a
second registration of the same name). Gauges read from Redis (stream lag,
dead letters) are refreshed by ``GET /metrics`` just before rendering.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
