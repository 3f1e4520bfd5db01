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

from shared import logfields, telemetry
from shared.config import ConfigError
from shared.domain.request import InvalidInput
from shared.services.ports import Conflict, NotFound, Refused, StoreError, StoreUnavailable
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
    if isinstance(exc, Refused):
        return HttpError({"blocked": 403, "denied": 409}.get(exc.kind, 429), exc.message, exc.detail,
                         {"Retry-After": str(exc.retry_after)} if exc.retry_after else None)
    if isinstance(exc, NotFound):
        return HttpError(404, "Not found")
    # The store's own words (a Kubernetes API message: names, namespaces, RBAC) go to the log only.
    if isinstance(exc, Conflict):
        log.info("conflict: %s", exc)
        return HttpError(409, "The request was changed by someone else; try again", None)
    if isinstance(exc, StoreUnavailable):
        log.warning("store unavailable: %s", exc)
        return HttpError(503, "The request store is unavailable; try again shortly", None, {"Retry-After": "5"})
    if isinstance(exc, StoreError):
        log.error("store refused: %s", exc)
        return HttpError(502, "The request store refused the operation", None)
    if isinstance(exc, (SettingsError, ConfigError)):
        return HttpError(503, "The service is misconfigured; operators have been told", None)
    raise exc


def handles_errors(handler: Callable[[func.HttpRequest], func.HttpResponse]) -> Callable[..., func.HttpResponse]:
    """Wrap a handler so that every failure becomes a JSON error answer."""

    @functools.wraps(handler)
    def wrapper(req: func.HttpRequest, *args: Any, **kwargs: Any) -> func.HttpResponse:
        # Telemetry (configured on the first call), and a span per invocation: the function's
        # name and method, the request id or team of its route; never the path (a link's token).
        telemetry.configure()
        route = req.route_params or {}
        attributes = {"faas.trigger": "http", "code.function.name": handler.__name__,
                      "http.request.method": req.method, logfields.REQUEST_ID: route.get("request_id"),
                      logfields.TEAM: route.get("name")}
        with telemetry.span(f"{req.method} {handler.__name__}", attributes) as span, \
                logfields.bound(request_id=route.get("request_id"), team=route.get("name")):
            response = _answer(handler, req, *args, **kwargs)
            if span is not None:
                span.set_attribute("http.response.status_code", response.status_code)
            return response

    return wrapper


def _answer(handler: Callable[..., func.HttpResponse], req: func.HttpRequest, *args: Any,
            **kwargs: Any) -> func.HttpResponse:
    try:
        return handler(req, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the boundary: nothing escapes as a stack trace
        try:
            error = _to_error(exc)
        except Exception:
            telemetry.record_exception(exc)
            log.exception("unhandled error in %s %s", req.method, _path(req))
            return error_response(500, "Internal server error")
        if handler.__name__ == "request_key" and 400 <= error.status < 500:
            telemetry.record_rejection(_rejection_reason(exc, error))
        level = logging.ERROR if error.status >= 500 else logging.INFO
        log.log(level, "%s %s -> %d %s", req.method, _path(req), error.status, error.message)
        return error_response(error.status, error.message, error.detail, error.headers)


def _rejection_reason(exc: Exception, error: HttpError) -> str:
    """A low-cardinality reason for `llmkr.intake.rejections`: the invalid field, the kind of
    refusal, else the status (400 malformed, 413 too large, 415 not JSON, 429 limited)."""
    if isinstance(exc, InvalidInput):
        return f"invalid_{exc.field}"
    if isinstance(exc, Refused):
        return str(exc.kind)
    return str(error.status)


def _path(req: func.HttpRequest) -> str:
    return req.url.split("?", 1)[0]
