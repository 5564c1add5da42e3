"""deploy/prometheus/: the rules and the dashboard reference only what a real /metrics exports.

The service (web tier + ingest on one app, as ``binormal run``) and a worker run against the
private Redis with a tokens file; /metrics is scraped the way the example scrape config does
(an admin token read from a credentials file). ``promtool`` (Debian package ``prometheus``)
checks the files when one is on PATH or named by ``PROMTOOL``; without it those tests skip and
the metric-name checks, which need no promtool, still run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.backends import both_backends
from tests.support.deploy import unavailable
from tests.support.events import ndjson
from tests.support.http import combined_app, ingest_settings, serving, web_settings
from tests.support.promql import TARGET_LABELS, grouping_labels, selectors
from tests.support.promql import exported as exported_names
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = DEPLOY / "binormal-rules.yml"
CONFIG = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
RULE_TESTS = DEPLOY / "binormal-rules.test.yml"
# Series Prometheus makes itself for every target (never in an exposition).
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"})
# Grafana's variables, replaced by what they stand for so promtool can parse the expressions.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$job": ".*"}

GOOD = {"org": "acme", "source": "web", "pop": "users", "id": "u1", "action": "GET /"}
TOKEN = "tok-prometheus-scraper"


def rule_exprs() -> dict[str, str]:
    """Alert name -> expression of deploy/prometheus/binormal-rules.yml."""
    doc = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def dashboard_exprs() -> dict[str, str]:
    """``panel title / refId`` -> expression of every dashboard target."""
    doc = json.loads(DASHBOARD.read_text())
    out: dict[str, str] = {}
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} / {target['refId']}"] = target["expr"]
    return out


def promtool() -> str:
    """Path of a promtool, else skip (fail with ``CI=true``: .ci/run unpacks one)."""
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        unavailable("no promtool (Debian package prometheus, or PROMTOOL=/path/to/promtool)")
        raise AssertionError("unreachable")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture
async def scraped(tmp_path: Path, redis_url: str, prefix: str) -> AsyncIterator[dict[str, set[str] | None]]:
    """A /metrics of a served app and a running worker after some traffic: names -> labels."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"prometheus admin * sha256:{digest}\n")
    tokens.chmod(0o600)
    credentials = tmp_path / "binormal-token"  # what the scrape config's credentials_file holds
    credentials.write_text(TOKEN + "\n")
    ws = web_settings(redis_url, prefix, tokens_file=str(tokens))
    ins = ingest_settings(redis_url, prefix, tokens_file=str(tokens))
    auth = {"Authorization": f"Bearer {credentials.read_text().strip()}"}
    async with (
        running_worker(worker_settings(redis_url, prefix)),
        serving(combined_app(ws, ins)) as base,
        aiohttp.ClientSession(headers=auth) as http,
    ):

        async def scrape() -> str:
            async with http.get(f"{base}/metrics") as r:
                assert r.status == 200, await r.text()
                return await r.text()

        # Traffic so the labelled series exist: a scored /discrete, /events with a bad line.
        async with http.post(f"{base}/discrete", json=GOOD) as r:
            assert r.status == 200, await r.text()
        lines = ndjson([GOOD | {"id": "u2"}, {"org": "acme"}])
        async with http.post(f"{base}/events", data=lines, headers={"Content-Type": "application/x-ndjson"}) as r:
            assert r.status == 202, await r.text()

        async def beating() -> str | None:
            text = await scrape()
            return text if sample_value(text, "binormal_workers_beating") == 1 else None

        text = await wait_for(beating, timeout=15.0, interval=0.1, what="a worker heartbeat on /metrics")
        yield exported_names(text)


