"""common/connection.py against the installed redis-py: the declared range and the private internals it uses.

FastConnection relies on redis-py internals (``redis._parsers.hiredis.NOT_ENOUGH_DATA``,
``Connection._parser._reader`` / ``._connected`` and ``read_response``'s keywords);
these tests fail on a redis-py that changed them, before the worker silently slows
down or misreads replies.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.asyncio.connection import Connection

from binormal.common.connection import FastConnection, make_client

pytestmark = pytest.mark.timeout(30)
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_installed_redis_py_is_in_the_declared_range() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [spec] = [d for d in deps if d.startswith("redis[")]
    bounds = re.findall(r"(>=|<)\s*([0-9.]+)", spec)
    assert {op for op, _ in bounds} == {">=", "<"}, f"redis-py must be pinned to a tested range: {spec}"
    installed = _version(redis.__version__)
    for op, raw in bounds:
        bound = _version(raw)
        assert installed >= bound if op == ">=" else installed < bound, (redis.__version__, spec)


def test_read_response_keeps_the_signature_fast_connection_overrides() -> None:
    params = inspect.signature(Connection.read_response).parameters
    assert list(params)[:3] == ["self", "disable_decoding", "timeout"]
    assert params["disconnect_on_error"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["push_request"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "pack_command" in vars(Connection) or hasattr(Connection, "pack_command")


async def test_fast_path_reads_a_buffered_reply_from_the_hiredis_reader(redis_url: str) -> None:
    client = make_client(redis_url)
    try:
        assert await client.ping() is True
        conn = await client.connection_pool.get_connection()
        try:
            assert isinstance(conn, FastConnection)
            parser = conn._parser
            reader = getattr(parser, "_reader", None)
            assert reader is not None, "redis-py's hiredis parser no longer has _reader"
            assert getattr(parser, "_connected", None) is True, "redis-py's hiredis parser no longer has _connected"
            # An empty buffer answers NOT_ENOUGH_DATA (what the fast path compares against).
            assert reader.gets() is NOT_ENOUGH_DATA
            # A reply already in the buffer is handed over with no socket read.
            reader.feed(b"+OK\r\n:42\r\n-ERR boom\r\n")
            assert await conn.read_response() == b"OK"
            assert await conn.read_response(disable_decoding=True) == 42
            with pytest.raises(redis.ResponseError, match="boom"):
                await conn.read_response()
            # The normal path still works after the fast one.
            await conn.send_command("PING")
            assert await conn.read_response() == b"PONG"
        finally:
            await client.connection_pool.release(conn)
    finally:
        await client.aclose()


async def test_commands_are_packed_by_hiredis_as_redis_py_would(redis_url: str) -> None:
    client = make_client(redis_url)
    try:
        conn = await client.connection_pool.get_connection()
        try:
            packed = b"".join(conn.pack_command("XINFO GROUPS", "s"))
            assert packed == b"".join(Connection.pack_command(conn, "XINFO GROUPS", "s"))
        finally:
            await client.connection_pool.release(conn)
    finally:
        await client.aclose()
