"""What a key request needs next: a pure function of (request, now), no I/O.

The timer's engine asks `next_step` after every recorded step; the processor maps each named
step (`STEPS`) to the code that does it. Goals per state (the label is the source of truth; a
human may set it with kubectl):

  pending   -> decide by the rules: approved, denied or in-review
  in-review -> tell the reviewers, then wait for a human
  approved  -> for each backend: prepare (choose key and ids), issue; email the key -> active
  denied    -> take back what may have been issued, email the reason
  revoking  -> take back what may have been issued -> revoked
  failed    -> take back what may have been issued, tell the admins

What a backend may hold for a request is recorded in its references, so cleanup takes back only
what may exist: `{backend}-reached` is `no` after prepare (nothing sent), `maybe` once a call that
could create access went unanswered (timeout, crash), `yes` once the backend confirmed it;
absent on requests stored before it existed, which counts as `maybe`. `{backend}-sent-at` is when
the last unanswered call gave up: a backend may still complete it for a while after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta

from shared.domain import lifecycle
from shared.domain.lifecycle import Life
from shared.domain.request import KeyRequest, State

# The named steps, each done by one function of the processor (see STEPS there).
DECIDE = "decide"
NOTIFY_REVIEW = "notify-review"
MODEL_GONE = "model-gone"
PREPARE = "prepare"
ISSUE = "issue"
NOTIFY_APPROVED = "notify-approved"
REVOKE = "revoke"
FORGET = "forget"
ENTER_REVOKED = "enter-revoked"
ENTER_FAILED = "enter-failed"
NOTIFY_DENIED = "notify-denied"
NOTIFY_FAILED = "notify-failed"
NOTIFY_REVOKED = "notify-revoked"
SETTLE = "settle"

STEP_NAMES = (DECIDE, NOTIFY_REVIEW, MODEL_GONE, PREPARE, ISSUE, NOTIFY_APPROVED, REVOKE, FORGET,
              ENTER_REVOKED, ENTER_FAILED, NOTIFY_DENIED, NOTIFY_FAILED, NOTIFY_REVOKED, SETTLE,
              *lifecycle.STEP_NAMES)
PER_BACKEND = frozenset({PREPARE, ISSUE, REVOKE, FORGET, lifecycle.EXTEND, lifecycle.PREPARE_ROTATION,
                         lifecycle.ROTATE, lifecycle.RETIRE})
# Who a self-service action (a link in an email) is recorded as (decided-by): the admins are told
# of a revoke the requester made.
REQUESTER = "link:requester"

# Reference names, per backend.
REACHED_NO, REACHED_MAYBE, REACHED_YES = "no", "maybe", "yes"


def prepared_ref(backend: str) -> str:
    return f"{backend}-prepared"


def reached_ref(backend: str) -> str:
    return f"{backend}-reached"


def sent_at_ref(backend: str) -> str:
    return f"{backend}-sent-at"


def revoke_failed_ref(backend: str) -> str:
    return f"{backend}-revoke-failed"


def issued_step(backend: str) -> str:
    return f"{backend}-issued"


@dataclasses.dataclass(frozen=True)
class Next:
    step: str
    backend: str | None = None
    days: int = 0  # a reminder's days before the expiry

    @property
    def name(self) -> str:
        return f"{self.step}:{self.backend}" if self.backend else self.step


def prepared_backends(request: KeyRequest) -> list[str]:
    """Backends this request has recorded access for (prepared: issue may have run)."""
    return sorted(ref.removesuffix("-prepared") for ref, value in request.references.items()
                  if ref.endswith("-prepared") and value == "true")


def holds_access(request: KeyRequest) -> bool:
    """Whether anything may have been issued for this request and not yet taken back: while it
    does, its Secret carries a finalizer, so deleting it by hand revokes that access first."""
    return bool(prepared_backends(request))


def may_hold(request: KeyRequest, backend: str) -> bool:
    """Whether the backend may hold access for this request (a call that never connected issued nothing)."""
    return request.references.get(reached_ref(backend), REACHED_MAYBE) != REACHED_NO


def in_flight_until(request: KeyRequest, backend: str, window_seconds: float) -> datetime | None:
    """Until when a create call for `backend` that went unanswered may still complete."""
    sent = request.references.get(sent_at_ref(backend))
    if not sent or request.references.get(reached_ref(backend)) == REACHED_NO:
        return None
    return datetime.fromisoformat(sent) + timedelta(seconds=window_seconds)


def revoke_failures(request: KeyRequest) -> dict[str, str]:
    return {backend: request.references[revoke_failed_ref(backend)] for backend in prepared_backends(request)
            if revoke_failed_ref(backend) in request.references}


def next_step(request: KeyRequest, backends: tuple[str, ...] | None, now: datetime,
              life: Life = lifecycle.DEFAULT_LIFE) -> Next | None:
    """The next step for `request`, or None when its state's work is done for now.

    `backends` are the model's backends from the catalog (None: the model is no longer in it).
    """
    if request.deleting:
        return _deleted(request)
    state = request.state
    if state == State.ACTIVE:  # settled once delivered; its life is driven by due_at, not by settled
        due = lifecycle.next_step(request, _live_backends(request, backends), now, life)
        return Next(due.step, due.backend or None, due.days) if due else None
    if request.settled == state:
        return None
    if state == State.PENDING:
        return Next(DECIDE)
    if state == State.IN_REVIEW:
        return Next(SETTLE) if request.done("notified-review") else Next(NOTIFY_REVIEW)
    if state == State.APPROVED:
        return _provisioning(request, backends)
    if state in (State.DENIED, State.REVOKING, State.FAILED, State.EXPIRED):
        return _cleanup(request)
    return None  # revoked: nothing to do


def _live_backends(request: KeyRequest, backends: tuple[str, ...] | None) -> tuple[str, ...]:
    """The backends an active key lives in: the catalog's, or what is recorded if the model left it."""
    return backends if backends is not None else tuple(prepared_backends(request))


