"""One engine for the timer's work: recorded steps over any kind of record (requests, teams).

A `Flow` says what one kind of record needs (how to find the due ones, the next step of one,
its failure path); the engine does the rest the same way for every kind, like a Kubernetes
controller's work queue:

1. a lease by resourceVersion compare-and-swap, so two processors never work on one record
   at once; a crashed holder's lease runs out by itself;
2. the next step, run and recorded before the one after it; every recorded step renews the
   lease, the last one releases it in the same write; at most `max_steps` steps per record and
   tick, so a record that keeps finding work cannot hold a worker thread;
3. a transient error (`TransientError`) or an unexpected exception is an attempt: it is
   recorded with a backoff (exponential, jittered, at least the backend's Retry-After) and
   the lease released; after `max_attempts` the flow gives up on that step;
4. a permanent error (`PermanentError`) takes the flow's failure path at once. A step that
   fails twice in one run stops the run: the tick never spends its budget on the same hopeless
   record twice.

Time comes from an injected clock and randomness from an injected random source, so tests
assert on the planned delays instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Generic, Protocol, Self, TypeVar

from shared import logfields, telemetry
from shared.domain.request import utcnow
from shared.services import ticks
from shared.services.ports import BackendError, Conflict, NotFound, PermanentError, StoreError, TransientError
from shared.services.ticks import TickReport

log = logging.getLogger(__name__)
# The structured log field of each flow's records (shared/logfields.py).
_LOG_FIELD = {"request": logfields.REQUEST_ID, "team": logfields.TEAM}

# What became of one step.
DONE, RETRY, FAILED = "done", "retry", "failed"


class Record(Protocol):
    """What the engine reads and writes on every kind of record (read-only: records are frozen
    dataclasses, changed only through `with_changes`)."""

    @property
    def attempts(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def next_attempt_at(self) -> datetime | None: ...
    @property
    def lease_holder(self) -> str | None: ...
    @property
    def lease_until(self) -> datetime | None: ...

    def with_changes(self, now: datetime, **changes: object) -> Self: ...


R = TypeVar("R", bound=Record)


@dataclasses.dataclass(frozen=True)
class Step(Generic[R]):
    """One recorded step: `run` does its I/O and returns the record to write.

    `on_error` annotates the record before the engine records a failed try (e.g. "a create
    call may still be in flight at the backend"), so what a failure leaves behind is known.
    """

    name: str
    run: Callable[[R], R]
    on_error: Callable[[R, BackendError], R] | None = None


class Flow(Protocol[R]):
    """What the engine needs to know about one kind of record."""

    kind: str  # "request", "team": the first word of every log line about one

    def ident(self, record: R) -> str: ...

    def due(self) -> Iterable[R]:
        """The records that may have work now (the sweep); not-yet-due ones are skipped anyway."""

    def update(self, record: R) -> R:
        """Write the record, guarded by its resourceVersion (Conflict if stale)."""

    def on_lease(self, record: R, now: datetime) -> R:
        """Changes to record with the lease (e.g. a decision made by hand, found on the way in)."""

    def next_step(self, record: R, now: datetime) -> Step[R] | None: ...

    def fail(self, record: R, step: str, reason: str, now: datetime) -> R:
        """The failure path: `step` failed for good (a permanent error or too many attempts)."""

    def finish(self, record: R) -> str:
        """After the run (lease released): the outcome to count; may remove a finished record."""


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    concurrency: int = 8
    time_budget_seconds: float = 180.0
    lease_seconds: float = 120.0  # longer than the slowest step, with its timeouts and retries
    max_attempts: int = 6
    max_steps: int = 12
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 900.0
    holder: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")

    @classmethod
    def of(cls, options: object) -> EngineOptions:
        """The engine's share of a flow's options: each field of this class, by name."""
        return cls(**{field.name: getattr(options, field.name) for field in dataclasses.fields(cls)})


def retry_delay(attempts: int, base: float, cap: float, retry_after: float | None,
                draw: Callable[[float, float], float]) -> float:
    """Seconds before try `attempts + 1`: exponential from `base`, capped, jittered (so the retries
    of many records do not arrive together), never sooner than the backend's Retry-After."""
    delay = min(cap, base * 2 ** max(0, attempts - 1)) * draw(0.5, 1.0)
    return max(delay, retry_after) if retry_after else delay


class Engine(Generic[R]):
    def __init__(self, flow: Flow[R], options: EngineOptions, clock: Callable[[], datetime] = utcnow,
                 rng: random.Random | None = None) -> None:
        self.flow = flow
        self.options = options
        self.clock = clock
        self.rng = rng or random.Random()
        self._deadline = float("inf")  # set by run_tick; a lone advance() has no budget

    def run_tick(self) -> TickReport:
        # The budget holds between steps too, not only between records: budget + the longest
        # step is what has to fit in functionTimeout (shared/startup_checks.py).
        self._deadline = time.monotonic() + self.options.time_budget_seconds
        now = self.clock()
        swept = list(self.flow.due())
        due = [r for r in swept if r.next_attempt_at is None or r.next_attempt_at <= now]
        kind = self.flow.kind
        states: dict[str, int] = {}
        for r in swept:
            state = getattr(getattr(r, "state", None), "value", None)
            if state is not None:
                states[state] = states.get(state, 0) + 1
        telemetry.record_states(states)
        report = ticks.run_tick(due, self.advance, describe=lambda r: f"{kind} {self.flow.ident(r)}",
                                concurrency=self.options.concurrency,
                                budget_seconds=self.options.time_budget_seconds, name=kind,
                                fields=self._log_fields)
        telemetry.record_tick(kind, report.due, report.seconds, self.options.time_budget_seconds)
        return report

    # --- one record -----------------------------------------------------------------------------

    def _log_fields(self, record: R) -> dict[str, str]:
        """The structured log field naming `record`: `request_id` or `team` (shared/logfields.py)."""
        return {_LOG_FIELD.get(self.flow.kind, f"{self.flow.kind}_id"): self.flow.ident(record)}

    def advance(self, record: R) -> str | None:
        """Move one record as far as it goes now; its outcome, or None if skipped. Every line
        logged meanwhile carries the record's id as a structured field."""
        fields = self._log_fields(record)
        with telemetry.span(f"{self.flow.kind} process", fields), logfields.bound(**fields):
            return self._advance(record)

    def _advance(self, record: R) -> str | None:
        now = self.clock()
        if record.next_attempt_at is not None and record.next_attempt_at > now:
            return None
        holder = self.options.holder
        if record.lease_holder not in (None, holder) and record.lease_until is not None and record.lease_until > now:
            return None
        try:
            record = self.flow.update(self.flow.on_lease(record, now).with_changes(
                now, lease_holder=holder, lease_until=self._lease_end(now)))
        except (Conflict, NotFound):
            return None  # another processor or a human got there first; the next tick re-reads
        try:
            record = self._run_steps(record)
        except (Conflict, NotFound):
            log.info("%s %s changed while being processed; the next tick takes it up", self.flow.kind,
                     self.flow.ident(record))
            return None
        except StoreError as exc:  # the step's outcome was not recorded: it is redone next tick
            log.warning("%s %s: could not record progress (%s); the next tick resumes it", self.flow.kind,
                        self.flow.ident(record), exc)
            return None
        return self.flow.finish(self._release(record))

    def _run_steps(self, record: R) -> R:
        failed: set[str] = set()
        following: Step[R] | None = self.flow.next_step(record, self.clock())
        for _ in range(self.options.max_steps):
            step = following
            if step is None:
                return record
            if time.monotonic() > self._deadline:
                log.info("%s %s: the tick's time budget is spent; its next step waits for the next tick",
                         self.flow.kind, self.flow.ident(record))
                return record
            if step.name in failed:
                # The failure path led back to the step that failed: a flow bug, not worth a retry.
                log.error("%s %s: step %s failed again in this run; stopped", self.flow.kind,
                          self.flow.ident(record), step.name)
                return record
            record, outcome, ahead = self._run(step, record)
            if outcome == RETRY:
                return record
            if outcome == FAILED:
                failed.add(step.name)
            if record.next_attempt_at is not None and record.next_attempt_at > self.clock():
                return record  # a step asked to wait (e.g. for a call that may still be in flight)
            # A step that succeeded already asked for its successor (to release the lease with it).
            following = ahead if outcome == DONE else self.flow.next_step(record, self.clock())
        if following is not None:
            log.warning("%s %s: %d steps in one run; the rest waits for the next tick", self.flow.kind,
                        self.flow.ident(record), self.options.max_steps)
        return record

    def _run(self, step: Step[R], record: R) -> tuple[R, str, Step[R] | None]:
        """Do one step and record its outcome (DONE, with the step after it), its error as a retry
        (RETRY), or its failure (FAILED)."""
        try:
            changed = step.run(record)
        except TransientError as exc:
            telemetry.record_step(step.name, "retry")
            return (*self._retry_later(step, self._annotated(step, record, exc), exc.message, exc.retry_after),
                    None)
        except PermanentError as exc:
            telemetry.record_step(step.name, "failed")
            return self._fail(step, self._annotated(step, record, exc), exc.message), FAILED, None
        except StoreError:
            raise
        except Exception as exc:  # a bug in one step must not stall the record forever
            telemetry.record_exception(exc)
            log.exception("%s %s: step %s raised %s", self.flow.kind, self.flow.ident(record), step.name,
                          type(exc).__name__)
            return (*self._retry_later(step, record, f"step {step.name} raised {type(exc).__name__}", None), None)
        telemetry.record_step(step.name, "done")
        now = self.clock()
        # Each recorded step renews the lease; the last one (nothing left to do now) releases it.
        following = self.flow.next_step(changed, now)
        last = following is None
        # A step that succeeded clears the error of its own earlier tries, but keeps one it (or a
        # failure path before it) recorded; likewise a wait it asked for.
        retried = record.attempts > 0 and changed.last_error == record.last_error
        error = None if retried else changed.last_error
        wait = changed.next_attempt_at if changed.next_attempt_at != record.next_attempt_at else None
        return self.flow.update(changed.with_changes(
            now, attempts=0, last_error=error, next_attempt_at=wait,
            lease_holder=None if last or wait else self.options.holder,
            lease_until=None if last or wait else self._lease_end(now))), DONE, following

    def _annotated(self, step: Step[R], record: R, exc: BackendError) -> R:
        return step.on_error(record, exc) if step.on_error is not None else record

    def _retry_later(self, step: Step[R], record: R, message: str, retry_after: float | None) -> tuple[R, str]:
        attempts = record.attempts + 1
        if attempts >= self.options.max_attempts:
            # Logged once, by the flow's failure path (flow.fail), with the reason below.
            return self._fail(step, record.with_changes(self.clock(), attempts=attempts),
                              f"gave up after {attempts} attempts: {message}"), FAILED
        delay = retry_delay(attempts, self.options.backoff_base_seconds, self.options.backoff_max_seconds,
                            retry_after, self.rng.uniform)
        log.warning("%s %s: step %s, attempt %d failed, retrying in %.1f s: %s", self.flow.kind,
                    self.flow.ident(record), step.name, attempts, delay, message)
        now = self.clock()
        return self.flow.update(record.with_changes(
            now, attempts=attempts, last_error=message, next_attempt_at=now + timedelta(seconds=delay),
            lease_holder=None, lease_until=None)), RETRY

    def _fail(self, step: Step[R], record: R, reason: str) -> R:
        now = self.clock()
        failed = self.flow.fail(record, step.name, reason, now)
        return self.flow.update(failed.with_changes(
            now, attempts=0, next_attempt_at=None, lease_holder=self.options.holder,
            lease_until=self._lease_end(now)))

    def _release(self, record: R) -> R:
        if record.lease_holder is None:
            return record  # released with the last step's record
        try:
            return self.flow.update(record.with_changes(
                self.clock(), lease_holder=None, lease_until=None))
        except (Conflict, NotFound, StoreError):
            return record  # the lease runs out by itself

    def _lease_end(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.options.lease_seconds)
