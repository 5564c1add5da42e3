"""``binormal score`` offline speed: a 40-action, 10-scope NDJSON file of 200,000 events.

Times, in one run on the same file (written to a temporary directory):

* reading the file and ``orjson.loads`` of every line in Python (the floor);
* ``binormal score FILE --json`` as a subprocess in the default mode (snapshot
  refreshed every 1,000 events per scope), and ``--exact`` for comparison.

    python benchmarks/score_offline.py [--events 200000] [--no-exact]

Targets: default mode >= 100,000 events/s and <= 5x the read+parse time.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def read_parse(path: Path) -> float:
    t0 = time.perf_counter()
    n = 0
    with path.open("rb") as f:
        for line in f:
            orjson.loads(line)
            n += 1
    return time.perf_counter() - t0


def run_score(path: Path, *extra: str) -> float:
    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "binormal", "score", str(path), "--json", "--no-progress", *extra],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=root,
    )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--no-exact", action="store_true", help="skip the --exact run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "events.ndjson"
        write_file(path, args.events)
        parse = read_parse(path)
        default = run_score(path)
        print(f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}")
        print(f"file: {args.events:,} events, {path.stat().st_size / 1e6:.1f} MB, 40 actions, 10 scopes")
        print(f"read+parse: {parse:.3f} s ({args.events / parse:,.0f} lines/s)")
        print(
            f"score (default, --refresh 1000): {default:.3f} s, {args.events / default:,.0f} events/s, "
            f"{default / parse:.2f}x read+parse"
        )
        if not args.no_exact:
            exact = run_score(path, "--exact")
            print(f"score --exact: {exact:.3f} s, {args.events / exact:,.0f} events/s, {exact / parse:.2f}x read+parse")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
