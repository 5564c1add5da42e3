"""``binormal score --jobs J`` (binormal/split.py): the scopes shared among J processes, the same output."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from binormal.offline import Engine, Options
from binormal.split import ReportLog, merged_reports, usable_jobs
from tests.support.offline import offline_events

pytestmark = pytest.mark.timeout(120)

LATE = [("late", "web", "one"), ("late", "web", "two"), ("late", "api", "three")]


def mixed_lines() -> list[bytes]:
    """Three scopes from the start (one heavy individual), three more met halfway, and bad lines of every
    kind: naming a counted scope, naming a scope before any valid event of it, naming no scope."""
    lines = [orjson.dumps(e.to_fields() | {"ts": e.ts}) for e in offline_events(n=3000)]
    out: list[bytes] = []
    for i, line in enumerate(lines):
        out.append(line)
        if i == 10:
            out.append(b'{"org": "late", "source": "web", "pop": "one", "id": "", "action": "a"}')  # before "late/one"
        if i >= 1500 and i % 7 == 0:
            org, source, pop = LATE[i % 3]
            action = f"{pop} {i % 5}"
            out.append(orjson.dumps({"org": org, "source": source, "pop": pop, "id": f"u{i % 40}", "action": action}))
        if i % 400 == 3:
            out.extend(
                [
                    b"not json",
                    b'{"org": "acme", "source": "web", "pop": "big", "id": "x", "action": 7}',  # a counted scope
                    b'{"org": "late", "source": "api", "pop": "three", "id": "x", "action": "a", "ts": -1}',
                    b'{"org": "acme", "source": "web", "pop": "big", "id": "x", "action": "a", "acton": "typo"}',
                    b'{"org": ["a"], "source": "web", "pop": "big", "id": "x", "action": "a"}',  # names no scope
                    b"[1, 2]",
                    b"   ",
                ]
            )
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("split")
    blob = b"\n".join(mixed_lines()) + b"\n"
    plain = d / "mixed.ndjson"
    plain.write_bytes(blob)
    gz = d / "mixed.ndjson.gz"
    gz.write_bytes(gzip.compress(blob))
    return {"plain": plain, "gz": gz}


def score(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "binormal", "score", *args, "--no-progress"],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("jobs", ["2", "3", "7"])
@pytest.mark.parametrize("extra", [["--json"], ["--json", "--refresh", "1", "--weight-cap", "0"], ["--top", "4"]])
def test_every_job_count_prints_what_one_process_prints(files: dict[str, Path], jobs: str, extra: list[str]) -> None:
    one = score(str(files["plain"]), *extra, "--jobs", "1")
    many = score(str(files["plain"]), *extra, "--jobs", jobs)
    assert one.returncode == many.returncode == 0, many.stderr
    assert many.stdout == one.stdout
    assert many.stderr == one.stderr  # every bad line reported once, in line order
    reported = [int(line.split(":")[0].split()[1]) for line in one.stderr.decode().splitlines()]
    assert reported == sorted(set(reported)) and len(reported) > 40
    if "--json" in extra:
        scopes = {tuple(orjson.loads(r)[k] for k in ("org", "source", "pop")) for r in one.stdout.splitlines()}
        assert set(LATE) <= scopes and len(scopes) == 6


def test_gz_is_split_and_stdin_is_not(files: dict[str, Path]) -> None:
    one = score(str(files["plain"]), "--json", "--jobs", "1")
    gz = score(str(files["gz"]), "--json", "--jobs", "3")
    stdin = score("-", "--json", "--jobs", "3", stdin=files["plain"].read_bytes())
    for proc in (gz, stdin):
        assert proc.returncode == 0
        assert (proc.stdout, proc.stderr) == (one.stdout, one.stderr)


def test_parts_count_every_scope_once_with_its_ordinal(files: dict[str, Path]) -> None:
    """Engines (me, J) together hold each scope exactly once, with the single engine's ordinal and rows."""
    opts = Options(cap=100, refresh=40, weight_cap=100)
    lines = files["plain"].read_bytes().splitlines(keepends=True)

    class Sink:
        def write(self, text: str) -> None:
            pass

    whole = Engine(opts)
    whole.feed(lines, Sink())
    expected = {
        sc.key: (sc.ordinal, [r.as_json() for r in whole.rows() if r.scope == sc.scope]) for sc in whole.scopes.values()
    }
    assert [o for o, _ in expected.values()] == list(range(6))
    for jobs in (2, 4):
        got: dict[tuple[str, str, str], tuple[int, list[dict[str, object]]]] = {}
        for me in range(jobs):
            part = Engine(opts, (me, jobs))
            part.feed(lines, Sink())
            assert all(sc.ordinal % jobs == me for sc in part.scopes.values())
            assert {k for k, v in part.route.items() if v is not None} == set(part.scopes)
            for sc in part.scopes.values():
                assert sc.key not in got
                got[sc.key] = (sc.ordinal, [r.as_json() for r in part.rows() if r.scope == sc.scope])
        assert got == expected


