"""The Functions MCP extension's part of the host: an MCP server for the app's MCP tool triggers.

As on Azure, the app's `mcpToolTrigger` functions are the tools, and the host speaks the protocol,
on the official `mcp` SDK: JSON-RPC over streamable HTTP at `/runtime/webhooks/mcp` (sessions
with `Mcp-Session-Id`; responses as server-sent events), and the older SSE transport at
`/runtime/webhooks/mcp/sse` (messages posted to `/runtime/webhooks/mcp/message`).

What it does the way the extension does (Azure/azure-functions-mcp-extension):

- `tools/list`: each trigger's `toolName` and `description`, and an input schema built from its
  `toolProperties` (type, array items, enum, description; `required` always present);
- `tools/call`: required properties missing (or null) -> JSON-RPC error -32602, before any function
  runs; otherwise the function is invoked with the invocation context as a JSON string (`name`,
  `arguments`, `sessionid`, `clientinfo`, `transport` with the request's headers); its return value
  becomes the result (`useResultSchema`: the `McpToolResult` wrapper, e.g. a `call_tool_result`;
  else its text); a function that fails gives a tool error without its exception;
- host.json `extensions.mcp`: `serverName`, `serverVersion`, `instructions`, and
  `system.webhookAuthorizationLevel`: `System` (default) lets a request in only with the
  `mcp_extension` system key, in `x-functions-key` or `?code=`; `Anonymous` with none.

Locally the system key is the app setting MCP_EXTENSION_KEY (unset: every request is refused). In
place of App Service authentication, when the app trusts it (ADMIN_TRUST_APP_SERVICE_AUTH=true) a
request without a key may instead carry its principal (`X-MS-CLIENT-PRINCIPAL`), which must hold
ADMIN_ROLE (default KeyRequestor.Admin). Anything else is 401 (403: a principal without the role).
Sessions are bound to the credential that opened them. The key is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import functools
import hmac
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from mcp import types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import McpError
from pydantic import TypeAdapter
from werkzeug.wrappers import Request, Response

from .asgi_bridge import AsgiBridge, EventLoopThread, Scope
from .functions import FunctionEntry, invoke

log = logging.getLogger("local_host")

WEBHOOK_PATH = "/runtime/webhooks/mcp"
SSE_PATH = WEBHOOK_PATH + "/sse"
MESSAGE_PATH = WEBHOOK_PATH + "/message"
KEY_SETTING = "MCP_EXTENSION_KEY"
SYSTEM_KEY_NAME = "mcp_extension"
_BLOCKS: TypeAdapter[list[types.ContentBlock]] = TypeAdapter(list[types.ContentBlock])
_BLOCK: TypeAdapter[types.ContentBlock] = TypeAdapter(types.ContentBlock)


@dataclasses.dataclass(frozen=True)
class McpOptions:
    """host.json `extensions.mcp`, with the extension's defaults."""

    server_name: str = "Azure Functions MCP server"
    server_version: str = "1.0.0"
    instructions: str | None = None
    webhook_authorization_level: str = "system"  # system | anonymous


def read_mcp_options(host_json: str | os.PathLike) -> McpOptions:
    path = Path(host_json)
    if not path.is_file():
        return McpOptions()
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    section = (doc.get("extensions") or {}).get("mcp") or {}
    level = str((section.get("system") or {}).get("webhookAuthorizationLevel") or "System").strip().lower()
    if level not in ("system", "anonymous"):
        raise ValueError(f"{path}: extensions.mcp.system.webhookAuthorizationLevel must be System or Anonymous, "
                         f"not {level!r}")
    defaults = McpOptions()
    return McpOptions(server_name=str(section.get("serverName") or defaults.server_name),
                      server_version=str(section.get("serverVersion") or defaults.server_version),
                      instructions=section.get("instructions") or None, webhook_authorization_level=level)


