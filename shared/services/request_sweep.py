"""What the approval timer reads each tick: the requests that may have work now.

Every list is of the request namespace only (finished requests whose work is done live in the
archive, shared/store/requests.py), a page at a time:

- requests that may hold access and whose Secret was deleted by hand (their keys go first), but
  not those whose revoke failed for good (they wait for an operator);
- `pending`, `approved`, `revoking`: always work to do;
- `in-review`, `denied`, `failed`, `expired` until their work is done (`request-settled`);
- `active` keys whose next lifecycle work (a reminder, the expiry, the end of a rotation's grace)
  falls on a day up to today (`request-due-day`), and whose moment has come.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from shared.domain import lifecycle
from shared.domain.request import KeyRequest, State
from shared.domain.request_steps import revoke_left
from shared.services.ports import RequestStore

# States whose requests always have work, and states whose work ends when they are settled.
ALWAYS_DUE = (State.PENDING, State.APPROVED, State.REVOKING)
DUE_UNTIL_SETTLED = (State.IN_REVIEW, State.DENIED, State.FAILED, State.EXPIRED)
PAGE_SIZE = 500
# Active keys are swept by the day their next lifecycle work falls on (codec.due_day), today and
# this many days back: a timer that was down for longer still finds them (a missed reminder is
# skipped, an expiry is not: see lifecycle.next_step).
DUE_DAYS_BACK = 90


def due(store: RequestStore, now: datetime) -> Iterator[KeyRequest]:
    """Each request that may have work now, once (a revoking request may also have been deleted)."""
    seen: set[str] = set()
    for request in _swept(store, now):
        if request.id not in seen:
            seen.add(request.id)
            yield request


def _swept(store: RequestStore, now: datetime) -> Iterator[KeyRequest]:
    yield from (r for r in store.list_deleted() if revoke_left(r))  # else nothing to do, tick after tick
    for state in ALWAYS_DUE + DUE_UNTIL_SETTLED:
        token = None
        while True:
            page, token = store.list([state], limit=PAGE_SIZE, continue_token=token,
                                     unsettled_only=state in DUE_UNTIL_SETTLED)
            yield from page
            if not token:
                break
    days = tuple(sorted({lifecycle.due_day(now - timedelta(days=n)) for n in range(DUE_DAYS_BACK + 1)}))
    token = None
    while True:
        page, token = store.list_due(days, limit=PAGE_SIZE, continue_token=token)
        yield from (r for r in page if r.due_at is not None and r.due_at <= now)  # its moment has come
        if not token:
            break
