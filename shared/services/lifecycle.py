"""What a requester (through a link in an email) or an admin asks for an issued key: renew it,
rotate it, revoke it, or ask again for a key that expired. Ports only.

Each ask is one resourceVersion-guarded write that records the ask; the timer does the work on
its next tick (shared/domain/request_steps.py), as after an admin's decision. A link's token id is
recorded in `links_used` in that same write, so a link acts once even when two clicks race: the
second write conflicts, re-reads, and finds the token used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from shared import logfields
from shared.config import AppConfig
from shared.domain import request_steps
from shared.domain.links import ACTIONS, Action
from shared.domain.request import KeyRequest, State
from shared.services import intake, review
from shared.services.ports import Conflict, RequestStore

log = logging.getLogger("shared.audit")

# Who a requester is when acting through a link in an email (`decided-by` of a revoke,
# `lifecycle-requested-by` of a renewal or rotation): the processor tells the admins of a revoke by it.
REQUESTER = request_steps.REQUESTER  # decided-by of an action the requester took by a link

# A used token id is kept long enough to outlive any link that could carry it (LINK_TTL_DAYS is at
# most 365), then dropped, so `links_used` stays bounded.
USED_LINK_MEMORY = timedelta(days=366)

PAST: Mapping[str, str] = {"renew": "asked to renew", "rotate": "asked to rotate", "revoke": "revoked",
                           "request-again": "asked again for"}
_VERB = {"renew": "renewed", "rotate": "rotated", "revoke": "revoked", "request-again": "asked for again"}
_WHAT = {"renew": "a renewal", "rotate": "a rotation"}


class NotActive(review.AlreadyDecided):
    """Only an active key can be renewed, rotated or revoked by its requester; this one is not."""

    def __init__(self, request: KeyRequest, action: str) -> None:
        Exception.__init__(self, f"request {request.id} is {request.state.value}; only an active key can be "
                                 f"{_VERB.get(action, action)}")
        self.request = request
        self.action = action


class InProgress(review.AlreadyDecided):
    """The same ask is already under way (a second rotation before the first one finished)."""

    def __init__(self, request: KeyRequest, action: str) -> None:
        Exception.__init__(self, f"request {request.id}: {_WHAT.get(action, action)} is already in progress")
        self.request = request
        self.action = action


class LinkUsed(Exception):
    """This link has acted before: each link acts once."""

    def __init__(self, request: KeyRequest, token_id: str) -> None:
        super().__init__(f"request {request.id}: this link was already used")
        self.request = request
        self.used_at = request.links_used.get(token_id)


def _check_unused(request: KeyRequest, token_id: str | None) -> None:
    if token_id is not None and token_id in request.links_used:
        raise LinkUsed(request, token_id)


def _links_used(request: KeyRequest, token_id: str | None, now: datetime) -> dict[str, object]:
    """The change that records `token_id` as used (and forgets entries no link can still carry)."""
    if token_id is None:
        return {}
    kept = {tid: when for tid, when in request.links_used.items() if when > now - USED_LINK_MEMORY}
    return {"links_used": {**kept, token_id: now}}


def ask(store: RequestStore, request_id: str, action: Action, who: str, now: datetime,
        token_id: str | None = None, *, config: AppConfig | None = None,
        reason: str | None = None) -> KeyRequest:
    """Record `action` on request `request_id`, asked by `who` (`link:requester`, `basic:<admin>`...).

    renew / rotate: an active request gets `renew_requested_at` / `rotate_requested_at` = now,
    `lifecycle_requested_by` = who and `due_at` = now (so the timer's next sweep takes it).
    revoke: an active request enters `revoking` (review.act, decided_by = who).
    request-again: a new request for the same email and model (intake.submit_request, with `config`);
    returns that request (or the unfinished one for the same pair), not the old one.

    Raises review NotFound, NotActive (409), InProgress (409: a second renewal or rotation before the
    first finished), LinkUsed (the token id was recorded before), InvalidInput (request-again for a
    model no longer in the catalog), Conflict after repeated races.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if action == "revoke":
        return _revoke(store, request_id, who, now, token_id, reason)
    if action == "request-again":
        if config is None:
            raise ValueError("request-again needs the app's config")
        return _request_again(store, config, request_id, who, now, token_id)
    asked = "renew_requested_at" if action == "renew" else "rotate_requested_at"
    for _ in range(5):
        request = review.get(store, request_id)
        _check_unused(request, token_id)
        if request.state != State.ACTIVE:
            raise NotActive(request, action)
        if getattr(request, asked) is not None:
            raise InProgress(request, action)
        changes = {asked: now, "lifecycle_requested_by": who, "due_at": now, **_links_used(request, token_id, now)}
        try:
            updated = store.update(request.with_changes(now, **changes))
        except Conflict:
            continue  # written since we read it: look again
        _audit(who, action, request, reason)
        return updated
    raise Conflict(f"request {request_id} keeps changing; try again")


def _revoke(store: RequestStore, request_id: str, who: str, now: datetime, token_id: str | None,
            reason: str | None) -> KeyRequest:
    def before(request: KeyRequest) -> Mapping[str, object]:
        _check_unused(request, token_id)
        return {"lifecycle_requested_by": who, **_links_used(request, token_id, now)}

    try:
        # review.act writes the audit line (who revoked which request).
        return review.act(store, request_id, "revoke", who, reason or f"revoked by {who}",
                          only_from=frozenset({State.ACTIVE}), before=before, now=now)
    except NotActive:
        raise
    except review.AlreadyDecided as exc:
        raise NotActive(exc.request, "revoke") from None


def _request_again(store: RequestStore, config: AppConfig, request_id: str, who: str, now: datetime,
                   token_id: str | None) -> KeyRequest:
    old = review.get(store, request_id)
    _check_unused(old, token_id)
    # Submit first, then record the token: submitting is idempotent (the unfinished request for the
    # same email and model comes back), so a crash or a race between the two asks for no second key.
    submitted = intake.submit_request(store, config, old.email, old.model)
    if token_id is not None:
        for _ in range(5):
            current = review.get(store, request_id)
            if token_id in current.links_used:
                break  # a concurrent click recorded it: the same new request came back to both
            try:
                store.update(current.with_changes(now, **_links_used(current, token_id, now)))
                break
            except Conflict:
                continue
    _audit(who, "request-again", old, None, f"-> request {submitted.request.id} "
                                            f"({'new' if submitted.created else 'already open'})")
    return submitted.request


def _audit(who: str, action: str, request: KeyRequest, reason: str | None, extra: str = "") -> None:
    log.info("audit: %s %s request %s (%s, %s)%s%s", who, PAST[action], request.id, request.model,
             request.state.value, f": {reason}" if reason else "", f" {extra}" if extra else "",
             extra=logfields.fields(request_id=request.id))