@dataclasses.dataclass(frozen=True)
class WebhookAuth:
    """Who may reach the MCP endpoint (see the module docstring)."""

    level: str = "system"
    system_key: str | None = dataclasses.field(default=None, repr=False)
    principal_role: str | None = None  # App Service authentication stands in: the role a principal needs

    @classmethod
    def from_environ(cls, level: str, environ: Mapping[str, str] | None = None) -> WebhookAuth:
        environ = os.environ if environ is None else environ
        trusted = str(environ.get("ADMIN_TRUST_APP_SERVICE_AUTH", "")).strip().lower() in ("true", "1", "yes")
        role = str(environ.get("ADMIN_ROLE") or "").strip() or "KeyRequestor.Admin"
        return cls(level, str(environ.get(KEY_SETTING) or "").strip() or None, role if trusted else None)

    def check(self, headers: Mapping[str, str], query: Mapping[str, str]) -> tuple[str | None, int, str]:
        """(who, 200, "") for a request let in, else (None, 401 or 403, why); header names lower-case."""
        if self.level == "anonymous":
            return "anonymous", 200, ""
        key = headers.get("x-functions-key") or query.get("code")
        if key:
            if self.system_key and hmac.compare_digest(key.encode(), self.system_key.encode()):
                return "system-key", 200, ""
            return None, 401, f"The key is not the MCP extension's system key ({SYSTEM_KEY_NAME})"
        if self.principal_role and headers.get("x-ms-client-principal"):
            return self._principal(headers)
        if not self.system_key:
            return None, 401, (f"No system key is configured for the MCP extension: set {KEY_SETTING} in "
                               "local.settings.json Values (or the environment)")
        entra = f", or an Entra ID sign-in with the app role {self.principal_role}" if self.principal_role else ""
        return None, 401, f"Authentication required: the {SYSTEM_KEY_NAME} system key in x-functions-key{entra}"

    def _principal(self, headers: Mapping[str, str]) -> tuple[str | None, int, str]:
        try:
            principal = json.loads(base64.b64decode(headers["x-ms-client-principal"]))
            role_type = principal.get("role_typ") or "roles"
            roles = {c.get("val") for c in principal.get("claims") or [] if c.get("typ") in (role_type, "roles")}
        except (ValueError, binascii.Error, AttributeError, TypeError):
            return None, 401, "The App Service principal header is malformed"
        if self.principal_role not in roles:
            return None, 403, f"The app role {self.principal_role} is required"
        return f"entra:{headers.get('x-ms-client-principal-name') or 'unknown'}", 200, ""


def input_schema(entry: FunctionEntry) -> dict[str, Any]:
    """The tool's JSON input schema, from its `toolProperties`, as the extension builds it."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for prop in tool_properties(entry):
        name = prop.get("propertyName")
        if not name:
            continue
        kind: dict[str, Any] = {"type": prop.get("propertyType") or "string"}
        if prop.get("enumValues"):
            kind["enum"] = list(prop["enumValues"])
        schema = {"type": "array", "items": kind} if prop.get("isArray") else dict(kind)
        schema["description"] = prop.get("description") or ""
        properties[name] = schema
        if prop.get("isRequired") and name not in required:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def tool_properties(entry: FunctionEntry) -> list[dict[str, Any]]:
    raw = entry.trigger.get("toolProperties")
    value = json.loads(raw) if isinstance(raw, str) and raw.strip() else raw
    return list(value or [])


def tool_result(entry: FunctionEntry, value: Any) -> types.CallToolResult:
    """What the function returned, as the extension reads it (its rich or its simple form)."""
    if value is None:
        return types.CallToolResult(content=[])
    if not entry.trigger.get("useResultSchema"):
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(value))])
    wrapper = json.loads(value)  # McpToolResult: {"type", "content", "structuredContent"}
    kind = str(wrapper.get("type") or "").lower()
    if kind == "call_tool_result":
        return types.CallToolResult.model_validate_json(wrapper["content"])
    if kind == "multi_content_result":
        blocks = _BLOCKS.validate_json(wrapper["content"])
    else:
        blocks = [_BLOCK.validate_json(wrapper["content"])]
    structured = wrapper.get("structuredContent")
    return types.CallToolResult(content=blocks, structuredContent=json.loads(structured) if structured else None)


class _BenignSdkErrors(logging.Filter):
    """The SDK logs an error with a traceback when a client ends its session (DELETE) while its
    GET event stream is open: the stream it reads from was closed, which is the point. Not kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage() == "Error in standalone SSE writer"
                    and isinstance(error, anyio.ClosedResourceError))


logging.getLogger("mcp.server.streamable_http").addFilter(_BenignSdkErrors())


