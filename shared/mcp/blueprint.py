"""The MCP tools, one Functions function each (`mcp_<tool>`), so the Portal shows each tool's
invocations and failures like the HTTP functions'.

Each is an MCP tool trigger: the host's MCP extension lists it (name, description, input schema
from shared/mcp/tools.py) and calls it with the invocation context as a JSON string. The host
serves them all at `/runtime/webhooks/mcp` (streamable HTTP) and `/runtime/webhooks/mcp/sse`
(the older SSE transport); see shared/mcp/auth.py for who may call.
"""

from __future__ import annotations

import azure.functions as func

from shared.mcp.calls import handle
from shared.mcp.tools import TOOLS

bp = func.Blueprint()


@bp.function_name(TOOLS["list_pending_requests"].function_name)
@bp.mcp_tool_trigger(**TOOLS["list_pending_requests"].binding())
def mcp_list_pending_requests(context: str) -> str:
    return handle("list_pending_requests", context)


@bp.function_name(TOOLS["list_review_requests"].function_name)
@bp.mcp_tool_trigger(**TOOLS["list_review_requests"].binding())
def mcp_list_review_requests(context: str) -> str:
    return handle("list_review_requests", context)


@bp.function_name(TOOLS["list_requests"].function_name)
@bp.mcp_tool_trigger(**TOOLS["list_requests"].binding())
def mcp_list_requests(context: str) -> str:
    return handle("list_requests", context)


@bp.function_name(TOOLS["get_request"].function_name)
@bp.mcp_tool_trigger(**TOOLS["get_request"].binding())
def mcp_get_request(context: str) -> str:
    return handle("get_request", context)


@bp.function_name(TOOLS["approve_request"].function_name)
@bp.mcp_tool_trigger(**TOOLS["approve_request"].binding())
def mcp_approve_request(context: str) -> str:
    return handle("approve_request", context)


@bp.function_name(TOOLS["deny_request"].function_name)
@bp.mcp_tool_trigger(**TOOLS["deny_request"].binding())
def mcp_deny_request(context: str) -> str:
    return handle("deny_request", context)


@bp.function_name(TOOLS["revoke_request"].function_name)
@bp.mcp_tool_trigger(**TOOLS["revoke_request"].binding())
def mcp_revoke_request(context: str) -> str:
    return handle("revoke_request", context)


@bp.function_name(TOOLS["set_pending"].function_name)
@bp.mcp_tool_trigger(**TOOLS["set_pending"].binding())
def mcp_set_pending(context: str) -> str:
    return handle("set_pending", context)


@bp.function_name(TOOLS["set_review"].function_name)
@bp.mcp_tool_trigger(**TOOLS["set_review"].binding())
def mcp_set_review(context: str) -> str:
    return handle("set_review", context)


@bp.function_name(TOOLS["request_new_key"].function_name)
@bp.mcp_tool_trigger(**TOOLS["request_new_key"].binding())
def mcp_request_new_key(context: str) -> str:
    return handle("request_new_key", context)


@bp.function_name(TOOLS["get_available_models"].function_name)
@bp.mcp_tool_trigger(**TOOLS["get_available_models"].binding())
def mcp_get_available_models(context: str) -> str:
    return handle("get_available_models", context)


@bp.function_name(TOOLS["list_teams"].function_name)
@bp.mcp_tool_trigger(**TOOLS["list_teams"].binding())
def mcp_list_teams(context: str) -> str:
    return handle("list_teams", context)


@bp.function_name(TOOLS["get_team"].function_name)
@bp.mcp_tool_trigger(**TOOLS["get_team"].binding())
def mcp_get_team(context: str) -> str:
    return handle("get_team", context)
