"""web/replies.py: the request-reply waiter over a real Redis pub/sub connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.connection import make_client
from binormal.web.replies import ReplyWaiter, TooManyWaiting
from tests.support.waiting import wait_for

CHANNEL = "t:reply:inst"


@contextlib.asynccontextmanager
async def listening(waiter: ReplyWaiter) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(waiter.run())
    try:
        await asyncio.wait_for(waiter.subscribed.wait(), 5.0)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = make_client(redis_url)
    yield c
    await c.aclose()


def reply(rid: str, **fields: object) -> bytes:
    return orjson.dumps({"score": 1.5, "count": 2, **fields, "rid": rid})


async def test_deliver_resolves_the_matching_future_without_rid(client: aioredis.Redis) -> None:
    waiter = ReplyWaiter(client, CHANNEL)
    a, b = waiter.register("a"), waiter.register("b")
    assert waiter.deliver(reply("b", id="x"))
    assert b.result() == {"score": 1.5, "count": 2, "id": "x"}
    assert not a.done() and len(waiter) == 1


async def test_one_message_may_carry_several_replies_as_ndjson(client: aioredis.Redis) -> None:
    waiter = ReplyWaiter(client, CHANNEL)
    a, b = waiter.register("a"), waiter.register("b")
    assert waiter.deliver(reply("a", id="1") + b"\n" + reply("zzz") + b"\n" + reply("b", id="2") + b"\n")
    assert (a.result()["id"], b.result()["id"]) == ("1", "2")
    assert waiter.late == 1


async def test_timeout_resolves_to_none_and_cancels_on_reply(client: aioredis.Redis) -> None:
    waiter = ReplyWaiter(client, CHANNEL)
    slow = waiter.register("slow", timeout_s=0.05)
    fast = waiter.register("fast", timeout_s=0.05)
    waiter.deliver(reply("fast"))
    assert await asyncio.wait_for(slow, 1.0) is None
    await asyncio.sleep(0.1)
    assert fast.result() == {"score": 1.5, "count": 2}


async def test_late_unknown_and_garbage_replies_are_dropped(client: aioredis.Redis) -> None:
    waiter = ReplyWaiter(client, CHANNEL)
    fut = waiter.register("r1")
    waiter.discard("r1")  # the request gave up
    assert not waiter.deliver(reply("r1"))
    assert not waiter.deliver(reply("never-registered"))
    assert not waiter.deliver(b"\xffnot json")
    assert not waiter.deliver(b"[1, 2]")
    assert not fut.done() and waiter.late == 2


async def test_the_map_is_bounded(client: aioredis.Redis) -> None:
    waiter = ReplyWaiter(client, CHANNEL, max_pending=3)
    for i in range(3):
        waiter.register(str(i))
    with pytest.raises(TooManyWaiting):
        waiter.register("3")
    waiter.discard("0")
    waiter.register("3")


async def test_published_replies_reach_their_waiters(client: aioredis.Redis, aredis: aioredis.Redis) -> None:
    waiter = ReplyWaiter(client, CHANNEL)
    async with listening(waiter):
        futs = {f"r{i}": waiter.register(f"r{i}") for i in range(50)}
        for rid in reversed(list(futs)):
            await aredis.publish(CHANNEL, reply(rid, id=rid))
        got = await asyncio.wait_for(asyncio.gather(*futs.values()), 5.0)
    assert [g["id"] for g in got] == list(futs)
    assert await aredis.pubsub_numsub(CHANNEL) == [(CHANNEL.encode(), 0)]  # unsubscribed when stopped


async def test_idle_subscription_is_kept_alive_by_ping(client: aioredis.Redis) -> None:
    waiter = ReplyWaiter(client, CHANNEL, ping_interval_s=0.1, poll_s=0.02)
    async with listening(waiter):
        await asyncio.sleep(1.0)  # ten ping intervals of silence: PONGs keep it alive
        assert waiter.resubscriptions == 0 and waiter.subscribed.is_set()


async def test_resubscribes_after_the_connection_is_killed_and_recovers_stored_replies(
    client: aioredis.Redis, aredis: aioredis.Redis
) -> None:
    waiter = ReplyWaiter(client, CHANNEL, ping_interval_s=0.2, poll_s=0.05)
    async with listening(waiter):
        fut = waiter.register("lost", stored_key="t:stored:lost")
        # Kill the pub/sub connection; the reply is published while nobody listens
        # (lost, as pub/sub keeps nothing) but its stored copy exists.
        await aredis.client_kill_filter(_type="pubsub")
        await aredis.publish(CHANNEL, reply("lost"))
        await aredis.set("t:stored:lost", orjson.dumps({"score": 9.0, "count": 1}))
        got = await asyncio.wait_for(fut, 10.0)
        assert got == {"score": 9.0, "count": 1}
        assert waiter.resubscriptions >= 1
        # And the new subscription delivers again.
        await wait_for(lambda: waiter.subscribed.is_set(), what="resubscribed")
        fut2 = waiter.register("after")
        await aredis.publish(CHANNEL, reply("after"))
        assert (await asyncio.wait_for(fut2, 5.0))["count"] == 2


async def test_stop_ends_the_listener_without_a_cancel(client: aioredis.Redis) -> None:
    """stop() alone ends run() within poll_s: the shutdown does not depend on a cancellation
    that redis-py can swallow when it lands as a read timeout expires (binormal run then
    hung in its cleanup, tests/test_supervisor.py)."""
    waiter = ReplyWaiter(client, CHANNEL, poll_s=0.2)
    task = asyncio.create_task(waiter.run())
    await asyncio.wait_for(waiter.subscribed.wait(), 5.0)
    waiter.stop()
    await asyncio.wait_for(task, 5.0)
    assert not waiter.subscribed.is_set() and waiter.resubscriptions == 0
