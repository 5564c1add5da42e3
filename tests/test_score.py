"""``binormal score`` (binormal/score.py) run as a real subprocess on files, .gz and stdin."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from binormal.common.engine import MemoryEngine
from binormal.common.schema import Event, parse_json
from binormal.common.scoring import Snapshot
from binormal.offline import Engine, Options
from binormal.rows import final_score
from tests.support.offline import offline_events, reference_rows

ACTIONS = ["GET /", "GET /login", "POST /login", "GET /profile", "GET /logout", "GET /admin", "DELETE /user"]
WEIGHTS = [40, 25, 20, 10, 4, 0.6, 0.4]
SCOPES = [("acme", "webserver", "auth_getpost"), ("acme", "api", "tokens:{v2}")]
OUTLIERS = {SCOPES[0]: "mallory", SCOPES[1]: "trudy 🕵"}
BAD = {
    17: b"this is not json",
    40: b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "action": "GET /"}',  # no id
    41: b'["a", "list"]',
    99: b'{"org": "acme", "source": "webserver", "pop": "p", "id": "x", "action": 7}',
    150: b'{"org": "acme", "source": "w", "pop": "p", "id": "x", "action": "a", "acton": "typo"}',
    151: b"\xff\xfe not utf-8",
}
BLANK = {60}  # blank lines are skipped silently


def make_lines(seed: int = 11, n: int = 2400) -> tuple[list[bytes], list[dict[str, Any]]]:
    """NDJSON lines (1-based positions of BAD hold bad lines) and the valid objects in order."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    good: list[dict[str, Any]] = []
    i = 0
    while len(lines) < n:
        lineno = len(lines) + 1
        if lineno in BAD:
            lines.append(BAD[lineno])
            continue
        if lineno in BLANK:
            lines.append(b"   ")
            continue
        org, source, pop = SCOPES[rng.randrange(len(SCOPES))]
        if i % 30 == 0:
            ident = OUTLIERS[(org, source, pop)]
            action = rng.choice(["GET /admin", "DELETE /user"])
        else:
            ident = f"user{rng.randrange(60)}"
            action = rng.choices(ACTIONS, WEIGHTS)[0]
        obj = {"org": org, "source": source, "pop": pop, "id": ident, "action": action, "ts": 1_700_000_000_000 + i}
        lines.append(orjson.dumps(obj))
        good.append(obj)
        i += 1
    return lines, good


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("score")
    lines, good = make_lines()
    blob = b"\n".join(lines) + b"\n"
    plain = d / "events.ndjson"
    plain.write_bytes(blob)
    gz = d / "events.ndjson.gz"
    gz.write_bytes(gzip.compress(blob))
    # the reference: the in-memory engine on the valid events, result at each individual's last event
    eng = MemoryEngine()
    last: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for obj in good:
        r = eng.process(parse_json(obj))
        last[(obj["org"], obj["source"], obj["pop"], obj["id"])] = r
    return {"dir": d, "plain": plain, "gz": gz, "blob": blob, "last": last, "good": good}


