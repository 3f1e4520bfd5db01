"""The MCP tools with the official MCP client (`streamablehttp_client` + `ClientSession`) against
the local host on a real port and the real kube-apiserver: initialize, the tool list and its
schemas, every tool called, refusals as tool errors, the host's authentication (the MCP
extension's system key, or an Entra principal with the admin role), and never a key in a result
or a log line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import subprocess
import sys
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.shared.exceptions import McpError

from shared import context
from shared.domain.request import KeyRequest, State
from tests.conftest import ROOT
from tests.teams_fixtures import SEED_EXAMPLE

with warnings.catch_warnings():  # the client; the SDK now also offers streamable_http_client
    warnings.simplefilter("ignore", DeprecationWarning)
    from mcp.client.streamable_http import streamablehttp_client

SYSTEM_KEY = "mcp-system-key-" + "s" * 32
ADMIN_API_KEY = "ak-" + "m" * 40
LEAKED = "sk-" + "L" * 40  # a key stored on a request: no tool answer or log line may show it
CLIENT = "review-agent"
KEY = {"x-functions-key": SYSTEM_KEY}
TOOL_NAMES = {"list_pending_requests", "list_review_requests", "list_requests", "get_request", "approve_request",
              "deny_request", "revoke_request", "set_pending", "set_review", "request_new_key",
              "get_available_models", "list_teams", "get_team"}

pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client` instead.:DeprecationWarning")


class _NoTimers:
    """The host without its timers: the tests decide when requests change state."""

    timers: list = []

    def start(self) -> None: ...
    def stop(self) -> None: ...


@pytest.fixture
def start_host(app_env, function_app_module, monkeypatch):
    """Start the local host (HTTP functions + the MCP endpoint) for the app, on a free port."""
    from werkzeug.serving import make_server

    from local_host.functions import index_functions
    from local_host.mcp_server import McpEndpoint
    from local_host.server import LocalHost, _QuietHandler
    from local_host.wsgi import build_wsgi_app

    monkeypatch.setenv("MCP_EXTENSION_KEY", SYSTEM_KEY)  # what local.settings.json Values would hold
    monkeypatch.setenv("ADMIN_API_KEY", ADMIN_API_KEY)
    hosts = []

    def start():
        context.reset()
        app = function_app_module.app
        tools = [e for e in index_functions(app) if e.trigger_type == "mcpToolTrigger"]
        wsgi = build_wsgi_app(app, "", [], mcp=McpEndpoint.for_app(tools, ROOT / "host.json"))
        server = make_server("127.0.0.1", 0, wsgi, threaded=True, request_handler=_QuietHandler)
        hosts.append(LocalHost(server, wsgi, _NoTimers()).start())  # type: ignore[arg-type]
        return hosts[-1]

    yield start
    for host in hosts:
        host.shutdown()


@pytest.fixture
def host(start_host):
    return start_host()


@contextlib.asynccontextmanager
async def session(url: str, headers: dict[str, str] | None = None,
                  client: str = CLIENT) -> AsyncIterator[ClientSession]:
    info = types.Implementation(name=client, version="1.0")
    async with (streamablehttp_client(f"{url}/runtime/webhooks/mcp", headers=KEY if headers is None else headers)
                as (read, write, _), ClientSession(read, write, client_info=info) as s):
        await s.initialize()
        yield s


def run(scenario: Any) -> Any:
    return asyncio.run(scenario)


def structured(result: types.CallToolResult) -> dict[str, Any]:
    """The result's JSON; its text block says the same (for clients that read only text)."""
    assert result.structuredContent is not None
    if not result.isError:
        assert json.loads(result.content[0].text) == result.structuredContent  # type: ignore[union-attr]
    return result.structuredContent


def submit(email: str, model: str = "gpt-4o") -> KeyRequest:
    return context.request_store().submit(KeyRequest.new(email, model))[0]


def set_state(request: KeyRequest, state: State, **changes) -> KeyRequest:
    store = context.request_store()
    return store.update(store.get(request.id).enter(state, **changes))


