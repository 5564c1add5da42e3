"""``binormal score`` offline speed: a 40-action, 10-scope NDJSON file of 200,000 events.

Times, in one run on the same file (written to a temporary directory):

* reading the file and ``orjson.loads`` of every line in Python (the floor), in this process, and
  as a program of its own (``python -c``: interpreter start-up and ``import orjson`` included, as
  for ``binormal score``);
* ``binormal score FILE --json`` as a subprocess (interpreter start-up included) in the default
  mode (snapshot refreshed every 1,000 events per scope, guard on), and ``--exact`` for comparison;
* the default mode's stages in-process (counting, final scores, JSON rows).

Each is run ``--repeats`` times (interleaved) and the median shown. ``--base PATH`` also times
another checkout's ``binormal score`` (e.g. ``git archive main | tar -x -C PATH``), alternating
with this one's in the same run, and prints the ratio of the medians: an A/B on a machine whose
speed drifts.

    python benchmarks/score_offline.py [--events 200000] [--repeats 3] [--exact-repeats 3] [--base PATH]

Targets: default mode >= 100,000 events/s and <= 5x the read+parse time.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson


def write_file(path: Path, events: int, seed: int = 6) -> None:
    rng = random.Random(seed)
    actions = [f"GET /page/{i}" for i in range(40)]
    weights = [1.0 / (i + 1) for i in range(40)]
    with path.open("wb") as f:
        for i in range(events):
            scope = i % 10
            ident = f"user{rng.randrange(2000)}"
            action = rng.choices(actions, weights)[0]
            obj = {"org": "acme", "source": "web", "pop": f"pop{scope}", "id": ident, "action": action, "ts": i}
            f.write(orjson.dumps(obj) + b"\n")


def read_parse(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of reading the file and ``orjson.loads`` of every line."""
    t0, c0 = time.perf_counter(), time.process_time()
    with path.open("rb") as f:
        for line in f:
            orjson.loads(line)
    return time.perf_counter() - t0, time.process_time() - c0


READ_PARSE = "import sys, orjson\nwith open(sys.argv[1], 'rb') as f:\n    for line in f:\n        orjson.loads(line)\n"


def timed_run(argv: list[str], **kw: Any) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, from the children's rusage) of one subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kw)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def read_parse_program(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a Python program that merely reads the file and parses every line."""
    return timed_run([sys.executable, "-P", "-c", READ_PARSE, str(path)])


def compile_tree(tree: Path) -> None:
    """Compile a checkout's modules, as pip does at install: this machine sets PYTHONDONTWRITEBYTECODE,
    and every ``binormal score`` would otherwise spend ~30 ms of its start-up compiling them."""
    dirs = [str(tree / d) for d in ("binormal", "common", "worker", "web", "ingest") if (tree / d).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True, stdout=subprocess.DEVNULL)


