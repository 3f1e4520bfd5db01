"""Use cases of reviewers and admins: list and read requests, approve, deny, revoke, and move a
request between the two undecided states (back to the rules, or to a human).

A decision is a resourceVersion-guarded write of the new state; on a conflict (the timer or
another reviewer wrote first) it re-reads and decides again, so approving a request that is
already decided is refused (AlreadyDecided), never a silent re-issue. The timer does the work
that follows (provisioning, revoking, emails) on its next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from shared import logfields
from shared.domain import request_steps
from shared.domain.request import KeyRequest, State, is_request_id, utcnow
from shared.services.ports import Conflict, NotFound, RequestStore

log = logging.getLogger("shared.audit")

DECIDABLE = frozenset({State.PENDING, State.IN_REVIEW})
REVOCABLE = frozenset({State.APPROVED, State.ACTIVE})
# set_pending hands a request waiting for a human back to the rules (say, after an approval
# webhook that was down sent it to review); set_review holds a pending one for a human.
_TARGET = {"approve": (State.APPROVED, DECIDABLE), "deny": (State.DENIED, DECIDABLE),
           "revoke": (State.REVOKING, REVOCABLE),
           "set_pending": (State.PENDING, frozenset({State.IN_REVIEW})),
           "set_review": (State.IN_REVIEW, frozenset({State.PENDING}))}
PAST = {"approve": "approved", "deny": "denied", "revoke": "revoked", "set_pending": "returned to pending",
        "set_review": "sent to review"}
# The `decision` each action records (revoke keeps the one that granted access; pending has none).
_DECISION = {"approve": "approve", "deny": "deny", "set_pending": None, "set_review": "review"}


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


def act(store: RequestStore, request_id: str, action: str, who: str, reason: str | None, *,
        only_from: frozenset[State] | None = None,
        before: Callable[[KeyRequest], Mapping[str, object]] | None = None,
        now: datetime | None = None) -> KeyRequest:
    """Approve, deny, revoke, set_pending or set_review, recording who, when and why.

    `only_from` narrows the states the action applies to (a requester revokes only an active key);
    `before` sees each fresh read before the state is checked, may refuse by raising, and returns
    further changes for the same guarded write (the requester link's token id, shared/services/lifecycle.py)."""
    target, allowed = _TARGET[action]
    if only_from is not None:
        allowed = allowed & only_from
    for _ in range(5):
        request = get(store, request_id)
        extra = dict(before(request)) if before is not None else {}
        if request.state not in allowed:
            raise AlreadyDecided(request, action)
        moment = now or utcnow()
        # The lease goes too: a processor working on the old state fails its next guarded write.
        # Whatever it was issuing may still reach the backend; cleanup must look for it.
        changes: dict[str, object] = {"reason": reason or f"{PAST[action]} by {who}", "decided_by": who,
                                      "decided_at": moment, "last_error": None, "lease_holder": None,
                                      "lease_until": None, **extra}
        if action in _DECISION:
            changes["decision"] = _DECISION[action]
        if request.lease_holder is not None and request.lease_until is not None:
            changes["references"] = request_steps.with_in_flight(request, max(request.lease_until, moment))
        try:
            updated = store.update(request.enter(target, moment, **changes))
        except Conflict:
            continue  # written since we read it: look again
        log.info("audit: %s %s request %s (%s, %s): %s", who, PAST[action], request.id, request.model,
                 request.state.value, changes["reason"], extra=logfields.fields(request_id=request.id))
        return updated
    raise Conflict(f"request {request_id} keeps changing; try again")
