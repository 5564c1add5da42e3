"""Cost of the ``recent`` and ``drift`` scores (binormal/drift.py) in the offline engine, A/B in one run.

    python benchmarks/drift_overhead.py [--seed 11] [--repeats 7] [--baseline DIR]

On the quality set of ``benchmarks/quality/generate.py`` (seed 11: 100,474 events), interleaved:

* in-process CPU seconds of the evaluate replay (count, then final rows) with the window off
  (``Options.window = 0``, what ``binormal score`` runs) and at ``K = 50`` (``binormal evaluate``);
* with ``--baseline DIR`` (a source tree of the commit before the window, e.g. from ``git archive``):
  ``binormal score FILE --json`` of that tree and of this one as subprocesses (start-up included),
  the fast path's cost of the one ``if track`` the window added to it.

Medians of ``--repeats`` runs and their ratios; the machine is shared, so only the ratios travel.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from binormal.evaluate import replay
from binormal.offline import Options

ROOT = Path(__file__).resolve().parents[1]


def replay_cpu(path: Path, window: int) -> float:
    """CPU seconds of the evaluate replay (default mode, guard on) with window ``window``."""
    t0 = time.process_time()
    replay(str(path), Options(100, 1000, 100, window=window), io.StringIO())
    return time.process_time() - t0


def score_cpu(path: Path, tree: Path) -> float:
    """CPU seconds of ``binormal score FILE --json`` run from source tree ``tree`` (a subprocess)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(
        [sys.executable, "-m", "binormal", "score", str(path), "--json", "--no-progress"],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        cwd=tree,
        env=env,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--baseline", type=Path, help="source tree of the commit before the window")
    args = ap.parse_args()
    runs: dict[str, list[float]] = {"replay, window 0": [], "replay, window 50": []}
    if args.baseline:
        runs.update({"score --json, baseline": [], "score --json, this tree": []})
    with tempfile.TemporaryDirectory() as d:
        gen = [sys.executable, str(ROOT / "benchmarks/quality/generate.py"), d, "--seed", str(args.seed)]
        subprocess.run(gen, check=True, stdout=subprocess.DEVNULL)
        path = Path(d) / "events.ndjson"
        for _ in range(args.repeats):  # interleaved: a noisy neighbour hits A and B alike
            runs["replay, window 0"].append(replay_cpu(path, 0))
            runs["replay, window 50"].append(replay_cpu(path, 50))
            if args.baseline:
                runs["score --json, baseline"].append(score_cpu(path, args.baseline))
                runs["score --json, this tree"].append(score_cpu(path, ROOT))
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"seed {args.seed}, medians of {args.repeats} runs; load average {os.getloadavg()[0]:.2f}")
    med = {name: statistics.median(v) for name, v in runs.items()}
    for name, value in med.items():
        print(f"{name}: {value:.3f} s CPU (min {min(runs[name]):.3f}, max {max(runs[name]):.3f})")
    print(f"ratio window 50 / window 0: {med['replay, window 50'] / med['replay, window 0']:.3f}")
    if args.baseline:
        print(f"ratio this tree / baseline: {med['score --json, this tree'] / med['score --json, baseline']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