def principal(*roles: str) -> dict[str, str]:
    claims = [{"typ": "roles", "val": role} for role in roles] + [{"typ": "name", "val": "Rita"}]
    payload = {"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"}
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(payload).encode()).decode(),
            "X-MS-CLIENT-PRINCIPAL-NAME": "rita@contoso.com"}


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "curl", "version": "1"}}}


def post_initialize(url: str, headers: dict[str, str], query: str = "") -> httpx.Response:
    return httpx.post(f"{url}/runtime/webhooks/mcp{query}", json=INITIALIZE, timeout=10,
                      headers={"Accept": "application/json, text/event-stream", **headers})


# --- the protocol ------------------------------------------------------------------------------


def test_initialize_and_the_tools_with_typed_schemas(host):
    async def scenario():
        async with (streamablehttp_client(f"{host.url}/runtime/webhooks/mcp", headers=KEY) as (read, write, session_id),
                    ClientSession(read, write) as s):
            init = await s.initialize()
            listed = await s.list_tools()
            return init, listed, session_id()

    init, listed, session_id = run(scenario())
    assert init.serverInfo.name == "llm-key-requestor" and init.serverInfo.version == "1.0.0"  # host.json
    assert "keys never pass through these tools" in (init.instructions or "")
    assert init.capabilities.tools is not None and session_id  # a stateful session, as on Azure
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == TOOL_NAMES
    for tool in tools.values():
        assert len(tool.description or "") > 60, tool.name
        assert tool.inputSchema["type"] == "object" and isinstance(tool.inputSchema["required"], list)
        for name, prop in tool.inputSchema["properties"].items():
            assert prop["type"] in ("string", "integer") and prop["description"], (tool.name, name)

    deny = tools["deny_request"].inputSchema
    assert deny["required"] == ["request_id", "reason"]
    assert tools["approve_request"].inputSchema["required"] == ["request_id"]
    assert tools["list_requests"].inputSchema["properties"]["state"]["enum"] == [s.value for s in State]
    assert tools["list_pending_requests"].inputSchema["properties"]["limit"]["type"] == "integer"
    assert set(tools["request_new_key"].inputSchema["required"]) == {"email", "llm"}
    assert tools["get_available_models"].inputSchema == {"type": "object", "properties": {}, "required": []}
    assert "mcp:<client>" in (tools["approve_request"].description or "")


def test_each_tool_is_its_own_function_and_no_http_route(functions):
    from shared.http.openapi import document

    tools = {e.trigger["toolName"]: e for e in functions.values() if e.trigger_type == "mcpToolTrigger"}
    assert set(tools) == TOOL_NAMES
    for name, entry in tools.items():
        assert entry.name == f"mcp_{name}"  # what the Portal lists, with its invocations and failures
        assert entry.trigger["name"] == "context" and entry.trigger["useResultSchema"] is True
        assert all(p["description"] for p in json.loads(entry.trigger["toolProperties"])), name
        assert len(entry.bindings) == 1  # the trigger only: no HTTP binding the OpenAPI document could miss
    assert not any("/runtime/webhooks" in path for path in document()["paths"])


