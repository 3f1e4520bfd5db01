"""The admin API, compatible with the earlier service's admin panel.

Every call is authenticated (see shared/http/auth.py) and every decision audited with who made
it. No answer ever carries a key: the panel shows `api_key` only when present, and it never is.
The list stays a JSON array (the panel reads one); paging goes in `limit`/`continue` query
parameters and the `X-Continue-Token` response header.
"""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import BaseModel, ConfigDict, Field

from shared import context
from shared.domain.request import KeyRequest, State, utcnow
from shared.http.auth import Principal, authenticate
from shared.http.body import read_json
from shared.http.responses import HttpError, handles_errors, json_response
from shared.http.writes import check_write
from shared.services import blocks, lifecycle, review
from shared.services.ports import InvalidArgument

bp = func.Blueprint()
ANONYMOUS = func.AuthLevel.ANONYMOUS  # the app authenticates: see shared/http/auth.py
CONTINUE_HEADER = "X-Continue-Token"
FILTERS = {"pending": [State.PENDING], "review": [State.IN_REVIEW], "all": []}
DEFAULT_LIMIT, MAX_LIMIT = 100, 500


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: str | None = Field(None, max_length=1000)


class DenyBody(DecisionBody):
    reason: str = Field(min_length=1, max_length=1000)


def _caller(req: func.HttpRequest) -> Principal:
    return authenticate(req, context.settings())


def _writer(req: func.HttpRequest) -> Principal:
    """The caller of a change: authenticated, then refused if a cross-site page could have sent it."""
    principal = _caller(req)
    check_write(req, context.settings())
    return principal


def summary(request: KeyRequest) -> dict[str, Any]:
    return {"request_id": request.id, "email": request.email, "model": request.model,
            "state": request.state.value, "created_at": request.created_at.isoformat(),
            "updated_at": request.updated_at.isoformat()}


def listed(request: KeyRequest) -> dict[str, Any]:
    """A row of the admin list: the panel's fields, and when the key stops working."""
    return {**summary(request), "expires_at": request.expires_at.isoformat() if request.expires_at else None}


def detail(request: KeyRequest) -> dict[str, Any]:
    def when(value):
        return value.isoformat() if value else None

    return {**listed(request), "decision": request.decision, "reason": request.reason,
            "decided_by": request.decided_by, "decided_at": when(request.decided_at),
            "attempts": request.attempts, "last_error": request.last_error,
            "next_attempt_at": when(request.next_attempt_at),
            "references": {k: v for k, v in request.references.items() if not k.endswith("-prepared")},
            "canonical_email": request.mailbox, "denial_cleared_by": request.denial_cleared_by,
            "denial_cleared_at": when(request.denial_cleared_at)}


def _states(req: func.HttpRequest) -> list[State]:
    state, name = req.params.get("state"), req.params.get("filter")
    if state:
        try:
            return [State(state)]
        except ValueError:
            known = ", ".join(s.value for s in State)
            raise HttpError(422, f"Invalid state: {state!r} is not one of {known}",
                            [{"field": "state", "reason": "unknown state"}]) from None
    if name is None:
        return []
    if name not in FILTERS:
        raise HttpError(422, f"Invalid filter: {name!r} is not one of pending, review, all",
                        [{"field": "filter", "reason": "unknown filter"}])
    return FILTERS[name]


def _limit(req: func.HttpRequest) -> int:
    raw = req.params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise HttpError(422, f"Invalid limit: must be a whole number from 1 to {MAX_LIMIT}",
                        [{"field": "limit", "reason": f"1..{MAX_LIMIT}"}])
    return int(raw)


