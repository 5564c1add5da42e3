"""``binormal evaluate`` (binormal/evaluate.py): exact metrics on hand examples, and the CLI on generated files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from binormal.common.engine import MemoryEngine
from binormal.common.keys import Scope
from binormal.evaluate import Labels, average_precision, evaluate, precision_at, read_labels, replay, roc_auc
from binormal.offline import Options
from binormal.score import read_events

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"roc_auc", "average_precision", "precision_at_k", "precision_at_50"}


def run_evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "binormal", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quality")
    cmd = [sys.executable, str(ROOT / "benchmarks/quality/generate.py"), str(out), "--scopes", "2", "--normals", "30"]
    subprocess.run([*cmd, "--per-kind", "1"], check=True, capture_output=True, timeout=60)
    return out


def test_generator_is_seeded_and_plants_what_it_says(generated: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks/quality/generate.py"),
        str(tmp_path),
        "--scopes",
        "2",
        "--normals",
        "30",
    ]
    subprocess.run([*cmd, "--per-kind", "1"], check=True, capture_output=True, timeout=60)
    for name in ("events.ndjson", "labels.csv"):
        assert (tmp_path / name).read_bytes() == (generated / name).read_bytes()
    events = [json.loads(line) for line in (generated / "events.ndjson").read_text().splitlines()]
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    labels = read_labels(io.StringIO((generated / "labels.csv").read_text()))
    per_id: dict[str, list[str]] = {}
    for e in events:
        per_id.setdefault(e["id"], []).append(e["action"])
    assert set(per_id) == set(labels.label)
    assert all(3 <= len(per_id[i]) <= 6 for i, k in labels.kind.items() if k == "lowslow")
    for pop in ("pop-0", "pop-1"):
        in_scope = sum(1 for e in events if e["pop"] == pop)
        assert 0.2 < len(per_id[f"heavy-{pop}-0"]) / in_scope < 0.3
        repeat = per_id[f"repeat-{pop}-0"]
        assert max(repeat.count(a) for a in set(repeat)) > 0.85 * len(repeat)


def test_roc_auc_hand_examples() -> None:
    # pairs (positive, negative): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # a tie between a positive and a negative counts one half: (0.5 + 1) / 2
    assert roc_auc([1.0, 1.0, 0.0], [1, 0, 0]) == 0.75
    assert roc_auc([3.0, 2.0, 1.0], [1, 1, 0]) == 1.0
    assert roc_auc([3.0, 2.0, 1.0], [0, 1, 1]) == 0.0
    with pytest.raises(ValueError):
        roc_auc([1.0, 2.0], [1, 1])


def test_average_precision_hand_examples() -> None:
    # ranked 0.8 (pos), 0.4 (neg), 0.35 (pos): 1/2 * 1/1 + 1/2 * 2/3
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # a tied group is one threshold: recall 1 at precision 1/2
    assert average_precision([1.0, 1.0, 0.0], [1, 0, 0]) == 0.5
    assert average_precision([5.0, 4.0, 1.0, 0.0], [0, 1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)


def test_precision_at_hand_examples() -> None:
    assert precision_at([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0], 2) == 0.5
    assert precision_at([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0], 3) == pytest.approx(2 / 3)
    # k cuts a tied group of 2 holding 1 positive: half a hit expected
    assert precision_at([1.0, 1.0, 0.0], [1, 0, 0], 1) == 0.5
    # k larger than the list: all of it
    assert precision_at([2.0, 1.0], [1, 0], 50) == 0.5


def test_perfect_and_useless_scores() -> None:
    labels = [1, 1, 0, 0, 0, 1, 0, 0]
    perfect = [float(y) for y in labels]
    assert roc_auc(perfect, labels) == 1.0
    assert average_precision(perfect, labels) == 1.0
    assert precision_at(perfect, labels, 3) == 1.0
    useless = [7.0] * len(labels)
    assert roc_auc(useless, labels) == 0.5
    assert precision_at(useless, labels, 3) == pytest.approx(3 / 8)


def test_labels_csv_header_kind_and_errors() -> None:
    got = read_labels(io.StringIO("id,label,kind\na,1,bot\nb,0,\nc,0\n"))
    assert got.label == {"a": 1, "b": 0, "c": 0} and got.kind == {"a": "bot"}
    with pytest.raises(ValueError, match="line 2"):
        read_labels(io.StringIO("a,1\nb,yes\n"))


def test_unlabelled_ids_are_scored_but_not_counted() -> None:
    s = Scope("o", "s", "p")
    rows = [
        {"scope": s, "id": i, "count": 10, "score": sc, "zscore": sc, "pscore": sc, "rzscore": sc, "bits_per_event": sc}
        | {"recent": sc, "drift": sc}
        for i, sc in (("x", 9.0), ("y", 1.0), ("z", 2.0), ("free", 100.0))
    ]
    result = evaluate(rows, Labels({"x": 1, "y": 0, "z": 0}, {"x": "bot"}))
    assert (result["individuals"], result["labelled"], result["anomalous"]) == (4, 3, 1)
    # "free" outranks everything but is not counted: x is still first
    assert result["scores"]["zscore"]["roc_auc"] == 1.0
    assert result["scores"]["zscore"]["precision_at_k"] == 1.0
    assert result["kinds"]["bot"]["scores"]["score"]["roc_auc"] == 1.0


def test_cli_json_shape(generated: Path) -> None:
    done = run_evaluate(str(generated / "events.ndjson"), str(generated / "labels.csv"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    labels = read_labels(io.StringIO((generated / "labels.csv").read_text()))
    assert result["labelled"] == result["individuals"] == len(labels.label)
    assert result["anomalous"] == sum(labels.label.values()) == 2 * 7
    assert result["scopes"] == 2
    assert set(result["scores"]) == {"zscore", "score", "pscore", "rzscore", "bits_per_event", "recent", "drift"}
    assert set(result["kinds"]) == {"skip", "repeat", "odd", "lowslow", "takeover", "masquerade", "heavy"}
    for m in result["scores"].values():
        assert set(m) == METRICS and all(0.0 <= v <= 1.0 for v in m.values())
    for kind in result["kinds"].values():
        assert set(kind["scores"]["zscore"]) == METRICS


def test_cli_table_and_unlabelled_subset(generated: Path, tmp_path: Path) -> None:
    lines = (generated / "labels.csv").read_text().splitlines()
    subset = tmp_path / "subset.csv"
    subset.write_text("\n".join(line for line in lines if not line.startswith("user-pop-1-")) + "\n")
    done = run_evaluate(str(generated / "events.ndjson"), str(subset))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{len(lines) - 1} individuals in 2 scopes, {len(lines) - 1 - 30} labelled")
    assert "ROC-AUC" in done.stdout and "masquerade" in done.stdout
    bad = run_evaluate(str(generated / "events.ndjson"), str(tmp_path / "missing.csv"))
    assert bad.returncode == 1 and "missing.csv" in bad.stderr


def test_replay_ranks_what_binormal_score_reports(generated: Path) -> None:
    """evaluate and score share the engine: the same rows, for the default mode and --exact, guard on and off."""
    events = str(generated / "events.ndjson")
    for extra, opts in (
        ([], Options(100, 1000, 100)),
        (["--exact", "--weight-cap", "0"], Options(100, 0, 0)),
        (["--refresh", "7", "--weight-cap", "150", "--cap", "50"], Options(50, 7, 150)),
    ):
        done = subprocess.run(
            [sys.executable, "-P", "-m", "binormal", "score", events, "--json", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        offline = {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}
        rows = replay(events, opts, io.StringIO())
        assert len(rows) == len(offline)
        for r in rows:
            mine = offline[r["id"]]
            assert r["count"] == mine["count"] and r["learning"] == mine["learning"]
            for name in ("score", "pscore", "rzscore", "bits_per_event"):
                assert round(r[name], 3) == mine[name], name
            if "--exact" not in extra:  # --exact prints the zscore of each individual's last event
                assert round(r["zscore"], 3) == mine["zscore"]
    # --exact, guard off: the scores MemoryEngine gives, and zscores against the final aggregates
    engine = MemoryEngine()
    with open(events, "rb") as f:
        for e in read_events(f, io.StringIO()):
            engine.process(e)
    for r in replay(events, Options(100, 0, 0), io.StringIO()):
        current = engine.current(r["scope"], r["id"])
        assert round(r["score"], 3) == current["score"]
        assert round(r["zscore"], 3) == pytest.approx(current["zscore"], abs=0.0011)  # fsum vs running sums


def test_cli_engine_options_change_the_replay(generated: Path) -> None:
    labels = str(generated / "labels.csv")
    results = {}
    for name, extra in (("default", []), ("exact", ["--exact"]), ("off", ["--weight-cap", "0"])):
        done = run_evaluate(str(generated / "events.ndjson"), labels, "--json", *extra)
        assert done.returncode == 0, done.stderr
        results[name] = json.loads(done.stdout)
    assert results["default"]["individuals"] == results["off"]["individuals"]
    assert results["off"]["kinds"]["heavy"] != results["default"]["kinds"]["heavy"]
    bad = run_evaluate(str(generated / "events.ndjson"), labels, "--weight-cap", "3")
    assert bad.returncode == 2 and "--weight-cap must be 0 (off)" in bad.stderr
    wide = run_evaluate(str(generated / "events.ndjson"), labels, "--window", "101")
    assert wide.returncode == 2 and "--window must be at most the normalisation cap --cap 100, got 101" in wide.stderr
    done = run_evaluate(str(generated / "events.ndjson"), labels, "--json", "--window", "10")
    assert done.returncode == 0, done.stderr
    narrow = json.loads(done.stdout)
    assert narrow["scores"]["zscore"] == results["default"]["scores"]["zscore"]  # the window changes only its scores
    assert narrow["scores"]["recent"] != results["default"]["scores"]["recent"]


def test_progress_bar_on_stderr(generated: Path) -> None:
    """``--progress`` (the default on a terminal): the bar of binormal score on stderr, stdout unchanged."""
    args = (str(generated / "events.ndjson"), str(generated / "labels.csv"), "--json")
    with_bar, without = run_evaluate(*args, "--progress"), run_evaluate(*args)
    assert with_bar.returncode == without.returncode == 0
    assert with_bar.stdout == without.stdout
    assert "events/s" in with_bar.stderr and "ETA" in with_bar.stderr and without.stderr == ""