def test_the_review_queue_end_to_end(host, core_api, app_env, caplog):
    caplog.set_level(logging.INFO)
    pending = submit("pending@example.com")
    held = submit("held@example.com")
    to_deny = submit("deny@example.com")
    to_revoke = set_state(submit("revoke@example.com"), State.ACTIVE)

    async def scenario():
        async with session(host.url) as s:
            out = {"pending": structured(await s.call_tool("list_pending_requests", {"limit": 10}))}
            out["set_review"] = structured(await s.call_tool("set_review", {"request_id": held.id,
                                                                            "reason": "new team, check budget"}))
            out["review"] = structured(await s.call_tool("list_review_requests", {}))
            out["detail"] = structured(await s.call_tool("get_request", {"request_id": held.id}))
            out["approve"] = structured(await s.call_tool("approve_request", {"request_id": held.id,
                                                                              "reason": "budget ok"}))
            out["deny"] = structured(await s.call_tool("deny_request", {"request_id": to_deny.id,
                                                                        "reason": "use the team key"}))
            out["revoke"] = structured(await s.call_tool("revoke_request", {"request_id": to_revoke.id}))
            out["to_review"] = structured(await s.call_tool("set_review", {"request_id": pending.id}))
            out["back"] = structured(await s.call_tool("set_pending", {"request_id": pending.id,
                                                                       "reason": "the webhook is back"}))
            out["approved"] = structured(await s.call_tool("list_requests", {"state": "approved"}))
            return out

    out = run(scenario())
    assert {r["request_id"] for r in out["pending"]["requests"]} == {pending.id, held.id, to_deny.id}
    assert out["pending"]["continue_token"] is None and out["pending"]["count"] == 3
    assert set(out["pending"]["requests"][0]) == {"request_id", "email", "model", "state", "created_at", "updated_at"}
    assert out["set_review"]["state"] == "in-review"
    assert [r["request_id"] for r in out["review"]["requests"]] == [held.id]
    assert out["detail"]["state"] == "in-review" and out["detail"]["decided_by"] == f"mcp:{CLIENT}"
    assert out["detail"]["reason"] == "new team, check budget"
    assert out["approve"] == {"success": True, "request_id": held.id, "state": "approved",
                              "decided_by": f"mcp:{CLIENT}", "reason": "budget ok",
                              "message": f"Request {held.id} approved; the next timer tick does the rest"}
    assert out["deny"]["state"] == "denied" and out["revoke"]["state"] == "revoking"
    assert out["to_review"]["state"] == "in-review" and out["back"]["state"] == "pending"
    assert [r["request_id"] for r in out["approved"]["requests"]] == [held.id]

    # Recorded on the Secrets like the admin API's decisions: who, when, why; and audited.
    notes = core_api.read_namespaced_secret(f"llm-key-request-{to_deny.id}", app_env).metadata
    assert notes.labels["request-state"] == "denied"
    assert notes.annotations["llm-key-requestor/decided-by"] == f"mcp:{CLIENT}"
    assert notes.annotations["llm-key-requestor/reason"] == "use the team key"
    assert notes.annotations["llm-key-requestor/decided-at"]
    approved = context.request_store().get(held.id)
    assert approved.state == State.APPROVED and approved.decision == "approve"
    back = context.request_store().get(pending.id)
    assert back.state == State.PENDING and back.decision is None and back.decided_by == f"mcp:{CLIENT}"
    for line in (f"audit: mcp:{CLIENT} approved request {held.id}", f"audit: mcp:{CLIENT} denied request {to_deny.id}",
                 f"audit: mcp:{CLIENT} revoked request {to_revoke.id}",
                 f"audit: mcp:{CLIENT} sent to review request {pending.id}",
                 f"audit: mcp:{CLIENT} returned to pending request {pending.id}"):
        assert line in caplog.text
    # The host logs each invocation as the Functions host does, under the tool's function name.
    assert "Executed 'Functions.mcp_approve_request' (Succeeded" in caplog.text


def test_a_decided_request_is_a_tool_error_saying_its_state(host):
    denied = set_state(submit("late@example.com"), State.DENIED)
    pending = submit("early@example.com")

    async def scenario():
        async with session(host.url) as s:
            approve = await s.call_tool("approve_request", {"request_id": denied.id})
            pend = await s.call_tool("set_pending", {"request_id": pending.id})  # only from in-review
            revoke = await s.call_tool("revoke_request", {"request_id": pending.id})  # nothing issued yet
            missing = await s.call_tool("get_request", {"request_id": str(uuid.uuid4())})
            return approve, pend, revoke, missing

    approve, pend, revoke, missing = run(scenario())
    assert approve.isError and "is denied" in approve.content[0].text  # type: ignore[union-attr]
    error = structured(approve)["error"]
    assert error["status"] == 409 and error["detail"] == {"state": "denied"}  # the admin API's 409
    assert pend.isError and "is pending" in pend.content[0].text and structured(pend)["error"]["status"] == 409  # type: ignore[union-attr]
    assert revoke.isError and structured(revoke)["error"]["detail"] == {"state": "pending"}
    assert missing.isError and structured(missing)["error"]["status"] == 404
    assert context.request_store().get(denied.id).state == State.DENIED
    assert context.request_store().get(pending.id).state == State.PENDING


