"""A Docker daemon and a compose project for tests/test_deploy_stack.py: started, used and removed by name.

``dockerd`` is started only when none answers, and then stopped by its PID; images are built by
deploy/build-images.sh (kept by tag: the cache of the next run); a compose project has a unique
name and is taken down with its volumes and networks by that name.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

from tests.support.deploy import ROOT, compose_command, compose_env, unavailable
from tests.support.waiting import wait_until

DOCKERD_START_S = 60.0


def docker(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``docker ARGS`` and return it (raise with its stderr when ``check`` and it failed)."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def daemon_answers() -> bool:
    """Whether a Docker daemon answers on the default socket."""
    if shutil.which("docker") is None:
        return False
    return docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False).returncode == 0


def start_dockerd(log: Path) -> subprocess.Popen[bytes] | None:
    """Start ``dockerd`` unless a daemon already answers; returns the process we started (None: not ours)."""
    if shutil.which("docker") is None:
        unavailable("the docker CLI is missing (apt-get install docker.io)")
    if daemon_answers():
        return None
    binary = shutil.which("dockerd")
    if binary is None:
        unavailable("no Docker daemon answers and dockerd is missing (apt-get install docker.io)")
        raise AssertionError("unreachable")
    with open(log, "ab") as fh:
        proc = subprocess.Popen([binary], stdout=fh, stderr=fh, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or daemon_answers(), DOCKERD_START_S, "dockerd to answer")
    except AssertionError:
        stop_dockerd(proc)
        raise
    if proc.poll() is not None:
        raise AssertionError(f"dockerd exited with {proc.returncode}: {log.read_text()[-2000:]}")
    return proc


def stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the dockerd we started (it stops its containerd), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass(frozen=True)
class Images:
    """The three tags deploy/build-images.sh builds (and keeps: the next run's cache)."""

    base: str = "binormal-local/debian:bookworm"
    redis: str = "binormal-local/redis:7-bookworm"
    app: str = "binormal-local/binormal:test"

    def build(self) -> str:
        """Build (base and Redis only when their tags are missing); returns the script's timed steps."""
        if not (ROOT / "deploy" / "wheelhouse").is_dir():
            raise AssertionError("deploy/wheelhouse/ is missing: run `make wheelhouse` (make test-deploy does)")
        env = compose_env(BINORMAL_BASE_IMAGE=self.base, BINORMAL_REDIS_IMAGE=self.redis, BINORMAL_IMAGE=self.app)
        done = subprocess.run(
            ["bash", str(ROOT / "deploy" / "build-images.sh")], capture_output=True, text=True, env=env, timeout=900
        )
        if done.returncode != 0:
            raise AssertionError(f"deploy/build-images.sh failed: {done.stderr[-4000:]}")
        return "\n".join(line for line in done.stderr.splitlines() if line.startswith("[build-images]"))


@dataclass
class Project:
    """One compose project with a unique name; every call names it (``-p``)."""

    file: Path
    env: dict[str, str]
    name: str = field(default_factory=lambda: f"bntest{uuid.uuid4().hex[:8]}")

    def compose(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``docker compose -p NAME -f FILE ARGS``."""
        cmd = [*compose_command(), "-p", self.name, "-f", str(self.file), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[-len(args) - 4 :])} failed: {done.stderr[-4000:]}")
        return done

    def containers(self, service: str) -> list[str]:
        """Names of the service's containers, running or not, in replica order."""
        out = docker(
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={self.name}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        return sorted(out)

    def all_containers(self) -> list[str]:
        """Every container of the project (what teardown must leave empty)."""
        out = docker("ps", "-a", "--filter", f"label=com.docker.compose.project={self.name}", "--format", "{{.Names}}")
        return out.stdout.split()

    def redis(self, *args: str, service: str = "redis", text: bool = False) -> Any:
        """``redis-cli --json ARGS`` inside the project's Redis container (it is published nowhere).

        ``text``: the reply as redis-cli prints it (INFO-style replies are not JSON).
        """
        (container,) = self.containers(service)
        out = docker("exec", container, "redis-cli", *([] if text else ["--json"]), *args, timeout=30).stdout
        return out if text else json.loads(out)

    def down(self) -> None:
        """Remove the project's containers, networks and volumes (by its name)."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=180, check=False)


def hostname_of(container: str) -> str:
    """The container's hostname: the first part of its workers' consumer names (``host-pid``)."""
    return docker("inspect", "-f", "{{.Config.Hostname}}", container).stdout.strip()


def request(
    method: str, url: str, token: str | None = None, body: bytes | None = None, ctype: str = "application/json"
) -> tuple[int, Any]:
    """(status, JSON body) of one request to a published port; Host is the URL's (127.0.0.1)."""
    headers = {"Content-Type": ctype} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (URLError, ConnectionError, TimeoutError):
        return 0, None
