"""``binormal evaluate EVENTS LABELS``: detection quality of each offered score on labelled events.

The events are replayed in file order through the engine of ``binormal score``
(:mod:`binormal.offline`: snapshot every ``--refresh`` events per scope, ``--exact`` after every
event; ``--weight-cap``); each individual is ranked by its final scores in its scope. Labels are a CSV ``id,label``
(1 = anomalous, 0 = normal) with an optional third column ``kind`` (a planted anomaly's kind,
reported per kind; ignored when absent). Ids without a label are scored but not counted.

The metrics are exact and handle ties: ROC-AUC by the Mann-Whitney rank formula (mid-ranks),
average precision over distinct score thresholds (a tied group counts as one threshold), and
precision at k as its expectation over a random order within the tied group that straddles k.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import orjson

from binormal.offline import Options, no_gc
from binormal.score import Bar, fast_rows, input_size, open_input

Row = dict[str, Any]
SCORES: dict[str, Callable[[Row], float]] = {
    "zscore": lambda r: float(r["zscore"]),
    "score": lambda r: float(r["score"]),
    "pscore": lambda r: float(r["pscore"]),
    "rzscore": lambda r: float(r["rzscore"]),
    # score is computed on counts normalised to at most cap N events: bits per event of those n' = min(n, N)
    "bits_per_event": lambda r: float(r["bits_per_event"]),
    # binormal/drift.py: the last min(K, n // 2) events against the population, and against the earlier ones
    "recent": lambda r: float(r["recent"]),
    "drift": lambda r: float(r["drift"]),
}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """P(a random positive scores above a random negative), ties counting one half (Mann-Whitney)."""
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1  # ranks i+1..j+1 averaged
        rank_sum += mid * sum(1 for t in order[i : j + 1] if labels[t])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _groups(scores: Sequence[float], labels: Sequence[int]) -> list[tuple[int, int]]:
    """(size, positives) of each group of equal scores, highest score first."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        members = order[i : j + 1]
        out.append((len(members), sum(1 for t in members if labels[t])))
        i = j + 1
    return out


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Sum over distinct thresholds of (recall gained) x (precision at that threshold)."""
    pos = sum(1 for y in labels if y)
    if pos == 0:
        raise ValueError("average precision needs at least one positive")
    seen = hits = 0
    ap = 0.0
    for size, positives in _groups(scores, labels):
        seen += size
        hits += positives
        ap += (positives / pos) * (hits / seen)
    return ap


def precision_at(scores: Sequence[float], labels: Sequence[int], k: int) -> float:
    """Expected fraction of positives among the k highest scores (ties broken at random)."""
    k = min(k, len(scores))
    if k <= 0:
        raise ValueError("precision at k needs k >= 1 and some scores")
    taken = 0
    hits = 0.0
    for size, positives in _groups(scores, labels):
        room = k - taken
        if room <= 0:
            break
        take = min(room, size)
        hits += positives * take / size
        taken += take
    return hits / k


@dataclass(frozen=True)
class Labels:
    """Labels by id, and the kind of each anomalous id when the CSV names it."""

    label: dict[str, int]
    kind: dict[str, str]


def read_labels(stream: IO[str]) -> Labels:
    """Parse ``id,label[,kind]`` lines; a header line (label not 0/1) is skipped."""
    label: dict[str, int] = {}
    kind: dict[str, str] = {}
    for lineno, row in enumerate(csv.reader(stream), start=1):
        if not row or not row[0].strip():
            continue
        if len(row) < 2 or row[1].strip() not in ("0", "1"):
            if lineno == 1:
                continue
            raise ValueError(f"labels line {lineno}: expected id,label with label 0 or 1")
        ident = row[0].strip()
        label[ident] = int(row[1].strip())
        if len(row) > 2 and row[2].strip():
            kind[ident] = row[2].strip()
    return Labels(label, kind)


def replay(path: str, opts: Options, errors: IO[str], progress: bool = False) -> list[Row]:
    """Every individual's final result after replaying ``path`` in order (one row per scope and id)."""
    with open_input(path) as stream, no_gc():
        bar = Bar(errors, progress, input_size(path, stream))
        rows = list(fast_rows(stream, opts, bar if progress else errors, bar if progress else None))
        bar.close()
    return [
        {
            "scope": r.scope,
            "id": r.ident,
            "count": r.count,
            "score": r.score,
            "zscore": r.zscore,
            "pscore": r.pscore,
            "rzscore": r.rzscore,
            "bits_per_event": r.bits_per_event,
            "recent": r.recent,
            "drift": r.drift,
            "learning": r.learning,
        }
        for r in rows
    ]


