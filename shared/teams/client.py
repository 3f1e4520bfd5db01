"""The app's team endpoints over HTTP, as `python -m shared.teams sync` and `plan --url` call them.

One job each: `ApiKey` and `EntraToken` say who is calling (ADMIN_API_KEY in `x-functions-key`,
or an Entra ID access token for the app from azure-identity, which covers workload identity
federation from a CI job); `AppClient` makes the calls with explicit timeouts and retries what is
worth retrying: 429 and 5xx answers (waiting what `Retry-After` says), refused or dropped
connections and timeouts. Every endpoint it calls is safe to repeat (validate changes nothing, PUT
of the same file answers "unchanged", DELETE of a team being deleted answers it again). The sleep
between tries is injected, so tests wait for nothing.

Errors say what went wrong and where: `Unreachable` (no answer, or only 429/5xx after every try),
`Refused` (401/403: the credentials), `Failed` (any other error answer, with the app's message).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

# Retry-After as the app's adapters read it (seconds, or an HTTP date).
from shared.adapters.http_retry import parse_retry_after as retry_after_seconds

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "llm-key-requestor-teams-cli"
MAX_PAGE = 500


class ClientError(Exception):
    """The call did not give a usable answer; `message` says why, in one sentence."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(ClientError):
    """No answer (connection refused or dropped, timeout), or only 429/5xx after every try."""


class Refused(ClientError):
    """401 or 403: the app did not accept the credentials, or they lack the admin role."""


class Failed(ClientError):
    """An error answer the caller should see: `status`, the app's `message` and `detail`."""

    def __init__(self, message: str, status: int, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]


class Auth(Protocol):
    description: str

    def headers(self) -> dict[str, str]: ...


class ApiKey:
    """ADMIN_API_KEY, sent as `x-functions-key` (the header the app and the Functions host know)."""

    description = "ADMIN_API_KEY"

    def __init__(self, key: str) -> None:
        self._key = key

    def headers(self) -> dict[str, str]:
        return {"x-functions-key": self._key}


