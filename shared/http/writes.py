"""Admin writes are never "simple" cross-site requests.

A browser sends a form post, or a `fetch` without custom headers, from any site without asking
first, and with whatever credentials it holds for this app (an App Service sign-in cookie, Basic
credentials it cached). So every admin call that changes something must carry a content type such
a request cannot have (`application/json`; a team file may also be YAML), which makes the browser
ask the CORS preflight first, and a present `Origin` must be one this app serves pages for: one of
CORS_ALLOWED_ORIGINS, or the app's own (its API page). Callers without a browser (CI, scripts)
send no Origin and only need the content type. A body-less write sends `application/json` with
an empty body, which reads as `{}`.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

import azure.functions as func

from shared.http.responses import HttpError
from shared.settings import Settings

JSON_ONLY = frozenset({"application/json"})
MAX_ECHO = 200  # how much of a refused header value the answer repeats


def media_type(req: func.HttpRequest) -> str:
    return (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def check_write(req: func.HttpRequest, settings: Settings, content_types: Collection[str] = JSON_ONLY) -> None:
    """HttpError 415 for a content type a cross-site form could send, 403 for a foreign Origin."""
    given = media_type(req)
    if given not in content_types and not given.endswith("+json"):
        wanted = " or ".join(sorted(content_types))
        raise HttpError(415, f"Admin changes need the header Content-Type: {wanted} (an empty body is {{}}); "
                             f"{'it was ' + given[:MAX_ECHO] if given else 'none was sent'}",
                        {"header": "Content-Type", "received": given[:MAX_ECHO] or None,
                         "reason": f"must be {wanted}, a type no cross-site form can send"})
    origin = req.headers.get("origin")
    if origin is not None and not _allowed(origin, req, settings):
        raise HttpError(403, f"Admin changes are accepted only from the app's own pages: the header Origin "
                             f"{origin[:MAX_ECHO]!r} is not one of CORS_ALLOWED_ORIGINS",
                        {"header": "Origin", "received": origin[:MAX_ECHO],
                         "reason": "not one of the CORS origins (CORS_ALLOWED_ORIGINS) or the app's own"})


def _allowed(origin: str, req: func.HttpRequest, settings: Settings) -> bool:
    value = origin.strip().rstrip("/").lower()
    allowed = settings.cors_origins
    if "*" in allowed or value in allowed or value == settings.public_origin:
        return True
    # Same origin as the call itself (the API page's "Try it out"): the host a browser put in
    # Origin is the host it sent the call to. "null" (a sandboxed or file page) has no host.
    own = urlsplit(req.url).netloc.lower()
    return bool(own) and urlsplit(value).netloc == own