def test_a_deny_without_a_reason_changes_nothing(host):
    request = submit("reason@example.com")

    async def scenario():
        async with session(host.url) as s:
            empty = await s.call_tool("deny_request", {"request_id": request.id, "reason": ""})
            too_long = await s.call_tool("deny_request", {"request_id": request.id, "reason": "x" * 1001})
            wrong_type = await s.call_tool("deny_request", {"request_id": request.id, "reason": 42})
            with pytest.raises(McpError) as left_out:  # the host's check, before any function runs
                await s.call_tool("deny_request", {"request_id": request.id})
            return empty, too_long, wrong_type, left_out.value

    empty, too_long, wrong_type, left_out = run(scenario())
    for result in (empty, too_long, wrong_type):
        assert result.isError and "reason" in result.content[0].text  # type: ignore[union-attr]
        assert structured(result)["error"]["status"] == 422
    assert left_out.error.code == types.INVALID_PARAMS and "reason" in left_out.error.message
    assert context.request_store().get(request.id).state == State.PENDING


def test_request_new_key_goes_through_intake(host, caplog):
    caplog.set_level(logging.INFO)

    async def scenario():
        async with session(host.url) as s:
            models = structured(await s.call_tool("get_available_models", {}))
            first = structured(await s.call_tool("request_new_key", {"email": "  Bob@Example.com ", "llm": "gpt-4o"}))
            again = structured(await s.call_tool("request_new_key", {"email": "bob@example.com", "llm": "gpt-4o"}))
            bad_email = await s.call_tool("request_new_key", {"email": "not-an-email", "llm": "gpt-4o"})
            bad_model = await s.call_tool("request_new_key", {"email": "bob@example.com", "llm": "gpt-99"})
            long_model = await s.call_tool("request_new_key", {"email": "bob@example.com", "llm": "m" * 129})
            return models, first, again, bad_email, bad_model, long_model

    models, first, again, bad_email, bad_model, long_model = run(scenario())
    assert [m["id"] for m in models["models"]] == [m.id for m in context.config().models]
    assert set(models["models"][0]) == {"id", "title", "description", "icon", "color"}  # never provisioning
    assert first["created"] is True and first["state"] == "pending" and first["success"] is True
    assert again["created"] is False and again["request_id"] == first["request_id"]  # the unfinished one
    stored = context.request_store().get(first["request_id"])
    assert stored.email == "bob@example.com" and stored.model == "gpt-4o"
    assert bad_email.isError and "email" in bad_email.content[0].text  # type: ignore[union-attr]
    assert bad_model.isError and "unknown model" in bad_model.content[0].text  # type: ignore[union-attr]
    assert long_model.isError and structured(long_model)["error"]["status"] == 422
    assert f"audit: mcp:{CLIENT} requested a key: request {first['request_id']}" in caplog.text


