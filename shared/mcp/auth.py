"""Who is calling a tool, from the invocation context the host hands over.

The HTTP endpoint is the host's: with host.json `extensions.mcp.system.webhookAuthorizationLevel`
`System` (shipped), it lets a call in only with the `mcp_extension` system key (`x-functions-key`),
so a call that reaches a function has been let in. What the app adds, on every call, from the
request headers the host passes along (`transport.properties.headers`):

- where App Service authentication is trusted (ADMIN_TRUST_APP_SERVICE_AUTH) and the call carries
  its principal, the principal must hold ADMIN_ROLE, as on the admin API;
- with the level `Anonymous` (the host checks no key), a call without such a principal is refused.

The caller is recorded as `mcp:<client>`: the client's name from its `initialize` (clientInfo),
plus `/entra:<user>` for a principal. The key itself is never read, kept or logged here.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

from shared.http.auth import Principal, app_service_principal
from shared.http.responses import HttpError
from shared.settings import APP_ROOT, Settings

log = logging.getLogger(__name__)
HOST_JSON = APP_ROOT / "host.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


def headers_of(invocation: dict[str, Any]) -> dict[str, str]:
    """The HTTP headers of the call, names lower-cased (as the host passes them; may be none)."""
    transport = invocation.get("transport") or {}
    properties = transport.get("properties") if isinstance(transport, dict) else None
    headers = (properties or {}).get("headers") if isinstance(properties, dict) else None
    if not isinstance(headers, dict):
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


def client_name(invocation: dict[str, Any]) -> str:
    """The MCP client's own name (`clientinfo.name`), made safe for an annotation and a log line."""
    info = invocation.get("clientinfo") or {}
    name = info.get("name") if isinstance(info, dict) else None
    cleaned = _UNSAFE.sub("-", str(name or "")).strip("-")[:64]
    return cleaned or "unknown-client"


@functools.cache
def webhook_authorization_level(host_json: Path = HOST_JSON) -> str:
    """host.json `extensions.mcp.system.webhookAuthorizationLevel`, lower-case; `system` when unset."""
    try:
        doc = json.loads(host_json.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return "system"
    mcp = ((doc.get("extensions") or {}).get("mcp") or {})
    return str((mcp.get("system") or {}).get("webhookAuthorizationLevel") or "System").strip().lower()


def caller(invocation: dict[str, Any], settings: Settings) -> Principal:
    """The caller of one tool call, or HttpError 401 / 403 (the call then changes nothing)."""
    client = client_name(invocation)
    headers = headers_of(invocation)
    if settings.admin_trust_app_service_auth and headers.get("x-ms-client-principal"):
        user = app_service_principal(headers, settings, what=f"MCP client {client}")
        return Principal(f"{client}/entra:{user.name}", "mcp")
    if webhook_authorization_level() == "anonymous":
        log.warning("MCP client %s: no App Service principal, and the webhook takes no system key", client)
        raise HttpError(401, "Authentication required: this MCP server takes an Entra ID sign-in with the app "
                             f"role {settings.admin_role} (host.json webhookAuthorizationLevel is Anonymous)")
    return Principal(client, "mcp")
