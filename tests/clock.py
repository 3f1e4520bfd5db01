"""The processors' clock in tests: real time moved forward by the test, so backoffs, leases and
in-flight windows pass without sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.domain.request import utcnow


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)

    def install(self, processor):
        """Make `processor` (a request Processor or TeamReconciler) and its engine use this clock."""
        processor.clock = processor.engine.clock = self
        return processor