def run_score(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "binormal", "score", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def check_stderr(stderr: bytes) -> None:
    text = stderr.decode("utf-8")
    reported = [int(line.split(":")[0].split()[1]) for line in text.splitlines() if line.startswith("line ")]
    assert reported == sorted(BAD), text
    lines = {int(line.split(":")[0].split()[1]): line for line in text.splitlines() if line.startswith("line ")}
    assert "not JSON" in lines[17]
    assert "id: is missing" in lines[40]
    assert "body: must be a JSON object" in lines[41]
    assert "action: must be a string" in lines[99]
    assert "acton: unknown field" in lines[150]
    assert "not JSON" in lines[151]


def parse_text(out: str) -> dict[tuple[str, str, str], list[list[str]]]:
    """Scope header -> data rows (zscore, score, count, id, reason...) of the text report."""
    tables: dict[tuple[str, str, str], list[list[str]]] = {}
    current: list[list[str]] = []
    for line in out.splitlines():
        if line.startswith("== "):
            head = line[3:].rsplit(" (", 1)[0]
            org = head.split(" source=")[0].removeprefix("org=")
            source = head.split(" source=")[1].split(" pop=")[0]
            pop = head.split(" pop=", 1)[1]
            current = tables.setdefault((org, source, pop), [])
        elif line.strip() and not line.lstrip().startswith("zscore"):
            zs, score, count, rest = line.split(None, 3)
            current.append([zs, score, count, rest])
    return tables


def test_text_report(data: dict[str, Any]) -> None:
    proc = run_score(str(data["plain"]), "--top", "5", "--exact")
    assert proc.returncode == 0, proc.stderr
    check_stderr(proc.stderr)
    out = proc.stdout.decode("utf-8")
    tables = parse_text(out)
    assert set(tables) == set(SCOPES)
    for scope, rows in tables.items():
        assert 1 <= len(rows) <= 5
        assert rows[0][3].startswith(OUTLIERS[scope] + "  ")  # planted outlier first
        zs = [float(r[0]) for r in rows]
        assert zs == sorted(zs, reverse=True)
        ref = data["last"][(*scope, OUTLIERS[scope])]
        assert float(rows[0][0]) == ref["zscore"] and float(rows[0][1]) == ref["score"]
        assert int(rows[0][2]) == ref["count"]
        assert "over" in rows[0][3] or "missing" in rows[0][3]
        n_ind = sum(1 for k in data["last"] if k[:3] == scope)
        assert f"({n_ind} individuals)" in out


def json_rows(stdout: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stdout.splitlines()]


FIELDS = ["org", "source", "pop", "id", "count", "score", "zscore", "pscore", "rzscore", "bits_per_event", "learning"]
SEEN = ("org", "source", "pop", "id", "count", "score", "zscore")  # what MemoryEngine's results also hold


def test_json_matches_memory_engine(data: dict[str, Any]) -> None:
    # --weight-cap 0: the guard off, as MemoryEngine() (issue 11 made the guard the default)
    proc = run_score(str(data["plain"]), "--json", "--exact", "--weight-cap", "0")
    assert proc.returncode == 0, proc.stderr
    check_stderr(proc.stderr)
    rows = json_rows(proc.stdout)
    assert len(rows) == len(data["last"])
    seen = set()
    for row in rows:
        assert list(row) == FIELDS
        key = (row["org"], row["source"], row["pop"], row["id"])
        seen.add(key)
        ref = data["last"][key]
        assert {k: row[k] for k in SEEN} == {k: ref[k] for k in SEEN}
    assert seen == set(data["last"])
    # the outlier stands out in its scope
    for scope, who in OUTLIERS.items():
        mine = [r for r in rows if (r["org"], r["source"], r["pop"]) == scope]
        assert max(mine, key=lambda r: r["zscore"])["id"] == who


def test_gz_and_stdin_give_the_same_answer(data: dict[str, Any]) -> None:
    plain = run_score(str(data["plain"]), "--json")
    gz = run_score(str(data["gz"]), "--json")
    stdin = run_score("-", "--json", stdin=data["blob"])
    for proc in (gz, stdin):
        assert proc.returncode == 0, proc.stderr
        check_stderr(proc.stderr)
        assert proc.stdout == plain.stdout
    text_stdin = run_score("-", stdin=data["blob"])
    assert text_stdin.returncode == 0
    assert parse_text(text_stdin.stdout.decode())[SCOPES[0]][0][3].startswith("mallory")


def test_cap_option_changes_scores(data: dict[str, Any]) -> None:
    proc = run_score(str(data["plain"]), "--json", "--cap", "10", "--exact", "--weight-cap", "0")
    assert proc.returncode == 0
    rows = {(r["org"], r["source"], r["pop"], r["id"]): r for r in json_rows(proc.stdout)}
    eng = MemoryEngine(cap=10)
    last = {}
    for obj in data["good"]:
        last[(obj["org"], obj["source"], obj["pop"], obj["id"])] = eng.process(parse_json(obj))
    assert all(rows[k]["score"] == last[k]["score"] for k in rows)
    assert any(rows[k]["score"] != data["last"][k]["score"] for k in rows)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ndjson"
    proc = run_score(str(missing))
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert str(missing) in err and "No such file" in err and "Traceback" not in err
    assert proc.stdout == b""
    proc = run_score(str(tmp_path))  # a directory
    assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode()
    fake = tmp_path / "fake.gz"
    fake.write_bytes(b"not gzip at all\n")
    proc = run_score(str(fake))
    assert proc.returncode == 2 and "Not a gzipped file" in proc.stderr.decode()


def test_empty_input() -> None:
    proc = run_score("-", stdin=b"")
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""
    proc = run_score("-", "--json", stdin=b"\n\n")
    assert proc.returncode == 0 and proc.stdout == b""


def test_reader_closing_the_pipe_is_not_an_error(tmp_path: Path) -> None:
    """``binormal score big.ndjson --json | head -1``: no traceback, exit 0."""
    big = tmp_path / "big.ndjson"
    big.write_bytes(
        b"".join(
            orjson.dumps({"org": "o", "source": "s", "pop": f"p{i % 50}", "id": f"id-{i}", "action": f"a{i % 3}"})
            + b"\n"
            for i in range(6000)
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "binormal", "score", str(big), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # more than a pipe buffer is still to come
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert orjson.loads(first)["id"] == "id-0"
    assert b"Traceback" not in err and b"Broken pipe" not in err


def raw_log(good: list[dict[str, Any]]) -> bytes:
    """The valid events as a web server's raw JSON log: nested fields, no org/source/pop."""
    rows = [
        {"remote": {"user": o["id"]}, "request": o["action"], "vhost": o["pop"], "src": o["source"]}
        for o in good
        if o["org"] == "acme"
    ]
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def test_map_scores_raw_lines(data: dict[str, Any]) -> None:
    spec = "org=acme,source=.src,pop=.vhost,id=.remote.user,action=.request"
    blob = raw_log(data["good"]) + b'{"request": "GET /"}\n'  # no source: rejected with its line number
    proc = run_score("-", "--json", "--exact", "--map", spec, stdin=blob)
    assert proc.returncode == 0, proc.stderr
    n = blob.count(b"\n")
    assert proc.stderr.decode().startswith(f"line {n}: rejected: source: path .src not found")
    plain = run_score(str(data["plain"]), "--json", "--exact")
    assert proc.stdout == plain.stdout


def test_transform_scores_raw_lines(data: dict[str, Any], tmp_path: Path) -> None:
    module = tmp_path / "weblog.py"
    module.write_text(
        "def process_event(line):\n"
        "    if line['request'] == 'GET /logout':\n"
        "        return None\n"
        "    return {'org': 'acme', 'source': line['src'], 'pop': line['vhost'],\n"
        "            'id': line['remote']['user'], 'action': line['request']}\n"
    )
    log = tmp_path / "raw.log"
    log.write_bytes(raw_log(data["good"]))
    proc = run_score(str(log), "--json", "--exact", "--weight-cap", "0", "--transform", f"{module}:process_event")
    assert proc.returncode == 0, proc.stderr
    eng = MemoryEngine()
    last: dict[tuple[str, ...], dict[str, Any]] = {}
    for obj in data["good"]:
        if obj["action"] != "GET /logout":
            last[(obj["org"], obj["source"], obj["pop"], obj["id"])] = eng.process(parse_json(obj))
    rows = json_rows(proc.stdout)
    assert {(r["org"], r["source"], r["pop"], r["id"]): {f: r[f] for f in SEEN} for r in rows} == {
        k: {f: v[f] for f in SEEN} for k, v in last.items()
    }


def test_refresh_one_scores_as_exact_and_default_is_close(data: dict[str, Any]) -> None:
    """--refresh 1 gives --exact's scores; its zscores compare with the final scores (--exact: at the last event)."""
    exact = run_score(str(data["plain"]), "--json", "--exact")
    one = run_score(str(data["plain"]), "--json", "--refresh", "1")
    assert exact.returncode == one.returncode == 0
    rows_one, rows_exact = json_rows(one.stdout), json_rows(exact.stdout)
    assert [(r["id"], r["score"], r["pscore"], r["rzscore"]) for r in rows_one] == [
        (r["id"], r["score"], r["pscore"], r["rzscore"]) for r in rows_exact
    ]
    events = [parse_json(o) for o in data["good"]]
    ref = reference_rows(events, refresh=1)
    assert {(r["org"], r["source"], r["pop"], r["id"]): r for r in rows_one} == ref
    stale = run_score(str(data["plain"]), "--json", "--refresh", "500")
    assert stale.returncode == 0
    rows = json_rows(stale.stdout)
    assert [(r["id"], r["count"]) for r in rows] == [(r["id"], r["count"]) for r in rows_exact]
    for scope, who in OUTLIERS.items():  # bounded staleness still finds the planted outliers
        mine = [r for r in rows if (r["org"], r["source"], r["pop"]) == scope]
        assert max(mine, key=lambda r: r["zscore"])["id"] == who


@pytest.fixture(scope="module")
def heavy_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Event]]:
    events = offline_events()
    path = tmp_path_factory.mktemp("heavy") / "heavy.ndjson"
    path.write_bytes(b"".join(orjson.dumps(e.to_fields() | {"ts": e.ts}) + b"\n" for e in events))
    return path, events


@pytest.mark.parametrize("weight_cap", ["0", "100", "250"])
@pytest.mark.parametrize("refresh", ["1", "40", "1000"])
def test_default_mode_equals_the_slow_reference(
    heavy_file: tuple[Path, list[Event]], weight_cap: str, refresh: str
) -> None:
    """Every field of every row, guard off and on, on three scopes with a heavy individual."""
    path, events = heavy_file
    proc = run_score(str(path), "--json", "--refresh", refresh, "--weight-cap", weight_cap)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    rows = json_rows(proc.stdout)
    got = {(r["org"], r["source"], r["pop"], r["id"]): r for r in rows}
    assert len(got) == len(rows)
    assert got == reference_rows(events, refresh=int(refresh), weight_cap=int(weight_cap))
    assert [list(r) for r in rows[:1]] == [FIELDS]


@pytest.mark.parametrize("weight_cap", ["0", "100"])
def test_exact_mode_equals_the_slow_reference(heavy_file: tuple[Path, list[Event]], weight_cap: str) -> None:
    path, events = heavy_file
    proc = run_score(str(path), "--json", "--exact", "--weight-cap", weight_cap)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    got = {(r["org"], r["source"], r["pop"], r["id"]): r for r in json_rows(proc.stdout)}
    assert got == reference_rows(events, refresh=0, weight_cap=int(weight_cap), exact=True)


def test_the_guard_caps_the_heavy_individual(heavy_file: tuple[Path, list[Event]]) -> None:
    """With the guard, ``heavy`` weighs its counts normalised to W: RARE's population count is 0, so
    the snapshot leaves it out; the others' zscores move less from ``heavy``'s mix."""
    _, events = heavy_file
    snaps = {}
    for w in (0, 100):
        engine = Engine(Options(cap=100, refresh=1, weight_cap=w))
        for e in events:
            engine.add(e)
        big = engine.scopes[("acme", "web", "big")]
        snaps[w] = big.snap
        assert big.pop["RARE"] == (2 if w == 0 else 0)
    assert snaps[0] is not None and snaps[100] is not None
    assert "RARE" in snaps[0].counts and "RARE" not in snaps[100].counts
    heavy_n = sum(1 for e in events if e.id == "heavy")
    assert sum(snaps[0].counts.values()) - sum(snaps[100].counts.values()) > heavy_n - 200


def test_learning_and_new_fields(heavy_file: tuple[Path, list[Event]]) -> None:
    path, _ = heavy_file
    rows = json_rows(run_score(str(path), "--json").stdout)
    small = [r for r in rows if r["pop"] == "small"]
    assert small and all(r["learning"] for r in small)  # 12 individuals < --min-individuals 30
    once = [r for r in rows if r["id"].startswith("once")]
    assert once and all(r["learning"] and r["count"] < 10 for r in once)
    assert all(0.0 <= r["pscore"] < 1.0 for r in rows)
    big = [r for r in rows if r["pop"] == "big"]
    assert max(big, key=lambda r: r["score"])["pscore"] == round((len(big) - 1) / len(big), 3)
    fewer = json_rows(run_score(str(path), "--json", "--min-individuals", "5", "--min-events", "1").stdout)
    assert not any(r["learning"] for r in fewer)
    text = run_score(str(path), "--top", "50").stdout.decode()
    assert "(12 individuals, 12 learning)" in text
    marked = [line for line in text.splitlines() if line.endswith("[learning]")]
    assert marked and all(" once" in line or line.split()[3].startswith("u") for line in marked)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--weight-cap", "50"], "--weight-cap must be 0 (off) or at least the normalisation cap --cap 100, got 50"),
        (["--weight-cap", "5", "--cap", "10"], "--cap 10, got 5"),
        (["--weight-cap", "-1"], "--weight-cap: must be at least 0, got -1"),
        (["--weight-cap", "lots"], "--weight-cap: must be a whole number, got 'lots'"),
        (["--cap", "0"], "--cap: must be at least 1, got 0"),
    ],
)
def test_bad_weight_cap_is_exit_2(args: list[str], problem: str) -> None:
    for command in ("score", "evaluate"):
        paths = ["-"] if command == "score" else ["-", "labels.csv"]
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "binormal", command, *paths, *args],
            input=b"",
            capture_output=True,
            timeout=60,
            check=False,
        )
        err = proc.stderr.decode()
        assert proc.returncode == 2 and problem in err and "Traceback" not in err, (command, err)