def run_score(path: Path | str, *extra: str, tree: Path | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of ``binormal score FILE --json`` as a subprocess (start-up included).

    ``-`` reads an empty stdin: the start-up alone (interpreter, imports, no events). ``tree``:
    another checkout's package, put first on the path (the editable install's finder comes after).
    """
    root = tree or Path(__file__).resolve().parents[1]
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    return timed_run(
        [sys.executable, "-P", "-m", "binormal", "score", str(path), "--json", "--no-progress", *extra],
        stdout=subprocess.DEVNULL,
        cwd=root,
        env=env,
    )


def breakdown(path: Path) -> dict[str, float]:
    """In-process CPU seconds of the default mode's stages (no start-up)."""
    from binormal.offline import Engine, Options, no_gc

    engine = Engine(Options(cap=100, refresh=1000, weight_cap=100))
    with no_gc():
        t0 = time.process_time()
        with path.open("rb") as f:
            engine.feed_lines(f, sys.stderr)
        t1 = time.process_time()
        rows = list(engine.rows())
        t2 = time.process_time()
        "".join([orjson.dumps(r.as_json()).decode() + "\n" for r in rows])
        t3 = time.process_time()
    return {"count (parse, validate, snapshots)": t1 - t0, "final scores": t2 - t1, "JSON rows": t3 - t2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement (the median is shown)")
    ap.add_argument("--exact-repeats", type=int, default=3, help="runs of --exact (slow); 0: skip it")
    ap.add_argument("--base", type=Path, default=None, help="another checkout to time alternately (A/B)")
    args = ap.parse_args()
    if args.base is not None and not (args.base / "binormal" / "score.py").is_file():
        ap.error(f"--base {args.base}: no binormal/score.py there")
    compile_tree(Path(__file__).resolve().parents[1])
    if args.base is not None:
        compile_tree(args.base)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "events.ndjson"
        write_file(path, args.events)
        parse: list[tuple[float, float]] = []
        program: list[tuple[float, float]] = []
        default: list[tuple[float, float]] = []
        exact: list[tuple[float, float]] = []
        parts: list[dict[str, float]] = []
        startup: list[tuple[float, float]] = []
        base: list[tuple[float, float]] = []
        base_startup: list[tuple[float, float]] = []
        single: list[tuple[float, float]] = []
        for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits every measurement alike
            parse.append(read_parse(path))
            program.append(read_parse_program(path))
            if args.base is not None:
                base.append(run_score(path, tree=args.base))
            default.append(run_score(path))
            single.append(run_score(path, "--jobs", "1"))
            parts.append(breakdown(path))
            if args.base is not None:
                base_startup.append(run_score("-", tree=args.base))
            startup.append(run_score("-"))
        exact = [run_score(path, "--exact") for _ in range(args.exact_repeats)]
        from binormal.split import usable_jobs

        jobs = usable_jobs(None)
        floor = statistics.median(p[0] for p in parse)
        floor_cpu = statistics.median(p[1] for p in parse)
        print(f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}")
        print(f"file: {args.events:,} events, {path.stat().st_size / 1e6:.1f} MB, 40 actions, 10 scopes")
        print(f"medians of {args.repeats} runs (--exact: {args.exact_repeats}); load average {os.getloadavg()[0]:.2f}")
        floor_program = statistics.median(p[0] for p in program)
        print(f"read+parse: {floor:.3f} s wall ({floor_cpu:.3f} s CPU), {args.events / floor:,.0f} lines/s")
        print(f"read+parse as a program (start-up and import included): {floor_program:.3f} s wall")
        measured = [
            (f"score (default: --refresh 1000, --jobs {jobs})", default),
            ("score --jobs 1 (one process)", single),
            ("score --exact", exact),
        ]
        if base:
            measured.insert(0, (f"base {args.base} score (default)", base))
        for name, runs in measured:
            if not runs:
                continue
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(
                f"{name}: {wall:.3f} s wall ({cpu:.3f} s CPU), {args.events / wall:,.0f} events/s "
                f"({args.events / cpu:,.0f} per CPU second), {wall / floor:.2f}x read+parse wall, "
                f"{cpu / floor_cpu:.2f}x CPU, {wall / floor_program:.2f}x the read+parse program's wall"
            )
        for stage in parts[0]:
            print(f"  in-process {stage}: {statistics.median(p[stage] for p in parts):.3f} s CPU")
        print(
            f"  start-up (`binormal score - </dev/null`): {statistics.median(r[0] for r in startup):.3f} s wall"
            f" ({statistics.median(r[1] for r in startup):.3f} s CPU)"
        )
        if base:
            a, b = statistics.median(r[0] for r in base), statistics.median(r[0] for r in default)
            print(
                f"A/B: base {a:.3f} s, this {b:.3f} s wall: this / base = {b / a:.3f}"
                f" (CPU {statistics.median(r[1] for r in default) / statistics.median(r[1] for r in base):.3f});"
                f" start-up base {statistics.median(r[0] for r in base_startup):.3f} s,"
                f" this {statistics.median(r[0] for r in startup):.3f} s wall"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
