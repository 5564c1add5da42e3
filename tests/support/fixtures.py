"""Fixtures shared by several test modules (a pytest plugin, loaded by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from binormal.common.embedded import free_port
from binormal.worker import Worker
from tests.support.http import Served, combined_app, ingest_settings, served, web_settings
from tests.support.processes import clean_env
from tests.support.workers import running_worker, worker_settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``deploy`` (Docker, minutes) run only when ``-m`` names the marker (``make test-deploy``)."""
    if "deploy" in (config.getoption("markexpr") or ""):
        return
    dropped = [item for item in items if item.get_closest_marker("deploy") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item.get_closest_marker("deploy") is None]


@pytest.fixture
def base_env() -> dict[str, str]:
    """The environment for a ``binormal`` child: ours without BINORMAL_*, REDIS_URL and PORT."""
    return clean_env()


@pytest.fixture
def run_env(tmp_path: Path, base_env: dict[str, str]) -> dict[str, str]:
    """Environment for ``binormal run`` on free ports (HTTP and embedded Redis), data under ``tmp_path``."""
    return dict(
        base_env,
        PORT=str(free_port()),
        HOST="127.0.0.1",
        BINORMAL_DATA_DIR=str(tmp_path / "var"),
        BINORMAL_REDIS_PORT=str(free_port()),
        BINORMAL_BLOCK_MS="100",
    )


@pytest.fixture
async def combined(redis_url: str, prefix: str) -> AsyncIterator[Served]:
    """Web tier + ingest on one app (as ``binormal run``) with the test defaults, served, Redis reached."""
    ws = web_settings(redis_url, prefix)
    async with served(combined_app(ws, ingest_settings(redis_url, prefix)), ws.keys, Served) as svc:
        yield svc


@pytest.fixture
async def worker(redis_url: str, prefix: str) -> AsyncIterator[Worker]:
    """The default test worker (:func:`worker_settings`), running for the whole test."""
    async with running_worker(worker_settings(redis_url, prefix)) as w:
        yield w
