"""Who is calling the admin API. Three ways in, side by side:

- `Authorization: Basic` with ADMIN_USERNAME / ADMIN_PASSWORD: the earlier admin panel's login.
  No default password: without ADMIN_PASSWORD, Basic auth is off and the 401 says so. Failed
  logins are limited per client (per worker instance) and logged without the password.
- `x-functions-key` (or `x-api-key`) equal to ADMIN_API_KEY: CI and scripts. The admin functions
  are anonymous at the host level, because a host-enforced function key would lock out the admin
  panel, which cannot send one; the app checks this key itself, in constant time.
- App Service authentication (Entra ID): `X-MS-CLIENT-PRINCIPAL` carrying the ADMIN_ROLE app role.
  Trusted only with ADMIN_TRUST_APP_SERVICE_AUTH=true, i.e. where the platform sets the header and
  strips any a client sends.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hmac
import json
import logging
import threading
import time
from collections.abc import Mapping

import azure.functions as func

from shared.http.responses import HttpError
from shared.settings import Settings

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60.0
# A username's failures per minute, from every address together, may be this many times one
# address's: a spray from many addresses at one account is stopped too, and the owner is not
# locked out by one address guessing.
USERNAME_BUDGET_FACTOR = 3


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    method: str  # basic | api-key | entra

    @property
    def audit_name(self) -> str:
        return f"{self.method}:{self.name}"


class _FailedLogins:
    """Failures per client in a sliding minute; in memory, so per worker instance."""

    def __init__(self) -> None:
        self._seen: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> collections.deque:
        seen = self._seen[client]
        while seen and now - seen[0] > WINDOW_SECONDS:
            seen.popleft()
        return seen

    def retry_after(self, client: str, limit: int) -> int | None:
        now = time.monotonic()
        with self._lock:
            seen = self._recent(client, now)
            if len(seen) >= limit:
                return max(1, int(WINDOW_SECONDS - (now - seen[0])) + 1)
            return None

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()

    def record(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._seen) > 10_000:  # bound memory under a spray of client addresses
                self._seen.pop(next(iter(self._seen)))


failed_logins = _FailedLogins()


def client_of(req: func.HttpRequest) -> str:
    """The caller's address as the platform saw it: the last X-Forwarded-For hop, the one App
    Service's front end (and the local host, from the socket) appends. Earlier hops are whatever
    the caller wrote, so they cannot key a limit."""
    hops = [hop.strip() for hop in req.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    if not hops:
        return "no-address"  # not behind the platform: one budget for all such callers
    last = hops[-1]
    if last.startswith("["):  # [IPv6]:port
        return last[1:].split("]", 1)[0]
    return last.rsplit(":", 1)[0] if last.count(":") == 1 else last  # IPv4:port, or a bare IPv6


def username_key(username: str) -> str:
    return "user:" + username[:256].lower()


def _login_wait(req: func.HttpRequest, settings: Settings, username: str | None = None) -> None:
    """429 once the caller's address, or (for Basic) the username, used up its failures this minute."""
    limit = settings.admin_login_attempts_per_minute
    wait = failed_logins.retry_after(client_of(req), limit)
    if wait is None and username is not None:
        wait = failed_logins.retry_after(username_key(username), USERNAME_BUDGET_FACTOR * limit)
    if wait is not None:
        raise HttpError(429, "Too many failed logins; try again later", headers={"Retry-After": str(wait)})


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _unauthorized(message: str) -> HttpError:
    # No WWW-Authenticate: the panel has its own login form, and a Basic challenge makes a browser
    # ask with its own dialog and then send the cached credentials with every cross-site request.
    return HttpError(401, message)


def authenticate(req: func.HttpRequest, settings: Settings) -> Principal:
    """The caller, or HttpError 401 / 403 / 429."""
    key = req.headers.get("x-functions-key") or req.headers.get("x-api-key")
    if key:
        _login_wait(req, settings)  # wrong API keys count against the address too
        if settings.admin_api_key and _same(key, settings.admin_api_key.get_secret_value()):
            return Principal("api-key", "api-key")
        failed_logins.record(client_of(req))
        log.warning("admin API: wrong API key from %s", client_of(req))
        raise _unauthorized("The API key is not valid")

    if settings.admin_trust_app_service_auth and req.headers.get("x-ms-client-principal"):
        return _app_service_principal(req, settings)

    header = req.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        return _basic(req, header[6:].strip(), settings)
    raise _unauthorized("Authentication required: Basic credentials, an API key, or an Entra ID sign-in")


def _basic(req: func.HttpRequest, token: str, settings: Settings) -> Principal:
    if settings.admin_password is None:
        raise _unauthorized("Basic authentication is disabled here: ADMIN_PASSWORD is not set")
    client = client_of(req)
    try:
        username, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        username, password = "", ""
    _login_wait(req, settings, username)
    # Both compared, always: the time taken does not tell which one was wrong.
    user_ok = _same(username, settings.admin_username)
    password_ok = _same(password, settings.admin_password.get_secret_value())
    if user_ok and password_ok:
        return Principal(username, "basic")
    failed_logins.record(client)
    failed_logins.record(username_key(username))
    log.warning("admin API: failed Basic login for user %r from %s", username[:64], client)
    raise _unauthorized("Invalid username or password")


def _app_service_principal(req: func.HttpRequest, settings: Settings) -> Principal:
    return app_service_principal(req.headers, settings)


def app_service_principal(headers: Mapping[str, str], settings: Settings, what: str = "admin API") -> Principal:
    """The principal App Service authentication put in `headers` (lower-case names), if it holds
    ADMIN_ROLE: HttpError 401 when the header is malformed, 403 without the role. Only for callers
    that checked ADMIN_TRUST_APP_SERVICE_AUTH: the header is the platform's word only then."""
    try:
        principal = json.loads(base64.b64decode(headers["x-ms-client-principal"]))
        role_type = principal.get("role_typ") or "roles"
        claims = principal.get("claims") or []
        roles = {c.get("val") for c in claims if c.get("typ") in (role_type, "roles")}
    except (KeyError, ValueError, binascii.Error, AttributeError, TypeError, RecursionError):
        raise _unauthorized("The App Service principal header is malformed") from None
    name = headers.get("x-ms-client-principal-name") or "unknown"
    if settings.admin_role not in roles:
        log.warning("%s: %s lacks the %s role", what, name[:128], settings.admin_role)
        raise HttpError(403, f"The app role {settings.admin_role} is required")
    return Principal(name, "entra")
