"""Fan-out of scored results to websocket clients, one bounded queue per client.

The broadcast subscriber calls :meth:`Hub.publish` with each NDJSON message the
workers PUBLISH; it only ever appends to in-memory queues (never awaits), so a
slow browser can hold up nobody but itself. Each client has a writer task
(:meth:`Hub.run_writer`) that coalesces whatever is queued into one frame at
most ``max_fps`` times per second.

Wire format of a frame (one websocket text message): newline-delimited JSON.
Result lines are the workers' result objects byte for byte (the seed's format),
so the seed's page keeps working. A client that connects with ``?stats=1``
(our page does) also gets control lines: objects carrying a ``"type"`` key and
none of the result fields (``id``, ``action``, ``zscore``). Without ``stats=1``
the stream holds result lines only.

* ``{"type":"hello","queue":N,"max_fps":F}`` - first line after connecting;
* ``{"type":"stats","dropped":D,"sent":S}`` - first line of a frame whenever
  ``dropped`` (results this client lost because its queue was full; the oldest
  go first) changed since the last frame; ``sent`` counts results sent so far.
* ``{"type":"alert","alert":{...}}`` - an alert that just fired (web/alertfeed.py), in the
  frame after it was read, before the frame's results. Alerts have their own queue per client
  (the newest ``ALERT_QUEUE``), so a flood of results never pushes one out.

Tenancy: a client registered with ``orgs`` (a token limited to some orgs) gets
only the results of those orgs. Each line's org is parsed once per message, and
only while such a client is connected; clients with the same orgs share one
filtered list. An alert reaches a restricted client only when its org is one of the client's.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import orjson
import structlog

log = structlog.get_logger("binormal.web.hub")

Send = Callable[[str], Awaitable[None]]

_ids = itertools.count(1)
ALERT_QUEUE = 50  # alerts a client's queue keeps (the page shows as many)


# Fast path for the workers' lines: only numeric fields come before "org" (see common.result.make_result),
# so a match anchored at the start is the top-level key; anything else is parsed in full.
_ORG_FAST = re.compile(rb'\{(?:"\w+":[-+0-9.eE]+,)*"org":"([^"\\]*)"')


def org_of(line: bytes) -> str | None:
    """The ``org`` of one result line (None when it has none: such a line reaches no restricted client)."""
    m = _ORG_FAST.match(line)
    if m is not None:
        try:
            return m.group(1).decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    org = obj.get("org") if isinstance(obj, dict) else None
    return org if isinstance(org, str) else None


class Client:
    """One websocket client's bounded queue of result lines and its counters."""

    def __init__(self, capacity: int, control: bool = True, orgs: frozenset[str] | None = None) -> None:
        self.id = next(_ids)
        self.capacity = capacity
        self.control = control  # send hello/stats control lines
        self.orgs = orgs  # None: every org
        self.queue: deque[bytes] = deque()
        self.ready = asyncio.Event()  # set when the queue holds something
        self.dropped = 0  # results lost to a full queue (oldest first)
        self.dropped_sent = 0  # value of ``dropped`` last reported to the client
        self.sent = 0  # results written to the socket
        self.frames = 0
        self.closed = False
        self.alerts: deque[bytes] = deque(maxlen=ALERT_QUEUE)  # alert lines (control clients only)

    def offer(self, lines: Iterable[bytes]) -> None:
        """Queue result lines without waiting; drop the oldest when full."""
        q = self.queue
        for line in lines:
            if len(q) >= self.capacity:
                q.popleft()
                self.dropped += 1
            q.append(line)
        if q:
            self.ready.set()

    def take(self) -> list[bytes]:
        """Everything queued now (the next frame's results)."""
        lines = list(self.queue)
        self.queue.clear()
        self.ready.clear()
        return lines

    def take_alerts(self) -> list[bytes]:
        """The alert lines queued now."""
        lines = list(self.alerts)
        self.alerts.clear()
        return lines


