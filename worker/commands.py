"""Commands collected for one :func:`~binormal.common.connection.execute_raw` round trip."""

from __future__ import annotations

from typing import Any


class Commands:
    """Commands collected for one :func:`execute_raw` round trip (pipeline-like API)."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        """EVALSHA sha numkeys key... arg..."""
        self.commands.append(("EVALSHA", sha, numkeys, *keys_and_args))

    def hgetall(self, key: str) -> None:
        """HGETALL key (reply: flat field/value list)."""
        self.commands.append(("HGETALL", key))

    def publish(self, channel: str | bytes, message: bytes) -> None:
        """PUBLISH channel message."""
        self.commands.append(("PUBLISH", channel, message))

    def set(self, key: str, value: bytes, ex: int) -> None:
        """SET key value EX seconds."""
        self.commands.append(("SET", key, value, "EX", ex))

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        """HSET key field value ..."""
        self.commands.append(("HSET", key, *(x for kv in mapping.items() for x in kv)))
