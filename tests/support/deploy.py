"""The deploy files as data: compose files rendered by ``docker compose config``, k8s manifests, the Dockerfile."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = {"single": ROOT / "docker-compose.yml", "cluster": ROOT / "docker-compose.cluster.yml"}
K8S_DIR = ROOT / "deploy" / "k8s"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip, or fail with ``CI=true`` (.ci/run installs what these tests need)."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@functools.cache
def compose_command() -> list[str]:
    """``docker compose`` (the v2 plugin) when it answers, else ``docker-compose`` (v1, Debian's package)."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    unavailable("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    raise AssertionError("unreachable")


def compose_env(**overrides: str) -> dict[str, str]:
    """This environment without any BINORMAL_* (the files' defaults apply), plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINORMAL_") and k != "COMPOSE_PROJECT_NAME"}
    return {**env, **overrides}


def compose_config(which: str, **env: str) -> dict[str, Any]:
    """The compose file after interpolation and validation by compose itself, as a dict."""
    cmd = [*compose_command(), "-f", str(COMPOSE_FILES[which]), "config"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=compose_env(**env), cwd=ROOT, timeout=60)
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr}"
    data = yaml.safe_load(done.stdout)
    assert isinstance(data, dict)
    return data


def command_of(service: dict[str, Any]) -> list[str]:
    """A service's command as a list (compose keeps the list form, a string is split on spaces)."""
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def option(cmd: list[str], name: str) -> str | None:
    """The value after ``--name`` in a redis-server command line, None when absent."""
    return cmd[cmd.index(name) + 1] if name in cmd and cmd.index(name) + 1 < len(cmd) else None


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose may render it as a list of NAME=VALUE)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port, whichever syntax compose renders."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"])))
        else:
            text = str(port).split("/")[0]
            parts = text.rsplit(":", 2)
            out.append((parts[0], parts[1], parts[2]) if len(parts) == 3 else ("", parts[0], parts[-1]))
    return out


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every resource of ``deploy/k8s/*.yaml`` with the file it came from."""
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def dockerfile_user(path: Path) -> str:
    """The last ``USER`` of a Dockerfile: the user its final image runs as."""
    users = re.findall(r"^USER\s+(\S+)", path.read_text(), flags=re.M)
    assert users, f"{path} sets no USER: the image would run as root"
    return str(users[-1])


def readme_variables() -> set[str]:
    """Every variable named in the first column of README's configuration table."""
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names