def test_weight_cap_accepted_values() -> None:
    line = b'{"org": "o", "source": "s", "pop": "p", "id": "a", "action": "x"}\n'
    for w in ("0", "100", "100000"):
        proc = run_score("-", "--json", "--weight-cap", w, stdin=line)
        assert proc.returncode == 0 and json_rows(proc.stdout)[0]["count"] == 1


FAST_PATH_BAD = [
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": 5, "action": "GET /"}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "", "action": "GET /"}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "' + b"x" * 1025 + b'", "action": "GET /"}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "\\ud800", "action": "GET /"}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": ["l"], "action": "GET /"}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /", "ts": true}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /", "ts": -1}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /", "ts": 1.5}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /", "acton": 1}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /", "id_ttl": 5}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1"}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": {"a": 1}}',
    b'{"org": "acme", "source": "webserver", "pop": ["auth_getpost"], "id": "user1", "action": "GET /"}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /", "ts": 9e99}',
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /"} trailing',
    b"\x0c",
]
FAST_PATH_GOOD = [  # taken by the full check, and counted
    b'{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /", "event_id": "e"}',
    b'{"ts": 3, "action": "GET /", "id": "user1", "pop": "auth_getpost", "source": "webserver", "org": "acme"}',
    b'\t{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "user1", "action": "GET /"}\x0b',
]


