"""Fixtures shared by several test modules (a pytest plugin, loaded by tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support.processes import clean_env


@pytest.fixture
def base_env() -> dict[str, str]:
    """The environment for a ``binormal`` child: ours without BINORMAL_*, REDIS_URL and PORT."""
    return clean_env()