def _provisioning(request: KeyRequest, backends: tuple[str, ...] | None) -> Next:
    if backends is None:
        return Next(MODEL_GONE)
    if request.renew_requested_at is not None:  # a renewal an admin approved: the same key, extended
        due = lifecycle.renewal(request, backends)
        return Next(due.step, due.backend or None)
    for backend in backends:
        if request.references.get(prepared_ref(backend)) != "true":
            return Next(PREPARE, backend)
        if not request.done(issued_step(backend)):
            return Next(ISSUE, backend)
    return Next(NOTIFY_APPROVED)


def revoke_left(request: KeyRequest) -> bool:
    """Whether a deleted request still has a revoke to try (one that failed for good is not retried:
    the Secret stays Terminating for an operator, and the sweep leaves it alone)."""
    failures = revoke_failures(request)
    return any(backend not in failures for backend in prepared_backends(request))


def _deleted(request: KeyRequest) -> Next | None:
    """A Secret deleted by hand: take back what may have been issued, whatever its state; the write
    that records the last revoke drops the finalizer, and the apiserver removes the Secret. A revoke
    that failed for good keeps it (Terminating, with last-error) for an operator to look at."""
    failures = revoke_failures(request)
    for backend in prepared_backends(request):
        if backend not in failures:
            return Next(REVOKE, backend) if may_hold(request, backend) else Next(FORGET, backend)
    return None


def _cleanup(request: KeyRequest) -> Next:
    failures = revoke_failures(request)
    for backend in prepared_backends(request):
        if backend in failures:
            continue  # given up: recorded for the admins, never retried by itself
        return Next(REVOKE, backend) if may_hold(request, backend) else Next(FORGET, backend)
    if request.state == State.REVOKING:
        if request.decided_by == REQUESTER and not request.done("notified-revoked"):
            return Next(NOTIFY_REVOKED)  # the requester revoked it: the admins are told
        return Next(ENTER_FAILED) if failures else Next(ENTER_REVOKED)
    if request.state == State.EXPIRED:
        return Next(SETTLE) if request.done("notified-expired") else Next(lifecycle.NOTIFY_EXPIRED)
    if request.state == State.DENIED:
        if not request.done("notified-denied"):
            return Next(NOTIFY_DENIED)
        return Next(ENTER_FAILED) if failures else Next(SETTLE)
    if not request.done("notified-failed"):
        return Next(NOTIFY_FAILED)
    return Next(SETTLE)


HAND_DECISIONS = {State.APPROVED: "approve", State.DENIED: "deny"}
BY_HAND_REASON = "decided by hand with kubectl"


def hand_decision(request: KeyRequest, now: datetime) -> KeyRequest | None:
    """A decision made by labelling the Secret (`request-state=approved|denied`), recorded as one:
    who (kubectl), when, and why (the `llm-key-requestor/reason` annotation if it was set with the
    label, else a reason saying so). None when the state is the app's own decision."""
    decision = HAND_DECISIONS.get(request.state)
    if decision is None or request.decision == decision:
        return None
    reason = request.reason if request.reason_edited and request.reason else BY_HAND_REASON
    return request.enter(request.state, now, decision=decision, decided_by="kubectl", decided_at=now,
                         reason=reason, reason_edited=False)


def with_in_flight(request: KeyRequest, until: datetime) -> Mapping[str, str]:
    """References after a holder lost its lease mid-run (it died, or an admin took the request):
    any backend it was issuing, or rotating to a next key, may have been reached, until `until` at
    the latest (a create call still running there: cleanup looks for it again after that)."""
    references = dict(request.references)
    for backend in prepared_backends(request):
        rotating = (request.done(lifecycle.rotation_prepared_step(backend))
                    and not request.done(lifecycle.rotated_step(backend)))
        if references.get(reached_ref(backend)) == REACHED_YES:
            if not rotating:
                continue
        else:
            references[reached_ref(backend)] = REACHED_MAYBE
        previous = references.get(sent_at_ref(backend))
        if not previous or datetime.fromisoformat(previous) < until:
            references[sent_at_ref(backend)] = until.isoformat()
    return references