def test_fast_path_reports_what_the_full_check_reports(data: dict[str, Any]) -> None:
    """Lines the fast path must not take (a known scope and action, a bad id, ts or field) come back
    with the same messages and line numbers as the per-line path (--exact), and the same counts."""
    lines = data["blob"].splitlines()
    mixed = lines[:1000] + FAST_PATH_BAD + FAST_PATH_GOOD + lines[1000:]
    blob = b"\n".join(mixed) + b"\n"
    fast = run_score("-", "--json", stdin=blob)
    exact = run_score("-", "--json", "--exact", stdin=blob)
    assert fast.returncode == exact.returncode == 0
    assert fast.stderr == exact.stderr
    err = fast.stderr.decode().splitlines()
    assert len(err) == len(BAD) + len(FAST_PATH_BAD) - 1  # the form feed alone is a blank line
    assert any(line.startswith("line 1001: id: must be a string") for line in err)
    assert any(line.startswith("line 1007: ts: must not be negative") for line in err)
    count = {r["id"]: r["count"] for r in json_rows(fast.stdout) if r["pop"] == "auth_getpost"}
    assert count == {r["id"]: r["count"] for r in json_rows(exact.stdout) if r["pop"] == "auth_getpost"}


def test_final_score_is_assess_bit_for_bit() -> None:
    """The inlined bits of the final scoring equal Snapshot.assess on random snapshots and counts."""
    rng = random.Random(3)
    for trial in range(300):
        actions = [f"a{i}" for i in range(rng.randrange(1, 30))]
        snap = Snapshot({a: rng.randrange(1, 500) for a in actions}, cap=rng.choice([5, 50, 100]))
        counts = {a: rng.randrange(1, 40) for a in rng.sample(actions, rng.randrange(1, len(actions) + 1))}
        n = sum(counts.values())
        memo: dict[int, Any] = {}
        assert final_score(snap, counts, n, snap.cap, memo) == snap.assess(counts, 0)[0], trial
        assert final_score(snap, counts, n, snap.cap, memo) == snap.assess(counts, 0)[0], trial
    # the fall-backs: more events than the cap, one action, an action the snapshot lacks
    snap = Snapshot({"a": 3, "b": 1}, cap=5)
    for counts in ({"a": 7, "b": 1}, {"a": 2, "zz": 1}):
        assert final_score(snap, counts, sum(counts.values()), 5, {}) == snap.assess(counts, 0)[0]
    single = Snapshot({"a": 3}, cap=5)
    assert final_score(single, {"a": 2}, 2, 5, {}) == single.assess({"a": 2}, 0)[0] == 0.0