class EntraToken:
    """A bearer token for the app's Entra ID application (`scope`, e.g. `api://llm-key-requestor/.default`),
    from azure-identity's DefaultAzureCredential: in CI, the federated identity that `azure/login`
    (GitHub OIDC) or an Azure DevOps workload identity service connection signed in; elsewhere
    environment credentials, a managed identity or `az login`. App Service authentication checks it
    and hands the app the caller's app roles (the admin role is required). azure-identity is
    imported here only, on first use, so the API-key path never loads it."""

    def __init__(self, scope: str, credential: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.scope = scope
        self.description = f"an Entra ID token for {scope}"
        self._credential = credential
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0

    def headers(self) -> dict[str, str]:
        if self._token is None or self._expires_on - self._clock() < 120:
            self._token, self._expires_on = self._get()
        return {"Authorization": f"Bearer {self._token}"}

    def _get(self) -> tuple[str, float]:
        try:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            token = self._credential.get_token(self.scope)
        except ImportError:
            raise ClientError("azure-identity is not installed: pip install azure-identity "
                              "(shared/teams/requirements.txt), or use ADMIN_API_KEY") from None
        except Exception as exc:  # noqa: BLE001 - azure-identity raises several kinds; all mean "no token"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise Refused(f"could not get an Entra ID token for {self.scope}: {first[:300]}") from None
        return token.token, float(token.expires_on)


class AppClient:
    """The team endpoints of the app at `base_url` (its root, e.g. https://<app>.azurewebsites.net)."""

    def __init__(self, base_url: str, auth: Auth | None = None, *, timeout: float = 30.0, retries: int = 4,
                 backoff_seconds: float = 1.0, max_backoff_seconds: float = 30.0,
                 max_retry_after_seconds: float = 120.0, sleep: Callable[[float], None] = time.sleep,
                 on_retry: Callable[[str], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.max_retry_after_seconds = max_retry_after_seconds
        self.sleep = sleep
        self.on_retry = on_retry or (lambda message: None)
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request sent, tries included
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=False,
                                  headers={"User-Agent": USER_AGENT, "Accept": "application/json"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the endpoints ---------------------------------------------------------------------------------

    def list_teams(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every stored team (all pages of `GET /api/teams`), and the names of unreadable records."""
        teams: list[dict[str, Any]] = []
        unreadable: list[str] = []
        token: str | None = None
        while True:
            params = {"limit": str(MAX_PAGE), **({"continue": token} if token else {})}
            body = self.call("GET", "/api/teams", params=params).body
            if not isinstance(body, dict) or not isinstance(body.get("teams"), list):
                raise Failed("GET /api/teams answered something other than a team list: is --url the app's root?",
                             200)
            teams.extend(body["teams"])
            unreadable.extend(body.get("unreadable") or [])
            token = body.get("continue") or None
            if not token:
                return teams, unreadable

    def validate(self, source: str, text: str) -> Answer:
        """`POST /api/teams/validate`: 200 with the plan, or 422 with the file's errors (both returned)."""
        return self.call("POST", "/api/teams/validate", json_body={"path": source, "content": text},
                         accept=(200, 422), authenticate=False)

    def put_team(self, team: str, source: str, text: str, commit: str | None) -> Answer:
        body: dict[str, Any] = {"path": source, "content": text}
        if commit:
            body["commit"] = commit
        return self.call("PUT", f"/api/teams/{quote(team, safe='')}", json_body=body, accept=(200, 201, 202))

    def delete_team(self, team: str, dry_run: bool = False) -> Answer:
        params = {"dryRun": "true"} if dry_run else None
        return self.call("DELETE", f"/api/teams/{quote(team, safe='')}", params=params, accept=(200, 202, 404))

    # --- one call, with its tries ----------------------------------------------------------------------

    def call(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
             json_body: Any = None, accept: tuple[int, ...] = (200,), authenticate: bool = True) -> Answer:
        """One request, tried up to 1 + `retries` times; an `accept`ed status is returned, anything
        else raised as `Refused`, `Failed` or (no answer, or 429/5xx every time) `Unreachable`."""
        url = self.base_url + path
        what = f"{method} {path}"
        problem = ""
        for attempt in range(self.retries + 1):
            headers = self.auth.headers() if self.auth is not None and authenticate else {}
            if json_body is None and method not in ("GET", "HEAD"):
                headers = {**headers, "Content-Type": "application/json"}  # the app refuses other writes
            self.calls.append((method, path))
            try:
                response = self._http.request(method, url, params=params, json=json_body, headers=headers)
            except httpx.TimeoutException:
                problem = f"{what}: no answer from {self.base_url} within {self.timeout:g} s"
                wait = self._backoff(attempt)
            except httpx.TransportError as exc:
                problem = f"{what}: cannot reach {self.base_url} ({_describe(exc)})"
                wait = self._backoff(attempt)
            else:
                answer = Answer(response.status_code, _json(response), response.headers)
                if response.status_code in accept:
                    return answer
                if response.status_code not in RETRY_STATUSES:
                    raise self._error(what, answer)
                problem = f"{what} answered {response.status_code}: {_message(answer)}"
                asked = retry_after_seconds(response.headers.get("retry-after"))
                if asked is not None and asked > self.max_retry_after_seconds:
                    raise Unreachable(f"{problem}; it asks to retry after {asked:g} s, longer than "
                                      f"{self.max_retry_after_seconds:g} s: try again later")
                wait = asked if asked is not None else self._backoff(attempt)
            if attempt == self.retries:
                break
            self.on_retry(f"{problem}; retrying in {wait:g} s (try {attempt + 2} of {self.retries + 1})")
            self.sleep(wait)
        raise Unreachable(f"{problem} (tried {self.retries + 1} time{'s' if self.retries else ''})")

    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff_seconds * 2 ** attempt, self.max_backoff_seconds))

    def _error(self, what: str, answer: Answer) -> ClientError:
        message = f"{what} answered {answer.status}: {_message(answer)}"
        if answer.status in (401, 403):
            using = self.auth.description if self.auth is not None else "no credentials"
            return Refused(f"{message} (sent {using})")
        detail = answer.body.get("detail") if isinstance(answer.body, dict) else None
        return Failed(message, answer.status, detail)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(answer: Answer) -> str:
    if isinstance(answer.body, dict) and isinstance(answer.body.get("message"), str):
        return answer.body["message"]
    if answer.body is None:
        return "(no JSON answer: is --url the app's root?)"
    return str(answer.body)[:200]


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def check_url(url: str) -> str:
    """The app's root URL, or ValueError: https, or http on loopback only (credentials travel with it)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be the app's root URL, such as https://<app>.azurewebsites.net, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"--url must be the app's root URL without a query, not {url!r}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"--url {url} uses http: use https (http only for 127.0.0.1 or localhost)")
    return url.strip().rstrip("/")
