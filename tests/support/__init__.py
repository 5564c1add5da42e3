"""One place for the test helpers.

- :mod:`tests.support.events`: event generators and ground-truth counters.
- :mod:`tests.support.waiting`: wait for a condition with a deadline (async and sync).
- :mod:`tests.support.redis_state`: write events to their shard, read counters, backlogs and broadcasts.
- :mod:`tests.support.workers`: in-process workers and ``binormal worker`` child processes.
- :mod:`tests.support.processes`: ``binormal`` child processes, their children in /proc, plain HTTP calls.
- :mod:`tests.support.http`: serve an app on a real loopback socket, service settings, HTTP calls.
- :mod:`tests.support.openapi`: check live responses against docs/openapi.yaml (PyYAML + jsonschema).
- :mod:`tests.support.offline`: a slow reference of ``binormal score``'s semantics, and a file for it.
- :mod:`tests.support.fixtures`: shared fixtures (``base_env``, ``run_env``, ``combined``, ``worker``),
  a pytest plugin loaded by ``tests/conftest.py``.

Everything talks to the private redis-server of ``tests/conftest.py``; nothing mocks Redis.
"""