def test_bad_part_is_refused() -> None:
    with pytest.raises(ValueError, match="part"):
        Engine(Options(cap=100, refresh=1, weight_cap=0), (2, 2))


def test_reports_are_merged_in_line_order(tmp_path: Path) -> None:
    logs = []
    for name, numbers in (("a", [1, 4, 9]), ("b", [2, 3, 10, 11]), ("c", [])):
        f = (tmp_path / name).open("w+b")
        log = ReportLog(f)
        for n in numbers:
            log.write(f"line {n}: problem\twith: colons\n")
        logs.append(f)
    assert [int(t.split(":")[0][5:]) for t in merged_reports(logs)] == [1, 2, 3, 4, 9, 10, 11]
    assert next(iter(merged_reports(logs))) == "line 1: problem\twith: colons\n"


FAILING_CHILD = """
import sys
from binormal.offline import Options
from binormal import split
from binormal.score import open_input

def render(engine):
    if engine.me == 1 and sys.argv[2] == "render":
        raise ZeroDivisionError("boom")
    return [(sc.ordinal, *sc.key, "x") for sc in engine.scopes.values()]

def reopen(path):
    if sys.argv[2] == "reopen":
        raise FileNotFoundError(path)
    return open_input(path)

with open_input(sys.argv[1]) as stream:
    try:
        split.split_blocks(sys.argv[1], stream, Options(100, 1000, 100), 3, render, reopen, sys.stderr)
    except split.SplitError as exc:
        print("SplitError:", exc)
"""


@pytest.mark.parametrize("where", ["render", "reopen"])
def test_a_failing_copy_fails_the_whole_command(files: dict[str, Path], where: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_CHILD, str(files["plain"]), where],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    if where == "render":
        assert proc.stdout.decode().startswith("SplitError: a scoring process failed (exit status 1)")
        assert "ZeroDivisionError: boom" in proc.stderr.decode()
    else:
        assert proc.stdout.decode().startswith(f"SplitError: a scoring process could not read {files['plain']}")
    assert not [r for r in proc.stderr.splitlines() if r.startswith(b"line ")]  # no report from a partial result


def test_jobs_option() -> None:
    assert usable_jobs(3) == 3
    assert 1 <= usable_jobs(None) <= 8
    bad = score("-", "--jobs", "0", stdin=b"")
    assert bad.returncode == 2 and b"--jobs: must be at least 1" in bad.stderr


CAN_SPLIT = """
import gzip, os, sys, threading
from binormal.split import can_split
path = sys.argv[1]
r, w = os.pipe()
print(can_split(path, open(path, "rb")), can_split(path + ".gz", gzip.open(path + ".gz", "rb")),
      can_split("-", sys.stdin.buffer), can_split("/dev/fd/%d" % r, os.fdopen(r, "rb")), end=" ")
threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()
print(can_split(path, open(path, "rb")))
"""


def test_only_regular_files_of_a_single_threaded_process_are_split(files: dict[str, Path]) -> None:
    base = str(files["plain"])
    proc = subprocess.run(
        [sys.executable, "-c", CAN_SPLIT, base], capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["True", "True", "False", "False", "False"]
