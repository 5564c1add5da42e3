"""``binormal score --jobs J`` (binormal/split.py): the scopes shared among J processes, the same output."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from binormal.offline import SKIP_SCOPES, Engine, Options, PrefixConflict, canonical_prefix
from binormal.rows import scope_rows
from binormal.split import ReportLog, merged_reports, usable_jobs
from tests.support.offline import offline_events

pytestmark = pytest.mark.timeout(120)

LATE = [("late", "web", "one"), ("late", "web", "two"), ("late", "api", "three")]


class Nowhere:
    """A bad-line writer that keeps nothing."""

    def write(self, text: str) -> None:
        pass


NOWHERE = Nowhere()


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
                    # the canonical prefix of a counted scope (its owner reads it, the others skip it)
                    b'{"org":"acme","source":"web","pop":"big",oops',
                    b'{"org":"acme","source":"web","pop":"big","id":"","action":"a"}',
                    b' {"org":"acme","source":"web","pop":"big",oops',  # no longer the prefix: engine 0
                ]
            )
        if i >= 1600 and i % 400 == 3:  # a late scope's prefix once that scope is known
            out.append(b'{"org":"late","source":"web","pop":"two",')
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

    whole = Engine(opts)
    whole.feed(lines, NOWHERE)
    expected = {
        sc.key: (sc.ordinal, [r.as_json() for r in whole.rows() if r.scope == sc.scope]) for sc in whole.scopes.values()
    }
    assert [o for o, _ in expected.values()] == list(range(6))
    for jobs in (2, 4):
        got: dict[tuple[str, str, str], tuple[int, list[dict[str, object]]]] = {}
        for me in range(jobs):
            part = Engine(opts, (me, jobs))
            part.feed(lines, NOWHERE)
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


def test_engines_skip_each_other_s_lines_by_their_prefix(files: dict[str, Path]) -> None:
    """Each engine of a split holds the canonical prefixes of the others' scopes (skipped unparsed) and
    of its own (checked); one engine, or an engine told not to, skips nothing."""
    lines = files["plain"].read_bytes().splitlines(keepends=True)
    opts = Options(cap=100, refresh=40, weight_cap=100)
    parts = [Engine(opts, (me, 2)) for me in range(2)]
    for part in parts:
        part.feed(lines, NOWHERE)
    for part, other in (parts, parts[::-1]):
        assert set(part.mine) == {canonical_prefix(k) for k in part.scopes}
        assert set(part.skip) == set(other.mine) and part.skip
    assert canonical_prefix(("acme", "web", "big")) == b'{"org":"acme","source":"web","pop":"big",'
    assert orjson.loads(canonical_prefix(('a"b', "ü", "c")) + b'"id":"x"}')["org"] == 'a"b'
    for engine in (Engine(opts), Engine(opts, (0, 2), skip_by_prefix=False)):
        engine.feed(lines, NOWHERE)
        assert engine.skip == engine.mine == ()


def repeated_key_lines() -> list[bytes]:
    """Two scopes' events, then lines whose canonical prefix names one scope and a repeated key another:
    a known scope of the other engine, a new scope, and no scope at all."""
    out = []
    for i in range(400):
        pop = ("one", "two")[i % 2]
        out.append(orjson.dumps({"org": "o", "source": "s", "pop": pop, "id": f"u{i % 30}", "action": f"a{i % 3}"}))
        if i == 200:
            out.append(b'{"org":"o","source":"s","pop":"one","id":"u1","action":"a1","pop":"two"}')
        if i == 250:
            out.append(b'{"org":"o","source":"s","pop":"two","id":"u2","action":"a2","pop":"three"}')
        if i == 300:
            out.append(b'{"org":"o","source":"s","pop":"one","id":"u3","action":"a0","pop":["x"]}')
    return out


@pytest.mark.parametrize("jobs", ["2", "3"])
def test_a_prefix_that_names_another_scope_than_the_fields_runs_the_split_again(tmp_path: Path, jobs: str) -> None:
    """orjson keeps a repeated key's last value: the line is of the scope its fields name in the
    end, not of its prefix's. The engine owning the prefix sees that, and the split runs again
    without skipping: the output is still what one process prints."""
    path = tmp_path / "repeated.ndjson"
    path.write_bytes(b"\n".join(repeated_key_lines()) + b"\n")
    one = score(str(path), "--json", "--jobs", "1")
    many = score(str(path), "--json", "--jobs", jobs)
    assert one.returncode == many.returncode == 0, many.stderr
    assert (many.stdout, many.stderr) == (one.stdout, one.stderr)
    pops = {orjson.loads(r)["pop"] for r in one.stdout.splitlines()}
    assert pops == {"one", "two", "three"}  # the repeated key's scope was counted
    assert one.stderr == b"line 304: pop: must be a string, not a list\n"  # the line naming no scope is reported once
    # The conflict itself, met by the owner of the prefix: "one" (engine 0) at line 202, "two" at 253.
    lines = [line + b"\n" for line in repeated_key_lines()]
    for me, where in ((0, "line 202"), (1, "line 253")):
        with pytest.raises(PrefixConflict, match=where):
            Engine(Options(cap=100, refresh=10, weight_cap=100), (me, 2)).feed(lines, NOWHERE)


def test_past_the_skip_limit_no_line_is_skipped(tmp_path: Path) -> None:
    """With more than SKIP_SCOPES scopes known, startswith over every prefix would cost more than a parse:
    every engine stops skipping at the same line, and the output is unchanged."""
    rows = [
        {"org": "o", "source": "s", "pop": f"p{i % (SKIP_SCOPES + 8)}", "id": f"u{i % 17}", "action": f"a{i % 5}"}
        for i in range(3000)
    ]
    path = tmp_path / "many.ndjson"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + b'{"org":"o","source":"s","pop":"p1",bad\n')
    one = score(str(path), "--json", "--jobs", "1")
    many = score(str(path), "--json", "--jobs", "3")
    assert (many.returncode, many.stdout, many.stderr) == (one.returncode, one.stdout, one.stderr)
    assert one.stderr.startswith(b"line 3001: not JSON")
    engine = Engine(Options(cap=100, refresh=10, weight_cap=100), (1, 3))
    engine.feed(path.read_bytes().splitlines(keepends=True), NOWHERE)
    assert engine.skip == engine.mine == () and len(engine.route) == SKIP_SCOPES + 8


class Reports:
    """A bad-line writer that keeps every report."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


