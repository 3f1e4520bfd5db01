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

import builtins
import contextlib
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import logfields
from shared.domain.blocks import Block, BlockKind
from shared.domain.request import KeyRequest, State
from shared.services.ports import Conflict, NotFound, StoreError, StoreUnavailable
from shared.store import codec
from shared.store.blocks import KubernetesBlockStore
from shared.store.limits import KubernetesLimitStore
from shared.store.secrets import SecretsGateway

log = logging.getLogger(__name__)

CLAIM_REQUEST_ANNOTATION = codec.PREFIX + "request-id"
CLAIM_TIME_ANNOTATION = codec.PREFIX + "claimed-at"
# How long a claim may point at a request that does not exist yet before it counts as abandoned
# (its writer died between writing the claim and the request). At least this, and always longer
# than the writer's one create can take: twice the Kubernetes timeout plus 5 s (see __init__).
CLAIM_GRACE = timedelta(seconds=10)
HEALTH_PROBE_NAME = "llm-key-requestor-health-probe"
# Request Secrets last read or written, so an update of what we just saw needs no second read.
RECENT_MAX = 2048


class InvalidRecordError(StoreError):
    """A stored Secret cannot be read as a request; the message says which and why."""


class KubernetesRequestStore:
    def __init__(self, api_client: Any, namespace: str, timeout_seconds: float = 10.0) -> None:
        self._secrets = SecretsGateway(api_client, namespace, timeout_seconds)
        self._claim_grace = max(CLAIM_GRACE, timedelta(seconds=2 * timeout_seconds + 5))
        self._blocks = KubernetesBlockStore(self._secrets)
        self._limits = KubernetesLimitStore(self._secrets)
        self.namespace = namespace
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._recent_lock = threading.Lock()

    # --- the port ---------------------------------------------------------------------------

    def ping(self) -> None:
        """A GET by name of a Secret that never exists: 404 proves the apiserver and our RBAC."""
        if self._secrets.read(HEALTH_PROBE_NAME) is not None:
            log.warning("unexpected Secret %s exists; health probe ignores it", HEALTH_PROBE_NAME)

    def get(self, request_id: str) -> KeyRequest | None:
        secret = self._secrets.read(codec.request_name(request_id))
        return None if secret is None else self._decode(secret)

    def find_block(self, keys: Iterable[tuple[BlockKind, str]]) -> Block | None:
        return self._blocks.find(keys)

    def take_limit(self, scope: str, window: str, per_window: int | None, *, request_id: str | None = None,
                   max_open: int | None = None) -> str | None:
        def is_open(request_id: str) -> bool:
            found = self.get(request_id)
            return found is not None and not found.finished

        return self._limits.take(scope, window, per_window, request_id=request_id, max_open=max_open,
                                 is_open=is_open)

    def submit(self, request: KeyRequest, refuse: Callable[[KeyRequest], None] | None = None,
               admit: Callable[[KeyRequest], None] | None = None) -> tuple[KeyRequest, bool]:
        claim_name = _claim_name(request.mailbox, request.model)  # two spellings of one mailbox: one claim
        deadline = time.monotonic() + 5.0
        wait = 0.01
        admitted = False
        while time.monotonic() < deadline:
            try:  # the common case, a first request for the pair: one create settles it
                created_claim = self._secrets.create(_claim_body(claim_name, request))
            except Conflict:
                pass
            else:
                claim_version = created_claim["metadata"]["resourceVersion"]
                if admit is not None and not admitted:
                    try:  # only the caller that creates counts against the limits
                        admit(request)
                    except BaseException:
                        with contextlib.suppress(StoreError):
                            self._secrets.delete(claim_name, claim_version)
                        raise
                    # Counting took calls of its own: stamp the claim again, so that its grace
                    # covers just the create below; a Conflict means it was taken over meanwhile.
                    try:
                        claim_version = self._secrets.patch_merge(
                            claim_name, _claim_patch(claim_version, request))["metadata"]["resourceVersion"]
                    except (Conflict, NotFound):
                        raise StoreUnavailable("a concurrent request for this email and model took over; "
                                               "try again") from None
                return self._create_request(request, claim_name, claim_version), True
            claim = self._secrets.read(claim_name)
            if claim is None:
                continue  # deleted since our create failed: try again

            meta = claim["metadata"]
            existing_id = (meta.get("annotations") or {}).get(CLAIM_REQUEST_ANNOTATION, "")
            existing = self.get(existing_id) if existing_id else None
            if existing is not None and not existing.finished:
                return existing, False
            if existing is not None and refuse is not None:
                refuse(existing)  # e.g. a denial that still stands: raises, and the claim stays
            if existing is None and not _claim_abandoned(meta, self._claim_grace):
                time.sleep(wait)  # the claim's writer is creating its request right now
                wait = min(wait * 2, 0.2)
                continue
            if admit is not None and not admitted:
                admit(request)  # may raise: the claim stays as it is
                admitted = True  # counted once, even when the takeover below loses a race
            try:  # finished or abandoned: take the claim over, guarded by its resourceVersion
                taken = self._secrets.patch_merge(claim_name, _claim_patch(meta["resourceVersion"], request))
            except (Conflict, NotFound):
                continue
            log.info("request %s replaces %s for the same email and model (%s)", request.id,
                     existing_id or "an abandoned claim", existing.state if existing else "missing",
                     extra=logfields.fields(request_id=request.id))
            return self._create_request(request, claim_name, taken["metadata"]["resourceVersion"]), True
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
        secret = self._secrets.replace_guarded(
            name, lambda current: codec.to_secret(request, base=current), request.resource_version,
            current=self._recalled(name, request.resource_version), what=f"request {request.id}")
        return self._decode(secret)

    def list(self, states: Iterable[State] = (), limit: int | None = None,
             continue_token: str | None = None, unsettled_only: bool = False) -> tuple[list[KeyRequest], str | None]:
        return self._page(codec.request_selector(tuple(states), unsettled_only), limit, continue_token)

    def list_due(self, days: tuple[str, ...], limit: int | None = None,
                 continue_token: str | None = None) -> tuple[builtins.list[KeyRequest], str | None]:
        return self._page(codec.due_selector(days), limit, continue_token)

    def _page(self, selector: str, limit: int | None,
              continue_token: str | None) -> tuple[builtins.list[KeyRequest], str | None]:
        secrets, token = self._secrets.list(selector, limit, continue_token)
        items = []
        for secret in secrets:
            try:
                items.append(self._decode(secret))
            except InvalidRecordError as exc:
                log.warning("skipping unreadable request Secret: %s", exc)
        return items, token

    # --- helpers ----------------------------------------------------------------------------

    def _create_request(self, request: KeyRequest, claim_name: str, claim_version: str) -> KeyRequest:
        name = codec.request_name(request.id)
        try:
            secret = self._secrets.create(codec.to_secret(request))
        except StoreError as exc:
            if isinstance(exc, (StoreUnavailable, Conflict)):
                # A timeout or a lost answer: the apiserver may have stored it all the same. Look
                # before undoing the claim, so no stored request is left without its claim.
                try:
                    stored = self._secrets.read(name)
                except StoreError:
                    raise exc from None  # keep the claim: it names the request, stored or not (grace)
                if stored is not None:
                    log.info("request %s was stored although its create failed (%s)", request.id, exc)
                    return self._decode(stored)
            # Leave no claim pointing at nothing, and delete it only as we wrote it; if this fails
            # too, the claim counts as abandoned after its grace period.
            with contextlib.suppress(StoreError):
                self._secrets.delete(claim_name, claim_version)
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
                            CLAIM_TIME_ANNOTATION: datetime.now(UTC).isoformat()},
        },
    }


def _claim_patch(resource_version: str, request: KeyRequest) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": resource_version,
                         "annotations": {CLAIM_REQUEST_ANNOTATION: request.id,
                                         CLAIM_TIME_ANNOTATION: datetime.now(UTC).isoformat()}}}


def _claim_abandoned(meta: dict[str, Any], grace: timedelta = CLAIM_GRACE) -> bool:
    stamp = (meta.get("annotations") or {}).get(CLAIM_TIME_ANNOTATION)
    try:
        claimed = datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        claimed = None
    return claimed is None or datetime.now(UTC) - claimed > grace
