"""The HTTP side of authentication: the guard middleware, Host/Origin checks, login and logout.

:func:`setup_auth` (idempotent, like :func:`common.health.setup_health`, so
``binormal run`` registers it once for web and ingest on one app) adds:

- the :func:`guard` middleware, inside ``observe`` (its errors become JSON):
  ``421`` when ``Host`` is not an allowed host; ``403`` when a websocket upgrade,
  a cookie-authorised request or (auth off) any request carries a foreign
  ``Origin``; with a tokens file ``401`` + ``WWW-Authenticate: Bearer`` without
  credentials and ``403`` naming the missing role; it stores the principal
  under ``request[PRINCIPAL]``;
- ``POST /login`` (``{"token": ...}`` -> session cookie) and ``POST /logout``;
- the page security headers (CSP, nosniff, no-referrer, no framing) on every response.

Routes and the role they need (see :data:`ROUTE_ROLES`): producer ``/discrete``
and ``/events``; viewer ``/``, ``/websocket``, ``/api/*``; analyst (viewer + rules and
feedback) ``/api/rules``; admin ``/api/alerts/rules`` (and ``/test``) and everything
else (``/metrics``); open: ``/healthz``, ``/readyz``, ``/static/*``, login,
logout. Orgs are checked by the handlers with :func:`require_org`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson
import structlog
from aiohttp import web

from binormal.common.auth import (
    GRANTS,
    MAX_TOKEN_BYTES,
    PRINCIPAL,
    SESSION_S,
    Principal,
    TokenStore,
    TokensUnavailable,
    check_session,
    make_session,
)
from binormal.common.config import ConfigError
from binormal.common.http import JSON, ApiError, json_response, observe, read_body, require_content_type
from binormal.common.schema import DuplicateKeys, loads_json

log = structlog.get_logger("binormal.auth")

SESSION_COOKIE = "binormal_session"
OPEN = "open"  # no credentials needed
PROBE = "probe"  # open, and exempt from the Host check (load balancers send their own Host)
ROUTE_ROLES: dict[str, str] = {
    "/discrete": "producer",
    "/events": "producer",
    "/": "viewer",
    "/websocket": "viewer",
    "/api/rules": "analyst",
    "/api/alerts/rules": "admin",
    "/api/alerts/rules/test": "admin",
    "/healthz": PROBE,
    "/readyz": PROBE,
    "/static": OPEN,
    "/login": OPEN,
    "/logout": OPEN,
}
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
LOGIN_MAX_BYTES = 2048
WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")


def role_for(canonical: str | None) -> str:
    """The role a route needs (or OPEN/PROBE); unknown routes need admin, unmatched ones nothing."""
    if canonical is None:
        return OPEN  # no route matched: the answer can only be a 404/405
    role = ROUTE_ROLES.get(canonical)
    if role is not None:
        return role
    return "viewer" if canonical.startswith("/api/") else "admin"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lowercase, without port or trailing dot."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end > 0 else h
    name, sep, port = h.rpartition(":")
    if sep and port.isdigit():
        h = name
    return h.rstrip(".")


def default_hosts(bind: str) -> frozenset[str]:
    """Hosts served when ``BINORMAL_ALLOWED_HOSTS`` is unset: the bound address and loopback names.

    Bound to every interface, the machine's own name and the addresses it resolves to are added too.
    """
    hosts = {"localhost", "127.0.0.1", "[::1]"}
    b = bind.lower()
    if b not in WILDCARD_BINDS:
        hosts.add(f"[{b.strip('[]')}]" if ":" in b else b)
        return frozenset(hosts)
    name = socket.gethostname().lower()
    hosts.update({name, socket.getfqdn().lower()})
    try:
        for info in socket.getaddrinfo(name, None):
            addr = str(info[4][0]).lower()
            hosts.add(f"[{addr}]" if ":" in addr else addr)
    except OSError:
        pass
    return frozenset(hosts)


class AuthSettings(Protocol):
    """The fields WebSettings and IngestSettings share for authentication."""

    @property
    def host(self) -> str: ...
    @property
    def tokens_file(self) -> str: ...
    @property
    def allow_anonymous(self) -> bool: ...
    @property
    def allowed_origins(self) -> tuple[str, ...]: ...
    @property
    def allowed_hosts(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class AuthConfig:
    """What :func:`setup_auth` was asked for (the same from web and ingest settings on one app)."""

    host: str
    tokens_file: str
    allow_anonymous: bool
    allowed_origins: tuple[str, ...]
    allowed_hosts: tuple[str, ...]

    @classmethod
    def of(cls, settings: AuthSettings) -> AuthConfig:
        """The auth fields of a WebSettings or IngestSettings."""
        return cls(
            settings.host,
            settings.tokens_file,
            settings.allow_anonymous,
            tuple(settings.allowed_origins),
            tuple(settings.allowed_hosts),
        )


class AuthState:
    """One application's token store (None: auth off) and Host/Origin rules."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.store = TokenStore(Path(config.tokens_file)).load() if config.tokens_file else None
        if self.store is None and not is_loopback(config.host) and not config.allow_anonymous:
            raise ConfigError(
                f"refusing to listen on {config.host or 'every interface'!r} without authentication: "
                "create a token with `binormal token add NAME --role ROLE --orgs ORGS` (and set "
                "BINORMAL_TOKENS_FILE), or set BINORMAL_ALLOW_ANONYMOUS=1 to serve anyone who can connect"
            )
        hosts = config.allowed_hosts
        self.any_host = "*" in hosts
        self.hosts = frozenset(hosts) if hosts else default_hosts(config.host)
        self.origins = frozenset(config.allowed_origins)
        self.roles: dict[str | None, str] = {}
        self._host_cache: dict[str, bool] = {}  # Host header -> allowed

    def role(self, request: web.Request) -> str:
        """The role the matched route needs (cached per route)."""
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else None
        role = self.roles.get(canonical)
        if role is None:
            role = self.roles[canonical] = role_for(canonical)
        return role

    def host_ok(self, request: web.Request) -> bool:
        """``Host`` is one we serve (any port); a request without one (HTTP/1.0) passes."""
        header = request.headers.get("Host")
        if self.any_host or header is None:
            return True
        ok = self._host_cache.get(header)
        if ok is None:
            if len(self._host_cache) >= 1024:  # bounded: hostile clients can send any Host
                self._host_cache.clear()
            ok = self._host_cache[header] = host_name(header) in self.hosts
        return ok

    def origin_ok(self, request: web.Request, origin: str) -> bool:
        """``Origin`` is the page's own (scheme and Host of this request) or an allowed one."""
        o = origin.strip().lower()
        own = f"{request.scheme}://{request.headers.get('Host', '').strip().lower()}"
        return o == own or o in self.origins

    def credentials(self, request: web.Request) -> tuple[Principal | None, bool]:
        """The principal of the bearer token or the session cookie, and whether it came from the cookie."""
        assert self.store is not None
        header = request.headers.get("Authorization")
        try:
            if header is not None:
                if header.startswith("Bearer ") and " " not in header[7:]:
                    token = header[7:]  # the usual form, without the general parse below
                else:
                    scheme, _, token = header.strip().partition(" ")
                    token = token.strip()
                    if scheme.lower() != "bearer" or not token:
                        raise _unauthorized("Authorization must be 'Bearer <token>'")
                principal = self.store.lookup(token)
                if principal is None:
                    raise _unauthorized("invalid token")
                return principal, False
            cookie = request.cookies.get(SESSION_COOKIE)
            if cookie is not None:
                principal = check_session(self.store, cookie)
                if principal is None:
                    raise _unauthorized("session expired or revoked: log in again", SESSION_COOKIE)
                return principal, True
        except TokensUnavailable:
            raise ApiError(
                503,
                "authentication unavailable: the tokens file is invalid (see the server log)",
                None,
                {"Retry-After": "5"},
            ) from None
        return None, False


