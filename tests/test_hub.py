"""web/hub.py: coalescing into bounded frame rates, drop-oldest with counting, per-client isolation."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from binormal.web.hub import Hub


def result_line(i: int, ident: str = "u") -> bytes:
    """A result object as the workers publish it (seed format)."""
    return orjson.dumps({"score": 1.0, "count": i, "zscore": 0.5, "id": f"{ident}{i}", "action": "GET /", "n": i})


class Recorder:
    """A ``send`` callable that records frames with their arrival time; can be held closed."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, text: str) -> None:
        await self.gate.wait()
        self.frames.append((time.monotonic(), text))

    def objects(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for _, text in self.frames for line in text.split("\n")]

    def results(self) -> list[dict[str, object]]:
        return [o for o in self.objects() if "type" not in o]

    def control(self, kind: str) -> list[dict[str, object]]:
        return [o for o in self.objects() if o.get("type") == kind]


async def stop_writer(hub: Hub, client: object, task: asyncio.Task[None]) -> None:
    hub.unregister(client)  # type: ignore[arg-type]
    await asyncio.wait_for(task, timeout=2.0)


async def test_frames_are_coalesced_to_max_fps() -> None:
    hub = Hub(queue_size=100_000, max_fps=10.0)
    client = hub.register()
    rec = Recorder()
    task = asyncio.create_task(hub.run_writer(client, rec))
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < 1.5:  # ~300 small messages over 1.5 s
        hub.publish(b"\n".join(result_line(sent + k) for k in range(3)))
        sent += 3
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)  # last slot
    await stop_writer(hub, client, task)

    data_frames = rec.frames[1:]  # the first frame is the hello line
    assert orjson.loads(rec.frames[0][1]) == {"type": "hello", "queue": 100_000, "max_fps": 10.0}
    # 1.8 s at 10 frames/s: at most ~19 frames although ~300 messages arrived.
    assert 5 <= len(data_frames) <= 20, len(data_frames)
    gaps = [b[0] - a[0] for a, b in zip(data_frames, data_frames[1:])]
    assert min(gaps) >= 0.09, gaps  # never two frames within one 100 ms slot
    # Nothing lost (queue large enough), order kept, bytes unchanged.
    assert [r["n"] for r in rec.results()] == list(range(sent))
    assert client.dropped == 0 and client.sent == sent


async def test_full_queue_drops_oldest_and_reports_the_count() -> None:
    hub = Hub(queue_size=5, max_fps=50.0)
    client = hub.register()
    rec = Recorder()
    task = asyncio.create_task(hub.run_writer(client, rec))
    await asyncio.sleep(0.05)  # hello sent
    rec.gate.clear()  # the client stops reading
    hub.publish(result_line(0))
    await asyncio.sleep(0.05)  # the writer takes line 0 and blocks in send
    for i in range(1, 21):
        hub.publish(result_line(i))
    assert len(client.queue) == 5
    assert client.dropped == 15  # lines 1..15 lost, 16..20 kept
    rec.gate.set()
    await asyncio.sleep(0.2)
    await stop_writer(hub, client, task)

    assert [r["n"] for r in rec.results()] == [0, 16, 17, 18, 19, 20]
    stats = rec.control("stats")
    assert stats == [{"type": "stats", "dropped": 15, "sent": 6}]
    # The stats line leads the frame that follows the drops.
    assert rec.frames[-1][1].split("\n")[0] == orjson.dumps(stats[0]).decode()


async def test_one_message_larger_than_the_queue_keeps_its_newest_lines() -> None:
    hub = Hub(queue_size=10, max_fps=20.0)
    client = hub.register()
    hub.publish(b"\n".join(result_line(i) for i in range(25)) + b"\n")
    assert hub.received == 25
    assert client.dropped == 15
    assert [orjson.loads(x)["n"] for x in client.queue] == list(range(15, 25))


