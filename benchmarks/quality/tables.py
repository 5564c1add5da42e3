"""The tables of docs/quality.md: every planted kind, every score, several seeds, guard on and off.

    python benchmarks/quality/tables.py [--seeds 11 12 13] [--refresh 1000]

For each seed it writes the synthetic set (generate.py, default parameters) to a temporary
directory and replays it with ``binormal evaluate``'s engine twice: the dominance guard on
(``--weight-cap`` = N = 100, the default) and off (``--weight-cap 0``). Prints Markdown: the
ROC-AUC of every (kind, score, seed, guard), then AP and P@k of the first seed.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from binormal.drift import DEFAULT_WINDOW
from binormal.evaluate import SCORES, evaluate, read_labels, replay
from binormal.offline import Options

HERE = Path(__file__).resolve().parent


def run(seed: int, weight_cap: int, refresh: int, window: int = DEFAULT_WINDOW) -> dict[str, Any]:
    """The evaluate result of one seed and one guard setting."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, str(HERE / "generate.py"), d, "--seed", str(seed)], check=True)
        with open(Path(d) / "labels.csv", encoding="utf-8", newline="") as f:
            labels = read_labels(f)
        rows = replay(str(Path(d) / "events.ndjson"), Options(100, refresh, weight_cap, window=window), io.StringIO())
    return evaluate(rows, labels)


def sections(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Set name ("all" or a kind) -> score -> metrics."""
    out = {"all": result["scores"]}
    out.update({kind: v["scores"] for kind, v in result["kinds"].items()})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--refresh", type=int, default=1000, help="snapshot refresh (0: after every event)")
    args = ap.parse_args()
    results = {(seed, w): run(seed, w, args.refresh) for seed in args.seeds for w in (100, 0)}
    first = sections(results[(args.seeds[0], 100)])
    cols = [f"{seed} {'on' if w else 'off'}" for seed in args.seeds for w in (100, 0)]
    print("| set | score | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for name in first:
        for score in SCORES:
            cells = []
            for seed in args.seeds:
                for w in (100, 0):
                    v = sections(results[(seed, w)])[name][score]["roc_auc"]
                    cells.append("-" if v is None else f"{v:.3f}")
            print(f"| {name} | `{score}` | " + " | ".join(cells) + " |")
    print()
    seed = args.seeds[0]
    print(f"Seed {seed}, AP / P@k, guard on | off:")
    print()
    print("| set | score | AP on | P@k on | AP off | P@k off |")
    print("|---|---|---:|---:|---:|---:|")
    on, off = sections(results[(seed, 100)]), sections(results[(seed, 0)])
    for name in first:
        for score in SCORES:
            a, b = on[name][score], off[name][score]
            print(
                f"| {name} | `{score}` | {a['average_precision']:.3f} | {a['precision_at_k']:.3f} | "
                f"{b['average_precision']:.3f} | {b['precision_at_k']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
