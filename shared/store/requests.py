"""Key requests kept as Kubernetes Secrets, one per request: the unfinished ones in the request
namespace, the finished ones in its archive namespace.

Reads on the HTTP path go by name, so their cost does not grow with what is stored; only the
timer's sweeps and the admin list use label selectors, and the sweeps only ever list the request
namespace. Every update carries the object's resourceVersion, so two writers never both win.

A new request is one apiserver write: its name is derived from the mailbox, the model and a
generation (shared/store/request_ids.py), so the create itself settles a duplicate: one caller
creates, every concurrent one gets 409 and reads the winner's request. A pair asks again once its
request is finished: the next generation.

Finished requests whose work is done (denied, revoked, failed, expired; settled) move to the
archive namespace (`KUBERNETES_ARCHIVE_NAMESPACE`, default `<namespace>-archive`), so what the
sweeps read does not grow with history (an apiserver list reads every Secret of a namespace from
etcd, whatever its label selector). Without that namespace they stay where they are, as before.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from shared import logfields
from shared.domain.blocks import Block, BlockKind
from shared.domain.request import FINISHED_STATES, KeyRequest, State
from shared.domain.request_steps import holds_access
from shared.services.ports import Conflict, NotFound, StoreError, StoreUnavailable
from shared.store import codec
from shared.store.blocks import KubernetesBlockStore
from shared.store.legacy_claims import LegacyClaims
from shared.store.limits import KubernetesLimitStore
from shared.store.request_ids import RequestIds
from shared.store.secrets import SecretsGateway

log = logging.getLogger(__name__)

HEALTH_PROBE_NAME = "llm-key-requestor-health-probe"
ARCHIVE_SUFFIX = "-archive"
# A continue token of the admin list that points into the archive namespace (after the request one).
ARCHIVE_TOKEN = "archive:"
# Request Secrets last read or written, so an update of what we just saw needs no second read.
RECENT_MAX = 2048
# Generations one pair may have stored (the per-day limit and retention keep it far below).
MAX_GENERATIONS = 1000


class InvalidRecordError(StoreError):
    """A stored Secret cannot be read as a request; the message says which and why."""


class KubernetesRequestStore:
    def __init__(self, api_client: Any, namespace: str, timeout_seconds: float = 10.0,
                 archive_namespace: str | None = None) -> None:
        self._secrets = SecretsGateway(api_client, namespace, timeout_seconds)
        self._archive = SecretsGateway(api_client, archive_namespace or namespace + ARCHIVE_SUFFIX, timeout_seconds)
        self._archive_missing = False  # its namespace does not exist: finished requests stay put
        self._ids = RequestIds(self._secrets)
        self._claims = LegacyClaims(self._secrets, lambda: self._ids.legacy)
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
        name = codec.request_name(request_id)
        secret = self._secrets.read(name)
        if secret is not None:
            return self._decode(secret)
        archived = self._read_archive(name)
        return None if archived is None else self._decode(archived, archived=True)

    def find_block(self, keys: Iterable[tuple[BlockKind, str]]) -> Block | None:
        return self._blocks.find(keys)

    def take_limit(self, scope: str, window: str, per_window: int | None, *, request_id: str | None = None,
                   max_open: int | None = None) -> str | None:
        return self._limits.take(scope, window, per_window, request_id=request_id, max_open=max_open,
                                 is_open=self._is_open)

    def submit(self, request: KeyRequest, refuse: Callable[[KeyRequest], None] | None = None,
               admit: Callable[[KeyRequest], None] | None = None) -> tuple[KeyRequest, bool]:
        """The pair's unfinished request, or a new one (its next generation) and True.

        `refuse(finished)` sees the pair's finished requests on the way and may raise (a denial that
        still stands); `admit(new)` runs once this caller has created the request and may raise (a
        limit): the request is deleted again, as it was written."""
        mailbox, model = request.mailbox, request.model  # two spellings of one mailbox: one pair
        legacy = self._legacy(mailbox, model)
        if legacy is not None and not legacy.finished:
            return legacy, False
        if legacy is not None and refuse is not None:
            refuse(legacy)
        deadline = time.monotonic() + 5.0
        generation = 0
        while generation < MAX_GENERATIONS and time.monotonic() < deadline:
            request_id = self._ids.request_id(mailbox, model, generation)
            name = codec.request_name(request_id)
            archived = self._read_archive(name)
            if archived is not None:
                if refuse is not None:
                    refuse(self._decode(archived, archived=True))
                generation += 1
                continue
            candidate = dataclasses.replace(request, id=request_id, generation=generation)
            try:
                created = self._create(candidate)
            except Conflict:
                existing = self.get(request_id)
                if existing is None:
                    continue  # deleted since: try the same generation again
                if not existing.finished:
                    return existing, False
                if refuse is not None:
                    refuse(existing)
                generation += 1
                continue
            if created.created_at != candidate.created_at:
                return created, False  # a lost answer: the one stored is a concurrent caller's
            self._admit(created, admit)
            if generation:
                log.info("request %s is generation %d of its mailbox and model", created.id, generation,
                         extra=logfields.fields(request_id=created.id))
            return created, True
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
        gateway = self._archive if request.archived else self._secrets
        secret = gateway.replace_guarded(
            name, lambda current: codec.to_secret(request, base=current), request.resource_version,
            current=self._recalled(name, request.resource_version, request.archived), what=f"request {request.id}")
        return self._decode(secret, archived=request.archived)

    def archive(self, request: KeyRequest) -> KeyRequest:
        """Move a finished request whose work is done to the archive namespace (a copy there, then
        the original deleted as it was read). A crash between the two leaves both: the original is
        moved again by the retention sweep. Without an archive namespace, nothing moves."""
        if request.archived or self._archive_missing or not _archivable(request):
            return request
        name = codec.request_name(request.id)
        base = self._recalled(name, request.resource_version or "", False)
        body = codec.to_secret(dataclasses.replace(request, resource_version=None), base=base)
        body["metadata"].pop("finalizers", None)
        try:
            copy = self._archive.create(body)
        except Conflict:  # copied before, and the original was not deleted then: copy again
            copy = self._archive.replace(name, body)
        except NotFound:
            self._archive_missing = True
            log.warning("the archive namespace %s does not exist: finished requests stay in %s, where the "
                        "timer's sweeps read them (infra/kubernetes/namespace.yaml creates it)",
                        self._archive.namespace, self.namespace)
            return request
        try:
            self._secrets.delete(name, request.resource_version)
        except Conflict:
            log.info("request %s changed while it was archived; the retention sweep moves it again", request.id)
        self._forget(name)
        return self._decode(copy, archived=True)

    def list(self, states: Iterable[State] = (), limit: int | None = None,
             continue_token: str | None = None, unsettled_only: bool = False) -> tuple[list[KeyRequest], str | None]:
        """Requests in `states`, the request namespace first and then, for finished states, the
        archive (a token starting with `archive:` continues there); `unsettled_only` requests are
        never archived, so it reads the request namespace only."""
        states = tuple(states)
        selector = codec.request_selector(states, unsettled_only)
        wants_archive = not unsettled_only and (not states or any(s in FINISHED_STATES for s in states))
        if continue_token and continue_token.startswith(ARCHIVE_TOKEN):
            return self._archive_page(selector, limit, continue_token.removeprefix(ARCHIVE_TOKEN) or None)
        items, token = self._page(selector, limit, continue_token)
        if token or not wants_archive:
            return items, token
        room = None if limit is None else limit - len(items)
        if room == 0:
            return items, ARCHIVE_TOKEN  # the archive follows on the next page
        more, archive_token = self._archive_page(selector, room, None)
        return items + more, archive_token

    def list_due(self, days: tuple[str, ...], limit: int | None = None,
                 continue_token: str | None = None) -> tuple[builtins.list[KeyRequest], str | None]:
        return self._page(codec.due_selector(days), limit, continue_token)

    def delete(self, request: KeyRequest) -> bool:
        """Delete a finished request as it was read (Conflict if it changed since), and the claim
        that named it (the layout before). False when it was gone, or when it stays because its
        pair has a later generation: a new request finds that one through this one (so retention
        deletes a pair's requests newest first)."""
        if request.resource_version is None:
            raise ValueError("delete needs a request read from the store")
        if request.generation is not None:
            later = codec.request_name(self._ids.request_id(request.mailbox, request.model, request.generation + 1))
            if self._secrets.read(later) is not None or self._read_archive(later) is not None:
                return False
        name = codec.request_name(request.id)
        gone = (self._archive if request.archived else self._secrets).delete(name, request.resource_version)
        self._claims.forget(request.mailbox, request.model, request.id)
        self._forget(name)
        return gone

    def delete_stale_limits(self, today: str, limit: int = 500,
                            continue_token: str | None = None) -> tuple[int, str | None]:
        """One page of the intake counters: those of past windows that remember no open request go."""
        return self._limits.delete_stale(today, self._is_open, limit, continue_token)

    def list_deleted(self) -> builtins.list[KeyRequest]:
        """Requests that may hold access and whose Secret was deleted (their finalizer holds them)."""
        found, token = [], None
        while True:
            page, token = self._page(codec.holders_selector(), 500, token)
            found += [r for r in page if r.deleting]
            if not token:
                return found

    def _page(self, selector: str, limit: int | None,
              continue_token: str | None) -> tuple[builtins.list[KeyRequest], str | None]:
        secrets, token = self._secrets.list(selector, limit, continue_token)
        return self._decode_all(secrets, archived=False), token

    def _archive_page(self, selector: str, limit: int | None,
                      continue_token: str | None) -> tuple[builtins.list[KeyRequest], str | None]:
        if self._archive_missing:
            return [], None
        secrets, token = self._archive.list(selector, limit, continue_token)
        return self._decode_all(secrets, archived=True), (ARCHIVE_TOKEN + token) if token else None

    def _decode_all(self, secrets: builtins.list[dict[str, Any]], archived: bool) -> builtins.list[KeyRequest]:
        items = []
        for secret in secrets:
            try:
                items.append(self._decode(secret, archived=archived))
            except InvalidRecordError as exc:
                log.warning("skipping unreadable request Secret: %s", exc)
        return items

    # --- helpers ----------------------------------------------------------------------------

    def _is_open(self, request_id: str) -> bool:
        found = self.get(request_id)
        return found is not None and not found.finished

    def _legacy(self, mailbox: str, model: str) -> KeyRequest | None:
        """The pair's request stored before keyed ids, that its claim names (if claims are stored)."""
        request_id = self._claims.request_id(mailbox, model)
        return self.get(request_id) if request_id else None

    def _create(self, request: KeyRequest) -> KeyRequest:
        """Create the request's Secret; Conflict when its name is taken. A create whose answer was
        lost (a timeout) may have been stored all the same: it is read back before giving up."""
        name = codec.request_name(request.id)
        try:
            return self._decode(self._secrets.create(codec.to_secret(request)))
        except StoreUnavailable as exc:
            try:
                stored = self._secrets.read(name)
            except StoreError:
                raise exc from None
            if stored is None:
                raise
            log.info("request %s was stored although its create failed (%s)", request.id, exc)
            return self._decode(stored)

    def _admit(self, created: KeyRequest, admit: Callable[[KeyRequest], None] | None) -> None:
        """Count the new request against the limits; over one, it is deleted again as written."""
        if admit is None:
            return
        try:
            admit(created)
        except BaseException:
            with contextlib.suppress(StoreError):
                self._secrets.delete(codec.request_name(created.id), created.resource_version)
            raise

    def _read_archive(self, name: str) -> dict[str, Any] | None:
        return None if self._archive_missing else self._archive.read(name)

    def _decode(self, secret: dict[str, Any], archived: bool = False) -> KeyRequest:
        try:
            request = codec.from_secret(secret)
        except codec.InvalidRecord as exc:
            raise InvalidRecordError(str(exc)) from None
        if archived:
            request = dataclasses.replace(request, archived=True)
        key = _recent_key(secret["metadata"]["name"], archived)
        with self._recent_lock:
            self._recent[key] = secret
            self._recent.move_to_end(key)
            if len(self._recent) > RECENT_MAX:
                self._recent.popitem(last=False)
        return request

    def _recalled(self, name: str, resource_version: str, archived: bool) -> dict[str, Any] | None:
        with self._recent_lock:
            secret = self._recent.get(_recent_key(name, archived))
        if secret is not None and secret["metadata"].get("resourceVersion") == resource_version:
            return secret
        return None

    def _forget(self, name: str) -> None:
        with self._recent_lock:
            self._recent.pop(_recent_key(name, False), None)


def _recent_key(name: str, archived: bool) -> str:
    return ("archive/" if archived else "") + name


def _archivable(request: KeyRequest) -> bool:
    """Finished, its work done, holding nothing: the timer has nothing more to do with it."""
    return (request.finished and request.settled == request.state and not holds_access(request)
            and not request.deleting)
