"""Run a scenario test on a single Redis and on the private 3-master cluster.

``@both_backends`` parametrizes the ``redis_url`` fixture (tests/conftest.py):
``node`` is the session's redis-server, ``cluster`` a node of the session's
cluster (every master flushed), and ``aredis``/``sredis`` follow it.
"""

from __future__ import annotations

import pytest

BACKENDS = ["node", "cluster"]
both_backends = pytest.mark.parametrize("redis_url", BACKENDS, indirect=True)
