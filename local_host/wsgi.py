"""The HTTP side of the host as a WSGI application: CORS, routing, invocation, errors as JSON.

Each request becomes a real `func.HttpRequest` and each `func.HttpResponse` goes back with the
Content-Type the worker would set. What the host itself answers (no route, wrong method, a
function that raised) is JSON `{"message", "detail"}` like the app's own errors, so the frontend
shows a message; a traceback goes to the log, never to the client. Paths under
/runtime/webhooks/mcp go to the MCP endpoint (local_host/mcp_server.py) when the app has MCP tools.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister
from werkzeug.datastructures import Headers
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.wrappers import Request, Response

from .cors import CorsPolicy
from .functions import index_functions, invoke
from .routes import RouteTable

if TYPE_CHECKING:  # the MCP SDK loads only for an app that has MCP tools
    from .mcp_server import McpEndpoint

log = logging.getLogger("local_host")


class LocalWsgiApp:
    def __init__(self, routes: RouteTable, cors: CorsPolicy, mcp: McpEndpoint | None = None) -> None:
        self.routes = routes
        self.cors = cors
        self.mcp = mcp

    def __call__(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        response = self.cors.preflight(request)
        if response is None and self.mcp is not None and self.mcp.handles(request.path):
            return self._mcp(self.mcp, request, environ, start_response)
        if response is None:
            response = self._dispatch(request)
            self.cors.decorate(request, response)
        return response(environ, start_response)

    def _mcp(self, mcp: McpEndpoint, request: Request, environ: dict, start_response: Any) -> Any:
        def start_with_cors(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            decorated = Headers(headers)
            self.cors.decorate_headers(request, decorated)
            return start_response(status, decorated.to_wsgi_list(), exc_info)

        return mcp(environ, start_with_cors, request)

    def _dispatch(self, request: Request) -> Response:
        try:
            entry, route_params = self.routes.match(request.path, request.method)
        except NotFound:
            log.info("%s %s -> 404 (no function)", request.method, request.path)
            return _json_error(404, "Not found", f"No function matches {request.method} {request.path}")
        except MethodNotAllowed as e:
            allowed = sorted(e.valid_methods or [])
            log.info("%s %s -> 405", request.method, request.path)
            response = _json_error(405, "Method not allowed",
                                   f"{request.path} allows {', '.join(allowed)}")
            response.headers["Allow"] = ", ".join(allowed)
            return response

        # .keys(): werkzeug's Headers iterate as (key, value) pairs, not as keys
        headers = {k: ", ".join(request.headers.getlist(k)) for k in request.headers.keys()}  # noqa: SIM118
        # As App Service's front end does: the socket's address becomes the last X-Forwarded-For hop
        # (what the app's login limits key on; earlier hops are the caller's own words).
        forwarded = next((k for k in headers if k.lower() == "x-forwarded-for"), "X-Forwarded-For")
        peer = request.remote_addr or "local"
        headers[forwarded] = f"{headers[forwarded]}, {peer}" if headers.get(forwarded) else peer
        http_request = func.HttpRequest(
            method=request.method,
            url=request.url,
            headers=headers,
            params=request.args.to_dict(),
            route_params=route_params,
            body=request.get_data(),
        )
        started = time.perf_counter()
        try:
            response = _to_wsgi(invoke(entry, http_request, quiet=True))
        except BadResult as e:
            log.error("Functions.%s: %s", entry.name, e)
            response = _json_error(500, "Internal server error", None)
        except Exception:  # noqa: BLE001 - the boundary; invoke() has logged the traceback
            response = _json_error(500, "Internal server error", None)
        # One line per call (the invocation's own lines are at DEBUG unless it failed).
        level = logging.WARNING if response.status_code >= 500 else logging.INFO
        log.log(level, "%s %s -> %d (Functions.%s, %d ms)", request.method, request.path, response.status_code,
                entry.name, round((time.perf_counter() - started) * 1000))
        return response


class BadResult(TypeError):
    """An HTTP function returned something the worker could not send."""


def _to_wsgi(result: Any) -> Response:
    if isinstance(result, func.HttpResponse):
        headers = list(result.headers.items())
        if not any(k.lower() == "content-type" for k, _ in headers):
            # The worker's rule: text/* carries the charset, other types do not.
            content_type = result.mimetype
            if content_type.startswith("text/"):
                content_type += f"; charset={result.charset}"
            headers.append(("Content-Type", content_type))
        return Response(result.get_body(), status=result.status_code, headers=headers)
    if isinstance(result, (str, bytes)):
        return Response(result, status=200, content_type="text/plain; charset=utf-8")
    if result is None:
        return Response(status=204)
    raise BadResult(f"an HTTP function must return func.HttpResponse or str, not {type(result).__name__}")


def _json_error(status: int, message: str, detail: Any) -> Response:
    return Response(json.dumps({"message": message, "detail": detail}), status=status,
                    content_type="application/json")


def build_wsgi_app(app: FunctionRegister, route_prefix: str = "api", cors_origins: Sequence[str] = (),
                   cors_credentials: bool = False, mcp: McpEndpoint | None = None) -> LocalWsgiApp:
    """A WSGI callable serving `app`'s HTTP functions under `route_prefix` ("" for none), and its
    MCP tools through `mcp` (started and closed by the caller) when given."""
    entries = [e for e in index_functions(app) if e.trigger_type == "httpTrigger"]
    return LocalWsgiApp(RouteTable(route_prefix, entries), CorsPolicy(cors_origins, cors_credentials), mcp)