def metrics(values: Sequence[float], labels: Sequence[int]) -> dict[str, float | None]:
    """ROC-AUC, AP, precision at k (k = positives) and at 50; None where undefined."""
    pos = sum(labels)
    both = 0 < pos < len(labels)
    return {
        "roc_auc": round(roc_auc(values, labels), 4) if both else None,
        "average_precision": round(average_precision(values, labels), 4) if pos else None,
        "precision_at_k": round(precision_at(values, labels, pos), 4) if pos else None,
        "precision_at_50": round(precision_at(values, labels, 50), 4) if values else None,
    }


def evaluate(rows: Sequence[Row], labels: Labels) -> dict[str, Any]:
    """Metrics per score over every labelled individual, and per planted kind (that kind against normals)."""
    counted = [r for r in rows if r["id"] in labels.label]
    y = [labels.label[r["id"]] for r in counted]
    out: dict[str, Any] = {
        "individuals": len(rows),
        "labelled": len(counted),
        "anomalous": sum(y),
        "scopes": len({r["scope"] for r in rows}),
        "scores": {},
        "kinds": {},
    }
    for name, fn in SCORES.items():
        out["scores"][name] = metrics([fn(r) for r in counted], y)
    kinds = sorted({labels.kind[r["id"]] for r in counted if labels.label[r["id"]] and r["id"] in labels.kind})
    for kind in kinds:
        part = [r for r in counted if not labels.label[r["id"]] or labels.kind.get(r["id"]) == kind]
        yk = [labels.label[r["id"]] for r in part]
        out["kinds"][kind] = {"anomalous": sum(yk)}
        out["kinds"][kind]["scores"] = {name: metrics([fn(r) for r in part], yk) for name, fn in SCORES.items()}
    return out


def _fmt(v: float | None) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


def render(result: dict[str, Any], out: IO[str]) -> None:
    """The human table: one line per score, then per kind."""
    out.write(
        f"{result['individuals']} individuals in {result['scopes']} scopes, {result['labelled']} labelled, "
        f"{result['anomalous']} anomalous\n"
    )
    out.write(f"{'set':<18} {'score':<15} {'ROC-AUC':>7} {'AP':>6} {'P@k':>6} {'P@50':>6}\n")
    sections = [("all", result["scores"])] + [(k, v["scores"]) for k, v in result["kinds"].items()]
    for label, scores in sections:
        for name, m in scores.items():
            out.write(
                f"{label:<18} {name:<15} {_fmt(m['roc_auc']):>7} {_fmt(m['average_precision'])} "
                f"{_fmt(m['precision_at_k'])} {_fmt(m['precision_at_50'])}\n"
            )


def main_evaluate(events: str, labels_path: str, as_json: bool, opts: Options, progress: bool | None = None) -> int:
    """Entry point used by the CLI."""
    try:
        with open(labels_path, encoding="utf-8", newline="") as f:
            labels = read_labels(f)
        rows = replay(events, opts, sys.stderr, sys.stderr.isatty() if progress is None else progress)
    except (OSError, EOFError, ValueError) as exc:
        sys.stderr.write(f"binormal evaluate: {exc}\n")
        return 1
    result = evaluate(rows, labels)
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", write_through=True)
    if as_json:
        out.write(orjson.dumps(result).decode() + "\n")
    else:
        render(result, out)
    out.detach()
    return 0