@bp.function_name("admin_verify")
@bp.route(route="api/admin/verify", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def admin_verify(req: func.HttpRequest) -> func.HttpResponse:
    principal = _caller(req)
    return json_response({"authenticated": True, "username": principal.name, "method": principal.method})


@bp.function_name("admin_list_requests")
@bp.route(route="api/admin/requests", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def admin_list_requests(req: func.HttpRequest) -> func.HttpResponse:
    _caller(req)
    states, limit = _states(req), _limit(req)
    try:
        items, token = context.request_store().list(states, limit=limit, continue_token=req.params.get("continue"))
    except InvalidArgument:
        raise HttpError(422, "Invalid continue token: it may have expired; list again from the start",
                        [{"field": "continue", "reason": "not recognised"}]) from None
    items.sort(key=lambda r: r.created_at, reverse=True)
    headers = {CONTINUE_HEADER: token} if token else {}
    return json_response([listed(r) for r in items], headers=headers)


@bp.function_name("admin_get_request")
@bp.route(route="api/admin/requests/{request_id}", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def admin_get_request(req: func.HttpRequest) -> func.HttpResponse:
    _caller(req)
    return json_response(detail(review.get(context.request_store(), req.route_params["request_id"])))


def _act(req: func.HttpRequest, action: str, schema: type[DecisionBody]) -> func.HttpResponse:
    principal = _writer(req)
    body = read_json(req, schema, allow_empty=schema is DecisionBody)
    try:
        request = review.act(context.request_store(), req.route_params["request_id"], action,
                             principal.audit_name, body.reason)
    except review.AlreadyDecided as exc:
        raise HttpError(409, str(exc), {"state": exc.request.state.value}) from None
    return json_response({"success": True, "request_id": request.id, "state": request.state.value,
                          "message": f"Request {request.id} {review.PAST[action]}; the next timer tick does the rest"})


@bp.function_name("admin_approve_request")
@bp.route(route="api/admin/requests/{request_id}/approve", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def admin_approve_request(req: func.HttpRequest) -> func.HttpResponse:
    return _act(req, "approve", DecisionBody)


@bp.function_name("admin_deny_request")
@bp.route(route="api/admin/requests/{request_id}/deny", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def admin_deny_request(req: func.HttpRequest) -> func.HttpResponse:
    return _act(req, "deny", DenyBody)


@bp.function_name("admin_revoke_request")
@bp.route(route="api/admin/requests/{request_id}/revoke", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def admin_revoke_request(req: func.HttpRequest) -> func.HttpResponse:
    return _act(req, "revoke", DecisionBody)


def _lifecycle(req: func.HttpRequest, action: lifecycle.Action) -> func.HttpResponse:
    """Renew or rotate an active key for its requester, as the requester's own link does."""
    principal = _writer(req)
    body = read_json(req, DecisionBody, allow_empty=True)
    try:
        request = lifecycle.ask(context.request_store(), req.route_params["request_id"], action,
                                principal.audit_name, utcnow(), reason=body.reason)
    except review.AlreadyDecided as exc:  # NotActive, InProgress
        raise HttpError(409, str(exc), {"state": exc.request.state.value}) from None
    return json_response({"success": True, "request_id": request.id, "state": request.state.value,
                          "message": f"{'Renewal' if action == 'renew' else 'Rotation'} of request {request.id} "
                                     "recorded; the next timer tick does the rest"})


@bp.function_name("admin_renew_request")
@bp.route(route="api/admin/requests/{request_id}/renew", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def admin_renew_request(req: func.HttpRequest) -> func.HttpResponse:
    return _lifecycle(req, "renew")


@bp.function_name("admin_rotate_request")
@bp.route(route="api/admin/requests/{request_id}/rotate", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def admin_rotate_request(req: func.HttpRequest) -> func.HttpResponse:
    return _lifecycle(req, "rotate")


@bp.function_name("admin_clear_denial")
@bp.route(route="api/admin/requests/{request_id}/clear-denial", methods=["POST"], auth_level=ANONYMOUS)
@handles_errors
def admin_clear_denial(req: func.HttpRequest) -> func.HttpResponse:
    """Let a denied mailbox and model ask again before requests.deny_cooldown runs out."""
    principal = _writer(req)
    body = read_json(req, DecisionBody, allow_empty=True)
    try:
        request = blocks.clear_denial(context.request_store(), req.route_params["request_id"],
                                      principal.audit_name, body.reason)
    except blocks.NotDenied as exc:
        raise HttpError(409, str(exc), {"state": exc.request.state.value}) from None
    return json_response({"success": True, "request_id": request.id, "state": request.state.value,
                          "message": f"The denial of request {request.id} is cleared: {request.email} may ask "
                                     f"for {request.model} again"})


# --- blocks: addresses and domains that may not ask ---------------------------------------------------


class BlockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, max_length=254)
    domain: str | None = Field(None, max_length=253)
    reason: str = Field(min_length=1, max_length=1000)


def _block_target(req: func.HttpRequest) -> dict[str, str | None]:
    unknown = sorted(set(req.params) - {"address", "domain"})
    if unknown:
        raise HttpError(422, f"Invalid query: {', '.join(unknown)} is not address or domain",
                        [{"field": name, "reason": "unknown parameter"} for name in unknown])
    return {"address": req.params.get("address") or None, "domain": req.params.get("domain") or None}


@bp.function_name("admin_list_blocks")
@bp.route(route="api/admin/blocks", methods=["GET"], auth_level=ANONYMOUS)
@handles_errors
def admin_list_blocks(req: func.HttpRequest) -> func.HttpResponse:
    _caller(req)
    try:
        items, token = context.block_store().list(_limit(req), req.params.get("continue"))
    except InvalidArgument:
        raise HttpError(422, "Invalid continue token: it may have expired; list again from the start",
                        [{"field": "continue", "reason": "not recognised"}]) from None
    return json_response({"blocks": [b.public() for b in items], "continue_token": token},
                         headers={CONTINUE_HEADER: token} if token else {})


@bp.function_name("admin_put_block")
@bp.route(route="api/admin/blocks", methods=["PUT"], auth_level=ANONYMOUS)
@handles_errors
def admin_put_block(req: func.HttpRequest) -> func.HttpResponse:
    principal = _writer(req)
    body = read_json(req, BlockBody)
    block, created = blocks.put(context.block_store(), context.config(), principal.audit_name, body.reason,
                                address=body.address, domain=body.domain)
    return json_response({"success": True, "created": created, "block": block.public(),
                          "message": f"Requests from {block.kind} {block.value} are refused from now on"},
                         201 if created else 200)


@bp.function_name("admin_delete_block")
@bp.route(route="api/admin/blocks", methods=["DELETE"], auth_level=ANONYMOUS)
@handles_errors
def admin_delete_block(req: func.HttpRequest) -> func.HttpResponse:
    principal = _writer(req)
    removed = blocks.remove(context.block_store(), context.config(), principal.audit_name, **_block_target(req))
    if removed is None:
        raise HttpError(404, "No such block", [{"field": "address/domain", "reason": "not blocked"}])
    return json_response({"success": True, "block": removed.public(),
                          "message": f"The block of {removed.kind} {removed.value} is lifted"})