@pytest.mark.parametrize("bad", ["0", "-3", "ten", "1.5"])
def test_bad_refresh_is_exit_2(bad: str) -> None:
    proc = run_score("-", "--refresh", bad, stdin=b"")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "--refresh" in err and bad in err and "Traceback" not in err


def test_exact_and_refresh_together_and_map_with_transform_are_refused() -> None:
    proc = run_score("-", "--refresh", "5", "--exact", stdin=b"")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr.decode()
    proc = run_score("-", "--map", "org=a", "--transform", "x:y", stdin=b"")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr.decode()
    proc = run_score("-", "--map", "nofield=1", stdin=b"")
    assert proc.returncode == 2 and "unknown field" in proc.stderr.decode()


def test_progress_bar_on_stderr(tmp_path: Path) -> None:
    """``--progress`` (the default on a terminal): events read, events/s and an ETA; stdout unchanged."""
    big = tmp_path / "big.ndjson"
    big.write_bytes(
        b"".join(
            orjson.dumps({"org": "o", "source": "s", "pop": f"p{i % 5}", "id": f"id-{i % 300}", "action": f"a{i % 7}"})
            + b"\n"
            for i in range(9000)
        )
        + b"oops\n"
    )
    with_bar = run_score(str(big), "--json", "--progress")
    without = run_score(str(big), "--json")  # stderr is a pipe here: no bar
    assert with_bar.returncode == without.returncode == 0
    assert with_bar.stdout == without.stdout
    err = with_bar.stderr.decode()
    assert "read 4,096 events" in err and "events/s" in err and "ETA" in err and "%" in err
    assert "line 9001: not JSON" in err
    assert without.stderr.decode().startswith("line 9001: not JSON") and "events/s" not in without.stderr.decode()


