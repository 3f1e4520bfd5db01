"""Key requests kept as Kubernetes Secrets, one per request, in one namespace.

Reads on the HTTP path go by name, so their cost does not grow with what is stored; only the
timer's sweeps and the admin list use label selectors. Every update carries the object's
resourceVersion, so two writers never both win.

Duplicates are settled by the apiserver, not by check-then-create: a small "claim" Secret whose
name is derived from (email, model) points at the one unfinished request for that pair. Creating
it is atomic (409 for every caller but one); a claim whose request is finished is taken over with
a resourceVersion-guarded patch, so again exactly one caller wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from shared.domain.request import KeyRequest, State
from shared.services.ports import Conflict, InvalidArgument, NotFound, StoreError, StoreUnavailable
from shared.store import codec

log = logging.getLogger(__name__)

CLAIM_REQUEST_ANNOTATION = codec.PREFIX + "request-id"
CLAIM_TIME_ANNOTATION = codec.PREFIX + "claimed-at"
# How long a claim may point at a request that does not exist yet before it counts as abandoned
# (its writer died between writing the claim and the request).
CLAIM_GRACE = timedelta(seconds=10)
HEALTH_PROBE_NAME = "llm-key-requestor-health-probe"
# Request Secrets last read or written, so an update of what we just saw needs no second read.
RECENT_MAX = 2048


class InvalidRecordError(StoreError):
    """A stored Secret cannot be read as a request; the message says which and why."""


class KubernetesRequestStore:
    def __init__(self, api_client: Any, namespace: str, timeout_seconds: float = 10.0) -> None:
        from kubernetes.client import CoreV1Api

        self._api = CoreV1Api(api_client)
        self.namespace = namespace
        self._timeout = timeout_seconds
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._recent_lock = threading.Lock()

    # --- the port ---------------------------------------------------------------------------

    def ping(self) -> None:
        """A GET by name of a Secret that never exists: 404 proves the apiserver and our RBAC."""
        if self._read(HEALTH_PROBE_NAME) is not None:
            log.warning("unexpected Secret %s exists; health probe ignores it", HEALTH_PROBE_NAME)

    def get(self, request_id: str) -> KeyRequest | None:
        secret = self._read(codec.request_name(request_id))
        return None if secret is None else self._decode(secret)

    def submit(self, request: KeyRequest) -> tuple[KeyRequest, bool]:
        claim_name = _claim_name(request.email, request.model)
        deadline = time.monotonic() + 5.0
        wait = 0.01
        while time.monotonic() < deadline:
            try:  # the common case, a first request for the pair: one create settles it
                self._create(_claim_body(claim_name, request))
            except Conflict:
                pass
            else:
                return self._create_request(request, claim_name), True
            claim = self._read(claim_name)
            if claim is None:
                continue  # deleted since our create failed: try again

            meta = claim["metadata"]
            existing_id = (meta.get("annotations") or {}).get(CLAIM_REQUEST_ANNOTATION, "")
            existing = self.get(existing_id) if existing_id else None
            if existing is not None and not existing.finished:
                return existing, False
            if existing is None and not _claim_abandoned(meta):
                time.sleep(wait)  # the claim's writer is creating its request right now
                wait = min(wait * 2, 0.2)
                continue
            try:  # finished or abandoned: take the claim over, guarded by its resourceVersion
                self._patch(claim_name, _claim_patch(meta["resourceVersion"], request))
            except (Conflict, NotFound):
                continue
            log.info("request %s replaces %s for the same email and model (%s)", request.id,
                     existing_id or "an abandoned claim", existing.state if existing else "missing")
            return self._create_request(request, claim_name), True
        raise StoreUnavailable("could not settle a concurrent request for this email and model; try again")

    def update(self, request: KeyRequest) -> KeyRequest:
        """Replace the request's Secret, keeping what is not ours; guarded by resourceVersion.

        A full replace rather than a merge patch, so annotations and keys the new value no longer
        has are removed. The object it replaces (read now, unless this store just read or wrote
        that very version) keeps foreign labels and annotations (an operator's note).
        """
        if request.resource_version is None:
            raise ValueError("update needs a request read from the store")
        name = codec.request_name(request.id)
        current = self._recalled(name, request.resource_version) or self._read(name)
        if current is None:
            raise NotFound(f"request {request.id} no longer exists")
        if current["metadata"].get("resourceVersion") != request.resource_version:
            raise Conflict(f"request {request.id} was changed since it was read")
        secret = self._call("replace", self._api.replace_namespaced_secret, name, self.namespace,
                            codec.to_secret(request, base=current))
        return self._decode(secret)

    def list(self, states: Iterable[State] = (), limit: int | None = None,
             continue_token: str | None = None, unsettled_only: bool = False) -> tuple[list[KeyRequest], str | None]:
        kwargs: dict[str, Any] = {"label_selector": codec.request_selector(tuple(states), unsettled_only)}
        if limit:
            kwargs["limit"] = limit
        if continue_token:
            kwargs["_continue"] = continue_token
        body = self._call("list", self._api.list_namespaced_secret, self.namespace, **kwargs)
        items = []
        for secret in body.get("items") or []:
            try:
                items.append(self._decode(secret))
            except InvalidRecordError as exc:
                log.warning("skipping unreadable request Secret: %s", exc)
        return items, (body.get("metadata") or {}).get("continue") or None

    # --- helpers ----------------------------------------------------------------------------

    def _create_request(self, request: KeyRequest, claim_name: str) -> KeyRequest:
        try:
            secret = self._create(codec.to_secret(request))
        except StoreError:
            # Leave no claim pointing at nothing; if this fails too, the claim expires by itself.
            try:
                self._call("delete", self._api.delete_namespaced_secret, claim_name, self.namespace)
            except StoreError:
                pass
            raise
        log.debug("request %s stored for model %s", request.id, request.model)
        return self._decode(secret)

    def _decode(self, secret: dict[str, Any]) -> KeyRequest:
        try:
            request = codec.from_secret(secret)
        except codec.InvalidRecord as exc:
            raise InvalidRecordError(str(exc)) from None
        with self._recent_lock:
            self._recent[secret["metadata"]["name"]] = secret
            self._recent.move_to_end(secret["metadata"]["name"])
            if len(self._recent) > RECENT_MAX:
                self._recent.popitem(last=False)
        return request

    def _recalled(self, name: str, resource_version: str) -> dict[str, Any] | None:
        with self._recent_lock:
            secret = self._recent.get(name)
        if secret is not None and secret["metadata"].get("resourceVersion") == resource_version:
            return secret
        return None

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("read", self._api.read_namespaced_secret, name, self.namespace)
        except NotFound:
            return None

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("create", self._api.create_namespaced_secret, self.namespace, body)

    def _patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("patch", self._api.patch_namespaced_secret, name, self.namespace, body,
                          _content_type="application/merge-patch+json")

    def _call(self, verb: str, method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One apiserver call, raw JSON in and out, errors mapped to the port's exceptions."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = method(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
            return json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(f"{verb}: not found") from None
            if exc.status == 409:
                raise Conflict(f"{verb}: {_reason(exc)}") from None
            if exc.status in (400, 410, 422):
                raise InvalidArgument(f"Kubernetes API {verb} answered {exc.status}: {_reason(exc)}") from None
            if exc.status in (429,) or exc.status >= 500:
                raise StoreUnavailable(f"Kubernetes API {verb} answered {exc.status}: {_reason(exc)}") from None
            raise StoreError(f"Kubernetes API {verb} answered {exc.status}: {_reason(exc)}") from None
        except (HTTPError, OSError) as exc:
            raise StoreUnavailable(f"Kubernetes API {verb} failed: {type(exc).__name__}") from None


def _reason(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _claim_name(email: str, model: str) -> str:
    digest = hashlib.sha256(f"{email}\n{model}".encode()).hexdigest()[:40]
    return codec.CLAIM_NAME_PREFIX + digest


def _claim_body(name: str, request: KeyRequest) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": name,
            "labels": {codec.APP_LABEL: codec.APP_NAME, codec.COMPONENT_LABEL: codec.CLAIM_COMPONENT},
            "annotations": {CLAIM_REQUEST_ANNOTATION: request.id,
                            CLAIM_TIME_ANNOTATION: datetime.now(timezone.utc).isoformat()},
        },
    }


def _claim_patch(resource_version: str, request: KeyRequest) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": resource_version,
                         "annotations": {CLAIM_REQUEST_ANNOTATION: request.id,
                                         CLAIM_TIME_ANNOTATION: datetime.now(timezone.utc).isoformat()}}}


def _claim_abandoned(meta: dict[str, Any]) -> bool:
    stamp = (meta.get("annotations") or {}).get(CLAIM_TIME_ANNOTATION)
    try:
        claimed = datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        claimed = None
    return claimed is None or datetime.now(timezone.utc) - claimed > CLAIM_GRACE
