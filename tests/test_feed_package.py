"""binormal/feed/: the feeder's package shape (CLI hooks, protocols, a report that does not hold the feeder).

Its behaviour is tested end to end by test_feed.py, test_feed_faults.py and test_feedtransport.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

import binormal.feed
from binormal.feed.feeder import Feeder
from binormal.feed.reader import CHUNK, FileChunks, Source, StdinChunks, open_source
from binormal.feed.report import Progress, Stats, summary, summary_text
from binormal.feed.settings import FeedSettings
from binormal.feed.transport import BatchTransport, DirectTransport, SyncTransport, Transport, open_transport


def test_register_adds_the_feed_command_and_run_is_its_function() -> None:
    p = argparse.ArgumentParser(prog="binormal")
    binormal.feed.register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["feed", "in.json", "--sync", "--batch", "5"])
    assert args.func is binormal.feed.run
    assert (args.files, args.mode, args.batch) == (["in.json"], "sync", 5)


def test_run_reports_an_unusable_setting_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="binormal")
    binormal.feed.register(p.add_subparsers(dest="command", required=True))
    assert binormal.feed.run(p.parse_args(["feed", "in.json", "--batch", "0"])) == 2
    assert "binormal feed: --batch must be at least 1" in capsys.readouterr().err


def test_importing_the_package_is_light() -> None:
    """The CLI builds its parser from binormal.feed: no asyncio, aiohttp or redis until a feed runs."""
    code = (
        "import sys, argparse, binormal.feed as f; "
        "f.register(argparse.ArgumentParser().add_subparsers()); "
        "print([m for m in ('asyncio', 'aiohttp', 'redis', 'structlog') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out


def test_the_progress_bar_is_drawn_from_numbers_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the bar is cut to the terminal's width
    err = io.StringIO()
    bar = Progress(err, True, Stats(read=1_500, sent=1_000, rejected=3), started=time.monotonic() - 2.0)
    bar.draw(0.5, retrying=True)
    text = err.getvalue()
    assert "[##########..........]  50.0%" in text and "read 1,500  sent 1,000  rejected 3" in text, text
    assert "ETA 0:00:0" in text and text.endswith("(retrying)"), text
    bar.draw(None, retrying=False)
    last = err.getvalue().rsplit("\r\x1b[2K", 1)[-1]
    assert last.startswith("read 1,500") and "ETA" not in last and "retrying" not in last, last
    Progress(err := io.StringIO(), False, Stats(), started=time.monotonic()).draw(0.5, retrying=False)
    assert err.getvalue() == ""


def test_the_summary_is_built_from_the_counters() -> None:
    doc = summary(
        Stats(read=10, sent=9, accepted=8, rejected=1, retries=2), 2.0, "done", "batch", ["a"], {"a": (99, 10)}
    )
    assert doc["rate"] == 5.0 and doc["positions"] == {"a": {"offset": 99, "line": 10}} and doc["accepted"] == 8
    assert summary_text(doc, 2.0) == (
        "done: 10 lines read in 2.0 s (5/s); 9 sent, 8 accepted, 1 rejected, "
        "0 transform errors, 0 bad JSON, 0 skipped, 2 retries"
    )


def test_a_feeder_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    """No Progress -> Feeder back reference: dropping the last reference frees the feeder at once."""
    log = tmp_path / "log.json"
    log.write_bytes(b"{}\n")
    gc.collect()
    gc.disable()
    try:
        feeder = Feeder(FeedSettings(files=(str(log),)), out=io.BytesIO(), err=io.StringIO())
        gone = weakref.ref(feeder)
        del feeder
        assert gone() is None
    finally:
        gc.enable()


async def test_every_source_and_transport_follows_its_protocol(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    log.write_bytes(b'{"a": 1}\n')
    src = open_source(str(log), 0, follow=False)
    try:
        assert isinstance(src, FileChunks) and isinstance(src, Source)
        assert await src.read(asyncio.Event()) == b'{"a": 1}\n' and src.start == 0 and not src.truncated
    finally:
        src.close()
    stdin = StdinChunks(asyncio.get_running_loop(), stream=io.BytesIO(b"x\n"))
    assert isinstance(stdin, Source) and stdin.start == 0
    assert await stdin.read(asyncio.Event()) == b"x\n" and await stdin.read(asyncio.Event()) == b""
    stdin.thread.join(timeout=10)
    for mode, kind in (("batch", BatchTransport), ("sync", SyncTransport), ("direct", DirectTransport)):
        transport = open_transport(FeedSettings(files=("-",), mode=mode))
        assert isinstance(transport, kind) and isinstance(transport, Transport), mode


def test_the_stdin_reader_ends_quietly_when_the_loop_ends_under_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop closes while the reader thread waits to queue a chunk: the thread ends, no traceback."""
    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))

    async def main() -> StdinChunks:
        src = StdinChunks(asyncio.get_running_loop(), stream=io.BytesIO(b"x" * (6 * CHUNK)))
        deadline = time.monotonic() + 10
        # The queue holds 4 chunks: the 5th put waits, as a task of this loop, until asyncio.run cancels it.
        while not (src.queue.full() and len(asyncio.all_tasks()) > 1):
            assert time.monotonic() < deadline, "the reader thread never filled the queue"
            await asyncio.sleep(0.01)
        return src

    src = asyncio.run(main())
    src.thread.join(timeout=10)
    assert not src.thread.is_alive() and crashes == []
