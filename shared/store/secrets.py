"""The Secrets of one namespace, as raw JSON, with the apiserver's errors mapped to the store port's.

The request store and the team store both go through this gateway, so there is one place that
knows how a Kubernetes answer becomes NotFound, Conflict, InvalidArgument, StoreUnavailable or
StoreError, and one resourceVersion-guarded replace.

Error mapping (every method):

- 404 -> NotFound (except `read`, which answers None, and `delete`, which answers False);
- 409 -> Conflict (a create of an existing name, or a write of an outdated resourceVersion);
- 400, 410, 422 -> InvalidArgument (the apiserver refused the body or the continue token);
- 429 and 5xx, a timeout, a refused or dropped connection, no token, a 403 of a full
  ResourceQuota -> StoreUnavailable (retried);
- anything else (401, 403, ...) -> StoreError: a configuration problem, not an outage.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from typing import Any

from shared.services.ports import Conflict, InvalidArgument, NotFound, StoreError, StoreUnavailable

# A replace body, or a function of the object it replaces that returns one (to keep what is not ours).
BodyOrBuilder = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


# The Secrets of a namespace, and one of them, on the apiserver's REST API.
_SECRETS = "/api/v1/namespaces/{namespace}/secrets"
_SECRET = _SECRETS + "/{name}"


class SecretsGateway:
    """Calls go through the official client's ApiClient (its configuration, auth hooks, TLS and
    connection pool) as raw JSON, without the generated CoreV1Api methods: those validate every
    argument and body with pydantic first (building its models), for a dict the apiserver
    validates anyway: 11 % of a new request's CPU (bench/intake_profile.py), 21 MB of the busy
    processor's peak RSS (bench/tick.py). Every answer is read to its end, which hands its
    connection back to the pool: one left unread costs the next call a TLS handshake."""

    def __init__(self, api_client: Any, namespace: str, timeout_seconds: float = 10.0) -> None:
        self._client = api_client
        self.namespace = namespace
        self.timeout_seconds = timeout_seconds

    @property
    def api_client(self) -> Any:
        """The `kubernetes.client.ApiClient` every call goes through."""
        return self._client

    def read(self, name: str) -> dict[str, Any] | None:
        """The Secret, or None when it does not exist."""
        try:
            return self._call("read", "GET", _SECRET, name)
        except NotFound:
            return None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the Secret; Conflict when the name is taken (of concurrent creators, one wins)."""
        return self._call("create", "POST", _SECRETS, body=body)

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A plain replace; the apiserver guards it by `body`'s resourceVersion, if it has one."""
        return self._call("replace", "PUT", _SECRET, name, body=body)

    def replace_guarded(self, name: str, body: BodyOrBuilder, resource_version: str, *,
                        current: dict[str, Any] | None = None, what: str | None = None) -> dict[str, Any]:
        """Replace the Secret only if it is still at `resource_version`.

        The object it replaces is `current` when that is given and at `resource_version` (the
        caller just read or wrote that very version: no second read), else it is read now.
        NotFound if it is gone, Conflict if it changed. `body` may be a function of that object,
        to keep labels and annotations that are not the caller's (an operator's note). The
        replace itself carries `resource_version`, so a write between the read and the replace
        is a Conflict too. `what` names the object in the error messages ("request abc").
        """
        what = what or f"Secret {name}"
        if current is None or (current.get("metadata") or {}).get("resourceVersion") != resource_version:
            current = self.read(name)
        if current is None:
            raise NotFound(f"{what} no longer exists")
        if current["metadata"].get("resourceVersion") != resource_version:
            raise Conflict(f"{what} was changed since it was read")
        new = body(current) if callable(body) else body
        new.setdefault("metadata", {})["resourceVersion"] = resource_version
        return self.replace(name, new)

    def patch_merge(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch; guarded when `body` carries metadata.resourceVersion."""
        return self._call("patch", "PATCH", _SECRET, name, body=body, content_type="application/merge-patch+json")

    def delete(self, name: str, resource_version: str | None = None) -> bool:
        """Delete the Secret (only if still at `resource_version`, when given: else Conflict).
        True if it was deleted, False if it was not there."""
        body = {"preconditions": {"resourceVersion": resource_version}} if resource_version else {}
        try:
            self._call("delete", "DELETE", _SECRET, name, body=body)
        except NotFound:
            return False
        return True

    def list(self, label_selector: str, limit: int | None = None,
             continue_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the Secrets matching `label_selector`, and the token of the next (None: last).

        Read from etcd, not the watch cache (resourceVersion=0): an etcd list reads the Secrets of
        this namespace only, the watch cache of kube-apiserver 1.20 filters those of the whole
        cluster (bench/tick.py --idle prints both)."""
        query = [("labelSelector", label_selector)]
        if limit:
            query.append(("limit", str(limit)))
        if continue_token:
            query.append(("continue", continue_token))
        body = self._call("list", "GET", _SECRETS, query=query)
        return list(body.get("items") or []), (body.get("metadata") or {}).get("continue") or None

    def _call(self, verb: str, method: str, path: str, name: str | None = None, *,
              query: builtins.list[tuple[str, str]] | None = None, body: dict[str, Any] | None = None,
              content_type: str = "application/json") -> dict[str, Any]:
        """One apiserver call, raw JSON in and out, errors mapped to the port's exceptions."""
        from urllib3.exceptions import HTTPError

        params = {"namespace": self.namespace} if name is None else {"namespace": self.namespace, "name": name}
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            request = self._client.param_serialize(method, path, path_params=params, query_params=query,
                                                   header_params=headers, body=body, auth_settings=["BearerToken"])
            response = self._client.call_api(*request, _request_timeout=self.timeout_seconds)
            data = response.read()  # to the end: the connection goes back to the pool
        except (HTTPError, OSError) as exc:  # TokenUnavailable is a ConnectionError, so an OSError
            raise StoreUnavailable(f"Kubernetes API {verb} failed: {type(exc).__name__}") from None
        status = response.status
        if 200 <= status < 300:
            return json.loads(data or b"{}")
        reason = _reason(data, response.reason)
        if status == 404:
            raise NotFound(f"{verb}: not found")
        if status == 409:
            raise Conflict(f"{verb}: {reason}")
        if status in (400, 410, 422):
            raise InvalidArgument(f"Kubernetes API {verb} answered {status}: {reason}")
        if status == 403 and "exceeded quota" in reason:
            # The namespace's ResourceQuota (count/secrets) is full: new requests wait for the
            # retention sweep or an operator, everything else goes on. Not a bug: a 503.
            raise StoreUnavailable(f"Kubernetes API {verb}: the namespace's quota is full ({reason})")
        if status == 429 or status >= 500:
            raise StoreUnavailable(f"Kubernetes API {verb} answered {status}: {reason}")
        raise StoreError(f"Kubernetes API {verb} answered {status}: {reason}")


def _reason(data: bytes | None, fallback: str | None) -> str:
    """The apiserver's own message (a Status body), else the HTTP reason phrase."""
    try:
        return json.loads(data or b"").get("message") or str(fallback)
    except (TypeError, ValueError, AttributeError):
        return str(fallback)
