"""``binormal feed`` killed with SIGKILL at random points and restarted: every line counted exactly once.

The kill lands anywhere: between batches, during a request, between the
service's answer and the state save. A restarted run resends from the saved
position; lines sent but not yet saved carry the same event ids as before, so
the worker's idempotency markers keep them from being counted twice.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from binormal.feed.state import StateFile
from tests.support.events import feed_events as make_events
from tests.support.feed import counted, event_line, feed, service, start_feed, write_lines
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

pytestmark = pytest.mark.slow


async def kill_at_random_points(
    args: list[str],
    log: Path,
    state_path: Path,
    rnd: random.Random,
    lines: int,
    kills: int = 3,
    batches: tuple[int, ...] = (50, 200, 1000),
) -> list[int]:
    """Start the feeder ``kills`` times and SIGKILL it mid-run; returns the saved line after each kill.

    Kill points: once the saved position passes a random line (5-60 % of the
    file, increasing), plus a random 0-80 ms so the kill may land anywhere in
    a batch's life (reading, in flight, answered but not saved yet).
    """
    saved: list[int] = []
    state = StateFile(state_path)
    targets = sorted(rnd.randint(lines // 20, lines * 6 // 10) for _ in range(kills))
    for target in targets:
        before = saved[-1] if saved else 0
        # Positions saved every 20 ms (not the default 0.5 s): the saved line follows
        # the feeder closely, so a kill lands near its target and never after the end.
        proc = await start_feed(str(log), *args, "--batch", str(rnd.choice(batches)), "--save-every", "0.02")

        def moved(floor: int = max(before + 1, target)) -> bool:
            state.load()
            pos = state.get(str(log))
            return pos is not None and pos.line >= floor

        def moved_or_gone() -> bool:
            return moved() or proc.returncode is not None

        await wait_for(moved_or_gone, timeout=60, interval=0.005, what="the feeder to make progress")
        if proc.returncode is not None:
            out, err = await proc.communicate()
            if not moved():
                raise AssertionError(
                    f"feeder exited with {proc.returncode} before line {target}: {err.decode()[-3000:]}"
                )
        await asyncio.sleep(rnd.uniform(0.0, 0.08))
        assert proc.returncode is None, "finished before it could be killed"
        proc.kill()
        await proc.wait()
        state.load()
        pos = state.get(str(log))
        assert pos is not None and pos.line > before
        saved.append(pos.line)
    return saved


@pytest.mark.timeout(300)
async def test_sigkill_three_times_over_http_then_finish(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"random seed {seed}")
    rnd = random.Random(seed)
    truth = make_events(50_000, seed=21)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    state_path = Path(str(log) + ".feedstate.json")
    async with running_worker(worker_settings(redis_url, prefix)) as worker, service(redis_url, prefix) as url:
        saved = await kill_at_random_points(["--url", url], log, state_path, rnd, 50_000)
        assert saved[-1] < 50_000, saved
        final = await feed(str(log), "--url", url, "--json", timeout=200)
        assert final.rc == 0, final.err
        assert final.summary["read"] == 50_000 - saved[-1] and final.summary["status"] == "done"
        assert await counted(aredis, prefix, truth, timeout=150) == []
        print(f"saved lines after kills {saved}; duplicates the worker ignored: {worker.counters.duplicates}")


@pytest.mark.timeout(240)
async def test_sigkill_three_times_direct_then_finish(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FEED_SEED") or int.from_bytes(os.urandom(4), "big"))
    print(f"random seed {seed}")
    rnd = random.Random(seed)
    truth = make_events(60_000, seed=22)
    log = write_lines(tmp_path / "log.json.gz", [event_line(e) for e in truth])
    state_path = tmp_path / "direct.state"
    args = ["--direct", "--redis-url", redis_url, "--prefix", prefix, "--state", str(state_path)]
    # --direct has no HTTP hop: small batches and a longer file keep it from
    # reaching the end before a kill lands.
    saved = await kill_at_random_points(args, log, state_path, rnd, 60_000, batches=(50, 100))
    print(f"saved lines after kills {saved}")
    assert saved[-1] < 60_000, saved
    final = await feed(str(log), *args, "--json", timeout=200)
    assert final.rc == 0, final.err
    assert final.summary["read"] == 60_000 - saved[-1]
    async with running_worker(worker_settings(redis_url, prefix)):
        assert await counted(aredis, prefix, truth, timeout=150) == []
