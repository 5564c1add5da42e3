"""docs/openapi.yaml against the live service: schemathesis over every route, real HTTP, real Redis.

The whole ``binormal run`` application (web tier and ingest on one app, with
the bounded server of common/server.py) and a scorer worker run in a thread
of their own on a free loopback port, against the private redis-server of
conftest.py. Schemathesis generates valid and invalid requests from the spec
(examples, coverage and fuzzing phases) and each answer must be: no 5xx,
a documented status code, the documented content type and headers, a body
that matches the documented schema, and a 4xx for what the spec calls invalid.
``CI=true`` runs >= 2,000 examples in total; locally fewer.

It runs twice: with authentication off (no tokens file, loopback) and on (a
tokens file; requests carry an admin token for every org), so every route is
fuzzed behind its authorisation check too.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from aiohttp import web
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from binormal.common.auth import hash_token
from binormal.common.embedded import RedisServer
from binormal.common.redisapp import REDIS
from binormal.common.server import BoundedAppRunner
from tests.support.http import combined_app, ingest_settings, web_settings
from tests.support.workers import running_worker, worker_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
OPENAPI = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
OPERATIONS = 21  # every method of every path in docs/openapi.yaml (checked below)
EXAMPLES = 350 if IN_CI else 25  # per operation (those without inputs need few): >= 2,000 in total in CI
SEED_EVENTS = [  # the spec's examples name this scope, so some generated queries find it
    b'{"org":"acme","source":"webserver","pop":"auth_getpost","id":"individual1","action":"GET /user/login"}',
    b'{"org":"acme","source":"webserver","pop":"auth_getpost","id":"individual2","action":"POST /user/login"}',
]

# 401/403 too: with auth on, a case may carry a fuzzed Authorization or Cookie of its own.
REJECTIONS = ["400", "401", "403", "404", "405", "408", "409", "413", "414", "415", "421", "429", "431"]

schema = schemathesis.openapi.from_path(
    OPENAPI,
    config=SchemathesisConfig.from_dict(
        {
            "generation": {"mode": "all", "max-examples": EXAMPLES, "database": "none"},
            # Every 4xx the service answers counts as refusing invalid input (414: a too-long URL).
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
        }
    ),
)


@schemathesis.serializer("application/x-ndjson")
def ndjson_serializer(ctx: schemathesis.SerializationContext, value: object) -> dict[str, bytes]:
    """The spec's NDJSON body is an array of events: one JSON value per line."""
    items = value if isinstance(value, list) else [value]
    return {"data": b"".join(json.dumps(item).encode() + b"\n" for item in items)}


CALLS: dict[str, int] = {}  # requests sent per documented operation (wrong-method probes included)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,  # what the spec calls invalid is refused with a 4xx
]
# Not positive_data_acceptance: some rules are not expressible in the spec (the Idempotency-Key header
# must equal the body's event_id; /websocket needs the upgrade headers), so schema-valid input can be a 400.


class LiveService:
    """The app and a worker on their own event loop in a thread; ``base`` once serving."""

    def __init__(self, redis_url: str, tokens_file: str = "") -> None:
        self.redis_url = redis_url
        self.tokens_file = tokens_file
        self.headers: dict[str, str] = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if tokens_file else {}
        self.prefix = f"fz{uuid.uuid4().hex[:8]}"
        self.base = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-service", daemon=True)

    def start(self) -> LiveService:
        self._thread.start()
        if not self._ready.wait(30.0) or self._error is not None:
            raise RuntimeError(f"live service did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30.0)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        ws = web_settings(self.redis_url, self.prefix, discrete_timeout_s=2.0, tokens_file=self.tokens_file)
        app = combined_app(ws, ingest_settings(self.redis_url, self.prefix, tokens_file=self.tokens_file))
        runner = BoundedAppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            await asyncio.wait_for(app[REDIS].up.wait(), 10.0)
            async with running_worker(worker_settings(self.redis_url, self.prefix)):
                self.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
                await self._seed()
                self._ready.set()
                await self._stop.wait()
        finally:
            await runner.cleanup()

    async def _seed(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            for body in SEED_EVENTS:
                async with session.post(
                    f"{self.base}/discrete", data=body, headers={"Content-Type": "application/json", **self.headers}
                ) as r:
                    assert r.status == 200, await r.text()


ADMIN_TOKEN = "fuzz-admin-token"


@pytest.fixture(scope="module", params=["auth-off", "auth-on"])
def live(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    tokens = ""
    if request.param == "auth-on":
        path = tmp_path_factory.mktemp("fuzz-auth") / "tokens"
        path.write_text(f"fuzz-admin admin * sha256:{hash_token(ADMIN_TOKEN).hex()}\n")
        tokens = str(path)
    service = LiveService(redis_server.url, tokens).start()
    yield service
    service.stop()


def test_the_fuzzer_sees_every_operation() -> None:
    ops = [(path, method) for path, item in schema.raw_schema["paths"].items() for method in item]
    assert len(ops) == OPERATIONS, ops


@pytest.mark.timeout(300)
@schema.parametrize()
def test_every_route_answers_as_documented(case: schemathesis.Case, live: LiveService) -> None:
    label = f"{case.operation.method.upper()} {case.operation.path}"
    CALLS[label] = CALLS.get(label, 0) + 1
    headers = dict(live.headers)
    if case.headers and "Authorization" in case.headers:
        headers.pop("Authorization", None)  # the spec's own credentials (fuzzed) win
    case.call_and_validate(base_url=live.base, checks=CHECKS, timeout=10, headers=headers)


def test_enough_examples_ran() -> None:
    """The fuzz test above ran every operation, >= 2,000 requests in all in CI (counting both auth modes)."""
    print("fuzz requests per operation:", CALLS)
    assert len(CALLS) == OPERATIONS, CALLS
    assert sum(CALLS.values()) >= (2_000 if IN_CI else 100), CALLS
