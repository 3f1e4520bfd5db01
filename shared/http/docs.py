"""GET /api/docs: an API page for people, Swagger UI over /api/openapi.json, served by the app.

The Swagger UI files come from the pinned PyPI package `swagger-ui-bundle-v2` (Swagger UI 5, which
reads OpenAPI 3.1; Apache-2.0), loaded on the first call: no CDN, nothing fetched by the browser from
anywhere but this app (the Content-Security-Policy says so). Only the three files the page needs are
served, and "Try it out" calls the app itself (the document has no `servers`, so the page's origin).
"""

from __future__ import annotations

import functools
from importlib import resources

import azure.functions as func

from shared.http.responses import HttpError, handles_errors

bp = func.Blueprint()

PACKAGE = "swagger_ui_bundle"  # the import name of swagger-ui-bundle-v2
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}
# Our own start-up script, served as a file so the policy needs no inline script.
INIT_JS = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: false,
    validatorUrl: null
  });
});
"""
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>LLM key requestor: API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/init.js"></script>
</body>
</html>
"""
# Swagger UI sets styles inline and shows images as data: URLs; scripts and calls stay on this app.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@functools.cache
def _asset(name: str) -> bytes:
    folder = next(p for p in resources.files(PACKAGE).joinpath("vendor").iterdir() if p.name.startswith("swagger-ui-"))
    return folder.joinpath(name).read_bytes()


def _headers(cache: str) -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": cache}


@bp.function_name("api_docs")
@bp.route(route="api/docs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@handles_errors
def api_docs(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(PAGE, mimetype="text/html", charset="utf-8", headers=_headers("no-cache"))


@bp.function_name("api_docs_asset")
@bp.route(route="api/docs/{asset}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@handles_errors
def api_docs_asset(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("asset", "")
    if name == "init.js":
        return func.HttpResponse(INIT_JS, mimetype="text/javascript", charset="utf-8",
                                 headers=_headers("public, max-age=3600"))
    if name not in ASSETS:
        raise HttpError(404, "Not found", f"the API page has no file {name[:64]!r}")
    return func.HttpResponse(_asset(name), mimetype=ASSETS[name], headers=_headers("public, max-age=86400"))
