"""The local host's MCP endpoint (local_host/mcp_server.py) against a throwaway app, with the
official MCP client: what the Functions MCP extension does with tool triggers, on its own (the
app's tools are in tests/test_mcp.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
import warnings

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.shared.exceptions import McpError

from local_host import serve
from local_host.mcp_server import McpOptions, read_mcp_options

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mcp.client.streamable_http import streamablehttp_client

pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client` instead.:DeprecationWarning")

KEY = "local-system-key-" + "k" * 24

FUNCTION_APP = '''
import json

import azure.functions as func

app = func.FunctionApp()
TEXT = json.dumps([{"propertyName": "text", "propertyType": "string", "description": "what to echo",
                    "isRequired": True, "isArray": False, "enumValues": []},
                   {"propertyName": "tags", "propertyType": "string", "description": "labels",
                    "isRequired": False, "isArray": True, "enumValues": ["a", "b"]}])


@app.mcp_tool_trigger(arg_name="context", tool_name="echo", description="Echo the text", tool_properties=TEXT)
def echo(context: str) -> str:
    return json.loads(context)["arguments"]["text"]


@app.mcp_tool_trigger(arg_name="context", tool_name="boom", description="Always fails")
def boom(context: str) -> str:
    raise RuntimeError("secret-internal-detail")


@app.mcp_tool_trigger(arg_name="context", tool_name="whoami", description="The invocation context",
                      use_result_schema=True)
def whoami(context: str) -> str:
    ctx = json.loads(context)
    seen = {"client": ctx["clientinfo"]["name"], "session": ctx["sessionid"], "transport": ctx["transport"]["name"],
            "header_names": sorted(ctx["transport"]["properties"]["headers"])}
    return json.dumps({"type": "text", "content": json.dumps({"type": "text", "text": "seen"}),
                       "structuredContent": json.dumps(seen)})
'''


@pytest.fixture(autouse=True)
def isolated_process_state():
    import os

    environ, path, module = dict(os.environ), list(sys.path), sys.modules.get("function_app")
    yield
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:] = path
    sys.modules.pop("function_app", None)
    if module is not None:
        sys.modules["function_app"] = module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_app(tmp_path, level: str | None = None):
    (tmp_path / "function_app.py").write_text(FUNCTION_APP)
    host_json: dict = {"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}
    if level:
        host_json["extensions"]["mcp"] = {"system": {"webhookAuthorizationLevel": level}}
    (tmp_path / "host.json").write_text(json.dumps(host_json))
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": {
        "FUNCTIONS_WORKER_RUNTIME": "python", "MCP_EXTENSION_KEY": KEY}}))
    return tmp_path


@pytest.fixture
def host(tmp_path):
    running = serve(write_app(tmp_path), free_port())
    yield running
    running.shutdown()


async def _with_session(url: str, scenario, headers=None):
    async with (streamablehttp_client(f"{url}/runtime/webhooks/mcp", headers=headers or {"x-functions-key": KEY})
                as (read, write, session_id),
                ClientSession(read, write, client_info=types.Implementation(name="probe", version="1")) as s):
        init = await s.initialize()
        return init, session_id(), await scenario(s)


def test_tools_results_and_errors_as_the_extension_gives_them(host, caplog):
    async def scenario(s):
        listed = await s.list_tools()
        echo = await s.call_tool("echo", {"text": "hello"})
        boom = await s.call_tool("boom", {})
        whoami = await s.call_tool("whoami", {})
        errors = []
        for name, args in (("echo", {}), ("echo", {"text": None}), ("nope", {})):
            with pytest.raises(McpError) as raised:
                await s.call_tool(name, args)
            errors.append(raised.value.error)
        return listed, echo, boom, whoami, errors

    init, session_id, (listed, echo, boom, whoami, errors) = asyncio.run(_with_session(host.url, scenario))
    assert init.serverInfo.name == "Azure Functions MCP server"  # the extension's default: no host.json section
    tools = {t.name: t for t in listed.tools}
    assert set(tools) == {"echo", "boom", "whoami"}
    assert tools["echo"].inputSchema == {
        "type": "object", "required": ["text"],
        "properties": {"text": {"type": "string", "description": "what to echo"},
                       "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]},
                                "description": "labels"}}}
    assert tools["boom"].inputSchema == {"type": "object", "properties": {}, "required": []}

    assert not echo.isError and echo.content[0].text == "hello"  # a plain return value: its text
    assert boom.isError and boom.content[0].text == "An error occurred invoking 'boom'."
    assert "secret-internal-detail" not in boom.model_dump_json()
    assert "secret-internal-detail" in caplog.text  # ... the log has it
    assert "Executed 'Functions.boom' (Failed" in caplog.text

    assert whoami.content[0].text == "seen"  # useResultSchema: the McpToolResult wrapper
    assert whoami.structuredContent["client"] == "probe" and whoami.structuredContent["session"] == session_id
    assert whoami.structuredContent["transport"] == "http-streamable"
    assert {"mcp-session-id", "x-functions-key"} <= set(whoami.structuredContent["header_names"])  # as on Azure

    missing, null, unknown = errors
    assert missing.code == null.code == unknown.code == types.INVALID_PARAMS
    assert missing.message == "One or more required tool properties are missing values. Please provide: text"
    assert "nope" in unknown.message


def test_the_sse_transport(host):
    async def scenario():
        async with (sse_client(f"{host.url}/runtime/webhooks/mcp/sse", headers={"x-functions-key": KEY})
                    as (read, write), ClientSession(read, write) as s):
            await s.initialize()
            return await s.call_tool("whoami", {})

    result = asyncio.run(scenario())
    assert result.structuredContent["transport"] == "http-sse" and result.structuredContent["session"]


def test_the_key_comes_from_local_settings_and_is_checked(host):
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "c", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    url = f"{host.url}/runtime/webhooks/mcp"
    assert httpx.post(url, json=initialize, headers=accept).status_code == 401
    assert httpx.post(url, json=initialize, headers={**accept, "x-functions-key": "wrong"}).status_code == 401
    assert httpx.post(url, json=initialize, headers={**accept, "x-functions-key": KEY}).status_code == 200
    assert httpx.get(f"{url}/elsewhere", headers={"x-functions-key": KEY}).status_code == 404


def test_anonymous_webhooks_take_no_key(tmp_path):
    running = serve(write_app(tmp_path, level="Anonymous"), free_port())
    try:
        async def scenario(s):
            return await s.call_tool("echo", {"text": "no key"})

        _, _, result = asyncio.run(_with_session(running.url, scenario, headers={"x-other": "1"}))
        assert result.content[0].text == "no key"
    finally:
        running.shutdown()


def test_shutdown_ends_open_event_streams(tmp_path):
    """A client holding its GET event stream open does not keep the host from stopping."""
    import threading

    host = serve(write_app(tmp_path), free_port())
    opened = threading.Event()

    async def hold_open():
        async def scenario(s):
            opened.set()
            await asyncio.sleep(30)

        # The host going away ends the session, however the client reports it.
        with contextlib.suppress(BaseException):
            await _with_session(host.url, scenario)

    thread = threading.Thread(target=asyncio.run, args=(hold_open(),), daemon=True)
    thread.start()
    assert opened.wait(10)
    time.sleep(0.3)  # the client opens its GET stream right after initialize
    started = time.monotonic()
    host.shutdown()
    assert time.monotonic() - started < 5


def test_host_json_options(tmp_path):
    assert read_mcp_options(tmp_path / "missing.json") == McpOptions()
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"mcp": {
        "serverName": "s", "serverVersion": "2", "instructions": "do",
        "system": {"webhookAuthorizationLevel": "Admin"}}}}))
    with pytest.raises(ValueError, match="System or Anonymous"):
        read_mcp_options(tmp_path / "host.json")