def sample_value(text: str, name: str) -> float | None:
    """The value of the unlabelled series ``name`` in a /metrics text."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None


def check_exprs(exprs: dict[str, str], series: dict[str, set[str] | None]) -> list[str]:
    """Problems of ``exprs`` against ``series``."""
    problems: list[str] = []
    for where, expr in exprs.items():
        found = selectors(expr)
        if not found:
            problems.append(f"{where}: no metric found in {expr!r}")
        known: set[str] = set(TARGET_LABELS)
        unchecked = False
        for sel in found:
            if sel.metric in SYNTHETIC:
                known |= {"job", "instance"}
                continue
            if sel.metric not in series:
                problems.append(f"{where}: {sel.metric} is not exported by /metrics")
                continue
            labels = series[sel.metric]
            if labels is None:  # declared, no sample yet: its labels cannot be checked
                unchecked = True
                continue
            known |= labels
            if unknown := sel.labels - labels - TARGET_LABELS:
                problems.append(f"{where}: {sel.metric} has no label {sorted(unknown)} (it has {sorted(labels)})")
        if (missing := grouping_labels(expr) - known) and not unchecked:
            problems.append(f"{where}: grouping by {sorted(missing)}, a label of none of its metrics")
    return problems


async def test_rules_and_dashboard_reference_only_exported_metrics(scraped: dict[str, set[str] | None]) -> None:
    rules, dashboard = rule_exprs(), dashboard_exprs()
    assert {"BinormalStreamLagHigh", "BinormalDeadLettersGrowing", "BinormalNoWorkerHeartbeat"} <= set(rules)
    assert {"BinormalRedisDown", "BinormalWebhookFailures"} <= set(rules)
    assert len(dashboard) >= 20
    problems = check_exprs(rules | {f"dashboard: {k}": v for k, v in dashboard.items()}, scraped)
    assert not problems, "\n".join(problems)
    assert "binormal_alerts_failed_total" in {s.metric for s in selectors(rules["BinormalWebhookFailures"])}


async def test_the_scrape_exports_the_gauges_read_from_redis(scraped: dict[str, set[str] | None]) -> None:
    for name in ("binormal_stream_lag", "binormal_dead_lettered_entries"):
        assert scraped[name] == {"shard"}, name
    for name in ("binormal_redis_up", "binormal_worker_heartbeat_age_seconds", "binormal_workers_beating"):
        assert name in scraped, name
    assert {"route", "method", "status", "le"} <= (scraped["binormal_request_seconds_bucket"] or set())


@both_backends
async def test_heartbeat_gauges_say_inf_and_zero_without_a_worker_then_see_it(redis_url: str, prefix: str) -> None:
    """What BinormalNoWorkerHeartbeat relies on: no worker reads +Inf / 0, a running one a fresh beat."""
    ws = web_settings(redis_url, prefix)
    async with serving(combined_app(ws, ingest_settings(redis_url, prefix))) as base, aiohttp.ClientSession() as http:

        async def scrape() -> str:
            async with http.get(f"{base}/metrics") as r:
                assert r.status == 200
                return await r.text()

        text = await scrape()
        assert sample_value(text, "binormal_worker_heartbeat_age_seconds") == math.inf
        assert sample_value(text, "binormal_workers_beating") == 0
        async with running_worker(worker_settings(redis_url, prefix)):

            async def beating() -> str | None:
                text = await scrape()
                return text if sample_value(text, "binormal_workers_beating") == 1 else None

            text = await wait_for(beating, timeout=15.0, interval=0.1, what="a worker heartbeat on /metrics")
            age = sample_value(text, "binormal_worker_heartbeat_age_seconds")
            assert age is not None and 0 <= age <= ws.ready_heartbeat_s
            assert sample_value(text, "binormal_redis_up") == 1


def test_promql_reader_finds_selectors_and_grouping_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(binormal_request_seconds_bucket{job=~"$job",'
        'route="/discrete"}[5m]))) > 1e3 or on (instance) up{job="x"} == 0 and bool max(foo_total)'
    )
    got = {(s.metric, s.labels) for s in selectors(expr)}
    assert got == {
        ("binormal_request_seconds_bucket", frozenset({"job", "route"})),
        ("up", frozenset({"job"})),
        ("foo_total", frozenset()),
    }
    assert grouping_labels(expr) == {"route", "le", "instance"}


def test_promtool_checks_the_rules() -> None:
    out = run_promtool("check", "rules", str(RULES)).stdout
    assert f"SUCCESS: {len(rule_exprs())} rules found" in out


def test_promtool_unit_tests_fire_every_alert_and_only_then() -> None:
    """binormal-rules.test.yml: each alert on made-up series, none on healthy ones."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    tested = {case["alertname"] for test in doc["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == set(rule_exprs())
    assert "SUCCESS" in run_promtool("test", "rules", str(RULE_TESTS)).stdout


def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    """The example config as shipped, with the credentials file and rules file made to exist."""
    doc = yaml.safe_load(CONFIG.read_text())
    (tmp_path / "token").write_text(TOKEN + "\n")
    for job in doc["scrape_configs"]:
        assert job["authorization"]["credentials_file"].startswith("/etc/prometheus/")
        job["authorization"]["credentials_file"] = str(tmp_path / "token")
    doc["rule_files"] = [str(RULES)]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(doc))
    run_promtool("check", "config", str(config))


def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    """Each dashboard expression as a recording rule (Grafana variables substituted) parses."""
    rules = []
    for i, expr in enumerate(dashboard_exprs().values()):
        for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(var, value)
        rules.append({"record": f"binormal:dashboard_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool("check", "rules", str(path)).stdout
