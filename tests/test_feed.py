"""``binormal feed``: real feeder processes against a real service (private Redis, worker, HTTP app on a socket).

The feeder always runs as ``binormal feed`` in a child process (its exit code,
stdout and stderr are what a user sees); the worker and the HTTP app run in
the test's event loop on a loopback port.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from binormal.cli import build_parser
from binormal.common.config import ConfigError
from binormal.common.embedded import free_port
from binormal.common.keys import Keyspace
from binormal.common.schema import Event
from binormal.feed.convert import FieldMap, MapError
from binormal.feed.reader import InputError
from binormal.feed.settings import settings_from_args
from binormal.feed.state import Position, StateFile, event_id, file_key
from tests.support.backends import both_backends
from tests.support.events import feed_events as make_events
from tests.support.feed import (
    counted,
    event_line,
    feed,
    finish,
    lines_reported,
    raw_log_line,
    service,
    start_feed,
    write_lines,
)
from tests.support.waiting import wait_for
from tests.support.workers import binormal_command, running_worker, worker_settings

# ---------------------------------------------------------------- pure parts


def test_event_ids_are_deterministic_and_distinct() -> None:
    k = file_key(b'{"a": 1}\n')
    assert k == file_key(b'{"a": 1}') and len(k) == 16
    assert event_id(k, 10, b"x") == event_id(k, 10, b"x")
    assert len({event_id(k, 10, b"x"), event_id(k, 11, b"x"), event_id(k, 10, b"y"), event_id("0" * 16, 10, b"x")}) == 4


def test_state_file_round_trip_is_atomic(tmp_path: Path) -> None:
    st = StateFile(tmp_path / "s.json")
    assert st.get("in.json") is None
    st.save("in.json", Position("abc", 120, 7))
    st.save("other.json", Position("def", 5, 1))
    again = StateFile(tmp_path / "s.json")
    assert again.get("in.json") == Position("abc", 120, 7)
    assert again.get("other.json") == Position("def", 5, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary file left behind


def test_save_every_and_id_ttl_flags_are_parsed_and_checked() -> None:
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["feed", "in.json"]), env={}).save_every_s == 0.5
    assert settings_from_args(parser.parse_args(["feed", "in.json", "--save-every", "0"]), env={}).save_every_s == 0.0
    with pytest.raises(ConfigError, match="--save-every"):
        settings_from_args(parser.parse_args(["feed", "in.json", "--save-every", "-1"]), env={})
    assert settings_from_args(parser.parse_args(["feed", "in.json"]), env={}).id_ttl is None
    assert settings_from_args(parser.parse_args(["feed", "in.json", "--id-ttl", "300"]), env={}).id_ttl == 300
    for bad in ("0", str(10**10)):
        with pytest.raises(ConfigError, match="--id-ttl must be 1 to 9999999999 seconds"):
            settings_from_args(parser.parse_args(["feed", "in.json", "--id-ttl", bad]), env={})


def test_field_map_literals_paths_and_errors() -> None:
    fm = FieldMap.parse("org=acme,source=web,pop=auth,id=.user.name,action=.request")
    assert fm.apply({"user": {"name": "bob"}, "request": "GET /"}) == {
        "org": "acme",
        "source": "web",
        "pop": "auth",
        "id": "bob",
        "action": "GET /",
    }
    assert (
        FieldMap.parse("id=.user.id,org=a,source=b,pop=c,action=.r").apply({"user": {"id": 42}, "r": "x"})["id"] == "42"
    )
    with pytest.raises(MapError, match="id: path .user.name not found"):
        fm.apply({"request": "GET /"})
    with pytest.raises(MapError, match="action: .request is dict"):
        fm.apply({"user": {"name": "bob"}, "request": {"x": 1}})
    for bad in ("acton=.x", "org", "org=a,org=b"):
        with pytest.raises(InputError):
            FieldMap.parse(bad)


# ---------------------------------------------------------------- over HTTP


@pytest.mark.timeout(240)
async def test_fifty_thousand_lines_feed_completely(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    truth = make_events(50_000, seed=5)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        run = await feed(str(log), "--url", url, "--json", timeout=200)
        assert run.rc == 0, run.err
        s = run.summary
        assert (s["read"], s["sent"], s["accepted"], s["rejected"], s["status"]) == (50_000, 50_000, 50_000, 0, "done")
        assert await counted(aredis, prefix, truth) == []
        state = StateFile(Path(str(log) + ".feedstate.json"))
        assert state.get(str(log)) == Position(file_key(event_line(truth[0])), log.stat().st_size, 50_000)
        # Run again: nothing left to send.
        again = await feed(str(log), "--url", url, "--json")
        assert again.rc == 0 and again.summary["read"] == 0 and "resuming after line 50,000" in again.err
        # --from-start resends everything under the same event ids: accepted, but counted once.
        third = await feed(str(log), "--url", url, "--json", "--from-start")
        assert third.rc == 0 and third.summary["accepted"] == 50_000
        assert await counted(aredis, prefix, truth) == []


async def test_appended_lines_are_fed_on_the_next_run(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    truth = make_events(3_000, seed=9)
    log = tmp_path / "grow.json"
    # The last line has no newline: it is complete at the end of the file.
    write_lines(log, [event_line(e) for e in truth[:1_000]], newline_at_end=False)
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        first = await feed(str(log), "--url", url, "--json", "--batch", "300")
        assert first.rc == 0 and first.summary["accepted"] == 1_000, first.err
        with open(log, "ab") as f:
            f.write(b"\n" + b"\n".join(event_line(e) for e in truth[1_000:]) + b"\n")
        second = await feed(str(log), "--url", url, "--json")
        assert second.rc == 0, second.err
        assert second.summary["read"] == 2_000 and second.summary["accepted"] == 2_000
        assert await counted(aredis, prefix, truth) == []


async def test_bad_json_lines_are_reported_and_skipped(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    events = make_events(500, seed=2)
    lines = [event_line(e) for e in events]
    bad = {3: b"{not json", 77: b'{"org": "acme", "source":', 250: b"\xff\xfe garbage", 499: b"[1, 2"}
    for n, junk in bad.items():
        lines[n - 1] = junk
    truth = [e for i, e in enumerate(events, 1) if i not in bad]
    lines.insert(10, b"   ")  # a blank line: skipped quietly (shifts later numbers by one)
    bad = {(n + 1 if n > 10 else n): j for n, j in bad.items()}
    log = write_lines(tmp_path / "bad.json", lines)
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        run = await feed(str(log), "--url", url, "--json")
        assert run.rc == 0, run.err
        s = run.summary
        assert (s["read"], s["bad_json"], s["skipped"], s["accepted"]) == (501, 4, 1, 496)
        assert lines_reported(run.err, log) == set(bad)
        assert await counted(aredis, prefix, truth) == []


async def test_transform_errors_report_line_numbers_and_one_traceback(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    events = make_events(400, seed=3)
    log = write_lines(tmp_path / "raw.json", [raw_log_line(e, i) for i, e in enumerate(events)])
    (tmp_path / "myproc.py").write_text(
        "def process_event(e):\n"
        "    if e['ts'] % 50 == 7:\n"
        "        raise ValueError('bad ts %d' % e['ts'])\n"
        "    if e['ts'] % 100 == 99:\n"
        "        return None  # skipped on purpose\n"
        "    return {'org': 'acme', 'source': e['service'], 'pop': e['group'],\n"
        "            'id': e['user']['name'], 'action': e['request']}\n"
    )
    raising = {i + 1 for i in range(400) if (1_700_000_000 + i) % 50 == 7}
    skipped = {i + 1 for i in range(400) if (1_700_000_000 + i) % 100 == 99}
    truth = [e for i, e in enumerate(events, 1) if i not in raising and i not in skipped]
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        run = await feed(str(log), "--url", url, "--json", "--transform", f"{tmp_path / 'myproc.py'}:process_event")
        assert run.rc == 0, run.err
        s = run.summary
        assert s["transform_errors"] == len(raising) and s["skipped"] == len(skipped) and s["accepted"] == len(truth)
        assert lines_reported(run.err, log) == raising
        assert run.err.count("Traceback (most recent call last)") == 1
        assert 'myproc.py", line 3, in process_event' in run.err and "ValueError: bad ts" in run.err
        assert await counted(aredis, prefix, truth) == []


async def test_strict_stops_at_the_first_transform_error(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    events = make_events(300, seed=3)
    log = write_lines(tmp_path / "raw.json", [raw_log_line(e, i) for i, e in enumerate(events)])
    (tmp_path / "strictproc.py").write_text(
        "def process_event(e):\n"
        "    if e['ts'] == 1_700_000_123:\n"
        "        return e['missing']\n"
        "    return {'org': 'acme', 'source': e['service'], 'pop': e['group'],\n"
        "            'id': e['user']['name'], 'action': e['request']}\n"
    )
    direct = ["--direct", "--redis-url", redis_url, "--prefix", prefix, "--json", "--batch", "50"]
    # importable by module name from the current directory, like the seed's feed_lib_processor.py
    proc = await asyncio.create_subprocess_exec(
        *binormal_command(),
        "feed",
        "--no-progress",
        str(log),
        *direct,
        "--strict",
        "--transform",
        "strictproc",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    run = await finish(proc)
    assert run.rc == 1 and run.summary["status"] == "strict", run.err
    assert f"{log}:124: transform error: KeyError: 'missing'" in run.err
    assert run.summary["positions"][str(log)]["line"] == 123 and run.summary["accepted"] == 123
    async with running_worker(worker_settings(redis_url, prefix)):
        assert (
            await counted(aredis, prefix, [Event("acme", e.source, e.pop, e.id, e.action) for e in events[:123]]) == []
        )


async def test_map_builds_events_from_nested_lines(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    events = make_events(600, seed=4)
    lines = [raw_log_line(e, i) for i, e in enumerate(events)]
    lines[41] = orjson.dumps({"service": "web", "group": "pop0", "request": "GET /"})  # no user.name
    log = write_lines(tmp_path / "raw.json.gz", lines)
    truth = [Event("acme", "web", "auth", e.id, e.action) for i, e in enumerate(events) if i != 41]
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        run = await feed(
            str(log), "--url", url, "--json", "--map", "org=acme,source=web,pop=auth,id=.user.name,action=.request"
        )
        assert run.rc == 0, run.err
        assert (run.summary["accepted"], run.summary["rejected"]) == (599, 1)
        assert f"{log}:42: rejected: id: path .user.name not found" in run.err
        assert await counted(aredis, prefix, truth) == []


async def test_stdin_is_fed_without_state(redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path) -> None:
    truth = make_events(2_500, seed=6)
    data = b"\n".join(event_line(e) for e in truth)  # no final newline
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        run = await feed("-", "--url", url, "--json", data=data)
        assert run.rc == 0, run.err
        assert run.summary["accepted"] == 2_500 and "cannot be resumed" in run.err
        assert await counted(aredis, prefix, truth) == []
    assert list(tmp_path.iterdir()) == []


async def test_sync_prints_rising_scores_like_the_seed(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    truth = make_events(300, seed=8, individuals=20)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    async with (
        running_worker(worker_settings(redis_url, prefix, snapshot_max_age_ms=0)),
        service(redis_url, prefix) as url,
    ):
        run = await feed(str(log), "--url", url, "--sync")
        assert run.rc == 0, run.err
        results = [orjson.loads(ln) for ln in run.out.splitlines()]
        assert results and all({"score", "zscore", "count", "runtime", "id", "action"} <= set(r) for r in results)
        best: dict[tuple[str, str], float] = {}
        for r in results:  # each printed line raises its individual's best score
            assert r["score"] > best.get((r["pop"], r["id"]), float("-inf"))
            best[(r["pop"], r["id"])] = r["score"]
        assert set(best) == {(e.pop, e.id) for e in truth}
        assert await counted(aredis, prefix, truth) == []

        # --min-zscore keeps only results at or above Z (and --from-start resends: duplicates, counted once).
        again = await feed(str(log), "--url", url, "--sync", "--from-start", "--min-zscore", "1")
        assert again.rc == 0, again.err
        kept = [orjson.loads(ln) for ln in again.out.splitlines()]
        assert all(r["zscore"] >= 1 for r in kept)
        assert await counted(aredis, prefix, truth) == []


async def test_service_down_for_five_seconds_is_waited_for(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    truth = make_events(20_000, seed=11)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    port = free_port()
    async with running_worker(worker_settings(redis_url, prefix)):
        async with service(redis_url, prefix, port) as url:
            proc = await start_feed(str(log), "--url", url, "--json", "--batch", "200")
            state = StateFile(Path(str(log) + ".feedstate.json"))

            def progressed() -> bool:
                state.load()
                pos = state.get(str(log))
                return pos is not None and pos.line >= 2_000

            await wait_for(progressed, timeout=60, interval=0.05, what="some lines fed")
        down_at = asyncio.get_running_loop().time()
        await asyncio.sleep(5.0)  # connection refused meanwhile
        async with service(redis_url, prefix, port):
            run = await finish(proc, timeout=120)
        assert asyncio.get_running_loop().time() - down_at > 5.0
        assert run.rc == 0, run.err
        s = run.summary
        assert s["read"] == 20_000 and s["accepted"] == 20_000 and s["retries"] >= 1
        assert "cannot connect" in run.err and "delivered after" in run.err
        assert await counted(aredis, prefix, truth) == []


async def test_backpressure_503_is_honoured(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    truth = make_events(3_000, seed=12)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    async with service(redis_url, prefix, max_lag=500, retry_after_s=1) as url:
        # No worker yet: the lag passes 500 and /events answers 503 + Retry-After.
        proc = await start_feed(str(log), "--url", url, "--json", "--batch", "250")
        await asyncio.sleep(4.0)
        assert proc.returncode is None
        async with running_worker(worker_settings(redis_url, prefix)):
            run = await finish(proc, timeout=90)
            assert run.rc == 0, run.err
            assert run.summary["accepted"] == 3_000 and run.summary["retries"] >= 2
            assert "service busy (503" in run.err
            assert await counted(aredis, prefix, truth) == []


async def test_oversized_batches_are_split(redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path) -> None:
    truth = make_events(400, seed=13)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    async with (
        running_worker(worker_settings(redis_url, prefix)),
        service(redis_url, prefix, max_body_bytes=4_096) as url,
    ):
        run = await feed(str(log), "--url", url, "--json", "--batch", "400")
        assert run.rc == 0, run.err
        assert run.summary["accepted"] == 400 and run.summary["rejected"] == 0
        assert await counted(aredis, prefix, truth) == []


async def test_sync_without_results_in_time_counts_the_queued_events(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    truth = make_events(3, seed=16)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    async with service(redis_url, prefix, web={"discrete_timeout_s": 0.3}) as url:
        # No worker: every /discrete answers 504 "queued"; the events are in the stream, not lost, not resent.
        run = await feed(str(log), "--url", url, "--sync", "--json")
        assert run.rc == 0, run.err
        assert run.summary["accepted"] == 3 and run.summary["retries"] == 0
        assert run.err.count("no result in time; queued as f") == 3
    async with running_worker(worker_settings(redis_url, prefix)):
        assert await counted(aredis, prefix, truth) == []


async def test_a_service_that_never_answers_times_out(tmp_path: Path) -> None:
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in make_events(10)])
    requests = 0

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        requests += 1
        await reader.read()  # read until the client gives up; never answer
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        run = await feed(
            str(log), "--url", f"http://127.0.0.1:{port}", "--json", "--timeout", "0.5", "--retry-for", "2"
        )
    assert run.rc == 1 and run.summary["status"] == "failed" and run.summary["retries"] >= 2
    assert f"no answer from http://127.0.0.1:{port} within 0.5 s" in run.err
    assert requests >= 3  # each retry is a new request


async def test_wrong_url_is_a_clear_error(redis_url: str, prefix: str, tmp_path: Path) -> None:
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in make_events(10)])
    async with service(redis_url, prefix) as url:
        run = await feed(str(log), "--url", url + "/nope", "--json")
    assert run.rc == 1 and run.summary["status"] == "failed"
    assert "answered 404" in run.err
    assert (
        not Path(str(log) + ".feedstate.json").exists()
        or StateFile(Path(str(log) + ".feedstate.json")).get(str(log)) is None
    )


async def test_gives_up_after_retry_for(tmp_path: Path) -> None:
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in make_events(10)])
    run = await feed(str(log), "--url", f"http://127.0.0.1:{free_port()}", "--json", "--retry-for", "1.5")
    assert run.rc == 1 and run.summary["status"] == "failed" and run.summary["accepted"] == 0
    assert "giving up" in run.err and "cannot connect" in run.err


async def test_sigterm_stops_after_the_batch_in_flight_and_resumes(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    truth = make_events(30_000, seed=14)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    state_path = tmp_path / "custom.state"
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        proc = await start_feed(str(log), "--url", url, "--json", "--batch", "100", "--state", str(state_path))
        await wait_for(lambda: state_path.exists(), timeout=60, interval=0.02, what="state file")
        proc.send_signal(signal.SIGTERM)
        stopped = await finish(proc)
        assert stopped.rc == 128 + signal.SIGTERM and stopped.summary["status"] == "interrupted", stopped.err
        pos = StateFile(state_path).get(str(log))
        assert pos is not None and pos.line == stopped.summary["accepted"] < 30_000
        rest = await feed(str(log), "--url", url, "--json", "--state", str(state_path))
        assert rest.rc == 0, rest.err
        assert rest.summary["read"] == 30_000 - pos.line
        assert await counted(aredis, prefix, truth) == []


async def test_follow_feeds_a_growing_file(redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path) -> None:
    truth = make_events(1_500, seed=15)
    log = tmp_path / "live.json"
    write_lines(log, [event_line(e) for e in truth[:500]])
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        proc = await start_feed(str(log), "--url", url, "--json", "--follow")
        with open(log, "ab") as f:
            await asyncio.sleep(0.5)
            for e in truth[500:]:
                f.write(event_line(e) + b"\n")
            # half a line: must wait for its end
            f.write(b'{"org": "acme", "source": "web", ')
            f.flush()
        assert await counted(aredis, prefix, truth) == []
        proc.send_signal(signal.SIGINT)
        run = await finish(proc)
        assert run.rc == 130 and run.summary["read"] == 1_500, run.err
        assert StateFile(Path(str(log) + ".feedstate.json")).get(str(log)).line == 1_500  # type: ignore[union-attr]


async def test_state_of_another_file_is_refused(redis_url: str, prefix: str, tmp_path: Path) -> None:
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in make_events(20, seed=1)])
    StateFile(Path(str(log) + ".feedstate.json")).save(str(log), Position("0123456789abcdef", 100, 3))
    run = await feed(str(log), "--url", "http://127.0.0.1:9", "--json")
    assert run.rc == 2 and "different" in run.err and "--from-start" in run.err
    # The right file, but fed to another service: resuming would skip lines for this one.
    key = file_key(log.read_bytes().split(b"\n", 1)[0])
    StateFile(Path(str(log) + ".feedstate.json")).save(str(log), Position(key, 100, 3), "http://127.0.0.1:1")
    run = await feed(str(log), "--url", "http://127.0.0.1:9", "--json")
    assert run.rc == 2 and "to http://127.0.0.1:1, not to http://127.0.0.1:9" in run.err, run.err


# ---------------------------------------------------------------- --direct


@both_backends
async def test_direct_xadds_into_the_stream(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    events = make_events(5_000, seed=7)
    log = write_lines(tmp_path / "log.json", [raw_log_line(e, i) for i, e in enumerate(events)])
    truth = [Event("acme", e.source, e.pop, e.id, e.action) for e in events]
    args = ["--direct", "--redis-url", redis_url, "--prefix", prefix, "--json"]
    fmap = ["--map", "org=acme,source=.service,pop=.group,id=.user.name,action=.request"]
    # Fed before any worker exists: the group, created later with start id 0, still reads it all.
    run = await feed(str(log), *args, *fmap, "--progress")
    assert run.rc == 0, run.err
    assert "lines/s" in run.err and "ETA" in run.err  # the progress bar, forced on without a terminal
    assert run.summary["sent"] == 5_000 and run.summary["accepted"] == 5_000
    keys = Keyspace(prefix=prefix, shards=4)
    assert sum([await aredis.xlen(s) for s in keys.streams()]) == 5_000
    entry = (await aredis.xrange(keys.streams()[0], count=1)) or (await aredis.xrange(keys.streams()[1], count=1))
    assert entry[0][1][b"event_id"].startswith(b"f" + file_key(raw_log_line(events[0], 0)).encode())
    async with running_worker(worker_settings(redis_url, prefix)):
        assert await counted(aredis, prefix, truth) == []
        # The same lines again (--from-start): same event ids, so nothing is counted twice.
        again = await feed(str(log), *args, *fmap, "--from-start")
        assert again.rc == 0 and again.summary["accepted"] == 5_000
        assert await counted(aredis, prefix, truth) == []


async def test_id_ttl_shortens_the_memory_of_the_feeders_ids(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    events = make_events(300, seed=9)
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in events])
    keys = Keyspace(prefix=prefix, shards=4)
    async with running_worker(worker_settings(redis_url, prefix)), service(redis_url, prefix) as url:
        run = await feed(str(log), "--url", url, "--json", "--id-ttl", "120")
        assert run.rc == 0 and run.summary["accepted"] == 300, run.err
        assert await counted(aredis, prefix, events) == []
    ttls = [await aredis.ttl(k) async for k in aredis.scan_iter(match=f"{prefix}:*:seen:*", count=1000)]
    assert len(ttls) == 300 and all(0 < t <= 120 for t in ttls), sorted(ttls)[-3:]
    direct = await feed(
        str(log),
        "--direct",
        "--redis-url",
        redis_url,
        "--prefix",
        prefix,
        "--from-start",
        "--id-ttl",
        "90",
        "--state",
        str(tmp_path / "direct.state"),
    )
    assert direct.rc == 0, direct.err
    entries = [f for s in keys.streams() for _, f in await aredis.xrange(s)]
    # the HTTP run's 300 entries (not trimmed here) and the direct run's 300
    assert sorted(f[b"id_ttl"] for f in entries) == [b"120"] * 300 + [b"90"] * 300
