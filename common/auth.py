"""Authentication and tenancy: the tokens file, its store, principals and session cookies.

Tokens file (``BINORMAL_TOKENS_FILE``; ``binormal token add`` writes it), one token a line::

    # NAME ROLE ORGS HASH
    ingest-acme producer acme sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    ops         admin    *    sha256:...

``NAME`` is unique (``[A-Za-z0-9_-]``, at most 64 characters), ``ROLE`` one of
:data:`ROLES`, ``ORGS`` a comma list of orgs or ``*`` (every org), ``HASH`` the
SHA-256 of the token. Blank lines and ``#`` comments are allowed. The file holds
no token, only hashes; error messages name the line, never a field's value.

:class:`TokenStore` re-reads the file when its mtime, size or inode changes
(checked at most every :data:`CHECK_INTERVAL_S`); a file that turns invalid
fails closed (every authenticated request answers ``503`` until it is fixed),
a removed file refuses every token. The HTTP side (middleware, login) is in
:mod:`common.guard`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from binormal.common.config import ConfigError, from_env, parse_list, setting

log = structlog.get_logger("binormal.auth")

ROLES = ("producer", "viewer", "analyst", "admin")
# What each role may do: producer routes, viewer routes, analyst routes (rules and feedback), admin-only routes.
GRANTS: dict[str, frozenset[str]] = {
    "producer": frozenset({"producer"}),
    "viewer": frozenset({"viewer"}),
    "analyst": frozenset({"viewer", "analyst"}),
    "admin": frozenset({"producer", "viewer", "analyst", "admin"}),
}
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ORG_RE = re.compile(r"[^\s,]{1,256}")  # orgs in the file: no whitespace, no comma
HASH_RE = re.compile(r"sha256:([0-9a-f]{64})")
CHECK_INTERVAL_S = 1.0  # the tokens file is stat()ed at most this often
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_TOKEN_BYTES = 512  # a presented token longer than this is refused unhashed
SESSION_S = 12 * 3600  # lifetime of a login session cookie


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the line (never a value from it)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a token's name, role and orgs (``None``: every org)."""

    name: str
    role: str
    orgs: frozenset[str] | None

    def may_use(self, org: str) -> bool:
        """Whether this principal may read or write ``org``."""
        return self.orgs is None or org in self.orgs

    def orgs_text(self) -> str:
        """The orgs as written in the tokens file (``*`` or a sorted comma list)."""
        return "*" if self.orgs is None else ",".join(sorted(self.orgs))


# The authenticated caller, left on the request by the guard middleware (common/guard.py) for the
# handlers (org checks) and the rate limiter (common/http.py); absent when auth is off.
PRINCIPAL = web.RequestKey("binormal_principal", Principal)


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One line of the tokens file."""

    principal: Principal
    digest: bytes  # sha256 of the token
    line: int


def hash_token(token: str) -> bytes:
    """SHA-256 of a token (the form the file stores and lookups use)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_orgs(text: str) -> frozenset[str] | None:
    """``*`` -> None (every org); else a comma list of orgs; ValueError when malformed."""
    if text == "*":
        return None
    orgs = text.split(",")
    if not all(ORG_RE.fullmatch(o) and o != "*" for o in orgs):
        raise ValueError("ORGS must be * or a comma list of orgs (no spaces, no empty entries, at most 256 bytes each)")
    return frozenset(orgs)


