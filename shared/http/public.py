"""The requester's endpoints, one Functions function each (the Portal shows each one's calls)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import context
from shared.http.body import read_json
from shared.http.responses import error_response, handles_errors, json_response
from shared.http.schemas import KeyRequestBody
from shared.services import intake
from shared.services.ports import StoreError

log = logging.getLogger(__name__)
bp = func.Blueprint()
ANONYMOUS = func.AuthLevel.ANONYMOUS


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def health(req: func.HttpRequest) -> func.HttpResponse:
    namespace = context.settings().namespace
    try:
        context.request_store().ping()
    except StoreError as exc:
        log.warning("health: store unavailable: %s", exc)
        return json_response({"status": "unhealthy", "store": "unavailable", "namespace": namespace,
                              "message": "The request store does not answer"}, 503)
    return json_response({"status": "healthy", "store": "ok", "namespace": namespace})


@bp.function_name("list_models")
@bp.route(route="api/models", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def list_models(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"models": [model.public() for model in context.config().models]})


@bp.function_name("list_featured_models")
@bp.route(route="api/featured-models", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def list_featured_models(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"models": [model.model_dump() for model in context.config().featured_models]})


@bp.function_name("request_key")
@bp.route(route="api/request-key", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def request_key(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req, KeyRequestBody)
    result = intake.submit_request(context.request_store(), context.config(), body.email, body.llm)
    # A new request and a repeated one get the same answer (status, fields, headers), as a retry
    # gets the first call's answer: an anonymous caller cannot tell whether an address asked
    # before. The id is the existing request's, so a repeat stays idempotent (DESIGN.md); what it
    # shows is the status page's, never the key or the email.
    answer = {"message": result.message, "success": True, "request_id": result.request.id,
              "state": result.request.state.value}
    return json_response(answer, 201, {"Location": f"/api/requests/{result.request.id}"})


@bp.function_name("request_status")
@bp.route(route="api/requests/{request_id}", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def request_status(req: func.HttpRequest) -> func.HttpResponse:
    request = intake.find_request(context.request_store(), req.route_params.get("request_id", ""))
    if request is None:
        return error_response(404, "No key request with this id")
    return json_response({
        "request_id": request.id,
        "model": request.model,
        "state": request.state.value,
        "message": intake.status_message(request, bool(context.config().notifications.admins)),
        "created_at": request.created_at.isoformat(),
        "updated_at": request.updated_at.isoformat(),
        "reason": intake.public_reason(request),  # never a backend's raw text
        "expires_at": request.expires_at.isoformat() if request.expires_at else None,
    })
