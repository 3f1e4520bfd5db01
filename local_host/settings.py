"""`local.settings.json` and `host.json`, read the way `func start` reads them.

`Values` become environment variables (the app reads its settings from the environment, as it
does on Azure), but never replace a variable that is already set: tests and operators override a
setting by exporting it. `Host` gives the CORS origins and the default port. From `host.json` only
the HTTP route prefix matters here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("local_host")

DEFAULT_PORT = 7071
DEFAULT_ROUTE_PREFIX = "api"  # what the real host uses when host.json says nothing


@dataclass(frozen=True)
class LocalSettings:
    values: dict[str, str] = field(default_factory=dict)
    cors_origins: list[str] = field(default_factory=list)
    cors_credentials: bool = False
    port: int | None = None
    applied: list[str] = field(default_factory=list)  # Values that were put into the environment


def load_local_settings(
    path: str | os.PathLike | None,
    environ: MutableMapping[str, str] | None = None,
    *,
    required: bool = False,
) -> LocalSettings:
    """Read `path` (if it exists) and put its `Values` into `environ` (default `os.environ`).

    A missing file is fine unless `required` (an explicitly named file should exist): the
    environment alone then configures the app.
    """
    environ = os.environ if environ is None else environ
    if path is None or not Path(path).is_file():
        if required:
            raise FileNotFoundError(f"settings file not found: {path}")
        log.info("No %s; using the environment only.", path or "local.settings.json")
        return LocalSettings()

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if doc.get("IsEncrypted"):
        raise ValueError(f"{path} is encrypted (IsEncrypted: true); the local host cannot decrypt it")

    values = {k: _as_setting(v) for k, v in (doc.get("Values") or {}).items() if v is not None}
    applied = []
    for key, value in values.items():
        if key not in environ:  # the environment wins, so it can override a file value
            environ[key] = value
            applied.append(key)

    host = doc.get("Host") or {}
    origins = [o.strip().rstrip("/") for o in str(host.get("CORS") or "").split(",") if o.strip()]
    # The app refuses admin changes from origins outside its CORS list; on Azure Terraform sets
    # CORS_ALLOWED_ORIGINS from the same list as the platform's CORS, here Host.CORS is that list.
    if origins and not environ.get("CORS_ALLOWED_ORIGINS", "").strip():  # blank is unset, as in the app
        environ["CORS_ALLOWED_ORIGINS"] = ",".join(origins)
        applied = [*(a for a in applied if a != "CORS_ALLOWED_ORIGINS"), "CORS_ALLOWED_ORIGINS"]
    port = host.get("LocalHttpPort")
    return LocalSettings(
        values=values,
        cors_origins=origins,
        cors_credentials=_as_bool(host.get("CORSCredentials", False)),
        port=int(port) if port not in (None, "") else None,
        applied=applied,
    )


def read_route_prefix(host_json: str | os.PathLike) -> str:
    """`extensions.http.routePrefix` from host.json, "api" when the file or the key is absent."""
    path = Path(host_json)
    if not path.is_file():
        return DEFAULT_ROUTE_PREFIX
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    prefix = ((doc.get("extensions") or {}).get("http") or {}).get("routePrefix", DEFAULT_ROUTE_PREFIX)
    return str(prefix).strip("/")


def _as_setting(value: object) -> str:
    # func start wants strings; accept JSON booleans and numbers the way people write them.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_bool(value: object) -> bool:
    return value is True or str(value).strip().lower() == "true"