def check_name(name: str) -> str:
    """``name`` if it is a valid token name, else ValueError."""
    if not NAME_RE.fullmatch(name):
        raise ValueError("NAME must be 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`, else ValueError."""
    if role not in ROLES:
        raise ValueError(f"ROLE must be one of {', '.join(ROLES)}")
    return role


def format_line(name: str, role: str, orgs: frozenset[str] | None, digest: bytes) -> str:
    """A tokens file line (with its newline)."""
    text = "*" if orgs is None else ",".join(sorted(orgs))
    return f"{name} {role} {text} sha256:{digest.hex()}\n"


def parse_tokens(text: str) -> dict[str, TokenEntry]:
    """The entries of a tokens file by name; :class:`TokensFileError` naming the first bad line."""
    by_name: dict[str, TokenEntry] = {}
    by_digest: dict[bytes, int] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4:
            raise TokensFileError(
                f"tokens file line {number}: expected 4 fields NAME ROLE ORGS sha256:HEX, got {len(fields)}"
            )
        name, role, orgs_text, hashed = fields
        try:
            check_name(name)
            check_role(role)
            orgs = parse_orgs(orgs_text)
        except ValueError as exc:
            raise TokensFileError(f"tokens file line {number}: {exc}") from None
        match = HASH_RE.fullmatch(hashed)
        if match is None:
            raise TokensFileError(
                f"tokens file line {number}: the 4th field must be sha256: and 64 lowercase hex digits"
            )
        if name in by_name:
            raise TokensFileError(f"tokens file line {number}: NAME is already used on line {by_name[name].line}")
        digest = bytes.fromhex(match.group(1))
        if digest in by_digest:
            raise TokensFileError(f"tokens file line {number}: same token hash as line {by_digest[digest]}")
        by_digest[digest] = number
        by_name[name] = TokenEntry(Principal(name, role, orgs), digest, number)
    return by_name


def read_tokens_file(path: Path) -> dict[str, TokenEntry]:
    """Parse the file at ``path`` (bounded size, UTF-8); TokensFileError or OSError."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise TokensFileError(f"tokens file is over {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TokensFileError(f"tokens file line {line}: not valid UTF-8") from None
    return parse_tokens(text)


class TokensUnavailable(Exception):
    """The tokens file became invalid after start-up: every token is refused until it is fixed."""


class TokenStore:
    """The tokens file in memory, re-read when it changes (at most one ``stat`` per interval)."""

    def __init__(
        self, path: Path, check_interval_s: float = CHECK_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self.clock = clock
        self.error: str | None = None  # why the current file is refused (fail closed)
        self.reloads = 0
        self._by_name: dict[str, TokenEntry] = {}
        self._by_digest: dict[bytes, TokenEntry] = {}
        self._signature: tuple[int, int, int] | None = None
        self._next_check = float("-inf")

    def load(self) -> TokenStore:
        """Read the file now; raises ConfigError when it is missing or invalid (start-up)."""
        try:
            st = os.stat(self.path)
            entries = read_tokens_file(self.path)
        except FileNotFoundError:
            raise ConfigError(
                f"BINORMAL_TOKENS_FILE {str(self.path)!r} does not exist "
                "(create a token with `binormal token add NAME --role ROLE --orgs ORGS`)"
            ) from None
        except (OSError, TokensFileError) as exc:
            raise ConfigError(f"{self.path}: {exc}") from None
        self._install(entries, st)
        self._next_check = self.clock() + self.check_interval_s
        return self

    def _install(self, entries: dict[str, TokenEntry], st: os.stat_result | None) -> None:
        self._by_name = entries
        self._by_digest = {e.digest: e for e in entries.values()}
        self._signature = None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino)
        self.error = None
        self.reloads += 1
        if st is not None and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("tokens_file_readable_by_others", path=str(self.path), mode=oct(st.st_mode & 0o777))
        log.info("tokens_loaded", path=str(self.path), tokens=len(entries))

    def refresh(self) -> None:
        """Re-read the file if its mtime, size or inode changed; at most once per interval."""
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval_s
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._signature is not None or self._by_name:
                log.warning("tokens_file_removed", path=str(self.path), hint="every token is refused")
                self._install({}, None)
            return
        except OSError as exc:
            self._fail(f"cannot stat the tokens file: {exc.strerror}")
            return
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._signature and self.error is None:
            return
        try:
            entries = read_tokens_file(self.path)
        except TokensFileError as exc:
            self._signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            self._fail(str(exc))
            return
        except OSError as exc:
            self._fail(f"cannot read the tokens file: {exc.strerror}")
            return
        self._install(entries, st)

    def _fail(self, error: str) -> None:
        if error != self.error:
            log.error(
                "tokens_file_invalid", path=str(self.path), error=error, hint="every token is refused until fixed"
            )
        self.error = error
        self._by_name = {}
        self._by_digest = {}

    def _check(self) -> None:
        self.refresh()
        if self.error is not None:
            raise TokensUnavailable(self.error)

    def lookup(self, token: str) -> Principal | None:
        """The principal of a presented token, or None.

        The token is hashed (SHA-256) and the digest looked up; the match is then
        confirmed with ``hmac.compare_digest``. Looking up a digest leaks nothing
        useful about the token: the attacker cannot steer the digest.
        """
        if self.clock() >= self._next_check:
            self.refresh()
        if self.error is not None:
            raise TokensUnavailable(self.error)
        if len(token) > MAX_TOKEN_BYTES or not token:
            return None
        digest = hash_token(token)
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            return None
        return entry.principal

    def entry(self, name: str) -> TokenEntry | None:
        """The current entry called ``name`` (None once revoked)."""
        self._check()
        return self._by_name.get(name)

    def current(self, principal: Principal) -> bool:
        """Whether ``principal`` is still in the file unchanged (not revoked, same role and orgs)."""
        try:
            entry = self.entry(principal.name)
        except TokensUnavailable:
            return False
        return entry is not None and entry.principal == principal

    def __len__(self) -> int:
        return len(self._by_name)


# ---------------------------------------------------------------- session cookies


def _session_mac(entry: TokenEntry, message: str) -> str:
    # Keyed by the token's stored hash: the cookie dies when the token is revoked or
    # replaced, and any process that reads the same file can check it.
    return hmac.new(entry.digest, b"binormal-session:" + message.encode(), hashlib.sha256).hexdigest()


def make_session(entry: TokenEntry, now: float | None = None, lifetime_s: int = SESSION_S) -> tuple[str, int]:
    """A session cookie value ``name.expiry.mac`` and its expiry (unix seconds)."""
    expiry = int(time.time() if now is None else now) + lifetime_s
    message = f"{entry.principal.name}.{expiry}"
    return f"{message}.{_session_mac(entry, message)}", expiry


def check_session(store: TokenStore, value: str, now: float | None = None) -> Principal | None:
    """The principal of a valid, unexpired session cookie, else None."""
    parts = value.split(".")
    if len(parts) != 3 or len(value) > 200:
        return None
    name, expiry, mac = parts
    if not expiry.isascii() or not expiry.isdigit() or len(expiry) > 12:
        return None
    if int(expiry) < (time.time() if now is None else now):
        return None
    entry = store.entry(name) if NAME_RE.fullmatch(name) else None
    if entry is None:
        return None
    if not hmac.compare_digest(_session_mac(entry, f"{name}.{expiry}"), mac):
        return None
    return entry.principal


# ---------------------------------------------------------------- settings


ORIGIN_RE = re.compile(r"https?://[a-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")
HOST_RE = re.compile(r"[a-z0-9.\-]+|\[[0-9a-f:.]+\]")


def _origins(name: str, raw: str) -> tuple[str, ...]:
    origins = parse_list(name, raw)
    for origin in origins:
        if not ORIGIN_RE.fullmatch(origin):
            raise ConfigError(f"{name}: {origin[:80]!r} is not an origin like https://host or http://host:port")
    return origins


def _hosts(name: str, raw: str) -> tuple[str, ...]:
    hosts = parse_list(name, raw)
    for host in hosts:
        if host != "*" and not HOST_RE.fullmatch(host):
            raise ConfigError(f"{name}: {host[:80]!r} is not a host name or address (no port), or *")
    return hosts


@dataclass(frozen=True)
class AuthSettings:
    """Authentication and origin/host checks (fields every HTTP service's settings inherit)."""

    tokens_file: str = setting("BINORMAL_TOKENS_FILE", "", shown="unset", doc="tokens file: authentication on")
    allow_anonymous: bool = setting("BINORMAL_ALLOW_ANONYMOUS", False, shown="`0`", doc="1: auth off off loopback")
    allowed_origins: tuple[str, ...] = setting(
        "BINORMAL_ALLOWED_ORIGINS", (), parse=_origins, shown="none", doc="comma list of origins besides the page's own"
    )
    allowed_hosts: tuple[str, ...] = setting(
        "BINORMAL_ALLOWED_HOSTS",
        (),
        parse=_hosts,
        shown="bound address",
        doc="comma list of Host names answered; empty: bound + loopback",
    )


def auth_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The :class:`AuthSettings` fields from ``env`` (all four, by field name)."""
    return dataclasses.asdict(from_env(AuthSettings, env))