def test_teams_are_listed_and_read_without_keys(host):
    put = httpx.put(f"{host.url}/api/teams/alpha", content=SEED_EXAMPLE, timeout=10,
                    headers={"Content-Type": "application/yaml", "x-functions-key": ADMIN_API_KEY})
    assert put.status_code == 201, put.text

    async def scenario():
        async with session(host.url) as s:
            listed = structured(await s.call_tool("list_teams", {}))
            team = structured(await s.call_tool("get_team", {"name": "alpha"}))
            unknown = await s.call_tool("get_team", {"name": "no-such-team"})
            bad = await s.call_tool("get_team", {"name": "../etc"})
            return listed, team, unknown, bad

    listed, team, unknown, bad = run(scenario())
    assert [t["team"] for t in listed["teams"]] == ["alpha"] and listed["continue_token"] is None
    assert team["team"] == "alpha" and team["owner"] == "alpha-lead@contoso.com"
    assert team["resources"]["secret"] == "alpha-api-key" and team["resources"]["secret_has_keys"] is False
    assert unknown.isError and structured(unknown)["error"]["status"] == 404
    assert bad.isError and structured(bad)["error"]["status"] == 404


def test_bad_arguments_are_tool_errors(host):
    async def scenario():
        async with session(host.url) as s:
            return [await s.call_tool("list_requests", {"state": "approvd"}),
                    await s.call_tool("list_pending_requests", {"limit": 0}),
                    await s.call_tool("list_pending_requests", {"limit": "ten"}),
                    await s.call_tool("list_pending_requests", {"continue_token": "garbage"}),
                    await s.call_tool("get_request", {"request_id": "x", "verbose": True})]

    results = run(scenario())
    for result in results:
        assert result.isError and structured(result)["error"]["status"] == 422, result
    texts = [r.content[0].text for r in results]  # type: ignore[union-attr]
    assert "must be one of pending" in texts[0] and "at least 1" in texts[1] and "integer" in texts[2]
    assert "continue_token" in texts[3] and "verbose" in texts[4]


# --- authentication ----------------------------------------------------------------------------


def test_without_the_system_key_it_is_401(host):
    assert post_initialize(host.url, {}).status_code == 401
    wrong = post_initialize(host.url, {"x-functions-key": "not-the-key"})
    assert wrong.status_code == 401 and "system key" in wrong.json()["message"]
    assert post_initialize(host.url, {"x-functions-key": ADMIN_API_KEY}).status_code == 401  # another key
    assert post_initialize(host.url, KEY).status_code == 200
    assert post_initialize(host.url, {}, f"?code={SYSTEM_KEY}").status_code == 200  # as the host takes it too
    # An App Service principal counts only where App Service authentication is trusted.
    assert post_initialize(host.url, principal("KeyRequestor.Admin")).status_code == 401
    assert httpx.get(f"{host.url}/runtime/webhooks/mcp/sse", timeout=10).status_code == 401

    async def scenario():
        async with session(host.url, headers={"x-functions-key": "not-the-key"}):
            pass

    with pytest.raises(BaseExceptionGroup) as failed:  # the official client does not get in either
        run(scenario())
    refusals = failed.value.subgroup(lambda e: isinstance(e, httpx.HTTPStatusError) and e.response.status_code == 401)
    assert refusals is not None


def test_without_a_configured_key_nothing_gets_in(start_host, monkeypatch):
    monkeypatch.delenv("MCP_EXTENSION_KEY")
    host = start_host()
    refused = post_initialize(host.url, {"x-functions-key": ""})
    assert refused.status_code == 401 and "MCP_EXTENSION_KEY" in refused.json()["message"]


def test_an_entra_principal_with_the_admin_role(start_host, monkeypatch):
    monkeypatch.setenv("ADMIN_TRUST_APP_SERVICE_AUTH", "true")
    host = start_host()
    request = submit("entra@example.com")
    assert post_initialize(host.url, principal("Reader")).status_code == 403
    assert post_initialize(host.url, {}).status_code == 401

    async def scenario():
        async with session(host.url, headers=principal("KeyRequestor.Admin"), client="claude-desktop") as s:
            return await s.call_tool("approve_request", {"request_id": request.id})

    result = run(scenario())
    assert not result.isError, result
    assert structured(result)["decided_by"] == "mcp:claude-desktop/entra:rita@contoso.com"
    assert context.request_store().get(request.id).decided_by == "mcp:claude-desktop/entra:rita@contoso.com"