AUTH = web.AppKey("binormal_auth", AuthState)


def _unauthorized(error: str, field: str = "Authorization") -> ApiError:
    return ApiError(401, error, field, {"WWW-Authenticate": 'Bearer realm="binormal"'})


def _foreign_origin() -> ApiError:
    return ApiError(403, "Origin not allowed: not this page's origin nor in BINORMAL_ALLOWED_ORIGINS", "Origin")


def setup_auth(app: web.Application, settings: AuthSettings) -> None:
    """Register the guard middleware, login/logout and security headers on ``app``; idempotent."""
    config = AuthConfig.of(settings)
    existing = app.get(AUTH)
    if existing is not None:
        if existing.config != config:
            raise ValueError(f"services on one app must share auth settings: {existing.config} != {config}")
        return
    if observe not in app.middlewares:
        raise ValueError("setup_auth needs setup_health first: the guard's errors are answered by observe")
    app[AUTH] = AuthState(config)
    app.middlewares.append(guard)
    app.on_response_prepare.append(_security_headers)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin, credentials and role checks before the handler (see module docstring)."""
    st = request.app[AUTH]
    need = st.role(request)
    if need == PROBE:
        return await handler(request)
    if not st.host_ok(request):
        raise ApiError(421, "this Host is not served here (see BINORMAL_ALLOWED_HOSTS)", "Host")
    origin = request.headers.get("Origin")
    foreign = origin is not None and not st.origin_ok(request, origin)
    if foreign and (st.store is None or need == OPEN or request.path == "/websocket"):
        # No credentials to judge by, a login, or a websocket (browsers send cookies there): Origin decides.
        raise _foreign_origin()
    if st.store is None or need == OPEN:
        return await handler(request)
    page = request.path == "/" and request.method in ("GET", "HEAD")
    try:
        principal, via_cookie = st.credentials(request)
    except ApiError as exc:
        if exc.status != 401 or not page:
            raise
        principal, via_cookie = None, False  # a stale cookie on the page: show the form again
    if principal is None:
        if page:
            # The page holds no data: serve it with 401 so it can show the login form.
            resp = await handler(request)
            resp.set_status(401)
            resp.headers["WWW-Authenticate"] = 'Bearer realm="binormal"'
            return resp
        raise _unauthorized("authentication required: send Authorization: Bearer <token>")
    if foreign and via_cookie:
        raise _foreign_origin()  # the browser sent the cookie for another site's page
    if need not in GRANTS[principal.role]:
        raise ApiError(
            403,
            f"token {principal.name!r} has role {principal.role!r}; this route needs role {need!r} (or admin)",
            "Authorization",
            role=need,
        )
    request[PRINCIPAL] = principal
    return await handler(request)


def principal_of(request: web.Request) -> Principal | None:
    """The request's principal (None when auth is off)."""
    p = request.get(PRINCIPAL)
    return p if isinstance(p, Principal) else None


