"""Structured fields on log records: which request (`request_id`) or team (`team`) a line is about.

Application Insights turns every attribute of a log record that `logging` does not define itself
into a customDimension (the OpenTelemetry logging handler copies them), so an operator can write
`traces | where customDimensions.request_id == "<id>"` and see a request's whole story.

Two ways to attach them, and both give the record the same attributes:
- `with bound(request_id=...)`: every line logged inside, by any module, in this thread or
  context, carries the fields (the step engine binds each record it works on);
- `log.info(..., extra=fields(request_id=...))` for a single line outside such a block. `fields()`
  leaves out what is already bound, so `extra` never collides with the bound attributes (a
  collision would make `logging` raise).

Both also put the fields on the current OpenTelemetry span (shared/telemetry.py), when telemetry
is on. No secret ever goes into a field: only ids and names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from shared import telemetry

REQUEST_ID = "request_id"
TEAM = "team"

_NONE: Mapping[str, str] = MappingProxyType({})
_bound: ContextVar[Mapping[str, str]] = ContextVar("llmkr_log_fields", default=_NONE)


def current() -> Mapping[str, str]:
    """The fields bound here now."""
    return _bound.get()


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Attach `fields` (None values left out) to every record logged inside the block."""
    install()
    adding = {k: str(v) for k, v in fields.items() if v is not None}
    token = _bound.set({**_bound.get(), **adding})
    telemetry.annotate(adding)  # the current span (an invocation, a record's processing) too
    try:
        yield
    finally:
        _bound.reset(token)


def fields(**values: Any) -> dict[str, str]:
    """`extra=` for one line: `values` (None left out) minus what `bound()` already attaches."""
    install()
    already = _bound.get()
    chosen = {k: str(v) for k, v in values.items() if v is not None and k not in already}
    telemetry.annotate(chosen)
    return chosen


def install() -> None:
    """Wrap the log record factory once, so records carry the bound fields (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_llmkr_fields", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for key, value in _bound.get().items():
            setattr(record, key, value)
        return record

    factory._llmkr_fields = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
