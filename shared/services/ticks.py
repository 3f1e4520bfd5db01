"""What the timer's two ticks (requests, teams) share: work through the due items concurrently,
with a bound, stop taking new ones when the time budget is spent, and count what happened."""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from shared import logfields

log = logging.getLogger(__name__)
Item = TypeVar("Item")


@dataclasses.dataclass
class TickReport:
    due: int = 0
    processed: int = 0
    skipped: int = 0  # not due yet, leased by another processor, or changed under us
    left_for_next_tick: int = 0
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def count(self, field: str, outcome: str | None = None) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)
            if outcome:
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def summary(self) -> str:
        return (f"{self.due} due, {self.processed} processed {self.outcomes}, {self.skipped} skipped, "
                f"{self.left_for_next_tick} left for the next tick, {self.seconds:.1f} s")


def run_tick(items: Iterable[Item], work: Callable[[Item], str | None], *, describe: Callable[[Item], str],
             concurrency: int, budget_seconds: float, name: str,
             fields: Callable[[Item], Mapping[str, str]] | None = None) -> TickReport:
    """`work(item)` returns the item's outcome, or None when it skipped it. `fields(item)`: the
    log fields (shared/logfields.py) of every line logged while the item is worked on."""
    started = time.monotonic()
    deadline = started + budget_seconds
    items = list(items)
    report = TickReport(due=len(items))

    def one(item: Item) -> None:
        if time.monotonic() > deadline:
            report.count("left_for_next_tick")
            return
        with logfields.bound(**(fields(item) if fields else {})):
            try:
                outcome = work(item)
            except Exception:  # one item's bug must not stop the others
                log.exception("%s: unexpected error; it stays as it is for the next tick", describe(item))
                outcome = None
        if outcome is None:
            report.count("skipped")
        else:
            report.count("processed", outcome)

    if items:
        # Each item runs in a copy of the caller's context: its trace (the tick's span is the
        # parent of each item's) and log fields carry over into the pool's threads.
        parent = contextvars.copy_context()
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix=name) as pool:
            list(pool.map(lambda item: parent.copy().run(one, item), items))
    report.seconds = time.monotonic() - started
    return report