def test_the_app_checks_the_principal_on_every_call_too(app_env, functions, monkeypatch):
    """On Azure the tool function is the only place that sees the role: a principal the host let in
    (webhookAuthorizationLevel Anonymous, App Service authentication in front) still needs it."""
    from shared.mcp import auth

    monkeypatch.setenv("ADMIN_TRUST_APP_SERVICE_AUTH", "true")
    context.reset()
    request = submit("direct@example.com")

    def call(headers: dict[str, str]) -> dict[str, Any]:
        invocation = {"name": "approve_request", "arguments": {"request_id": request.id},
                      "clientinfo": {"name": "Visual Studio Code", "version": "1.99"},
                      "transport": {"name": "http-streamable", "properties": {"headers": headers}}}
        raw = functions["mcp_approve_request"].user_function(context=json.dumps(invocation))
        wrapper = json.loads(raw)
        assert wrapper["type"] == "call_tool_result"  # the MCP extension's rich-result contract
        return json.loads(wrapper["content"])

    refused = call(principal("Reader"))
    assert refused["isError"] is True and refused["structuredContent"]["error"]["status"] == 403
    assert context.request_store().get(request.id).state == State.PENDING

    monkeypatch.setattr(auth, "webhook_authorization_level", lambda: "anonymous")
    anonymous = call({})
    assert anonymous["isError"] is True and anonymous["structuredContent"]["error"]["status"] == 401

    approved = call(principal("KeyRequestor.Admin"))
    assert approved["isError"] is False
    assert approved["structuredContent"]["decided_by"] == "mcp:Visual-Studio-Code/entra:rita@contoso.com"


# --- never a key -------------------------------------------------------------------------------


def test_no_tool_result_or_log_line_carries_a_key(host, caplog):
    caplog.set_level(logging.DEBUG)
    active = set_state(submit("keyholder@example.com"), State.ACTIVE,
                       secrets={"litellm-api-key": LEAKED}, references={"litellm-key-alias": "llm-key-request-x"})

    async def scenario():
        async with session(host.url) as s:
            results = [await s.call_tool("get_request", {"request_id": active.id}),
                       await s.call_tool("list_requests", {"state": "active"}),
                       await s.call_tool("approve_request", {"request_id": active.id}),
                       await s.call_tool("revoke_request", {"request_id": active.id, "reason": "rotated"}),
                       await s.call_tool("get_request", {"request_id": active.id})]
            listed = await s.list_tools()
            return results, listed

    results, listed = run(scenario())
    detail = structured(results[0])
    assert detail["references"] == {"litellm-key-alias": "llm-key-request-x"} and "api_key" not in detail
    assert structured(results[3])["state"] == "revoking"
    answers = json.dumps([r.model_dump(mode="json") for r in results]) + listed.model_dump_json()
    assert LEAKED not in answers and SYSTEM_KEY not in answers
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "mcp.client"))]
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in server_side)
    assert "Executed 'Functions.mcp_get_request' (Succeeded" in text  # the records were captured
    assert LEAKED not in text and SYSTEM_KEY not in text


# --- the older SSE transport, and what cold starts pay ------------------------------------------


def test_the_sse_transport_serves_the_same_tools(host):
    request = submit("sse@example.com")

    async def scenario():
        info = types.Implementation(name="sse-agent", version="1")
        async with (sse_client(f"{host.url}/runtime/webhooks/mcp/sse", headers=KEY) as (read, write),
                    ClientSession(read, write, client_info=info) as s):
            await s.initialize()
            names = {tool.name for tool in (await s.list_tools()).tools}
            return names, await s.call_tool("set_review", {"request_id": request.id})

    names, result = run(scenario())
    assert names == TOOL_NAMES
    assert structured(result)["state"] == "in-review" and structured(result)["decided_by"] == "mcp:sse-agent"


def test_importing_function_app_loads_no_mcp_sdk():
    code = ("import sys, function_app; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mcp', 'starlette', 'sse_starlette', 'uvicorn')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