async def test_a_stalled_client_does_not_hold_up_another() -> None:
    hub = Hub(queue_size=50, max_fps=20.0)
    slow, fast = hub.register(), hub.register()
    slow_rec, fast_rec = Recorder(), Recorder()
    slow_rec.gate.clear()  # never reads, not even the hello
    tasks = [
        asyncio.create_task(hub.run_writer(slow, slow_rec)),
        asyncio.create_task(hub.run_writer(fast, fast_rec)),
    ]
    t0 = time.monotonic()
    for i in range(400):
        hub.publish(result_line(i))
        if i % 20 == 19:
            await asyncio.sleep(0.06)  # ~20 messages per frame slot: under the queue bound
    publish_s = time.monotonic() - t0
    await asyncio.sleep(0.2)

    assert [r["n"] for r in fast_rec.results()] == list(range(400))
    assert fast.dropped == 0
    assert slow_rec.frames == [] and slow.dropped == 350 and len(slow.queue) == 50
    assert publish_s < 2.0  # 20 sleeps of 60 ms; publish itself never waited
    for c, t in zip((slow, fast), tasks):
        hub.unregister(c)
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert hub.clients == set()


async def test_control_lines_never_look_like_results() -> None:
    hub = Hub(queue_size=1, max_fps=100.0)
    client = hub.register()
    rec = Recorder()
    task = asyncio.create_task(hub.run_writer(client, rec))
    await asyncio.sleep(0.02)
    rec.gate.clear()
    for i in range(4):
        hub.publish(result_line(i))
        await asyncio.sleep(0.02)
    rec.gate.set()
    await asyncio.sleep(0.1)
    await stop_writer(hub, client, task)
    controls = [o for o in rec.objects() if "type" in o]
    assert {o["type"] for o in controls} == {"hello", "stats"}
    for o in controls:
        assert not {"id", "action", "zscore", "score"} & set(o)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        Hub(queue_size=0, max_fps=20)
    with pytest.raises(ValueError):
        Hub(queue_size=10, max_fps=0)


# ---------------------------------------------------------------- tenancy: per-org filtering


def _line(org: str, i: int) -> bytes:
    return orjson.dumps(
        {
            "score": 1.5,
            "count": 2,
            "zscore": -0.25,
            "org": org,
            "source": "s",
            "pop": "p",
            "id": f"{org}{i}",
            "action": "a",
            "explain": [{"org": "decoy"}],
        }
    )


def test_restricted_clients_get_only_their_orgs_and_lines_are_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import binormal.web.hub as hub_module

    calls: list[bytes] = []
    real = hub_module.org_of
    monkeypatch.setattr(hub_module, "org_of", lambda line: calls.append(line) or real(line))
    hub = Hub(queue_size=100, max_fps=10)
    everyone = hub.register()
    hub.publish(b"\n".join(_line(o, i) for i, o in enumerate(["acme", "beta"])))
    assert calls == []  # nobody restricted: no line is parsed
    acme = [hub.register(orgs=frozenset({"acme"})) for _ in range(3)]
    both = hub.register(orgs=frozenset({"acme", "beta"}))
    none = hub.register(orgs=frozenset({"gamma"}))
    lines = [_line(o, i) for i, o in enumerate(["acme", "beta", "acme", "gamma\u00e9"])]
    lines.append(orjson.dumps({"id": "x", "org": 7}))
    lines.append(b'{"id": "spaced", "org": "acme"}')  # not the workers' layout: parsed in full
    hub.publish(b"\n".join(lines))
    assert len(calls) == len(lines)  # once per line, not per client
    assert [orjson.loads(x)["id"] for x in acme[0].take()] == ["acme0", "acme2", "spaced"]
    assert acme[1].take() == acme[2].take() and len(acme[1].queue) == 0
    assert [orjson.loads(x)["id"] for x in both.take()] == ["acme0", "beta1", "acme2", "spaced"]
    assert none.take() == [] and not none.ready.is_set()
    assert len(everyone.take()) == 2 + len(lines)
    for c in [*acme, both, none]:
        hub.unregister(c)
    assert hub.restricted == 0
    calls.clear()
    hub.publish(lines[0])
    assert calls == []


@pytest.mark.parametrize(
    ("line", "org"),
    [
        (b'{"score":1.0,"count":2,"zscore":-0.5,"org":"ac\\"me","id":"x"}', 'ac"me'),
        (orjson.dumps({"org": "\u00e9\U0001f600"}), "\u00e9\U0001f600"),
        (orjson.dumps({"id": '"org":"evil"', "org": "good"}), "good"),
        (orjson.dumps({"explain": [{"org": "evil"}], "org": "good"}), "good"),
        (b'{"org":42}', None),
        (b"not json", None),
        (b"[1]", None),
    ],
)
def test_org_of_reads_the_top_level_org_only(line: bytes, org: str | None) -> None:
    from binormal.web.hub import org_of

    assert org_of(line) == org
