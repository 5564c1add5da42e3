"""One source of settings: the declared fields, the generic from_env, and README's configuration table."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from binormal.common.auth import AuthSettings
from binormal.common.calibration import LearningSettings
from binormal.common.config import ConfigError, ServiceSettings, declared, from_env, read, setting
from binormal.common.server import HttpLimits
from binormal.feed.settings import FeedSettings
from binormal.ingest.settings import IngestSettings
from binormal.runsettings import EmbeddedRedisSettings, RunSettings
from binormal.web.settings import WebSettings
from binormal.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
CLASSES: list[type] = [
    ServiceSettings,
    HttpLimits,
    AuthSettings,
    LearningSettings,
    WebSettings,
    IngestSettings,
    WorkerSettings,
    EmbeddedRedisSettings,
    RunSettings,
    FeedSettings,
]
SOURCES = [ROOT / d for d in ("binormal", "common", "web", "ingest", "worker")]
# A variable named in a string literal of the source (read by code outside the declared fields, e.g. the feeder's).
LITERAL = re.compile(r"""["'](BINORMAL_[A-Z][A-Z0-9_]*|REDIS_URL|HOST|PORT|INGEST_PORT)["']""")


def _shown(value: Any) -> str:
    """A default as README writes it: `8080`, `0.25`, `10` for 10.0."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def declared_defaults() -> dict[str, str]:
    """Variable -> README default text of every declared field (the same variable must agree everywhere)."""
    out: dict[str, str] = {}
    for cls in CLASSES:
        for f, _ in declared(cls):
            name = f.metadata["env"]
            text = f.metadata["shown"] if f.metadata["shown"] is not None else _shown(f.default)
            assert out.setdefault(name, text) == text, (name, cls.__name__, out[name], text)
    return out


def source_variables() -> set[str]:
    """Variables named as string literals anywhere in the package source."""
    found: set[str] = set()
    for folder in SOURCES:
        for path in folder.rglob("*.py"):
            found.update(LITERAL.findall(path.read_text()))
    return found


def readme_table() -> dict[str, str]:
    """README's configuration table: variable -> default cell (``A` / `B`` rows split in two)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration (environment)", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z_]+)`", cells[0])
        defaults = cells[1].split(" / ") if len(names) > 1 else [cells[1]]
        assert len(defaults) == len(names), line
        for name, default in zip(names, defaults):
            assert name not in rows, f"{name} listed twice"
            rows[name] = default
    return rows


def test_readme_lists_exactly_the_variables_the_code_reads() -> None:
    code = set(declared_defaults()) | source_variables()
    table = set(readme_table())
    assert sorted(code - table) == [], "read by the code, missing from README's table"
    assert sorted(table - code) == [], "in README's table, read by no code"


def test_readme_defaults_are_the_declared_defaults() -> None:
    table = readme_table()
    wrong = {
        name: (table[name], want) for name, want in declared_defaults().items() if not table[name].startswith(want)
    }
    assert wrong == {}


def test_every_declared_setting_has_a_description() -> None:
    for cls in CLASSES:
        for f, _ in declared(cls):
            assert f.metadata["doc"], (cls.__name__, f.name)


def test_from_env_parses_each_type_and_names_the_variable() -> None:
    ws = WebSettings.from_env(
        {
            "PORT": "9000",
            "BINORMAL_WS_MAX_FPS": "2.5",
            "BINORMAL_ALLOW_ANONYMOUS": "Yes",
            "BINORMAL_ALLOWED_HOSTS": "A.example, b.example",
            "BINORMAL_LOG_LEVEL": "debug",
            "BINORMAL_SHARDS": "",  # empty: the default
        }
    )
    assert (ws.port, ws.ws_max_fps, ws.allow_anonymous, ws.shards) == (9000, 2.5, True, 4)
    assert ws.allowed_hosts == ("a.example", "b.example") and ws.log_level == "debug"
    assert EmbeddedRedisSettings.from_env({"BINORMAL_DATA_DIR": "/d"}).data_dir == Path("/d")
    for name, bad in [
        ("PORT", "http"),
        ("BINORMAL_SHARDS", "0"),
        ("BINORMAL_WS_MAX_FPS", "0.01"),
        ("BINORMAL_DISCRETE_TIMEOUT_S", "soon"),
        ("BINORMAL_ALLOW_ANONYMOUS", "maybe"),
    ]:
        with pytest.raises(ConfigError, match=name):
            WebSettings.from_env({name: bad})


def test_bounds_and_defaults_are_written_once() -> None:
    # The dataclass default is what from_env gives for an empty environment.
    for cls in (WebSettings, IngestSettings, WorkerSettings, RunSettings):
        assert from_env(cls, {}) == cls()

    @dataclasses.dataclass(frozen=True)
    class Demo:
        n: int = setting("DEMO_N", 5, minimum=1, maximum=9, doc="a demo")

    assert from_env(Demo, {"DEMO_N": "9"}).n == 9 and read(Demo, "n", {}) == 5
    with pytest.raises(ConfigError, match="DEMO_N must be <= 9"):
        from_env(Demo, {"DEMO_N": "10"})
    with pytest.raises(KeyError):
        read(Demo, "m", {})


def test_web_settings_have_no_reply_ttl() -> None:
    # The stored reply's TTL is the worker's (BINORMAL_REPLY_TTL_S); the web tier never used its copy.
    assert "reply_ttl_s" not in {f.name for f in dataclasses.fields(WebSettings)}
    assert WorkerSettings.from_env({"BINORMAL_REPLY_TTL_S": "7"}).reply_ttl_s == 7


def test_the_feeders_token_stays_out_of_its_repr() -> None:
    """BINORMAL_TOKEN is a secret: a logged or printed FeedSettings must not carry it."""
    settings = FeedSettings.from_env({"BINORMAL_TOKEN": "s3cr3t-token"})
    assert settings.token == "s3cr3t-token"
    assert "s3cr3t-token" not in repr(settings)


def test_weight_cap_defaults_to_the_normalisation_cap_and_refuses_less() -> None:
    assert WorkerSettings.from_env({}).weight_cap == 100
    assert WorkerSettings.from_env({"BINORMAL_CAP": "250"}).weight_cap == 250
    assert WorkerSettings.from_env({"BINORMAL_WEIGHT_CAP": "0"}).weight_cap == 0
    assert WorkerSettings.from_env({"BINORMAL_WEIGHT_CAP": "300"}).guard.weight_cap == 300
    for env, match in [
        ({"BINORMAL_WEIGHT_CAP": "99"}, "BINORMAL_WEIGHT_CAP must be 0 .off. or at least BINORMAL_CAP .100."),
        ({"BINORMAL_WEIGHT_CAP": "-1"}, "BINORMAL_WEIGHT_CAP must be >= 0"),
        ({"BINORMAL_DOMINANCE_SHARE": "0"}, "BINORMAL_DOMINANCE_SHARE must be > 0"),
        ({"BINORMAL_DOMINANCE_SHARE": "1.5"}, "BINORMAL_DOMINANCE_SHARE must be <= 1"),
        ({"BINORMAL_DOMINANCE_MIN_EVENTS": "0"}, "BINORMAL_DOMINANCE_MIN_EVENTS must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            WorkerSettings.from_env(env)
