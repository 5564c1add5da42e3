"""``binormal token add|list|revoke``: manage the tokens file (see :mod:`common.auth`).

``add`` generates a random token (``secrets``, 256 bits), prints it once alone on
stdout and appends ``NAME ROLE ORGS sha256:HEX`` to the file (created ``0600``,
one ``O_APPEND`` write); ``list`` shows names, roles and orgs (never hashes);
``revoke`` rewrites the file without the line (temporary file + ``rename``).
The file is ``--file``, else ``BINORMAL_TOKENS_FILE``, else
``<BINORMAL_DATA_DIR>/tokens`` (default ``./var/tokens``, where ``binormal run``
looks). Concurrent commands are serialised by an ``flock`` on the directory.
Running services notice the change within about a second.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from binormal.common.auth import (
    ROLES,
    AuthSettings,
    TokensFileError,
    check_name,
    format_line,
    hash_token,
    parse_orgs,
    read_tokens_file,
)
from binormal.common.config import read
from binormal.runsettings import EmbeddedRedisSettings

TOKEN_BYTES = 32  # 256 random bits


def default_tokens_file(env: Mapping[str, str]) -> Path:
    """``BINORMAL_TOKENS_FILE``, else ``<BINORMAL_DATA_DIR>/tokens`` (default ``var/tokens``)."""
    explicit: str = read(AuthSettings, "tokens_file", env)
    return Path(explicit) if explicit else Path(read(EmbeddedRedisSettings, "data_dir", env)) / "tokens"


def add_token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The ``token`` subcommand and its ``add``/``list``/``revoke`` actions."""
    t = sub.add_parser("token", help="manage API tokens (the tokens file: add, list, revoke)")
    t.add_argument("--file", help="tokens file (default: BINORMAL_TOKENS_FILE, else BINORMAL_DATA_DIR/tokens)")
    acts = t.add_subparsers(dest="token_command", required=True)
    a = acts.add_parser("add", help="create a token; it is printed once, on stdout")
    a.add_argument("name", help="unique name (A-Z a-z 0-9 _ -, at most 64)")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--orgs", required=True, help="comma list of orgs, or '*' for every org")
    acts.add_parser("list", help="names, roles and orgs (never the hashes)")
    r = acts.add_parser("revoke", help="remove a token (services refuse it within about a second)")
    r.add_argument("name")
    return t


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fail(message: str) -> int:
    sys.stderr.write(f"binormal token: {message}\n")
    return 2


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def token_add(path: Path, name: str, role: str, orgs_text: str) -> int:
    """Append a new token line; print the token alone on stdout."""
    try:
        check_name(name)
        orgs = parse_orgs(orgs_text)
    except ValueError as exc:
        return _fail(str(exc))
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        try:
            if path.exists() and name in read_tokens_file(path):
                return _fail(f"a token named {name!r} exists already (revoke it first to replace it)")
        except TokensFileError as exc:
            return _fail(f"{path}: {exc}; fix the file first")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        line = format_line(name, role, orgs, hash_token(token)).encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size:
                # never glue our line onto a last line without its newline
                with open(path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        line = b"\n" + line
            _write_all(fd, line)  # one small write with O_APPEND: never interleaved with another
            os.fsync(fd)
        finally:
            os.close(fd)
    if path.stat().st_mode & 0o077:
        sys.stderr.write(f"binormal token: warning: {path} is readable by others (chmod 600 it)\n")
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    sys.stderr.write(f"token {name!r} ({role}, orgs {orgs_text}) added to {path}; it is shown only this once\n")
    return 0


def token_list(path: Path) -> int:
    """One line per token: name, role, orgs."""
    try:
        entries = read_tokens_file(path) if path.exists() else {}
    except TokensFileError as exc:
        return _fail(f"{path}: {exc}")
    for entry in entries.values():
        p = entry.principal
        sys.stdout.write(f"{p.name}\t{p.role}\t{p.orgs_text()}\n")
    return 0


def token_revoke(path: Path, name: str) -> int:
    """Rewrite the file without ``name``'s line (comments and other lines kept verbatim)."""
    if not path.exists():
        return _fail(f"{path} does not exist")
    with _locked(path.parent):
        try:
            entries = read_tokens_file(path)
        except TokensFileError as exc:
            return _fail(f"{path}: {exc}; fix the file first")
        entry = entries.get(name)
        if entry is None:
            return _fail(f"no token named {name!r} in {path}")
        lines = path.read_bytes().split(b"\n")
        del lines[entry.line - 1]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, b"\n".join(lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # atomic: readers see the old file or the new one
    sys.stderr.write(f"token {name!r} revoked in {path}\n")
    return 0


def main_token(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``binormal token``."""
    path = Path(args.file) if args.file else default_tokens_file(os.environ if env is None else env)
    if args.token_command == "add":
        return token_add(path, args.name, args.role, args.orgs)
    if args.token_command == "list":
        return token_list(path)
    return token_revoke(path, args.name)
