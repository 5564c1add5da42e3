"""What excluding ids from learning does to everyone else's detection (issue 11, Deliver 4).

    python benchmarks/quality/exclusion.py OUT_DIR [--exclude-kind heavy]

Replays ``OUT_DIR/events.ndjson`` (from ``generate.py``) twice through the in-memory engine: as
is, and with every id of ``--exclude-kind`` excluded from learning (``MemoryEngine(excluded=...)``,
what an ``exclude`` rule does in the service). Prints, per planted kind other than the excluded one,
the ROC-AUC of ``zscore`` (that kind against the normal ids) in both runs, and how far the
population's action shares moved (largest absolute change of a ``p_a``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from binormal.common.engine import MemoryEngine
from binormal.common.keys import Scope
from binormal.common.schema import Event, parse_json
from binormal.common.scoring import zscore
from binormal.evaluate import roc_auc


def run(events: list[Event], excluded: set[tuple[Scope, str]]) -> tuple[dict[str, float], MemoryEngine]:
    """Final zscore of every id, and the engine, after replaying ``events``."""
    engine = MemoryEngine(excluded=excluded)
    for e in events:
        engine.process(e)
    z: dict[str, float] = {}
    for st in engine.scopes.values():
        for ident in st.individuals:
            z[ident] = zscore(st.scores[ident], st.agg.n, st.agg.total, st.agg.total_sq)
    return z, engine


def main() -> int:
    """Both replays, then the table."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--exclude-kind", default="heavy")
    args = ap.parse_args()
    events = [parse_json(json.loads(line)) for line in (args.dir / "events.ndjson").open() if line.strip()]
    labels: dict[str, tuple[int, str]] = {}
    for line in (args.dir / "labels.csv").read_text().splitlines()[1:]:
        ident, label, *kind = line.split(",")
        labels[ident] = (int(label), kind[0] if kind and kind[0] else "")
    excluded = {(e.scope, e.id) for e in events if labels.get(e.id, (0, ""))[1] == args.exclude_kind}
    base, eng0 = run(events, set())
    excl, eng1 = run(events, excluded)
    kinds = sorted({k for lab, k in labels.values() if lab and k and k != args.exclude_kind})
    print(f"excluded {len(excluded)} ids of kind {args.exclude_kind!r}")
    print(f"{'kind':<12} {'zscore AUC as is':>17} {'with exclusion':>15}")
    for kind in kinds:
        ids = [i for i, (lab, k) in labels.items() if (not lab or k == kind) and i in base]
        y = [labels[i][0] for i in ids]
        a0 = roc_auc([base[i] for i in ids], y)
        a1 = roc_auc([excl[i] for i in ids], y)
        print(f"{kind:<12} {a0:>17.4f} {a1:>15.4f}")
    shift = 0.0
    for scope, st in eng0.scopes.items():
        c0, c1 = st.pop, eng1.scopes[scope].pop
        t0, t1 = sum(c0.values()), sum(c1.values())
        shift = max([shift, *(abs(c0[a] / t0 - c1.get(a, 0) / t1) for a in c0)])
    print(f"largest change of a population share p_a: {shift:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
