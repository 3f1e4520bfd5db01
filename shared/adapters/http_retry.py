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
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

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


def parse_retry_after(value: str | None,
                      now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


def with_retries(attempt: Callable[[], T], what: str, *, retries: int = QUICK_RETRIES,
                 max_wait: float = MAX_INLINE_WAIT, sleep: Callable[[float], None] = time.sleep,
                 draw: Callable[[float, float], float] = random.uniform) -> T:
    """Run `attempt`, trying again up to `retries` times while it raises Retryable and the wait
    (its Retry-After, else a short jittered backoff) is at most `max_wait` seconds. The error
    raised in the end says whether any try may have reached the backend (`reached`)."""
    tries = 0
    # Whether any try may have reached the backend, or may still be running there.
    reached = in_flight = False
    while True:
        try:
            return attempt()
        except Retryable as exc:
            error = exc.error
            reached, in_flight = reached or error.reached, in_flight or error.in_flight
            wait = error.retry_after
            if wait is None:
                wait = BASE_DELAY * (2 ** tries) * draw(0.5, 1.5)
            if wait > max_wait or tries >= retries:
                message = error.message if wait > max_wait else f"{error.message} ({tries + 1} tries)"
                raise TransientError(message, error.retry_after, reached, in_flight) from None
            tries += 1
            # The message names the call already (`what`); the engine binds the request id.
            message = error.message if error.message.startswith(what) else f"{what}: {error.message}"
            log.info("%s; try %d of %d in %.1f s", message, tries + 1, retries + 1, wait)
            sleep(wait)
        except TransientError as exc:
            if (reached and not exc.reached) or (in_flight and not exc.in_flight):
                raise TransientError(exc.message, exc.retry_after, reached or exc.reached,
                                     in_flight or exc.in_flight) from None
            raise
