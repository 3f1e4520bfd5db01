"""JSON answers, and the one place that turns exceptions into HTTP errors.

Every error is JSON `{"message": <string>, "detail": ...}`: the frontends show `message`, so it
is always a sentence, never a list. Unexpected exceptions are logged with their traceback and
answered with a generic 500 that carries none of it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared.config import ConfigError
from shared.domain.request import InvalidInput
from shared.services.ports import Conflict, NotFound, StoreError, StoreUnavailable
from shared.settings import SettingsError

log = logging.getLogger(__name__)


class HttpError(Exception):
    """An answer other than success, decided by the HTTP layer (e.g. 413, 415)."""

    def __init__(self, status: int, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, default=str, separators=(",", ":")),
        status_code=status,
        mimetype="application/json",
        charset="utf-8",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error_response(status: int, message: str, detail: Any = None,
                   headers: dict[str, str] | None = None) -> func.HttpResponse:
    return json_response({"message": message, "detail": detail}, status, headers)


def as_http_error(exc: Exception) -> HttpError:
    """The answer an expected failure stands for (the MCP tools give the same ones); anything else
    is re-raised, for the caller to log and answer as an internal error."""
    return _to_error(exc)


def _to_error(exc: Exception) -> HttpError:
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, InvalidInput):
        return HttpError(422, f"Invalid {exc.field}: {exc.reason}",
                         [{"field": exc.field, "reason": exc.reason}])
    if isinstance(exc, NotFound):
        return HttpError(404, "Not found")
    if isinstance(exc, Conflict):
        return HttpError(409, "The request was changed by someone else; try again", str(exc))
    if isinstance(exc, StoreUnavailable):
        return HttpError(503, "The request store is unavailable; try again shortly", str(exc),
                         {"Retry-After": "5"})
    if isinstance(exc, StoreError):
        return HttpError(502, "The request store refused the operation", str(exc))
    if isinstance(exc, (SettingsError, ConfigError)):
        return HttpError(503, "The service is misconfigured; operators have been told", None)
    raise exc


def handles_errors(handler: Callable[[func.HttpRequest], func.HttpResponse]) -> Callable[..., func.HttpResponse]:
    """Wrap a handler so that every failure becomes a JSON error answer."""

    @functools.wraps(handler)
    def wrapper(req: func.HttpRequest, *args: Any, **kwargs: Any) -> func.HttpResponse:
        try:
            return handler(req, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the boundary: nothing escapes as a stack trace
            try:
                error = _to_error(exc)
            except Exception:
                log.exception("unhandled error in %s %s", req.method, _path(req))
                return error_response(500, "Internal server error")
            level = logging.ERROR if error.status >= 500 else logging.INFO
            log.log(level, "%s %s -> %d %s", req.method, _path(req), error.status, error.message)
            return error_response(error.status, error.message, error.detail, error.headers)

    return wrapper


def _path(req: func.HttpRequest) -> str:
    return req.url.split("?", 1)[0]