def still_valid(request: web.Request, principal: Principal) -> bool:
    """Whether ``principal`` is still in the tokens file unchanged (for long-lived websockets)."""
    st = request.app.get(AUTH)
    return st is None or st.store is None or st.store.current(principal)


def require_org(request: web.Request, org: str, field: str = "org") -> None:
    """``403`` naming ``org`` when the request's principal may not use it (no-op with auth off)."""
    p = request.get(PRINCIPAL)
    if p is not None and not p.may_use(org):
        raise org_forbidden(p, org, field)


def org_forbidden(principal: Principal, org: str, field: str = "org", **extra: object) -> ApiError:
    """The ``403`` for an org outside the token's orgs."""
    return ApiError(
        403,
        f"token {principal.name!r} may not use org {org[:256]!r} (its orgs: {principal.orgs_text()})",
        field,
        None,
        org=org[:256],
        **extra,
    )


# ---------------------------------------------------------------- login / logout


async def login(request: web.Request) -> web.Response:
    """``POST /login`` ``{"token": ...}``: a session cookie for the page (HttpOnly, SameSite=Strict)."""
    st = request.app[AUTH]
    if st.store is None:
        raise ApiError(404, "authentication is off (no tokens file): nothing to log in to", None)
    require_content_type(request, (JSON,))
    body = await read_body(request, LOGIN_MAX_BYTES)
    try:
        obj = loads_json(body)  # orjson, plus repeated keys flagged (as on /discrete)
    except orjson.JSONDecodeError:
        raise ApiError(400, 'body must be JSON {"token": ...}', "body") from None
    if isinstance(obj, DuplicateKeys):
        raise ApiError(400, f"{obj.duplicate}: repeated key", "body")
    token = obj.get("token") if isinstance(obj, dict) else None
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise ApiError(400, "token: must be a non-empty string", "token")
    if set(obj) != {"token"}:
        raise ApiError(400, "only the field token is accepted", "body")
    try:
        principal = st.store.lookup(token)
        entry = st.store.entry(principal.name) if principal is not None else None
    except TokensUnavailable:
        raise ApiError(
            503, "authentication unavailable: the tokens file is invalid (see the server log)", None
        ) from None
    if entry is None:
        log.info("login_refused", remote=request.remote)
        raise ApiError(401, "invalid token", "token")
    value, expiry = make_session(entry)
    resp = json_response(
        {
            "name": entry.principal.name,
            "role": entry.principal.role,
            "orgs": entry.principal.orgs_text(),
            "expires": expiry,
        }
    )
    resp.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_S,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or None,
    )
    log.info("login", name=entry.principal.name, role=entry.principal.role)
    return resp


async def logout(request: web.Request) -> web.Response:
    """``POST /logout``: forget the session cookie."""
    resp = json_response({"logged_out": True})
    resp.del_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.secure or None)
    return resp
