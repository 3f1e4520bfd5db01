"""Bounded storage: what the service no longer needs is deleted, so a script cannot fill etcd.

The daily `retention_timer` deletes every finished request (denied, revoked, failed, expired:
settled, holding no access) `requests.retention_days` after its last change, each after an
`audit:` line naming it, and the intake counters of past windows. It pages through the lists
(`limit`/`continue`), so its memory does not grow with what is stored, and it stops taking new
pages when its time budget is spent: the next day goes on. A request changed while the sweep looked
at it is left alone (the delete carries the resourceVersion it read).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from shared.domain.request import FINISHED_STATES, KeyRequest, utcnow
from shared.domain.request_steps import holds_access
from shared.services.ports import Conflict, InvalidArgument, RequestStore

log = logging.getLogger(__name__)
audit = logging.getLogger("shared.audit")

PAGE_SIZE = 500
FINISHED = tuple(sorted(FINISHED_STATES, key=lambda s: s.value))


@dataclasses.dataclass
class RetentionReport:
    examined: int = 0
    deleted: int = 0
    held: int = 0  # finished, old enough, but still holding access (a revoke that failed)
    limits_deleted: int = 0
    archived: int = 0  # finished requests found in the request namespace and moved to the archive
    pages: int = 0
    complete: bool = True  # False: the budget ran out before the last page

    def summary(self) -> str:
        return (f"{self.examined} finished requests examined, {self.deleted} deleted, {self.held} kept "
                f"(access not revoked), {self.archived} moved to the archive, {self.limits_deleted} stale counters "
                f"deleted, {self.pages} pages"
                + ("" if self.complete else "; budget spent, the rest waits for the next run"))


def expired(request: KeyRequest, cutoff: datetime) -> bool:
    """Finished, its work done, and last changed before `cutoff`."""
    return request.finished and request.settled == request.state and request.updated_at < cutoff


def sweep(store: RequestStore, retention_days: int | None, *, now: datetime | None = None,
          budget_seconds: float = 240.0, page_size: int = PAGE_SIZE,
          monotonic: Callable[[], float] = time.monotonic) -> RetentionReport:
    now = now or utcnow()
    report = RetentionReport()
    deadline = monotonic() + budget_seconds
    if retention_days is not None:
        cutoff = now - timedelta(days=retention_days)
        _requests(store, cutoff, retention_days, report, page_size, lambda: monotonic() > deadline)
    _limits(store, now, report, page_size, lambda: monotonic() > deadline)
    log.info("retention: %s", report.summary())
    return report


def _requests(store: RequestStore, cutoff: datetime, days: int, report: RetentionReport, page_size: int,
              spent: Callable[[], bool]) -> None:
    token: str | None = None
    while True:
        if spent():
            report.complete = False
            return
        try:
            page, token = store.list(FINISHED, limit=page_size, continue_token=token)
        except InvalidArgument:  # the continue token outlived the apiserver's compaction: start over
            log.info("retention: the list's continue token expired; starting the list again")
            page, token = store.list(FINISHED, limit=page_size)
        report.pages += 1
        for request in page:
            report.examined += 1
            if not expired(request, cutoff):
                _archive_leftover(store, request, report)
                continue
            if holds_access(request) or request.deleting:
                report.held += 1
                log.warning("retention: request %s (%s) is older than %d days but may still hold access; "
                            "kept", request.id, request.state.value, days)
                continue
            _delete(store, request, days, report)
        if not token:
            return


def _archive_leftover(store: RequestStore, request: KeyRequest, report: RetentionReport) -> None:
    """A finished request still in the request namespace (stored before the archive existed, or
    its move was cut short): moved now, so the sweeps stop reading it."""
    if request.archived:
        return
    try:  # the store moves only what is done with (shared/store/requests.py)
        if store.archive(request).archived:
            report.archived += 1
    except Conflict:
        pass  # changed since it was read: the next run looks again


def _delete(store: RequestStore, request: KeyRequest, days: int, report: RetentionReport) -> None:
    audit.info("audit: retention deletes request %s (%s, model %s, last changed %s, more than %d days ago)",
               request.id, request.state.value, request.model, request.updated_at.isoformat(), days)
    try:
        if store.delete(request):
            report.deleted += 1
    except Conflict:
        log.info("retention: request %s changed since it was read; kept", request.id)


def _limits(store: RequestStore, now: datetime, report: RetentionReport, page_size: int,
            spent: Callable[[], bool]) -> None:
    today = now.strftime("%Y-%m-%d")  # a counter of yesterday's window, or older, counts nothing now
    token: str | None = None
    while not spent():
        try:
            deleted, token = store.delete_stale_limits(today, page_size, token)
        except InvalidArgument:
            deleted, token = store.delete_stale_limits(today, page_size)
        report.limits_deleted += deleted
        report.pages += 1
        if not token:
            return
    report.complete = False


__all__ = ["RetentionReport", "expired", "sweep"]
