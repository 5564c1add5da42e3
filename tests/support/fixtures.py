"""Fixtures shared by several test modules (a pytest plugin, loaded by tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from binormal.common.embedded import free_port
from tests.support.processes import clean_env


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
