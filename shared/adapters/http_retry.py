"""The in-call retry both provisioning adapters share: a few quick tries, Retry-After honoured.

A call waits in-line only briefly (the timer tick must finish well inside 30 s); a longer
Retry-After, or a failure that already took long (a timeout), goes straight back to the processor
as a TransientError carrying `retry_after`, and the processor reschedules the request.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from datetime import datetime, timezone
from typing import Callable, TypeVar

from shared.services.ports import TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

QUICK_RETRIES = 2
MAX_INLINE_WAIT = 5.0
BASE_DELAY = 0.2


class Retryable(Exception):
    """Raised by an attempt that may be tried again at once; carries the error to raise when
    no try is left. (An attempt raises a bare TransientError for failures not worth a quick retry.)"""

    def __init__(self, error: TransientError) -> None:
        super().__init__(error.message)
        self.error = error


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def with_retries(attempt: Callable[[], T], what: str, *, retries: int = QUICK_RETRIES,
                 max_wait: float = MAX_INLINE_WAIT) -> T:
    """Run `attempt`, trying again up to `retries` times while it raises Retryable and the wait
    (its Retry-After, else a short jittered backoff) is at most `max_wait` seconds."""
    tries = 0
    while True:
        try:
            return attempt()
        except Retryable as exc:
            error = exc.error
            wait = error.retry_after
            if wait is None:
                wait = BASE_DELAY * (2 ** tries) * random.uniform(0.5, 1.5)
            if wait > max_wait:
                raise error from None
            if tries >= retries:
                raise TransientError(f"{error.message} ({tries + 1} tries)", error.retry_after) from None
            tries += 1
            log.info("%s: %s; try %d of %d in %.1f s", what, error.message, tries + 1, retries + 1, wait)
            time.sleep(wait)