class Hub:
    """Registry of clients; ``publish`` fans out, ``run_writer`` drains one client."""

    def __init__(self, queue_size: int, max_fps: float) -> None:
        if queue_size < 1 or max_fps <= 0:
            raise ValueError("queue_size must be >= 1 and max_fps > 0")
        self.queue_size = queue_size
        self.max_fps = max_fps
        self.clients: set[Client] = set()
        self.received = 0  # results received from the broadcast channel
        self.messages = 0
        self.restricted = 0  # clients limited to some orgs (lines are parsed only while > 0)
        self.alerts = 0  # alerts received from the alert streams
        self.alert_feed_up = False  # the alert feed's last read of the alert streams worked (web/alertfeed.py)
        self.watchers = 0  # control clients (the page's stats=1 viewers): the ones alerts are pushed to
        self.watched = asyncio.Event()  # set while watchers > 0: the alert feed reads at its fast pace

    def register(self, control: bool = True, orgs: frozenset[str] | None = None) -> Client:
        """A new client with an empty queue (``control``: hello/stats lines; ``orgs``: only these orgs)."""
        client = Client(self.queue_size, control, orgs)
        self.clients.add(client)
        if orgs is not None:
            self.restricted += 1
        if control:
            self.watchers += 1
            self.watched.set()
        log.info("ws_client_joined", client=client.id, clients=len(self.clients))
        return client

    def unregister(self, client: Client) -> None:
        """Forget ``client``; its writer stops at its next wake-up."""
        client.closed = True
        client.ready.set()
        if client in self.clients:
            self.clients.discard(client)
            if client.orgs is not None:
                self.restricted -= 1
            if client.control:
                self.watchers -= 1
                if not self.watchers:
                    self.watched.clear()
            log.info(
                "ws_client_left",
                client=client.id,
                sent=client.sent,
                dropped=client.dropped,
                clients=len(self.clients),
            )

    def publish(self, payload: bytes) -> int:
        """Fan one broadcast message (NDJSON) out to every client; never awaits."""
        lines = [line for line in payload.split(b"\n") if line.strip()]
        self.messages += 1
        self.received += len(lines)
        if not lines:
            return 0
        line_orgs = [org_of(line) for line in lines] if self.restricted else []
        filtered: dict[frozenset[str], list[bytes]] = {}
        for client in tuple(self.clients):
            mine = lines
            if client.orgs is not None:
                got = filtered.get(client.orgs)
                if got is None:
                    got = filtered[client.orgs] = [ln for ln, o in zip(lines, line_orgs) if o in client.orgs]
                mine = got
                if not mine:
                    continue
            # Only the newest ``capacity`` lines can survive in any queue.
            client.offer(mine[-client.capacity :] if len(mine) > client.capacity else mine)
            if len(mine) > client.capacity:
                client.dropped += len(mine) - client.capacity
        return len(lines)

    def publish_alert(self, line: bytes, org: str) -> int:
        """Queue one alert line for every control client allowed to see ``org``; never awaits."""
        reached = 0
        for client in tuple(self.clients):
            if not client.control or (client.orgs is not None and org not in client.orgs):
                continue
            client.alerts.append(line)
            client.ready.set()
            reached += 1
        self.alerts += 1
        return reached

    def hello(self) -> str:
        """The control line sent first to every client."""
        return orjson.dumps({"type": "hello", "queue": self.queue_size, "max_fps": self.max_fps}).decode()

    def frame(self, client: Client) -> str | None:
        """Coalesce ``client``'s queue into one text frame (None if nothing to send)."""
        lines = client.take()
        parts: list[bytes] = []
        if client.control and client.dropped != client.dropped_sent:
            client.dropped_sent = client.dropped
            stats = {"type": "stats", "dropped": client.dropped, "sent": client.sent + len(lines)}
            parts.append(orjson.dumps(stats))
        parts.extend(client.take_alerts())
        if not lines and not parts:
            return None
        parts.extend(lines)
        client.sent += len(lines)
        client.frames += 1
        return b"\n".join(parts).decode("utf-8", errors="replace")

    async def run_writer(self, client: Client, send: Send) -> None:
        """Send ``client`` its frames, at most ``max_fps`` per second, until closed.

        ``send`` may block for as long as the client does not read (TCP back
        pressure); meanwhile its queue keeps only the newest results.
        """
        interval = 1.0 / self.max_fps
        if client.control:
            await send(self.hello())
        next_at = 0.0
        while not client.closed:
            await client.ready.wait()
            if client.closed:
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                # Let results pile up until the frame slot: one frame per slot.
                await asyncio.sleep(delay)
                if client.closed:
                    break
            text = self.frame(client)
            next_at = time.monotonic() + interval
            if text is not None:
                await send(text)
