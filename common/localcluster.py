"""A private Redis Cluster on loopback: masters (and replicas) as child processes.

Used by the tests, the benchmarks and anyone who wants to try Binormal on a
cluster on one machine. Each node is a :class:`RedisServer` with
``cluster-enabled yes`` on a free port; ``redis-cli --cluster create`` joins
them and spreads the 16,384 slots over the masters, then we wait until every
node reports ``cluster_state:ok`` and agrees on the slot map. Nodes are
stopped by PID, like every server we start.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from binormal.common.embedded import RedisServer, RedisServerError, find_binary, free_port

SLOTS = 16_384


def find_cli(server_binary: str) -> str:
    """``redis-cli`` next to the server binary, else on PATH."""
    beside = Path(server_binary).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if not found:
        raise RedisServerError("no redis-cli found (needed to create a cluster): install redis-tools")
    return found


def free_cluster_port(taken: set[int], attempts: int = 200) -> int:
    """A free loopback port p <= 55535 whose bus port p + 10000 is free too, neither in ``taken``."""
    for _ in range(attempts):
        port = free_port()
        if port > 55_535 or {port, port + 10_000} & taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        taken |= {port, port + 10_000}
        return port
    raise RedisServerError("no free port pair (p, p + 10000) for a cluster node")


def command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One command to 127.0.0.1:port over a raw socket; the raw RESP reply (no client needed)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        # CLUSTER INFO / INFO answer with one bulk string: read until it is complete.
        while True:
            chunk = s.recv(65_536)
            if not chunk:
                return data
            data += chunk
            if data[:1] != b"$":
                if data.endswith(b"\r\n"):
                    return data
                continue
            head, _, rest = data.partition(b"\r\n")
            if int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2:
                return data


def info_fields(reply: bytes) -> dict[str, str]:
    """``key:value`` lines of an INFO-like bulk reply."""
    out = {}
    for line in reply.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, on free loopback ports."""

    def __init__(
        self,
        data_dir: str | Path,
        masters: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        node_timeout_ms: int = 2_000,
        aof: bool = False,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.binary = binary or find_binary()
        self.cli = find_cli(self.binary)
        self.data_dir = Path(data_dir)
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []
        taken: set[int] = set()
        for i in range(masters * (1 + replicas)):
            node_dir = self.data_dir / f"node{i}"
            extra = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # A replica that lost its master for a while must still be allowed to take over.
                "--cluster-replica-validity-factor",
                "0",
            )
            self.nodes.append(
                RedisServer(node_dir, binary=self.binary, port=free_cluster_port(taken), aof=aof, extra_args=extra)
            )
        self.masters = masters
        self.replicas = replicas

    @property
    def ports(self) -> list[int]:
        """Every node's port (masters first as created; roles change after a failover)."""
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """URL of the first node: any node leads a cluster client to all of them."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start every node, create the cluster, wait until it is ``ok`` everywhere."""
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{p}" for p in self.ports]
            create = [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas)]
            done = subprocess.run([*create, "--cluster-yes"], capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                raise RedisServerError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-500:]}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0, ports: list[int] | None = None) -> None:
        """Until every live node says ``cluster_state:ok`` with all slots assigned and the same epoch view."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                states = [info_fields(command(p, "CLUSTER", "INFO")) for p in (ports or self.live_ports())]
            except OSError:
                states = []
            if states and all(
                s.get("cluster_state") == "ok" and s.get("cluster_slots_ok") == str(SLOTS) for s in states
            ):
                if len({s.get("cluster_known_nodes") for s in states}) == 1:
                    return
            last = states[0] if states else {}
            time.sleep(0.05)
        raise RedisServerError(f"cluster not ok within {timeout}s: {last}")

    def live_ports(self) -> list[int]:
        """Ports of nodes whose process is running."""
        return [n.port for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def role(self, port: int) -> str:
        """``master`` or ``slave`` as the node at ``port`` says (INFO replication)."""
        return info_fields(command(port, "INFO", "replication")).get("role", "unknown")

    def node(self, port: int) -> RedisServer:
        """The node listening on ``port``."""
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(port)

    def stop(self) -> None:
        """Stop every node by PID."""
        for node in self.nodes:
            node.stop()
