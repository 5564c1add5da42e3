"""``binormal.client``: send events to Binormal and read its answers (asyncio and sync).

:class:`AsyncClient` is the implementation (aiohttp); :class:`Client` runs it on a
private event-loop thread, so both share one set of retry rules (docs/client.md):

* ``send``/``send_many`` POST NDJSON batches to ``/events``. Every event gets an
  ``event_id`` before its first try (a resend is then counted once), and a retry
  sends again only the lines whose outcome is unknown or unwritten - never a line
  the service accepted or rejected.
* ``discrete`` POSTs one event to ``/discrete`` with its event id as the
  ``Idempotency-Key``; a retry is answered with the first result.
* Tries are bounded (``tries``), waits grow exponentially with full jitter up to
  ``max_backoff_s`` (at least the service's ``Retry-After``), every request has a timeout.

The base URL and token come from ``BINORMAL_URL`` and ``BINORMAL_TOKEN`` unless given.
"""

from binormal.client.core import (
    DEFAULT_URL,
    TOKEN_ENV,
    URL_ENV,
    AsyncClient,
    Client,
    EventLike,
    Scope,
    error_text,
    event_fields,
    events_reply,
    retry_after,
    split_scope,
    with_event_id,
)
from binormal.client.results import (
    ActionCount,
    ApiError,
    BinormalError,
    DiscreteResult,
    Dominated,
    EventsReply,
    Feedback,
    GaveUp,
    Individual,
    LineError,
    Outlier,
    Outliers,
    Queued,
    Reason,
    SendResult,
    TooLarge,
    Transient,
)

__all__ = [
    "ActionCount",
    "ApiError",
    "AsyncClient",
    "BinormalError",
    "Client",
    "DEFAULT_URL",
    "DiscreteResult",
    "Dominated",
    "EventLike",
    "EventsReply",
    "Feedback",
    "GaveUp",
    "Individual",
    "LineError",
    "Outlier",
    "Outliers",
    "Queued",
    "Reason",
    "Scope",
    "SendResult",
    "TOKEN_ENV",
    "TooLarge",
    "Transient",
    "URL_ENV",
    "error_text",
    "event_fields",
    "events_reply",
    "retry_after",
    "split_scope",
    "with_event_id",
]