def random_lines(rng: random.Random, n: int) -> list[bytes]:
    """Events of a few scopes in orjson's and in other spellings, and bad lines of every kind, some
    with a scope's canonical prefix: not JSON, a bad field, a repeated key naming another scope."""
    scopes = [("o", "s", f"p{i}") for i in range(rng.randint(1, 6))] + [('ö"x', "s,1", "p")]
    repeated = rng.choice([0.0, 0.0, 0.002])  # most files have no repeated key: the skipping itself is compared
    out = []
    for _ in range(n):
        org, source, pop = rng.choice(scopes)
        event = {
            "org": org,
            "source": source,
            "pop": pop,
            "id": f"u{rng.randrange(25)}",
            "action": f"a{rng.randrange(6)}",
        }
        if rng.random() < 0.3:
            event["ts"] = rng.randrange(10**6)
        kind = rng.random()
        prefix = canonical_prefix((org, source, pop))
        if kind < 0.75:
            out.append(orjson.dumps(event))
        elif kind < 0.85:
            out.append(json.dumps(event).encode())  # spaces: no canonical prefix, parsed by every engine
        elif kind < 0.9:
            out.append(prefix + b'"id":"x",oops')
        elif kind < 0.95:
            out.append(orjson.dumps({**event, "id": ""}))
        elif kind < 0.95 + repeated:
            other = rng.choice(scopes)
            out.append(orjson.dumps(event)[:-1] + b',"pop":' + orjson.dumps(other[2] + rng.choice(["", "new"])) + b"}")
        elif kind < 0.97:
            out.append(orjson.dumps({**event, "action": 7}))
        else:
            out.append(rng.choice([b"", b"[1]", b'{"org":1}', prefix.rstrip(b",") + b"}"]))
    return [line + b"\n" for line in out]


def split_in_process(lines: list[bytes], opts: Options, jobs: int) -> tuple[dict[Any, Any], list[str]]:
    """What binormal.split does, in this process: every engine's scopes and reports, again without
    skipping when one of them meets a PrefixConflict."""
    for by_prefix in (True, False):
        rows: dict[Any, Any] = {}
        reports: list[str] = []
        try:
            for me in range(jobs):
                part, got = Engine(opts, (me, jobs), by_prefix), Reports()
                part.feed(lines, got)
                reports += got.lines
                rows.update(
                    {
                        sc.key: (sc.ordinal, [r.as_json() for r in scope_rows(sc, opts, None)])
                        for sc in part.scopes.values()
                    }
                )
        except PrefixConflict:
            assert by_prefix
            continue
        return rows, sorted(reports, key=lambda t: int(t[5 : t.index(":")]))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(16))
def test_random_files_give_one_engine_s_rows_and_reports_at_every_job_count(seed: int) -> None:
    rng = random.Random(seed)
    lines = random_lines(rng, rng.choice([50, 400, 1500]))
    opts = Options(cap=20, refresh=rng.choice([1, 7, 100]), weight_cap=rng.choice([0, 20, 40]))
    whole, reports = Engine(opts), Reports()
    whole.feed(lines, reports)
    expected = {sc.key: (sc.ordinal, [r.as_json() for r in scope_rows(sc, opts, None)]) for sc in whole.scopes.values()}
    for jobs in (2, 3):
        assert split_in_process(lines, opts, jobs) == (expected, reports.lines)
