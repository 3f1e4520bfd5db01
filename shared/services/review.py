"""Use cases of reviewers and admins: list and read requests, approve, deny, revoke.

A decision is a resourceVersion-guarded write of the new state; on a conflict (the timer or
another reviewer wrote first) it re-reads and decides again, so approving a request that is
already decided is refused (AlreadyDecided), never a silent re-issue. The timer does the work
that follows (provisioning, revoking, emails) on its next tick.
"""

from __future__ import annotations

import logging

from shared.domain.request import KeyRequest, State, is_request_id, utcnow
from shared.services.ports import Conflict, NotFound, RequestStore

log = logging.getLogger("shared.audit")

DECIDABLE = frozenset({State.PENDING, State.IN_REVIEW})
REVOCABLE = frozenset({State.APPROVED, State.ACTIVE})
_TARGET = {"approve": (State.APPROVED, DECIDABLE), "deny": (State.DENIED, DECIDABLE),
           "revoke": (State.REVOKING, REVOCABLE)}
PAST = {"approve": "approved", "deny": "denied", "revoke": "revoked"}


class AlreadyDecided(Exception):
    """The request is not in a state this action applies to."""

    def __init__(self, request: KeyRequest, action: str) -> None:
        super().__init__(f"request {request.id} is {request.state.value}; it cannot be {PAST[action]} now")
        self.request = request


def get(store: RequestStore, request_id: str) -> KeyRequest:
    request = store.get(request_id) if is_request_id(request_id) else None
    if request is None:
        raise NotFound(f"no request {request_id}")
    return request


def act(store: RequestStore, request_id: str, action: str, who: str, reason: str | None) -> KeyRequest:
    """Approve, deny or revoke, recording who, when and why."""
    target, allowed = _TARGET[action]
    for _ in range(5):
        request = get(store, request_id)
        if request.state not in allowed:
            raise AlreadyDecided(request, action)
        now = utcnow()
        # The lease goes too: a processor working on the old state fails its next guarded write.
        changes = {"reason": reason or f"{PAST[action]} by {who}", "decided_by": who, "decided_at": now,
                   "last_error": None, "lease_holder": None, "lease_until": None}
        if action != "revoke":
            changes["decision"] = action
        try:
            updated = store.update(request.enter(target, now, **changes))
        except Conflict:
            continue  # written since we read it: look again
        log.info("audit: %s %s request %s (%s, %s): %s", who, PAST[action], request.id, request.model,
                 request.state.value, changes["reason"])
        return updated
    raise Conflict(f"request {request_id} keeps changing; try again")