@pytest.mark.parametrize("weight_cap", [100, 250])
def test_exact_rows_equal_the_memory_engine_with_the_guard_on(weight_cap: int) -> None:
    """``--exact`` with the dominance guard counts the population as MemoryEngine (and so the worker) does:
    every individual's score and zscore equal its last result there, bit for bit, heavy ones included."""
    from binormal.offline import Options, exact_rows
    from tests.support.events import engine_events

    events = engine_events(7, 12000, scopes=2, individuals=15)  # ~400 events each: past W
    rows = exact_rows(iter(events), Options(cap=100, refresh=0, weight_cap=weight_cap))
    engine = MemoryEngine(cap=100, weight_cap=weight_cap)
    last = {(e.scope, e.id): engine.process(e) for e in events}
    assert len(rows) == len(last)
    heavy = 0
    for row in rows:
        ref = last[(row.scope, row.ident)]
        assert row.score == engine.scopes[row.scope].scores[row.ident]  # the unrounded score, bit for bit
        assert (round(row.zscore, 3), row.count) == (ref["zscore"], ref["count"])
        heavy += row.count > weight_cap
    assert heavy > 0
    off = exact_rows(iter(events), Options(cap=100, refresh=0, weight_cap=0))
    assert [r.score for r in off] != [r.score for r in rows]  # the guard changed the scores


