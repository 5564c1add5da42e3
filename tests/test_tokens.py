"""binormal/tokens.py: ``binormal token add|list|revoke`` as real subprocesses; start-up refusals."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from binormal.common.auth import TokenStore, read_tokens_file
from tests.support.workers import binormal_command


def binormal(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BINORMAL_")}
    return subprocess.run(
        [*binormal_command(), *args], env={**base, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_add_prints_the_token_once_alone_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    got = binormal("token", "--file", str(path), "add", "ingest-acme", "--role", "producer", "--orgs", "acme,beta")
    assert got.returncode == 0, got.stderr
    token = got.stdout.strip()
    assert got.stdout == token + "\n" and len(token) >= 43  # 32 random bytes, urlsafe base64
    assert token not in got.stderr
    text = path.read_text()
    assert token not in text
    assert text == f"ingest-acme producer acme,beta sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert TokenStore(path).load().lookup(token) is not None
    second = binormal("token", "--file", str(path), "add", "ops", "--role", "admin", "--orgs", "*")
    assert second.returncode == 0 and second.stdout.strip() != token
    assert [e.principal.role for e in read_tokens_file(path).values()] == ["producer", "admin"]


def test_add_refuses_duplicates_and_bad_names_and_orgs(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    assert binormal("token", "--file", str(path), "add", "a", "--role", "viewer", "--orgs", "acme").returncode == 0
    before = path.read_text()
    for args, why in [
        (["a", "--role", "viewer", "--orgs", "acme"], "exists already"),
        (["b.c", "--role", "viewer", "--orgs", "acme"], "NAME must be"),
        (["b", "--role", "viewer", "--orgs", "acme,,x"], "ORGS must be"),
        (["b", "--role", "root", "--orgs", "acme"], "invalid choice"),
    ]:
        got = binormal("token", "--file", str(path), "add", *args)
        assert got.returncode == 2 and why in got.stderr and got.stdout == "", (args, got.stderr)
    assert path.read_text() == before


def test_list_shows_names_roles_orgs_never_hashes_and_revoke_removes_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# our tokens\n")
    for name, role, orgs in [("a", "viewer", "acme"), ("b", "producer", "*"), ("c", "admin", "*")]:
        assert binormal("token", "--file", str(path), "add", name, "--role", role, "--orgs", orgs).returncode == 0
    listed = binormal("token", "--file", str(path), "list")
    assert listed.stdout == "a\tviewer\tacme\nb\tproducer\t*\nc\tadmin\t*\n"
    assert "sha256" not in listed.stdout
    inode = path.stat().st_ino
    got = binormal("token", "--file", str(path), "revoke", "b")
    assert got.returncode == 0, got.stderr
    assert path.read_text().startswith("# our tokens\na viewer acme sha256:") and " b " not in path.read_text()
    assert path.stat().st_ino != inode and stat.S_IMODE(path.stat().st_mode) == 0o600  # replaced atomically
    assert list(read_tokens_file(path)) == ["a", "c"]
    missing = binormal("token", "--file", str(path), "revoke", "b")
    assert missing.returncode == 2 and "no token named 'b'" in missing.stderr


def test_default_file_is_the_env_variable_else_the_data_dir(tmp_path: Path) -> None:
    got = binormal("token", "add", "a", "--role", "viewer", "--orgs", "*", cwd=tmp_path)
    assert got.returncode == 0 and (tmp_path / "var" / "tokens").exists()
    got = binormal(
        "token", "add", "b", "--role", "viewer", "--orgs", "*", env={"BINORMAL_DATA_DIR": str(tmp_path / "d")}
    )
    assert got.returncode == 0 and (tmp_path / "d" / "tokens").exists()
    explicit = tmp_path / "elsewhere"
    got = binormal("token", "add", "c", "--role", "viewer", "--orgs", "*", env={"BINORMAL_TOKENS_FILE": str(explicit)})
    assert got.returncode == 0 and explicit.exists()


@pytest.mark.parametrize("command", [["web"], ["ingest"], ["run", "--open"]])
def test_no_tokens_off_loopback_refuses_to_start_naming_the_fix(tmp_path: Path, command: list[str]) -> None:
    env = {"HOST": "0.0.0.0", "BINORMAL_DATA_DIR": str(tmp_path / "var"), "REDIS_URL": "redis://127.0.0.1:1/0"}
    if command[0] == "run":
        env.pop("REDIS_URL")
    got = binormal(*command, env=env)
    assert got.returncode == 2, got.stderr
    assert "binormal token add" in got.stderr and "BINORMAL_ALLOW_ANONYMOUS=1" in got.stderr
    assert "Traceback" not in got.stderr
    assert not (tmp_path / "var" / "redis").exists()  # nothing was started


def test_a_missing_or_bad_tokens_file_refuses_to_start(tmp_path: Path) -> None:
    got = binormal("web", env={"BINORMAL_TOKENS_FILE": str(tmp_path / "nope")})
    assert got.returncode == 2 and "does not exist" in got.stderr and "binormal token add" in got.stderr
    bad = tmp_path / "bad"
    bad.write_text(f"a viewer * sha256:{'ab' * 32}\nb viewer *\n")
    got = binormal("ingest", env={"BINORMAL_TOKENS_FILE": str(bad)})
    assert got.returncode == 2 and "line 2" in got.stderr and "ab" * 32 not in got.stderr


def test_add_warns_when_the_file_is_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# shared by mistake\n")
    path.chmod(0o644)
    got = binormal("token", "--file", str(path), "add", "a", "--role", "viewer", "--orgs", "*")
    assert got.returncode == 0 and "readable by others" in got.stderr and len(got.stdout.split()) == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_uses_the_data_dirs_tokens_file_and_sees_a_revocation_without_restart(tmp_path: Path) -> None:
    import signal
    import time
    import urllib.request
    from urllib.error import HTTPError

    from binormal.common.embedded import free_port

    data = tmp_path / "var"
    env = {"BINORMAL_DATA_DIR": str(data)}
    token = binormal("token", "add", "dash", "--role", "viewer", "--orgs", "acme", env=env).stdout.strip()
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("BINORMAL_") and k not in ("REDIS_URL", "PORT")}
    run_env = {**base, **env, "PORT": str(port), "HOST": "127.0.0.1", "BINORMAL_REDIS_PORT": str(free_port())}
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([*binormal_command(), "run"], env=run_env, stdout=log, stderr=log)

    def status(path: str, auth: str | None = None) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {auth}"} if auth else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except HTTPError as exc:
            return int(exc.code)

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            try:
                # Ready, not just alive: the app reaches its Redis in the background (503 until then).
                if status("/readyz") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status("/api/scopes") == 401
        assert status("/api/scopes", token) == 200
        assert status("/metrics", token) == 403
        assert binormal("token", "revoke", "dash", env=env).returncode == 0
        deadline = time.monotonic() + 10
        while status("/api/scopes", token) != 401:  # re-read within about a second
            assert time.monotonic() < deadline, "revocation not seen"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
        log.close()
    assert rc == 0
    assert token not in (tmp_path / "run.log").read_text()  # never logged
