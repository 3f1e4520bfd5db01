"""One MCP tool call: the caller, the checked arguments, the use case, and the result as the host
expects it back.

Every tool goes through the use cases the HTTP API uses, with the same checks and the same
answers: a decision is `review.act` (the same states, the same 409 for a request already decided,
the same who/when/why annotations and `audit:` line, here with `mcp:<client>`), a new request is
`intake.submit_request` with the requester page's limits, a team is `teams.status`. A refusal is a
tool error (`isError`, with the HTTP status it would have had and its message), never a
traceback; nothing returned or logged here carries a key.

Results go back in the MCP extension's rich-result form (`useResultSchema`): a `call_tool_result`
holding the MCP `CallToolResult`, with the JSON both as `structuredContent` and as text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from shared import context
from shared.domain.request import InvalidInput, State
from shared.http import admin
from shared.http.auth import Principal
from shared.http.responses import HttpError, as_http_error
from shared.http.schemas import KeyRequestBody
from shared.mcp import auth
from shared.mcp.tools import DEFAULT_LIMIT, TOOLS
from shared.services import intake, review
from shared.services.ports import InvalidArgument, NotFound

log = logging.getLogger(__name__)
audit = logging.getLogger("shared.audit")

Handler = Callable[[Principal, dict[str, Any]], dict[str, Any]]


def handle(tool_name: str, raw_context: str | bytes | dict) -> str:
    """Run tool `tool_name` for the invocation context the host passed; the result, serialised."""
    tool = TOOLS[tool_name]
    try:
        invocation = _invocation(raw_context)
        who = auth.caller(invocation, context.settings())
        arguments = invocation.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise InvalidInput("arguments", "must be an object")
        result = _HANDLERS[tool_name](who, tool.check(arguments))
    except Exception as exc:  # noqa: BLE001 - the boundary: a refusal is a tool error, never a traceback
        return _refusal(tool_name, exc)
    log.info("MCP %s by %s: ok", tool_name, who.audit_name)
    return _call_tool_result(result, is_error=False)


def _invocation(raw: str | bytes | dict) -> dict[str, Any]:
    try:
        value = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except ValueError:
        raise InvalidInput("context", "the invocation context is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidInput("context", "the invocation context is not an object")
    return value


def _refusal(tool_name: str, exc: Exception) -> str:
    if isinstance(exc, review.AlreadyDecided):
        error = HttpError(409, f"Refused: {exc}", {"state": exc.request.state.value})
    elif isinstance(exc, NotFound):
        error = HttpError(404, f"Not found: {exc}")
    else:
        try:
            error = as_http_error(exc)
        except Exception:  # logged with its traceback; the client gets no detail
            log.exception("MCP %s: unexpected error", tool_name)
            error = HttpError(500, "Internal error; it is in the app's log")
    log.log(logging.ERROR if error.status >= 500 else logging.INFO, "MCP %s -> %d %s", tool_name, error.status,
            error.message)
    body = {"error": {"status": error.status, "message": error.message, "detail": error.detail}}
    return _call_tool_result(body, is_error=True, text=error.message)


def _call_tool_result(structured: dict[str, Any], is_error: bool, text: str | None = None) -> str:
    payload = json.dumps(structured, default=str, separators=(",", ":"))
    result = {"content": [{"type": "text", "text": text if text is not None else payload}],
              "structuredContent": json.loads(payload), "isError": is_error}
    return json.dumps({"type": "call_tool_result", "content": json.dumps(result, separators=(",", ":"))})


def _validated(schema: type[BaseModel], data: dict[str, Any]) -> Any:
    """`data` through one of the HTTP API's body models, so both ways in share its limits."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(".".join(str(p) for p in first["loc"]) or "(arguments)", first["msg"]) from None


# --- requests -----------------------------------------------------------------------------------


def _page(states: list[State], args: dict[str, Any]) -> dict[str, Any]:
    try:
        items, token = context.request_store().list(states, limit=args.get("limit", DEFAULT_LIMIT),
                                                    continue_token=args.get("continue_token"))
    except InvalidArgument:
        raise InvalidInput("continue_token", "not recognised (it may have expired); list again from the start"
                           ) from None
    items.sort(key=lambda r: r.created_at, reverse=True)
    return {"requests": [admin.summary(r) for r in items], "count": len(items), "continue_token": token}


def _list_pending(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    return _page([State.PENDING], args)


def _list_review(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    return _page([State.IN_REVIEW], args)


def _list_state(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    return _page([State(args["state"])], args)


def _get_request(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    return admin.detail(review.get(context.request_store(), args["request_id"]))


def _decision(action: str, schema: type[admin.DecisionBody]) -> Handler:
    def decide(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
        body = _validated(schema, {"reason": args.get("reason")} if "reason" in args else {})
        request = review.act(context.request_store(), args["request_id"], action, who.audit_name, body.reason)
        return {"success": True, "request_id": request.id, "state": request.state.value,
                "decided_by": request.decided_by, "reason": request.reason,
                "message": f"Request {request.id} {review.PAST[action]}; the next timer tick does the rest"}

    return decide


def _request_new_key(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    body = _validated(KeyRequestBody, {"llm": args["llm"], "email": args["email"]})
    result = intake.submit_request(context.request_store(), context.config(), body.email, body.llm)
    audit.info("audit: %s requested a key: request %s (%s, %s)", who.audit_name, result.request.id,
               result.request.model, "new" if result.created else "an unfinished one returned")
    return {"success": True, "request_id": result.request.id, "state": result.request.state.value,
            "created": result.created, "message": result.message}


def _models(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    return {"models": [model.public() for model in context.config().models]}


# --- teams (their modules load on the first team call, as on the HTTP side) ----------------------


def _list_teams(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    from shared.services import teams

    try:
        page = teams.list_teams(context.team_store(), args.get("limit", DEFAULT_LIMIT), args.get("continue_token"))
    except InvalidArgument:
        raise InvalidInput("continue_token", "not recognised (it may have expired); list again from the start"
                           ) from None
    return {"teams": page["teams"], "unreadable": page["unreadable"], "continue_token": page["continue"]}


def _get_team(who: Principal, args: dict[str, Any]) -> dict[str, Any]:
    from shared.domain.team import TEAM_NAME
    from shared.services import teams

    name = args["name"]
    if not TEAM_NAME.match(name) or len(name) > 63:
        raise NotFound(f"no team named {name[:80]!r}")
    return teams.status(context.team_store(), name)


_HANDLERS: dict[str, Handler] = {
    "list_pending_requests": _list_pending,
    "list_review_requests": _list_review,
    "list_requests": _list_state,
    "get_request": _get_request,
    "approve_request": _decision("approve", admin.DecisionBody),
    "deny_request": _decision("deny", admin.DenyBody),
    "revoke_request": _decision("revoke", admin.DecisionBody),
    "set_pending": _decision("set_pending", admin.DecisionBody),
    "set_review": _decision("set_review", admin.DecisionBody),
    "request_new_key": _request_new_key,
    "get_available_models": _models,
    "list_teams": _list_teams,
    "get_team": _get_team,
}