class McpEndpoint:
    """The MCP server for `entries` (the app's mcpToolTrigger functions), as a WSGI callable for
    paths under /runtime/webhooks/mcp. `start()` before serving, `close()` to stop."""

    def __init__(self, entries: Iterable[FunctionEntry], options: McpOptions, auth: WebhookAuth) -> None:
        self.tools = {str(e.trigger["toolName"]): e for e in entries}
        self.options = options
        self.auth = auth
        self.server: Server = Server(options.server_name, options.server_version, options.instructions)
        self.server.list_tools()(self._list_tools)
        # Registered directly, not with @server.call_tool(): that one turns every exception into a
        # tool error, where the extension answers missing arguments with a JSON-RPC error.
        self.server.request_handlers[types.CallToolRequest] = self._call_tool
        self.sse = SseServerTransport(MESSAGE_PATH)
        self._loop: EventLoopThread | None = None
        self._bridge: AsgiBridge | None = None
        self._sessions: StreamableHTTPSessionManager | None = None
        self._stop: asyncio.Event | None = None
        self._runner: concurrent.futures.Future | None = None

    @classmethod
    def for_app(cls, entries: Iterable[FunctionEntry], host_json: str | os.PathLike,
                environ: Mapping[str, str] | None = None) -> McpEndpoint:
        options = read_mcp_options(host_json)
        return cls(entries, options, WebhookAuth.from_environ(options.webhook_authorization_level, environ))

    @staticmethod
    def handles(path: str) -> bool:
        return path == WEBHOOK_PATH or path.startswith(WEBHOOK_PATH + "/")

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> McpEndpoint:
        if self._loop is not None:
            return self
        self._loop = EventLoopThread("local_host-mcp")
        self._bridge = AsgiBridge(self._asgi, self._loop)
        started = threading.Event()
        self._runner = self._loop.submit(self._serve_sessions(started))
        if not started.wait(10):
            error = self._runner.exception() if self._runner.done() else "it did not answer in 10 s"
            raise RuntimeError(f"the MCP session manager did not start: {error!r}")
        return self

    async def _serve_sessions(self, started: threading.Event) -> None:
        self._sessions = StreamableHTTPSessionManager(self.server)
        self._stop = asyncio.Event()
        async with self._sessions.run():
            started.set()
            await self._stop.wait()

    def close(self) -> None:
        """End open sessions and streams, then the loop."""
        if self._loop is None or self._bridge is None or self._stop is None:
            return
        self._bridge.close()
        self._loop.loop.call_soon_threadsafe(self._stop.set)
        if self._runner is not None:
            concurrent.futures.wait([self._runner], timeout=10)
        self._loop.stop()
        self._loop = self._bridge = None

    # --- HTTP ------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any, request: Request) -> Any:
        if self._bridge is None:
            raise RuntimeError("McpEndpoint.start() was not called")
        headers = {k.lower(): v for k, v in request.headers.items()}
        who, status, why = self.auth.check(headers, request.args)
        if who is None:
            log.info("%s %s -> %d (%s)", request.method, request.path, status, why)
            response = Response(json.dumps({"message": why, "detail": None}), status=status,
                                content_type="application/json")
            return response(environ, start_response)
        user = AuthenticatedUser(AccessToken(token="-", client_id=who, scopes=[]))
        return self._bridge(environ, start_response, request.get_data(), {"user": user})

    async def _asgi(self, scope: Scope, receive: Any, send: Any) -> None:
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        if path == WEBHOOK_PATH:
            assert self._sessions is not None
            await self._sessions.handle_request(scope, receive, send)
        elif path == SSE_PATH and method == "GET":
            async with self.sse.connect_sse(scope, receive, send) as (read, write):
                await self.server.run(read, write, self.server.create_initialization_options())
        elif path == MESSAGE_PATH and method == "POST":
            await self.sse.handle_post_message(scope, receive, send)
        else:
            body = json.dumps({"message": "Not found", "detail": f"No MCP endpoint at {method} {path}"}).encode()
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})

    # --- MCP -------------------------------------------------------------------------------------

    async def _list_tools(self) -> list[types.Tool]:
        tools = []
        for name, entry in self.tools.items():
            meta = entry.trigger.get("metadata")
            tools.append(types.Tool(name=name, description=entry.trigger.get("description") or None,
                                    inputSchema=input_schema(entry),
                                    _meta=json.loads(meta) if isinstance(meta, str) and meta.strip() else None))
        return tools

    async def _call_tool(self, req: types.CallToolRequest) -> types.ServerResult:
        name, arguments = req.params.name, req.params.arguments or {}
        entry = self.tools.get(name)
        if entry is None:
            raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=f"Unknown tool: '{name}'"))
        missing = [p["propertyName"] for p in tool_properties(entry)
                   if p.get("isRequired") and arguments.get(p["propertyName"]) is None]
        if missing:
            message = "One or more required tool properties are missing values. Please provide: " + ", ".join(missing)
            raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=message))
        invocation = self._invocation(name, arguments)
        call = functools.partial(invoke, entry, json.dumps(invocation), reason=f"MCP tool call: {name}")
        failed = types.CallToolResult(
            content=[types.TextContent(type="text", text=f"An error occurred invoking '{name}'.")], isError=True)
        try:
            value = await anyio.to_thread.run_sync(call)
        except Exception:  # noqa: BLE001 - invoke() logged it; the client learns only that it failed
            return types.ServerResult(failed)
        try:
            return types.ServerResult(tool_result(entry, value))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.error("Functions.%s returned no tool result the MCP extension can read", entry.name, exc_info=True)
            return types.ServerResult(failed)

    def _invocation(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The ToolInvocationContext the extension hands a function (as JSON)."""
        context = self.server.request_context
        request = context.request
        headers = {k: ",".join(request.headers.getlist(k)) for k in request.headers} if request is not None else {}
        path = request.url.path if request is not None else ""
        session_id = headers.get("mcp-session-id") or (request.query_params.get("session_id") if request else None)
        params = context.session.client_params
        client = params.clientInfo.model_dump(mode="json", exclude_none=True) if params is not None else None
        return {"name": name, "arguments": arguments, "sessionid": session_id, "clientinfo": client,
                "transport": {"name": "http-sse" if path.startswith(MESSAGE_PATH) else "http-streamable",
                              "sessionId": session_id, "properties": {"headers": headers}}}