def test_the_services_variables_are_the_defaults_of_the_options(data: dict[str, Any]) -> None:
    """BINORMAL_WEIGHT_CAP / BINORMAL_MIN_EVENTS / BINORMAL_MIN_INDIVIDUALS set what an option not given means."""

    def score(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-P", "-m", "binormal", "score", str(data["plain"]), "--json", *args],
            capture_output=True,
            timeout=60,
            check=False,
            env={**os.environ, **env},
        )

    off = score("--weight-cap", "0", "--min-events", "1", "--min-individuals", "1")
    by_env = score(BINORMAL_WEIGHT_CAP="0", BINORMAL_MIN_EVENTS="1", BINORMAL_MIN_INDIVIDUALS="1")
    default = score()
    assert off.returncode == by_env.returncode == default.returncode == 0, (off.stderr, by_env.stderr)
    assert by_env.stdout == off.stdout != default.stdout
    assert not any(r["learning"] for r in json_rows(by_env.stdout))
    # the option wins over the variable
    assert score("--weight-cap", "100", BINORMAL_WEIGHT_CAP="0").stdout == default.stdout
    bad = score(BINORMAL_WEIGHT_CAP="lots")
    assert bad.returncode == 2 and b"BINORMAL_WEIGHT_CAP must be a whole number" in bad.stderr
    below = score(BINORMAL_WEIGHT_CAP="50")
    assert below.returncode == 2 and b"weight" in below.stderr.lower()


def test_final_score_shares_memo_rows_bit_for_bit() -> None:
    """One memo across many individuals of a snapshot of more actions than cap + 1 equals assess."""
    rng = random.Random(8)
    actions = [f"a{i}" for i in range(150)]
    snap = Snapshot({a: 1 + int(5000 / (i + 1) ** 1.3) for i, a in enumerate(actions)}, cap=100)
    memo: dict[int, Any] = {}
    for trial in range(400):
        pool = actions[: rng.choice([5, 40, 150])]
        counts = {a: rng.randrange(1, 12) for a in rng.sample(pool, rng.randrange(1, 6))}
        n = sum(counts.values())
        assert final_score(snap, counts, n, 100, memo) == snap.assess(counts, 0)[0], trial
