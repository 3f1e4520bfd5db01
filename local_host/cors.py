"""CORS as the Functions host applies it (ASP.NET Core's CORS middleware, any method/header).

The frontend's pages preflight every call (`Content-Type: application/json`, `Authorization`), so
preflights from allowed origins are answered here, before routing, whatever the route. A
disallowed origin's preflight is still answered, but without CORS headers, so the browser
blocks the call. With no origins configured the middleware is off, as with `func start`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

log = logging.getLogger("local_host")

MAX_AGE_SECONDS = 3600
# Headers a browser script may read without being told (the CORS-safelisted response headers).
_NOT_EXPOSED = {"cache-control", "content-language", "content-length", "content-type",
                "expires", "last-modified", "pragma", "vary"}


class CorsPolicy:
    def __init__(self, origins: Iterable[str], credentials: bool = False) -> None:
        self.origins = {o.strip().rstrip("/").lower() for o in origins if o.strip()}
        self.credentials = credentials

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        if not origin or not self.enabled:
            return False
        return "*" in self.origins or origin.rstrip("/").lower() in self.origins

    def preflight(self, request: Request) -> Response | None:
        """The answer to a CORS preflight, or None if `request` is not one (route it)."""
        requested_method = request.headers.get("Access-Control-Request-Method")
        origin = request.headers.get("Origin")
        if not (self.enabled and request.method == "OPTIONS" and origin and requested_method):
            return None
        response = Response(status=204)
        del response.headers["Content-Type"]
        if self.allows(origin):
            h = response.headers
            self._allow(origin, h)
            h["Access-Control-Allow-Methods"] = requested_method.upper()
            requested_headers = request.headers.get("Access-Control-Request-Headers")
            if requested_headers:
                h["Access-Control-Allow-Headers"] = requested_headers
            h["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
        else:
            log.warning("CORS: refused the preflight of %s %s from origin %s: not in Host.CORS of "
                        "local.settings.json (\"*\" allows any origin locally)",
                        requested_method.upper(), request.path, origin)
        return response

    def decorate(self, request: Request, response: Response) -> None:
        """Add the CORS headers to an actual response (errors too, so the page can read them)."""
        self.decorate_headers(request, response.headers)

    def decorate_headers(self, request: Request, headers: Headers) -> None:
        """`decorate` for a response known only by its headers (a streamed one)."""
        origin = request.headers.get("Origin")
        if origin is None or not self.allows(origin):
            return
        exposed = sorted({k for k, _ in headers if k.lower() not in _NOT_EXPOSED
                          and not k.lower().startswith("access-control-")})
        self._allow(origin, headers)
        if exposed:
            headers["Access-Control-Expose-Headers"] = ", ".join(exposed)

    def _allow(self, origin: str, headers: Headers) -> None:
        # The origin itself, never "*": "*" is not allowed together with credentials.
        headers["Access-Control-Allow-Origin"] = origin
        vary = [v.strip() for v in headers.get("Vary", "").split(",") if v.strip()]
        if "origin" not in {v.lower() for v in vary}:
            headers["Vary"] = ", ".join([*vary, "Origin"])
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
