"""Start the whole local host in background threads: settings, app, HTTP server, timers.

`serve()` is what `python -m local_host` runs, and what tests and benchmarks call to get a host
on a port of their own. It binds to loopback unless told otherwise: the local host enforces no
function keys (neither does `func start`), so it must not be reachable from the network. (The
MCP endpoint is the exception: it takes the MCP extension's system key, see mcp_server.py.)
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .functions import FunctionEntry, index_functions, load_function_app
from .settings import DEFAULT_PORT, load_local_settings, read_route_prefix
from .timers import TimerScheduler
from .wsgi import LocalWsgiApp, build_wsgi_app

if TYPE_CHECKING:
    from .mcp_server import McpEndpoint

log = logging.getLogger("local_host")


class _QuietHandler(WSGIRequestHandler):
    # Keep-alive, as the real host's front end does: no new connection and thread per call.
    protocol_version = "HTTP/1.1"

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass  # the host logs invocations itself


class LocalHost:
    """A running local host: `url` (no trailing slash), `port`, `shutdown()`; a context manager."""

    def __init__(self, server: BaseWSGIServer, wsgi: LocalWsgiApp, timers: TimerScheduler) -> None:
        self.server, self.wsgi, self.timers = server, wsgi, timers
        address = server.server_address  # TCP: (host, port), or (host, port, flowinfo, scope_id) with IPv6
        assert isinstance(address, tuple) and isinstance(address[0], str)
        self.host, self.port = address[0], address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, name="local_host-http", daemon=True)

    def start(self) -> LocalHost:
        if self.wsgi.mcp is not None:
            self.wsgi.mcp.start()
        self._thread.start()
        self.timers.start()
        return self

    def shutdown(self) -> None:
        self.timers.stop()
        if self.wsgi.mcp is not None:
            self.wsgi.mcp.close()  # ends open MCP streams, so their threads end too
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> LocalHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve(app_dir: str | os.PathLike = ".", port: int | None = None, host: str = "127.0.0.1",
          settings_path: str | os.PathLike | None = None) -> LocalHost:
    """Serve the function app in `app_dir` on `host:port` (port 0: any free port).

    `port` defaults to local.settings.json's `Host.LocalHttpPort`, else 7071; `settings_path` to
    `<app_dir>/local.settings.json` (may be absent; a path given explicitly must exist).
    """
    app_dir = Path(app_dir).resolve()
    # Settings first: the app reads its settings from the environment when it is imported.
    settings = load_local_settings(settings_path or app_dir / "local.settings.json",
                                   required=settings_path is not None)
    route_prefix = read_route_prefix(app_dir / "host.json")
    app = load_function_app(app_dir)
    timers = TimerScheduler(app)  # resolves the schedules: a bad one fails here, before serving
    tools = [e for e in index_functions(app) if e.trigger_type == "mcpToolTrigger"]
    mcp = _mcp_endpoint(tools, app_dir / "host.json") if tools else None
    wsgi = build_wsgi_app(app, route_prefix, settings.cors_origins, settings.cors_credentials, mcp)
    if not _is_loopback(host):
        log.warning("Binding to %s: function keys are NOT enforced, anyone who can reach it can call it", host)
    port = port if port is not None else settings.port or DEFAULT_PORT
    server = make_server(host, port, wsgi, threaded=True, request_handler=_QuietHandler)
    running = LocalHost(server, wsgi, timers)
    log.info("%s", route_table(running))
    keyed = [f"{e.name} ({e.auth_level})" for e in index_functions(app)
             if e.trigger_type == "httpTrigger" and e.auth_level in ("function", "admin")]
    if keyed:
        log.info("Function keys are not enforced locally (as with func start): %s", ", ".join(keyed))
    return running.start()


def route_table(running: LocalHost) -> str:
    """The function list `func start` prints: `name: [GET,POST] http://host:port/route`."""
    lines = ["Functions:", ""]
    for entry, methods, template in running.wsgi.routes.templates:
        lines.append(f"\t{entry.name}: [{','.join(methods or ['ALL'])}] {running.url}/{template}")
    for timer in running.timers.timers:
        lines.append(f"\t{timer.entry.name}: timerTrigger ({timer.schedule})")
    mcp = running.wsgi.mcp
    if mcp is not None:
        for name, entry in mcp.tools.items():
            lines.append(f"\t{entry.name}: mcpToolTrigger ({name})")
        lines += ["", f"MCP server: {running.url}/runtime/webhooks/mcp (streamable HTTP), "
                      f"{running.url}/runtime/webhooks/mcp/sse (SSE)"]
    return "\n".join(lines)


def _mcp_endpoint(tools: list[FunctionEntry], host_json: Path) -> McpEndpoint:
    from .mcp_server import KEY_SETTING, McpEndpoint  # the MCP SDK loads only for an app with MCP tools

    endpoint = McpEndpoint.for_app(tools, host_json)
    if endpoint.auth.level == "system" and endpoint.auth.system_key is None:
        log.warning("MCP tools: %s is not set, so every MCP request is refused (401); set it in "
                    "local.settings.json Values to the key clients send in x-functions-key", KEY_SETTING)
    return endpoint


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
